//! Daemon configuration: a TOML file (every key optional, defaults in each
//! daemon's module) with `PGCELL_*` environment overrides, then command-line
//! flags on top.

mod backup;
mod etcd_access;
pub use backup::{BackupConfig, S3Config};
pub use etcd_access::EtcdAccess;
mod tls;
pub use tls::TlsConfig;
mod https;
pub use https::Https;
mod secret;
pub use secret::Secret;
mod broker;
mod cell;
mod load;
mod router;
pub use broker::BrokerConfig;
pub use cell::{CellConfig, PatroniTiming};
pub use load::{Overrides, load_layered, parse_port_range, split_endpoints};
pub use router::RouterConfig;
#[cfg(test)]
use {broker::BROKER_ENV, cell::CELL_ENV, router::ROUTER_ENV};

/// The etcd endpoints every subcommand takes, comma-separated.
pub const ETCD_ENV: &str = "PGCELL_ETCD_ENDPOINTS";

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn load(toml_text: &str, env: &[(&str, &str)]) -> anyhow::Result<CellConfig> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("cell.toml");
        std::fs::write(&path, toml_text)?;
        let env: HashMap<String, String> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let cfg: CellConfig = load_layered(Some(&path), CELL_ENV, &|k| env.get(k).cloned())?;
        cfg.validate()?;
        Ok(cfg)
    }

    #[test]
    fn defaults_file_and_env_layer() {
        let cfg = load(
            "name = \"a\"\ncapacity = 4\n[patroni]\nttl = 5\n",
            &[
                ("PGCELL_CAPACITY", "7"),
                ("PGCELL_ETCD_ENDPOINTS", "127.0.0.1:1, 127.0.0.1:2,"),
                ("PGCELL_PORT_RANGE", "31000-31009"),
            ],
        )
        .unwrap();
        assert_eq!(cfg.name, "a");
        assert_eq!(cfg.capacity, 7);
        assert_eq!(cfg.patroni, PatroniTiming { ttl: 5, ..PatroniTiming::default() });
        assert_eq!(cfg.etcd_endpoints, ["127.0.0.1:1", "127.0.0.1:2"]);
        assert_eq!(cfg.ports().unwrap(), (31000, 31009));
        assert_eq!(cfg.listen_host(), "127.0.0.1");
        let cfg = load(
            "[backup]\nretention_days = 3\n",
            &[("PGCELL_ARCHIVE_TIMEOUT_SECS", "10"), ("PGCELL_BACKUP_REPO_PATH", "/r")],
        )
        .unwrap();
        assert_eq!((cfg.backup.retention_days, cfg.backup.archive_timeout_secs), (3, 10));
        assert_eq!(cfg.backup.repo_path, std::path::Path::new("/r"));
        assert_eq!(cfg.backup.full_every_hours, 168, "the rest of the section keeps its defaults");
        let s3 = [("PGCELL_BACKUP_REPO_TYPE", "s3"), ("PGCELL_S3_ENDPOINT", "localhost"), ("PGCELL_S3_PORT", "9443")];
        let err = format!("{:#}", load("", &s3).unwrap_err());
        assert!(err.contains("needs backup.s3.endpoint, bucket, key and key_secret"), "{err}");
        let keys = [
            ("PGCELL_S3_BUCKET", "b"),
            ("PGCELL_S3_KEY", "AKIA1"),
            ("PGCELL_S3_KEY_SECRET", "topsecret"),
            ("PGCELL_BACKUP_CIPHER_PASS", "pass1"),
        ];
        let cfg = load("", &[&s3[..], &keys[..]].concat()).unwrap();
        assert_eq!((cfg.backup.s3.port, cfg.backup.s3.bucket.as_str()), (9443, "b"));
        let shown = format!("{cfg:?}");
        assert!(!shown.contains("topsecret") && !shown.contains("AKIA1") && !shown.contains("pass1"), "{shown}");
    }

    #[test]
    fn overrides_take_the_field_type_not_a_guess() {
        let cfg =
            load("", &[("PGCELL_API_PASSWORD", "123456"), ("PGCELL_CELL_NAME", "1"), ("PGCELL_ZONE", "true")]).unwrap();
        assert_eq!((cfg.api_password.expose(), cfg.name.as_str(), cfg.zone.as_str()), ("123456", "1", "true"));
        let err = format!("{:#}", load("", &[("PGCELL_CAPACITY", "ten")]).unwrap_err());
        assert!(err.contains("PGCELL_CAPACITY=\"ten\" is not an integer"), "{err}");
        let err = format!("{:#}", load("", &[("PGCELL_DRAIN_ON_STOP", "yes")]).unwrap_err());
        assert!(err.contains("is not a boolean"), "{err}");
        let env: HashMap<String, String> = [("PGCELL_PASSWORD", "42"), ("PGCELL_BROKER_NAME", "7")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let b: BrokerConfig = load_layered(None, BROKER_ENV, &|k| env.get(k).cloned()).unwrap();
        assert_eq!((b.password.expose(), b.name.as_str()), ("42", "7"));
        assert!(!b.https.enabled(), "plain HTTP by default");
        let tls = [("PGCELL_HTTPS_CERT_FILE", "/c.pem"), ("PGCELL_HTTPS_KEY_FILE", "/k.pem")];
        let env: HashMap<String, String> = tls.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let b: BrokerConfig = load_layered(None, BROKER_ENV, &|k| env.get(k).cloned()).unwrap();
        assert_eq!((b.https.cert_file.to_str(), b.https.key_file.to_str()), (Some("/c.pem"), Some("/k.pem")));
        let cfg = load("", &tls).unwrap();
        assert_eq!(cfg.https, b.https);
        let err = format!("{:#}", load("", &tls[..1]).unwrap_err());
        assert!(err.contains("https.key_file"), "{err}");
    }

    #[test]
    fn router_promote_wait_from_file_and_env() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("router.toml");
        std::fs::write(&path, "promote_wait_ms = 2500\n").unwrap();
        let none = |_: &str| None;
        let cfg: RouterConfig = load_layered(Some(&path), ROUTER_ENV, &none).unwrap();
        assert_eq!(cfg.promote_wait_ms, 2500);
        let off = |k: &str| (k == "PGCELL_PROMOTE_WAIT_MS").then(|| "0".to_string());
        let cfg: RouterConfig = load_layered(Some(&path), ROUTER_ENV, &off).unwrap();
        assert_eq!(cfg.promote_wait_ms, 0, "the environment wins");
        assert_eq!(RouterConfig::default().promote_wait_ms, 5000);
    }

    #[test]
    fn bad_config_is_explained() {
        let err = load("name = \"a/b\"", &[]).unwrap_err().to_string();
        assert!(err.contains("not a safe name"), "{err}");
        let err = load("", &[("PGCELL_PORT_RANGE", "9-1")]).unwrap_err().to_string();
        assert!(err.contains("FIRST-LAST"), "{err}");
        let err = format!("{:#}", load("nme = 1", &[]).unwrap_err());
        assert!(err.contains("unknown field"), "{err}");
    }
}

#[cfg(test)]
mod example_file {
    #[test]
    fn the_shipped_example_is_the_defaults() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/cell.toml");
        let cfg: super::CellConfig = super::load_layered(Some(&path), &[], &|_| None).unwrap();
        let text = |c: &super::CellConfig| toml::to_string(c).unwrap();
        assert_eq!(text(&cfg), text(&super::CellConfig::default()));
    }
}
