//! etcd, the only shared state: connecting, pgcell's key layout and typed
//! operations on it, and prefix watches that survive etcd restarts.

pub mod fleet;
pub mod keys;
pub mod lock;
pub mod registration;
pub mod store;
pub mod watch;

use std::time::Duration;

use anyhow::Context;
pub use etcd_client::Client;
use etcd_client::ConnectOptions;

/// Connects to etcd with bounded timeouts, so a daemon that cannot reach etcd
/// says so instead of hanging.
pub async fn connect(endpoints: &[String]) -> anyhow::Result<Client> {
    let opts = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(3))
        .with_timeout(Duration::from_secs(5))
        .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2))
        .with_keep_alive_while_idle(true);
    Client::connect(endpoints, Some(opts))
        .await
        .with_context(|| format!("cannot connect to etcd at {}", endpoints.join(",")))
}
