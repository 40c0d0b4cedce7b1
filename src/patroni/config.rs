//! Renders a member's Patroni configuration. YAML is a superset of JSON, so the
//! configuration is written as JSON and needs no YAML library.

use serde_json::{Value, json};

use crate::config::{BackupConfig, PatroniTiming};
use crate::etcd::store::{Placement, Secrets};
use crate::pgbackrest::{self, RestoreSpec};

/// Where the member's host directory is mounted inside the container.
pub const MOUNT: &str = "/var/lib/pgcell";

pub struct MemberConfig<'a> {
    pub placement: &'a Placement,
    pub secrets: &'a Secrets,
    pub etcd_hosts: &'a [String],
    /// The hosts are proxies: Patroni must not switch to the URLs etcd advertises.
    pub etcd_proxies: bool,
    pub advertise_host: &'a str,
    pub listen_host: &'a str,
    pub timing: &'a PatroniTiming,
    /// Synchronous replication (the HA plans' default; a single member cannot use it).
    pub synchronous_mode: bool,
    /// Archiving and replicas from the repository; `None`: backups are off.
    pub backup: Option<&'a BackupConfig>,
    /// The cluster is a restore (clone, point in time) of another instance's backup.
    pub restore: Option<&'a RestoreSpec>,
}

impl MemberConfig<'_> {
    pub fn render(&self) -> Value {
        let p = self.placement;
        let s = self.secrets;
        let t = self.timing;
        let password_hba = [
            "local all postgres peer",
            "local all all scram-sha-256",
            "host replication replicator 0.0.0.0/0 scram-sha-256",
            "host replication replicator ::/0 scram-sha-256",
            "host all all 0.0.0.0/0 scram-sha-256",
            "host all all ::/0 scram-sha-256",
        ];
        let mut v = json!({
            "scope": p.scope,
            "namespace": crate::etcd::keys::PATRONI_NAMESPACE,
            "name": p.member,
            "log": {"level": "INFO"},
            "restapi": {
                "listen": format!("{}:{}", self.listen_host, p.api_port),
                "connect_address": format!("{}:{}", self.advertise_host, p.api_port),
                "authentication": {"username": "admin", "password": s.admin},
            },
            "etcd3": {"hosts": self.etcd_hosts, "use_proxies": self.etcd_proxies},
            "bootstrap": {
                "dcs": {
                    "ttl": t.ttl,
                    "loop_wait": t.loop_wait,
                    "retry_timeout": t.retry_timeout,
                    "maximum_lag_on_failover": 1_048_576,
                    "synchronous_mode": self.synchronous_mode,
                    // On: an etcd outage demotes no primary while every member reaches the
                    // others. The image's patch makes a member that still reaches etcd refuse,
                    // so a leader cut off alone still demotes (docs/decisions.md).
                    "failsafe_mode": t.failsafe_mode,
                    "postgresql": {
                        "use_pg_rewind": true,
                        "use_slots": true,
                        "parameters": {
                            "wal_level": "replica",
                            "hot_standby": "on",
                            "wal_log_hints": "on",
                            "max_wal_senders": 10,
                            "max_replication_slots": 10,
                            "wal_keep_size": "128MB",
                        },
                    },
                },
                "initdb": [{"encoding": "UTF8"}, {"locale": "C.UTF-8"}, "data-checksums"],
            },
            "postgresql": {
                "listen": format!("{}:{}", self.listen_host, p.pg_port),
                "connect_address": format!("{}:{}", self.advertise_host, p.pg_port),
                "data_dir": format!("{MOUNT}/pgdata"),
                "bin_dir": "/usr/lib/postgresql/15/bin",
                "pgpass": "/tmp/pgpass",
                "authentication": {
                    "superuser": {"username": "postgres", "password": s.superuser},
                    "replication": {"username": "replicator", "password": s.replication},
                    "rewind": {"username": "rewinder", "password": s.rewind},
                },
                "parameters": {
                    "unix_socket_directories": "/var/run/postgresql",
                    "password_encryption": "scram-sha-256",
                },
                "pg_hba": password_hba,
                // A new replica must not wait for a spread checkpoint (minutes) on the primary.
                "basebackup": [{"checkpoint": "fast"}],
            },
            "tags": {"nofailover": false, "noloadbalance": false, "clonefrom": false, "nosync": false},
        });
        if let Some(b) = self.backup {
            self.add_backup(&mut v, b);
        }
        v
    }

    /// Archiving into the instance's own stanza, WAL and replicas from the
    /// repository, and (for a restore) the bootstrap from the source's stanza.
    fn add_backup(&self, v: &mut Value, b: &BackupConfig) {
        let stanza = &self.placement.instance_id;
        let params = &mut v["postgresql"]["parameters"];
        params["archive_mode"] = "on".into();
        params["archive_command"] = pgbackrest::archive_command(stanza).into();
        params["archive_timeout"] = format!("{}s", b.wal_switch_secs()).into();
        let pg = &mut v["postgresql"];
        pg["recovery_conf"] = json!({"restore_command": pgbackrest::restore_command(stanza, b)});
        // A replica comes from the latest backup plus WAL when one exists (no
        // load on the primary); without one, pgbackrest fails and Patroni
        // takes a base backup from the leader.
        pg["create_replica_methods"] = json!(["pgbackrest", "basebackup"]);
        pg["pgbackrest"] = json!({
            "command": pgbackrest::replica_restore_command(stanza),
            "keep_data": true,
            "no_params": true,
        });
        if let Some(r) = self.restore {
            v["bootstrap"]["method"] = "pgbackrest_restore".into();
            v["bootstrap"]["pgbackrest_restore"] = json!({
                "command": r.command(),
                "no_params": true,
                "recovery_conf": r.recovery_conf(b),
            });
        }
    }
}

/// Instance 1's member on cell a (advertised at 10.0.0.5, listening on every
/// address), default timing, no backups: the rendering tests start from it.
#[cfg(test)]
pub(crate) fn render_sample(s: &Secrets) -> Value {
    let (p, t) = (Placement::sample("1", "a"), PatroniTiming::default());
    let hosts = vec!["127.0.0.1:2379".to_string()];
    MemberConfig {
        placement: &p,
        secrets: s,
        etcd_hosts: &hosts,
        etcd_proxies: false,
        advertise_host: "10.0.0.5",
        listen_host: "0.0.0.0",
        timing: &t,
        synchronous_mode: true,
        backup: None,
        restore: None,
    }
    .render()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn placement() -> Placement {
        Placement::sample("1", "a")
    }

    #[test]
    fn renders_scope_ports_timing_and_password_only_access() {
        let s = Secrets::generate();
        let v = render_sample(&s);
        assert_eq!(v["scope"], "cf-1");
        assert_eq!(v["postgresql"]["connect_address"], "10.0.0.5:30000");
        assert_eq!(v["postgresql"]["listen"], "0.0.0.0:30000");
        assert_eq!(v["restapi"]["connect_address"], "10.0.0.5:30001");
        assert_eq!(v["bootstrap"]["dcs"]["ttl"], 10);
        assert_eq!(v["bootstrap"]["dcs"]["synchronous_mode"], true);
        assert_eq!(v["bootstrap"]["dcs"]["failsafe_mode"], true);
        assert_eq!(v["bootstrap"]["dcs"]["postgresql"]["use_pg_rewind"], true);
        assert_eq!(v["postgresql"]["authentication"]["superuser"]["password"], s.superuser.as_str());
        let hba: Vec<&str> =
            v["postgresql"]["pg_hba"].as_array().unwrap().iter().map(|l| l.as_str().unwrap()).collect();
        assert!(hba.iter().filter(|l| l.starts_with("host")).all(|l| l.ends_with("scram-sha-256")));
        assert!(!hba.iter().any(|l| l.contains("trust")));
        assert!(v["postgresql"]["parameters"].get("archive_mode").is_none(), "backups off: no archiving");
    }

    #[test]
    fn archives_into_its_own_stanza_and_restores_from_the_source() {
        let (p, s) = (placement(), Secrets::generate());
        let (hosts, t, b) = (vec!["127.0.0.1:2379".to_string()], PatroniTiming::default(), BackupConfig::default());
        let r =
            RestoreSpec { source: "src".into(), set: "L".into(), target: pgbackrest::Target::Lsn("0/3000000".into()) };
        let v = MemberConfig {
            placement: &p,
            secrets: &s,
            etcd_hosts: &hosts,
            etcd_proxies: false,
            advertise_host: "h",
            listen_host: "h",
            timing: &t,
            synchronous_mode: true,
            backup: Some(&b),
            restore: Some(&r),
        }
        .render();
        let params = &v["postgresql"]["parameters"];
        assert_eq!(params["archive_mode"], "on");
        assert_eq!(params["archive_command"], "pgbackrest --stanza=1 archive-push %p");
        // The 60 s bound: PostgreSQL switches 5 s before it.
        assert_eq!(params["archive_timeout"], "55s");
        assert_eq!(v["postgresql"]["create_replica_methods"], json!(["pgbackrest", "basebackup"]));
        assert_eq!(v["bootstrap"]["method"], "pgbackrest_restore");
        let boot = &v["bootstrap"]["pgbackrest_restore"];
        assert!(boot["command"].as_str().unwrap().starts_with("pgbackrest --stanza=src "));
        assert_eq!(boot["recovery_conf"]["recovery_target_lsn"], "0/3000000");
        assert!(v["postgresql"]["recovery_conf"]["restore_command"].as_str().unwrap().contains("--stanza=1 "));
    }
}
