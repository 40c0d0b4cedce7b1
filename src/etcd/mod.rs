//! etcd, the only shared state: connecting, pgcell's key layout and typed
//! operations on it, and prefix watches that survive etcd restarts.

pub mod ca;
pub mod fleet;
pub mod keys;
pub mod lease_reaper;
pub mod lock;
pub mod registration;
pub mod roles;
pub mod store;
pub mod watch;

use std::time::Duration;

use anyhow::Context;
pub use etcd_client::Client;
use etcd_client::{Certificate, ConnectOptions, Identity, TlsOptions};

use crate::config::EtcdAccess;

/// Connects to etcd with bounded timeouts, so a daemon that cannot reach etcd
/// says so instead of hanging; over TLS and as the configured user when
/// `access` says so.
pub async fn connect(endpoints: &[String], access: &EtcdAccess) -> anyhow::Result<Client> {
    let mut opts = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(3))
        .with_timeout(Duration::from_secs(5))
        .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2))
        .with_keep_alive_while_idle(true);
    if let Some(tls) = tls_options(access)? {
        opts = opts.with_tls(tls);
    }
    if let Some((user, password)) = access.user() {
        // etcd's simple tokens expire (5 min idle by default): a long-lived daemon must renew.
        opts = opts.with_user(user, password).with_auto_token_refresh(true);
    }
    let urls = access.urls(endpoints);
    Client::connect(&urls, Some(opts)).await.with_context(|| format!("cannot connect to etcd at {}", urls.join(",")))
}

/// The CA (and client certificate) as tonic wants them; `None` without a CA.
fn tls_options(access: &EtcdAccess) -> anyhow::Result<Option<TlsOptions>> {
    let Some(ca) = &access.ca_file else { return Ok(None) };
    crate::tls::install_crypto_provider();
    let read = |p: &std::path::Path| std::fs::read(p).with_context(|| format!("cannot read {}", p.display()));
    let mut tls = TlsOptions::new().ca_certificate(Certificate::from_pem(read(ca)?));
    if let (Some(cert), Some(key)) = (&access.cert_file, &access.key_file) {
        tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
    }
    Ok(Some(tls))
}
