//! `pgcell cell`'s configuration and the Patroni timing it renders.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

use super::*;

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
    /// Revoke a Patroni leader's lease as soon as it has expired rather than
    /// when etcd next sweeps (every 500 ms): failover up to half a second sooner.
    pub revoke_expired_leader_leases: bool,
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
            revoke_expired_leader_leases: true,
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
pub(super) const CELL_ENV: Overrides = &[("", CELL_VARS), ("etcd_access", etcd_access::ENV)];

const CELL_VARS: &[(&str, &str)] = &[
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
    ("PGCELL_REVOKE_EXPIRED_LEADER_LEASES", "revoke_expired_leader_leases"),
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

pub(super) const HTTPS_CERT_ENV: &str = "PGCELL_HTTPS_CERT_FILE";
pub(super) const HTTPS_KEY_ENV: &str = "PGCELL_HTTPS_KEY_FILE";

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
