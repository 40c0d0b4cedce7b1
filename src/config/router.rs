//! `pgcell router`'s configuration.

use std::path::Path;

use anyhow::bail;
use serde::{Deserialize, Serialize};

use super::*;

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

pub(super) const ROUTER_ENV: Overrides = &[("", ROUTER_VARS), ("etcd_access", etcd_access::ENV)];

const ROUTER_VARS: &[(&str, &str)] = &[
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
