//! Presence and type of every request field the OSB spec defines, checked
//! before anything is looked up or changed. Unknown fields are ignored, as the
//! spec asks; a JSON `null` or an empty object counts as absent for optional
//! fields (platforms written in Go send `"maintenance_info": {}` for "none").

use serde_json::{Map, Value};

use crate::http::osb::OsbError;

#[derive(Clone, Copy, Debug)]
pub enum Kind {
    /// Any string.
    Str,
    /// A string that is not empty.
    NonEmpty,
    /// A JSON object, whose own fields are checked with the given list.
    Object(&'static [Field]),
}

/// A field: name, type, required.
#[derive(Clone, Copy, Debug)]
pub struct Field(pub &'static str, pub Kind, pub bool);

const MAINTENANCE_INFO: &[Field] = &[Field("version", Kind::NonEmpty, true), Field("description", Kind::Str, false)];

pub const PROVISION: &[Field] = &[
    Field("service_id", Kind::NonEmpty, true),
    Field("plan_id", Kind::NonEmpty, true),
    Field("organization_guid", Kind::NonEmpty, true),
    Field("space_guid", Kind::NonEmpty, true),
    Field("context", Kind::Object(&[]), false),
    Field("parameters", Kind::Object(&[]), false),
    Field("maintenance_info", Kind::Object(MAINTENANCE_INFO), false),
];

pub const UPDATE: &[Field] = &[
    Field("service_id", Kind::NonEmpty, true),
    Field("plan_id", Kind::NonEmpty, false),
    Field("context", Kind::Object(&[]), false),
    Field("parameters", Kind::Object(&[]), false),
    Field(
        "previous_values",
        Kind::Object(&[
            Field("service_id", Kind::NonEmpty, false),
            Field("plan_id", Kind::NonEmpty, false),
            Field("organization_id", Kind::NonEmpty, false),
            Field("space_id", Kind::NonEmpty, false),
            Field("maintenance_info", Kind::Object(MAINTENANCE_INFO), false),
        ]),
        false,
    ),
    Field("maintenance_info", Kind::Object(MAINTENANCE_INFO), false),
];

pub const BIND: &[Field] = &[
    Field("service_id", Kind::NonEmpty, true),
    Field("plan_id", Kind::NonEmpty, true),
    Field("context", Kind::Object(&[]), false),
    Field("app_guid", Kind::NonEmpty, false),
    Field(
        "bind_resource",
        Kind::Object(&[Field("app_guid", Kind::NonEmpty, false), Field("route", Kind::Str, false)]),
        false,
    ),
    Field("parameters", Kind::Object(&[]), false),
];

/// Checks `body` (the whole request body) against `fields`.
pub fn check(body: &Value, fields: &[Field]) -> Result<(), OsbError> {
    let obj = body.as_object().ok_or_else(|| OsbError::bad_request("the request body must be a JSON object"))?;
    check_object("", obj, fields)
}

fn check_object(path: &str, obj: &Map<String, Value>, fields: &[Field]) -> Result<(), OsbError> {
    for Field(name, kind, required) in fields {
        let at = format!("{path}{name}");
        let value = obj.get(*name).filter(|v| !v.is_null() && v.as_object().is_none_or(|o| !o.is_empty()));
        let Some(v) = value else {
            if *required {
                return Err(OsbError::bad_request(format!("{at} is required ({})", describe(*kind))));
            }
            continue;
        };
        match kind {
            Kind::Str if !v.is_string() => return Err(wrong(&at, *kind)),
            Kind::NonEmpty if v.as_str().is_none_or(str::is_empty) => return Err(wrong(&at, *kind)),
            Kind::Object(inner) => {
                let o = v.as_object().ok_or_else(|| wrong(&at, *kind))?;
                check_object(&format!("{at}."), o, inner)?;
            }
            _ => {}
        }
    }
    Ok(())
}

fn describe(kind: Kind) -> &'static str {
    match kind {
        Kind::Str => "a string",
        Kind::NonEmpty => "a non-empty string",
        Kind::Object(_) => "a JSON object",
    }
}

fn wrong(at: &str, kind: Kind) -> OsbError {
    OsbError::bad_request(format!("{at} must be {}", describe(kind)))
}

/// A query parameter that must be present and not empty.
pub fn required_query<'a>(q: &'a std::collections::HashMap<String, String>, name: &str) -> Result<&'a str, OsbError> {
    match q.get(name).map(String::as_str) {
        Some(v) if !v.is_empty() => Ok(v),
        _ => Err(OsbError::bad_request(format!("query parameter {name} is required (a non-empty string)"))),
    }
}

/// A query parameter that, if present, must not be empty.
pub fn optional_query<'a>(
    q: &'a std::collections::HashMap<String, String>,
    name: &str,
) -> Result<Option<&'a str>, OsbError> {
    match q.get(name).map(String::as_str) {
        Some("") => Err(OsbError::bad_request(format!("query parameter {name}, if present, must not be empty"))),
        v => Ok(v),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn err(body: Value, fields: &[Field]) -> String {
        check(&body, fields).unwrap_err().description
    }

    #[test]
    fn provision_needs_org_and_space_and_typed_fields() {
        let good = json!({"service_id": "s", "plan_id": "p", "organization_guid": "o", "space_guid": "sp"});
        check(&good, PROVISION).unwrap();
        let mut with_nulls = good.clone();
        with_nulls["context"] = Value::Null;
        with_nulls["maintenance_info"] = json!({});
        with_nulls["unknown"] = json!(3);
        check(&with_nulls, PROVISION).unwrap();
        for (field, value, says) in [
            ("organization_guid", Value::Null, "organization_guid is required"),
            ("space_guid", json!(""), "space_guid must be a non-empty string"),
            ("context", json!("x"), "context must be a JSON object"),
            ("parameters", json!([1]), "parameters must be a JSON object"),
            ("maintenance_info", json!(1), "maintenance_info must be a JSON object"),
            ("maintenance_info", json!({"description": "x"}), "maintenance_info.version is required"),
            ("service_id", json!(7), "service_id must be a non-empty string"),
        ] {
            let mut b = good.clone();
            b[field] = value;
            assert!(err(b, PROVISION).contains(says), "{field}: {}", says);
        }
        assert!(err(json!([1]), PROVISION).contains("must be a JSON object"));
    }

    #[test]
    fn bind_and_update_fields() {
        let good = json!({"service_id": "s", "plan_id": "p"});
        check(&good, BIND).unwrap();
        for (field, value, says) in [
            ("app_guid", json!(5), "app_guid must be a non-empty string"),
            ("bind_resource", json!("a"), "bind_resource must be a JSON object"),
            ("bind_resource", json!({"app_guid": 1}), "bind_resource.app_guid must be"),
            ("bind_resource", json!({"route": 1}), "bind_resource.route must be a string"),
            ("context", json!(true), "context must be a JSON object"),
        ] {
            let mut b = good.clone();
            b[field] = value;
            assert!(err(b, BIND).contains(says), "{field}");
        }
        check(&json!({"service_id": "s"}), UPDATE).unwrap();
        assert!(
            err(json!({"service_id": "s", "previous_values": {"plan_id": 3}}), UPDATE)
                .contains("previous_values.plan_id must be")
        );
        assert!(err(json!({"plan_id": "p"}), UPDATE).contains("service_id is required"));
    }

    #[test]
    fn query_parameters() {
        let q: std::collections::HashMap<String, String> =
            [("a".to_string(), "".to_string()), ("b".to_string(), "x".to_string())].into();
        assert!(required_query(&q, "a").is_err());
        assert!(required_query(&q, "c").is_err());
        assert_eq!(required_query(&q, "b").unwrap(), "x");
        assert!(optional_query(&q, "a").is_err());
        assert_eq!(optional_query(&q, "c").unwrap(), None);
    }
}
