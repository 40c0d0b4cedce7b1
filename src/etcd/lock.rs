//! A lock in etcd: a key created only if absent, on a short lease kept alive
//! while the holder lives. A holder that dies loses it when the lease expires;
//! the key's value names the holder (for operators and tests).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use etcd_client::{Client, Compare, CompareOp, PutOptions, Txn, TxnOp};

pub struct LeaseLock {
    key: String,
    lease: i64,
    held: Arc<AtomicBool>,
    keeper: tokio::task::AbortHandle,
}

impl LeaseLock {
    /// Takes the lock if nobody holds it; `ttl_secs` is how long it outlives a holder that died.
    pub async fn take(etcd: &mut Client, key: &str, owner: &str, ttl_secs: i64) -> anyhow::Result<Option<Self>> {
        // Held by another: answered without creating a lease.
        if etcd.get(key, None).await.context("etcd get (lock)")?.count() > 0 {
            return Ok(None);
        }
        let lease = etcd.lease_grant(ttl_secs, None).await.context("lease for a lock")?.id();
        let txn = Txn::new().when([Compare::create_revision(key, CompareOp::Equal, 0)]).and_then([TxnOp::put(
            key,
            owner,
            Some(PutOptions::new().with_lease(lease)),
        )]);
        if !etcd.txn(txn).await.context("etcd txn (lock)")?.succeeded() {
            let _ = etcd.lease_revoke(lease).await;
            return Ok(None);
        }
        let held = Arc::new(AtomicBool::new(true));
        let (mut c, flag) = (etcd.clone(), Arc::clone(&held));
        let every = Duration::from_millis((ttl_secs as u64 * 1000 / 3).max(200));
        let keeper = tokio::spawn(async move {
            if let Ok((mut keeper, mut replies)) = c.lease_keep_alive(lease).await {
                loop {
                    tokio::time::sleep(every).await;
                    match (keeper.keep_alive().await, replies.message().await) {
                        // A reply with ttl 0: the lease is gone (expired while etcd was away).
                        (Ok(()), Ok(Some(r))) if r.ttl() > 0 => {}
                        _ => break,
                    }
                }
            }
            flag.store(false, Ordering::SeqCst);
        })
        .abort_handle();
        Ok(Some(Self { key: key.to_string(), lease, held, keeper }))
    }

    /// False once the lease could not be kept alive: the lock may be someone else's now.
    pub fn held(&self) -> bool {
        self.held.load(Ordering::SeqCst)
    }

    pub async fn release(self, etcd: &mut Client) {
        self.keeper.abort();
        // Revoking the lease deletes the key, and only if it is still ours.
        if let Err(e) = etcd.lease_revoke(self.lease).await {
            tracing::warn!(key = %self.key, error = %e, "cannot release a lock; it expires with its lease");
        }
    }
}
