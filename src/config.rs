//! Daemon configuration: a TOML file (every key optional, defaults below) with
//! `PGCELL_*` environment overrides, then command-line flags on top.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

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

/// The etcd endpoints every subcommand takes, comma-separated.
pub const ETCD_ENV: &str = "PGCELL_ETCD_ENDPOINTS";

/// Patroni timing and modes, rendered into each member's bootstrap DCS configuration
/// (so they apply to clusters created afterwards).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct PatroniTiming {
    pub ttl: u32,
    pub loop_wait: u32,
    pub retry_timeout: u32,
    /// Patroni's failsafe mode: primaries ride out an etcd outage (docs/decisions.md).
    pub failsafe_mode: bool,
}

impl Default for PatroniTiming {
    fn default() -> Self {
        // Measured on this stack: failover after kill -9 is about ttl.
        Self { ttl: 10, loop_wait: 1, retry_timeout: 3, failsafe_mode: true }
    }
}

/// Configuration of `pgcell cell`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct CellConfig {
    /// This cell's name: unique in the fleet, a safe name (see `names::is_safe`).
    pub name: String,
    /// Label put on every container, so a deployment's containers can be found (and cleaned) together.
    pub deployment: String,
    /// Address the other cells and the routers reach this cell's members at.
    pub advertise_host: String,
    /// Address PostgreSQL and Patroni listen on (host networking); empty means `advertise_host`.
    pub listen_host: String,
    /// Where the per-cell broker API listens.
    pub api_listen: String,
    pub api_username: String,
    pub api_password: Secret,
    /// Host ports for members, `first-last`; each member takes two (PostgreSQL, Patroni REST).
    pub port_range: String,
    /// Most members this cell runs.
    pub capacity: u32,
    pub zone: String,
    /// One directory per member below this holds its data and Patroni configuration.
    pub data_root: PathBuf,
    pub image: String,
    /// Memory limit of each member container.
    pub memory_mb: u64,
    /// Fleet-wide range the routers' per-instance ports are allocated from.
    pub router_port_range: String,
    /// On SIGTERM, switch this cell's leaders away before stopping its containers.
    pub drain_on_stop: bool,
    /// The etcd endpoints are proxies or load balancers: Patroni must use them
    /// as given instead of the member URLs etcd advertises.
    pub etcd_proxies: bool,
    pub etcd_endpoints: Vec<String>,
    pub patroni: PatroniTiming,
    /// Serve `POST /debug/actors/<kind>/<id>/fail` (fault injection for tests
    /// and game days). Off by default: the endpoint does not exist.
    pub failpoints: bool,
    /// Continuous archiving and base backups (pgBackRest), the same on every cell.
    pub backup: BackupConfig,
    /// TLS and user for etcd (this cell's own user; its members' Patroni uses it too).
    pub etcd_access: EtcdAccess,
    /// PostgreSQL's server certificates: the fleet CA, lifetimes, extra names.
    pub tls: TlsConfig,
    /// A certificate for `api_listen`: HTTPS instead of HTTP.
    pub https: Https,
}

impl Default for CellConfig {
    fn default() -> Self {
        Self {
            name: "cell-1".into(),
            deployment: "default".into(),
            advertise_host: "127.0.0.1".into(),
            listen_host: String::new(),
            api_listen: "127.0.0.1:8441".into(),
            api_username: "containers".into(),
            api_password: "containers".into(),
            port_range: "30000-30999".into(),
            capacity: 32,
            zone: String::new(),
            data_root: "/var/lib/pgcell".into(),
            image: "pgcell/postgres:latest".into(),
            memory_mb: 1024,
            router_port_range: "40000-40999".into(),
            drain_on_stop: true,
            etcd_proxies: false,
            etcd_endpoints: vec!["127.0.0.1:2379".into()],
            patroni: PatroniTiming::default(),
            failpoints: false,
            backup: BackupConfig::default(),
            etcd_access: EtcdAccess::default(),
            tls: TlsConfig::default(),
            https: Https::default(),
        }
    }
}

/// Environment variables that override a key of the cell's configuration.
const CELL_ENV: &[(&str, &str)] = &[
    ("PGCELL_CELL_NAME", "name"),
    ("PGCELL_DEPLOYMENT", "deployment"),
    ("PGCELL_ADVERTISE_HOST", "advertise_host"),
    ("PGCELL_LISTEN_HOST", "listen_host"),
    ("PGCELL_API_LISTEN", "api_listen"),
    ("PGCELL_API_USERNAME", "api_username"),
    ("PGCELL_API_PASSWORD", "api_password"),
    ("PGCELL_PORT_RANGE", "port_range"),
    ("PGCELL_CAPACITY", "capacity"),
    ("PGCELL_ZONE", "zone"),
    ("PGCELL_DATA_ROOT", "data_root"),
    ("PGCELL_IMAGE", "image"),
    ("PGCELL_MEMORY_MB", "memory_mb"),
    ("PGCELL_ROUTER_PORT_RANGE", "router_port_range"),
    ("PGCELL_DRAIN_ON_STOP", "drain_on_stop"),
    ("PGCELL_ETCD_PROXIES", "etcd_proxies"),
    ("PGCELL_FAILPOINTS", "failpoints"),
    ("PGCELL_BACKUP_ENABLED", "backup.enabled"),
    ("PGCELL_BACKUP_REPO_PATH", "backup.repo_path"),
    ("PGCELL_BACKUP_RETENTION_DAYS", "backup.retention_days"),
    ("PGCELL_ARCHIVE_TIMEOUT_SECS", "backup.archive_timeout_secs"),
    ("PGCELL_ARCHIVE_PUSH_QUEUE_MAX", "backup.archive_push_queue_max"),
    ("PGCELL_BACKUP_REFRESH_SECS", "backup.refresh_secs"),
    ("PGCELL_BACKUP_CHECK_EVERY_SECS", "backup.check_every_secs"),
    ("PGCELL_BACKUP_REPO_TYPE", "backup.repo_type"),
    ("PGCELL_BACKUP_DELETED_KEEP_SECS", "backup.deleted_keep_secs"),
    ("PGCELL_BACKUP_CIPHER_PASS", "backup.cipher_pass"),
    ("PGCELL_S3_ENDPOINT", "backup.s3.endpoint"),
    ("PGCELL_S3_PORT", "backup.s3.port"),
    ("PGCELL_S3_BUCKET", "backup.s3.bucket"),
    ("PGCELL_S3_REGION", "backup.s3.region"),
    ("PGCELL_S3_URI_STYLE", "backup.s3.uri_style"),
    ("PGCELL_S3_PATH", "backup.s3.path"),
    ("PGCELL_S3_CA_FILE", "backup.s3.ca_file"),
    ("PGCELL_S3_KEY", "backup.s3.key"),
    ("PGCELL_S3_KEY_SECRET", "backup.s3.key_secret"),
    ("PGCELL_ETCD_CA_FILE", "etcd_access.ca_file"),
    ("PGCELL_ETCD_CERT_FILE", "etcd_access.cert_file"),
    ("PGCELL_ETCD_KEY_FILE", "etcd_access.key_file"),
    ("PGCELL_ETCD_USERNAME", "etcd_access.username"),
    ("PGCELL_ETCD_PASSWORD", "etcd_access.password"),
    ("PGCELL_TLS_CA_CERT_FILE", "tls.ca_cert_file"),
    ("PGCELL_TLS_CA_KEY_FILE", "tls.ca_key_file"),
    ("PGCELL_TLS_CERT_DAYS", "tls.cert_days"),
    ("PGCELL_TLS_RENEW_BEFORE_DAYS", "tls.renew_before_days"),
    ("PGCELL_TLS_CERT_SECS", "tls.cert_secs"),
    ("PGCELL_TLS_RENEW_BEFORE_SECS", "tls.renew_before_secs"),
    ("PGCELL_TLS_CHECK_EVERY_SECS", "tls.check_every_secs"),
    ("PGCELL_TLS_EXTRA_NAMES", "tls.extra_names"),
    (HTTPS_CERT_ENV, "https.cert_file"),
    (HTTPS_KEY_ENV, "https.key_file"),
    (ETCD_ENV, "etcd_endpoints"),
];

const HTTPS_CERT_ENV: &str = "PGCELL_HTTPS_CERT_FILE";
const HTTPS_KEY_ENV: &str = "PGCELL_HTTPS_KEY_FILE";

impl CellConfig {
    pub fn load(path: Option<&Path>) -> anyhow::Result<Self> {
        let cfg: Self = load_layered(path, CELL_ENV, &|k| std::env::var(k).ok())?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        if !crate::names::is_safe(&self.name) {
            bail!("cell name {:?} is not a safe name: use letters, digits, '-' or '_' (at most 63)", self.name);
        }
        let (first, last) = self.ports()?;
        if last < first + 1 {
            bail!("port_range {:?} holds no member (each takes two ports)", self.port_range);
        }
        parse_port_range(&self.router_port_range).context("router_port_range")?;
        if self.etcd_endpoints.is_empty() {
            bail!("no etcd endpoints: set etcd_endpoints, {ETCD_ENV} or --etcd");
        }
        self.etcd_access.validate()?;
        self.https.validate()?;
        self.backup.validate()?;
        self.tls.validate()
    }

    /// The port range as `(first, last)`, inclusive.
    pub fn ports(&self) -> anyhow::Result<(u16, u16)> {
        parse_port_range(&self.port_range)
    }

    pub fn listen_host(&self) -> &str {
        if self.listen_host.is_empty() { &self.advertise_host } else { &self.listen_host }
    }
}

/// Configuration of `pgcell router`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RouterConfig {
    pub name: String,
    /// Address clients reach this router at (handed out in credentials).
    pub advertise_host: String,
    /// Address the router ports listen on.
    pub listen_host: String,
    /// Health, `/debug/` and `/metrics`.
    pub http_listen: String,
    pub username: String,
    /// Empty: a random password is generated at start, so `/debug` and `/metrics` are never open.
    pub password: Secret,
    /// How long the last table is kept while etcd is unreachable. It matches the etcd outage
    /// pgcell rides out (30 s, Patroni's failsafe mode keeps the primaries) plus the time etcd
    /// needs to elect itself and the watches to resume (docs/decisions.md).
    pub grace_ms: u64,
    /// Longest time new connections are held while a new lock holder finishes
    /// its promotion (until its Patroni says it is writable); then they go to
    /// it anyway. 0 routes to the lock holder at once.
    pub promote_wait_ms: u64,
    /// Threads of the data path.
    pub data_threads: usize,
    pub etcd_endpoints: Vec<String>,
    /// Serve `POST /debug/actors/router_table/routes/fail` (fault injection). Off by default.
    pub failpoints: bool,
    pub etcd_access: EtcdAccess,
}

impl Default for RouterConfig {
    fn default() -> Self {
        Self {
            name: "router-1".into(),
            advertise_host: "127.0.0.1".into(),
            listen_host: "127.0.0.1".into(),
            http_listen: "127.0.0.1:8440".into(),
            username: "admin".into(),
            password: Secret::default(),
            grace_ms: 35_000,
            promote_wait_ms: 5_000,
            data_threads: 2,
            etcd_endpoints: vec!["127.0.0.1:2379".into()],
            failpoints: false,
            etcd_access: EtcdAccess::default(),
        }
    }
}

const ROUTER_ENV: &[(&str, &str)] = &[
    ("PGCELL_ROUTER_NAME", "name"),
    ("PGCELL_ADVERTISE_HOST", "advertise_host"),
    ("PGCELL_LISTEN_HOST", "listen_host"),
    ("PGCELL_HTTP_LISTEN", "http_listen"),
    ("PGCELL_USERNAME", "username"),
    ("PGCELL_PASSWORD", "password"),
    ("PGCELL_GRACE_MS", "grace_ms"),
    ("PGCELL_PROMOTE_WAIT_MS", "promote_wait_ms"),
    ("PGCELL_DATA_THREADS", "data_threads"),
    ("PGCELL_FAILPOINTS", "failpoints"),
    ("PGCELL_ETCD_CA_FILE", "etcd_access.ca_file"),
    ("PGCELL_ETCD_CERT_FILE", "etcd_access.cert_file"),
    ("PGCELL_ETCD_KEY_FILE", "etcd_access.key_file"),
    ("PGCELL_ETCD_USERNAME", "etcd_access.username"),
    ("PGCELL_ETCD_PASSWORD", "etcd_access.password"),
    (ETCD_ENV, "etcd_endpoints"),
];

impl RouterConfig {
    pub fn load(path: Option<&Path>) -> anyhow::Result<Self> {
        let cfg: Self = load_layered(path, ROUTER_ENV, &|k| std::env::var(k).ok())?;
        if !crate::names::is_safe(&cfg.name) {
            bail!("router name {:?} is not a safe name", cfg.name);
        }
        if cfg.etcd_endpoints.is_empty() {
            bail!("no etcd endpoints: set etcd_endpoints, {ETCD_ENV} or --etcd");
        }
        cfg.etcd_access.validate()?;
        Ok(cfg)
    }
}

/// Configuration of `pgcell broker`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct BrokerConfig {
    pub name: String,
    pub listen: String,
    pub username: String,
    /// Required: the platform's broker password.
    pub password: Secret,
    /// Host handed out in credentials; empty: the first registered router's address.
    pub router_host: String,
    /// Fleet-wide range router ports are allocated from (same as the cells').
    pub router_port_range: String,
    /// An operation still in progress after this long fails.
    pub operation_timeout_secs: u64,
    /// A cell lost this long has its members replaced on other cells (0: never).
    pub replace_after_secs: u64,
    /// An operation that finds no room for its members keeps looking this
    /// long (from its start) before it fails: a cell may be registering, or a
    /// deprovision freeing slots.
    pub placement_wait_secs: u64,
    pub etcd_endpoints: Vec<String>,
    pub etcd_access: EtcdAccess,
    /// The fleet CA the broker verifies instances with and hands out in
    /// credentials (only `ca_cert_file`/`ca_key_file` matter here).
    pub tls: TlsConfig,
    /// A certificate for `listen`: HTTPS instead of HTTP.
    pub https: Https,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        Self {
            name: "broker-1".into(),
            listen: "127.0.0.1:8080".into(),
            username: "broker".into(),
            password: Secret::default(),
            router_host: String::new(),
            router_port_range: "40000-40999".into(),
            operation_timeout_secs: 900,
            replace_after_secs: 300,
            placement_wait_secs: 15,
            etcd_endpoints: vec!["127.0.0.1:2379".into()],
            etcd_access: EtcdAccess::default(),
            tls: TlsConfig::default(),
            https: Https::default(),
        }
    }
}

const BROKER_ENV: &[(&str, &str)] = &[
    ("PGCELL_BROKER_NAME", "name"),
    ("PGCELL_BROKER_LISTEN", "listen"),
    ("PGCELL_USERNAME", "username"),
    ("PGCELL_PASSWORD", "password"),
    ("PGCELL_ROUTER_HOST", "router_host"),
    ("PGCELL_ROUTER_PORT_RANGE", "router_port_range"),
    ("PGCELL_OPERATION_TIMEOUT_SECS", "operation_timeout_secs"),
    ("PGCELL_REPLACE_AFTER_SECS", "replace_after_secs"),
    ("PGCELL_PLACEMENT_WAIT_SECS", "placement_wait_secs"),
    ("PGCELL_ETCD_CA_FILE", "etcd_access.ca_file"),
    ("PGCELL_ETCD_CERT_FILE", "etcd_access.cert_file"),
    ("PGCELL_ETCD_KEY_FILE", "etcd_access.key_file"),
    ("PGCELL_ETCD_USERNAME", "etcd_access.username"),
    ("PGCELL_ETCD_PASSWORD", "etcd_access.password"),
    ("PGCELL_TLS_CA_CERT_FILE", "tls.ca_cert_file"),
    ("PGCELL_TLS_CA_KEY_FILE", "tls.ca_key_file"),
    (HTTPS_CERT_ENV, "https.cert_file"),
    (HTTPS_KEY_ENV, "https.key_file"),
    (ETCD_ENV, "etcd_endpoints"),
];

impl BrokerConfig {
    pub fn load(path: Option<&Path>) -> anyhow::Result<Self> {
        let cfg: Self = load_layered(path, BROKER_ENV, &|k| std::env::var(k).ok())?;
        if cfg.password.is_empty() {
            bail!("the broker needs a password: set `password` in its config or PGCELL_PASSWORD");
        }
        parse_port_range(&cfg.router_port_range).context("router_port_range")?;
        if cfg.etcd_endpoints.is_empty() {
            bail!("no etcd endpoints: set etcd_endpoints, {ETCD_ENV} or --etcd");
        }
        cfg.etcd_access.validate()?;
        cfg.tls.validate()?;
        cfg.https.validate()?;
        Ok(cfg)
    }
}

pub fn parse_port_range(s: &str) -> anyhow::Result<(u16, u16)> {
    let parse = || -> Option<(u16, u16)> {
        let (a, b) = s.split_once('-')?;
        let (a, b) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
        (a > 0 && a <= b).then_some((a, b))
    };
    parse().with_context(|| format!("port range {s:?} is not of the form FIRST-LAST (e.g. 30000-30999)"))
}

/// Splits a comma-separated endpoint list, dropping blanks.
pub fn split_endpoints(s: &str) -> Vec<String> {
    s.split(',').map(str::trim).filter(|e| !e.is_empty()).map(String::from).collect()
}

/// Reads the TOML file (if any), applies the environment overrides, then
/// deserializes with defaults for whatever is still missing. An override is
/// parsed by the type of its field (read from the defaults), never guessed from
/// its text: `PGCELL_API_PASSWORD=123456` is a string, `PGCELL_CAPACITY=x` an error.
pub fn load_layered<T: serde::de::DeserializeOwned + Serialize + Default>(
    path: Option<&Path>,
    overrides: &[(&str, &str)],
    env: &dyn Fn(&str) -> Option<String>,
) -> anyhow::Result<T> {
    let mut table = match path {
        Some(p) => {
            let text =
                std::fs::read_to_string(p).with_context(|| format!("cannot read config file {}", p.display()))?;
            toml::from_str::<toml::Table>(&text)
                .with_context(|| format!("config file {} is not valid TOML", p.display()))?
        }
        None => toml::Table::new(),
    };
    let shape = toml::Table::try_from(T::default()).context("the default configuration is not a table")?;
    for (var, key) in overrides {
        if let Some(v) = env(var) {
            // `section.key` overrides a key of a nested table (e.g. `backup.repo_path`).
            let (path, leaf) = key.rsplit_once('.').map_or((vec![], *key), |(p, l)| (p.split('.').collect(), l));
            let (mut dst, mut like) = (&mut table, Some(&shape));
            for part in path {
                like = like.and_then(|t| t.get(part)).and_then(toml::Value::as_table);
                let sub = dst.entry(part).or_insert_with(|| toml::Value::Table(toml::Table::new()));
                dst =
                    sub.as_table_mut().with_context(|| format!("{var}: `{part}` in the config file is not a table"))?;
            }
            let value = typed_override(var, &v, like.and_then(|t| t.get(leaf)))?;
            dst.insert(leaf.to_string(), value);
        }
    }
    toml::Value::Table(table).try_into().context("invalid configuration (file or PGCELL_* environment)")
}

/// `text` as a value of the same type as `like` (the field's default).
fn typed_override(var: &str, text: &str, like: Option<&toml::Value>) -> anyhow::Result<toml::Value> {
    let bad = |what: &str| anyhow::anyhow!("{var}={text:?} is not {what}");
    Ok(match like {
        Some(toml::Value::Boolean(_)) => {
            toml::Value::Boolean(text.trim().parse().map_err(|_| bad("a boolean (true or false)"))?)
        }
        Some(toml::Value::Integer(_)) => toml::Value::Integer(text.trim().parse().map_err(|_| bad("an integer"))?),
        Some(toml::Value::Float(_)) => toml::Value::Float(text.trim().parse().map_err(|_| bad("a number"))?),
        Some(toml::Value::Array(_)) => {
            toml::Value::Array(split_endpoints(text).into_iter().map(toml::Value::String).collect())
        }
        Some(toml::Value::String(_)) | None => toml::Value::String(text.to_string()),
        Some(_) => return Err(bad("settable from the environment (use the config file)")),
    })
}

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
