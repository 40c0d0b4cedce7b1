//! A daemon's registration (cells, routers): a record under a lease, kept
//! alive, and written again with a new lease whenever the old one is lost
//! (etcd restart, partition).

use std::time::Duration;

use anyhow::Context;
use etcd_client::{Client, PutOptions};

use crate::backoff::Backoff;

/// Lease TTL: how long after a daemon dies the fleet notices it.
pub const LEASE_TTL_SECS: i64 = 10;

/// Runs until the process ends.
pub async fn run(mut client: Client, key: String, value: Vec<u8>) {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(3));
    loop {
        match register_and_keep_alive(&mut client, &key, &value, &mut backoff).await {
            Ok(()) => tracing::warn!(%key, "lease lost; registering again"),
            Err(e) => tracing::warn!(%key, error = %format!("{e:#}"), "registration failed; retrying"),
        }
        tokio::time::sleep(backoff.next_delay()).await;
    }
}

async fn register_and_keep_alive(
    client: &mut Client,
    key: &str,
    value: &[u8],
    backoff: &mut Backoff,
) -> anyhow::Result<()> {
    let lease = client.lease_grant(LEASE_TTL_SECS, None).await.context("lease grant")?.id();
    client.put(key, value, Some(PutOptions::new().with_lease(lease))).await.context("put record")?;
    tracing::info!(%key, lease, "registered in etcd");
    backoff.reset();
    let (mut keeper, mut responses) = client.lease_keep_alive(lease).await.context("lease keep-alive")?;
    let mut tick = tokio::time::interval(Duration::from_secs(LEASE_TTL_SECS as u64 / 3));
    loop {
        tick.tick().await;
        keeper.keep_alive().await.context("send keep-alive")?;
        match tokio::time::timeout(Duration::from_secs(3), responses.message()).await {
            Ok(Ok(Some(r))) if r.ttl() > 0 => {}
            Ok(Ok(Some(_))) => return Ok(()),
            Ok(Ok(None)) => anyhow::bail!("keep-alive stream ended"),
            Ok(Err(e)) => return Err(e).context("keep-alive"),
            Err(_) => anyhow::bail!("keep-alive unanswered"),
        }
    }
}
