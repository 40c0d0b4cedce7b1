//! `pgcell broker`'s configuration.

use std::path::Path;

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

use super::cell::{HTTPS_CERT_ENV, HTTPS_KEY_ENV};
use super::*;

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

pub(super) const BROKER_ENV: Overrides = &[("", BROKER_VARS), ("etcd_access", etcd_access::ENV)];

const BROKER_VARS: &[(&str, &str)] = &[
    ("PGCELL_BROKER_NAME", "name"),
    ("PGCELL_BROKER_LISTEN", "listen"),
    ("PGCELL_USERNAME", "username"),
    ("PGCELL_PASSWORD", "password"),
    ("PGCELL_ROUTER_HOST", "router_host"),
    ("PGCELL_ROUTER_PORT_RANGE", "router_port_range"),
    ("PGCELL_OPERATION_TIMEOUT_SECS", "operation_timeout_secs"),
    ("PGCELL_REPLACE_AFTER_SECS", "replace_after_secs"),
    ("PGCELL_PLACEMENT_WAIT_SECS", "placement_wait_secs"),
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
