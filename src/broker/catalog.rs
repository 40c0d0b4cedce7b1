//! The catalog: one PostgreSQL 15 service, its plans and parameter schemas,
//! and the validation of parameters against them.

use serde_json::{Value, json};

use crate::backup::target::{RestoreRequest, parse_request};

/// pgcell's service.
pub const SERVICE_ID: &str = "5d5bc3d4-8a4e-4f47-9a68-7d1c2f0b9e15";
/// The seed's service and plan (cf-containers-broker era): kept working.
pub const SEED_SERVICE_ID: &str = "0f5c1670-6dc3-11e5-bc08-6c4008a663f0";
pub const SEED_PLAN_ID: &str = "1545e30e-6dc3-11e5-826a-6c4008a663f0";

#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub id: &'static str,
    pub service_id: &'static str,
    pub name: &'static str,
    pub description: &'static str,
    pub members: usize,
    pub memory_mb: u64,
}

pub const PLANS: &[Plan] = &[
    Plan {
        id: "0b9b1d67-51d4-4c38-9a3e-1c1f6a4e7a01",
        service_id: SERVICE_ID,
        name: "single",
        description: "One PostgreSQL 15 member, 512 MB; no failover",
        members: 1,
        memory_mb: 512,
    },
    Plan {
        id: "0b9b1d67-51d4-4c38-9a3e-1c1f6a4e7a02",
        service_id: SERVICE_ID,
        name: "ha-2",
        description: "Two members on distinct cells, synchronous replication, 1 GB each",
        members: 2,
        memory_mb: 1024,
    },
    Plan {
        id: "0b9b1d67-51d4-4c38-9a3e-1c1f6a4e7a03",
        service_id: SERVICE_ID,
        name: "ha-3",
        description: "Three members on distinct cells, synchronous replication, 1 GB each",
        members: 3,
        memory_mb: 1024,
    },
    Plan {
        id: SEED_PLAN_ID,
        service_id: SEED_SERVICE_ID,
        name: "seed-ha",
        description: "The seed's plan: two members on distinct cells",
        members: 2,
        memory_mb: 1024,
    },
];

pub fn plan(service_id: &str, plan_id: &str) -> Option<&'static Plan> {
    PLANS.iter().find(|p| p.id == plan_id && p.service_id == service_id)
}

/// Extensions the image ships (Debian's postgresql-15 contrib), checked against
/// `pg_available_extensions` by an integration test.
pub const EXTENSIONS: &[&str] = &[
    "btree_gin",
    "btree_gist",
    "citext",
    "cube",
    "dblink",
    "earthdistance",
    "fuzzystrmatch",
    "hstore",
    "intarray",
    "isn",
    "lo",
    "ltree",
    "pg_stat_statements",
    "pg_trgm",
    "pgcrypto",
    "postgres_fdw",
    "seg",
    "tablefunc",
    "tcn",
    "unaccent",
    "uuid-ossp",
];

/// Validated provision/update parameters.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Parameters {
    #[serde(default)]
    pub extensions: Vec<String>,
    /// Provision only: bootstrap from another instance's backups (clone, point in time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore: Option<RestoreRequest>,
    /// Provision only: a WAL segment is archived at least this often (10–60 s;
    /// default the cells' `backup.archive_timeout_secs`): the RPO bound.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archive_timeout: Option<u32>,
    /// Provision only: remote logins over TLS only (`hostssl`); fixed for the
    /// instance's life. `None`: not asked (TLS offered, not required).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub require_tls: Option<bool>,
}

impl Parameters {
    /// Whether the instance refuses plaintext logins.
    pub fn tls_required(&self) -> bool {
        self.require_tls.unwrap_or(false)
    }
}

/// Backup types an update may ask for (`"now"` is a full one).
pub const BACKUP_KINDS: &[&str] = &["now", "full", "diff", "incr"];

fn schema() -> Value {
    json!({
        "$schema": "http://json-schema.org/draft-04/schema#",
        "type": "object",
        "additionalProperties": false,
        "properties": {
            "extensions": {
                "type": "array",
                "description": "Extensions created in the instance's database",
                "uniqueItems": true,
                "maxItems": EXTENSIONS.len(),
                "items": {"type": "string", "enum": EXTENSIONS},
            },
            "restore": {
                "type": "object",
                "description": "Provision only: restore another instance's backups (live or deprovisioned); no target means the latest",
                "additionalProperties": false,
                "required": ["from"],
                "properties": {
                    "from": {"type": "string", "description": "Instance id to restore from"},
                    "target_time": {"type": "string", "description": "RFC 3339 time with a zone"},
                    "target_lsn": {"type": "string", "description": "LSN, e.g. 0/3000060"},
                },
            },
            "archive_timeout": {
                "type": "integer",
                "minimum": 10,
                "maximum": 60,
                "description": "Provision only: seconds after which a WAL segment is archived even if not full (the RPO bound); default 60",
            },
            "require_tls": {
                "type": "boolean",
                "description": "Provision only: refuse logins without TLS (hostssl only); cannot be changed later. Default false (TLS is offered either way)",
            },
            "backup": {
                "type": "string",
                "enum": BACKUP_KINDS,
                "description": "Update only: take a backup now (now = full)",
            },
        },
    })
}

/// Update parameters: the parameters to keep (`None`: unchanged, only an
/// action was asked for) and a backup to take now.
pub fn parse_update(v: &Value) -> Result<(Option<Parameters>, Option<&'static str>), String> {
    let Some(obj) = v.as_object() else { return parse_parameters(Some(v)).map(|p| (Some(p), None)) };
    let backup = match obj.get("backup") {
        None => None,
        Some(b) => {
            let k = b
                .as_str()
                .and_then(|k| BACKUP_KINDS.iter().find(|x| **x == k))
                .ok_or_else(|| format!("backup must be one of {}", BACKUP_KINDS.join(", ")))?;
            Some(if *k == "now" { "full" } else { k })
        }
    };
    if obj.contains_key("restore") {
        return Err("restore applies when provisioning a new instance, not to an update".into());
    }
    let rest: serde_json::Map<String, Value> =
        obj.iter().filter(|(k, _)| *k != "backup").map(|(k, v)| (k.clone(), v.clone())).collect();
    if rest.is_empty() && backup.is_some() {
        return Ok((None, backup));
    }
    Ok((Some(parse_parameters(Some(&Value::Object(rest)))?), backup))
}

/// Checks parameters against the schema above, with a message saying what is wrong.
pub fn parse_parameters(v: Option<&Value>) -> Result<Parameters, String> {
    let Some(v) = v.filter(|v| !v.is_null()) else { return Ok(Parameters::default()) };
    let obj = v.as_object().ok_or("parameters must be a JSON object")?;
    if let Some(k) =
        obj.keys().find(|k| !["extensions", "restore", "archive_timeout", "require_tls"].contains(&k.as_str()))
    {
        return Err(format!(
            "unknown parameter {k:?}; known: extensions, restore, archive_timeout and require_tls (provision), backup (update)"
        ));
    }
    let require_tls = match obj.get("require_tls") {
        None => None,
        Some(v) => Some(v.as_bool().ok_or("require_tls must be true or false")?),
    };
    let archive_timeout = match obj.get("archive_timeout") {
        None => None,
        Some(v) => Some(
            v.as_u64()
                .filter(|t| (10..=60).contains(t))
                .map(|t| t as u32)
                .ok_or("archive_timeout must be an integer number of seconds from 10 to 60")?,
        ),
    };
    let restore = obj.get("restore").map(parse_request).transpose()?;
    let mut extensions = vec![];
    if let Some(ext) = obj.get("extensions") {
        let list = ext.as_array().ok_or("extensions must be an array of names")?;
        for e in list {
            let name = e.as_str().ok_or("extensions must be an array of names")?;
            if !EXTENSIONS.contains(&name) {
                return Err(format!("extension {name:?} is not available; available: {}", EXTENSIONS.join(", ")));
            }
            if extensions.iter().any(|x| x == name) {
                return Err(format!("extension {name:?} is listed twice"));
            }
            extensions.push(name.to_string());
        }
    }
    Ok(Parameters { extensions, restore, archive_timeout, require_tls })
}

pub fn catalog() -> Value {
    let plans = |service: &str| -> Vec<Value> {
        PLANS
            .iter()
            .filter(|p| p.service_id == service)
            .map(|p| {
                json!({
                    "id": p.id,
                    "name": p.name,
                    "description": p.description,
                    "free": true,
                    "bindable": true,
                    "plan_updateable": true,
                    "metadata": {"members": p.members, "memory_mb": p.memory_mb},
                    "schemas": {
                        "service_instance": {"create": {"parameters": schema()}, "update": {"parameters": schema()}},
                        "service_binding": {"create": {"parameters": {"$schema": "http://json-schema.org/draft-04/schema#", "type": "object", "additionalProperties": false}}},
                    },
                })
            })
            .collect()
    };
    let service = |id: &str, name: &str, description: &str| {
        json!({
            "id": id,
            "name": name,
            "description": description,
            "bindable": true,
            "instances_retrievable": true,
            "bindings_retrievable": true,
            "plan_updateable": true,
            "tags": ["postgresql", "postgres", "relational"],
            "metadata": {"displayName": "PostgreSQL 15 (pgcell)"},
            "plans": plans(id),
        })
    };
    json!({"services": [
        service(SERVICE_ID, "postgresql", "PostgreSQL 15, highly available with Patroni, reached through the pgcell router"),
        service(SEED_SERVICE_ID, "postgresql-seed", "The seed's service id, kept for existing platforms"),
    ]})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_are_unique_and_found() {
        let mut ids: Vec<_> = PLANS.iter().map(|p| p.id).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), PLANS.len());
        assert_eq!(plan(SERVICE_ID, PLANS[2].id).unwrap().members, 3);
        assert!(plan(SEED_SERVICE_ID, PLANS[0].id).is_none(), "plan under the wrong service");
        assert_eq!(plan(SEED_SERVICE_ID, SEED_PLAN_ID).unwrap().members, 2);
    }

    #[test]
    fn parameters_are_checked() {
        assert_eq!(parse_parameters(None).unwrap(), Parameters::default());
        let ok = json!({"extensions": ["pgcrypto", "citext"]});
        assert_eq!(parse_parameters(Some(&ok)).unwrap().extensions, ["pgcrypto", "citext"]);
        for bad in [
            json!([]),
            json!({"extension": []}),
            json!({"extensions": "pgcrypto"}),
            json!({"extensions": [1]}),
            json!({"extensions": ["postgis"]}),
            json!({"extensions": ["citext", "citext"]}),
            json!({"restore": {}}),
            json!({"restore": {"from": "a", "target_time": "yesterday"}}),
            json!({"backup": "now"}),
            json!({"archive_timeout": 5}),
            json!({"archive_timeout": "10"}),
        ] {
            assert!(parse_parameters(Some(&bad)).is_err(), "{bad}");
        }
        let r =
            parse_parameters(Some(&json!({"restore": {"from": "a", "target_lsn": "0/1"}}))).unwrap().restore.unwrap();
        assert_eq!((r.from.as_str(), r.target_lsn.as_deref()), ("a", Some("0/1")));
        assert_eq!(parse_parameters(Some(&json!({"archive_timeout": 10}))).unwrap().archive_timeout, Some(10));
    }

    #[test]
    fn require_tls_is_a_boolean_kept_as_asked() {
        let p = parse_parameters(Some(&json!({"require_tls": true}))).unwrap();
        assert_eq!((p.require_tls, p.tls_required()), (Some(true), true));
        assert_eq!(parse_parameters(Some(&json!({}))).unwrap().require_tls, None);
        assert!(!parse_parameters(None).unwrap().tls_required());
        for bad in [json!({"require_tls": "true"}), json!({"require_tls": 1}), json!({"require_tls": null})] {
            let err = parse_parameters(Some(&bad)).unwrap_err();
            assert!(err.contains("require_tls must be true or false"), "{bad}: {err}");
        }
        let schema = &catalog()["services"][0]["plans"][0]["schemas"]["service_instance"]["create"]["parameters"];
        assert_eq!(schema["properties"]["require_tls"]["type"], "boolean");
        let (p, _) = parse_update(&json!({"require_tls": false})).unwrap();
        assert_eq!(p.unwrap().require_tls, Some(false), "an update's value is kept for the caller to compare");
    }

    #[test]
    fn updates_may_ask_for_a_backup_never_a_restore() {
        assert_eq!(parse_update(&json!({"backup": "now"})).unwrap(), (None, Some("full")));
        let (p, b) = parse_update(&json!({"backup": "diff", "extensions": ["citext"]})).unwrap();
        assert_eq!((p.unwrap().extensions, b), (vec!["citext".to_string()], Some("diff")));
        assert_eq!(parse_update(&json!({"extensions": []})).unwrap(), (Some(Parameters::default()), None));
        assert!(parse_update(&json!({"backup": "yesterday"})).is_err());
        assert!(parse_update(&json!({"restore": {"from": "a"}})).is_err());
    }

    #[test]
    fn catalog_has_both_services_and_schemas() {
        let c = catalog();
        assert_eq!(c["services"].as_array().unwrap().len(), 2);
        assert_eq!(c["services"][0]["plans"].as_array().unwrap().len(), 3);
        assert!(c["services"][0]["plans"][0]["schemas"]["service_instance"]["create"]["parameters"].is_object());
    }
}
