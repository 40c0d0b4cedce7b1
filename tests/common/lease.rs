//! Leases kept alive by hand and the deletes they end in, timed: for the lease
//! reaper's test and its benchmark (`examples/lease_bench.rs` includes this file).
#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use etcd_client::{Client, EventType, LeaseKeepAliveStream, LeaseKeeper, PutOptions, WatchOptions};

/// A key on a lease kept alive by hand: the last keepalive's send and answer times.
pub struct Kept {
    pub lease: i64,
    pub ttl: i64,
    keeper: LeaseKeeper,
    answers: LeaseKeepAliveStream,
    pub last: (Instant, Instant),
}

impl Kept {
    pub async fn grant(client: &mut Client, key: &str, ttl: i64) -> Self {
        let lease = client.lease_grant(ttl, None).await.unwrap().id();
        let t = Instant::now();
        client.put(key, "leader", Some(PutOptions::new().with_lease(lease))).await.unwrap();
        let (keeper, answers) = client.lease_keep_alive(lease).await.unwrap();
        Self { lease, ttl, keeper, answers, last: (t, t) }
    }

    pub async fn keep_alive(&mut self) {
        let sent = Instant::now();
        self.keeper.keep_alive().await.unwrap();
        let answer = self.answers.message().await.unwrap().unwrap();
        assert!(answer.ttl() > 0, "lease {:x} was not renewed", self.lease);
        self.last = (sent, Instant::now());
    }

    /// The lease expires between these two instants (the last renewal's send
    /// and answer, plus the TTL), unless renewed again.
    pub fn expiry(&self) -> (Instant, Instant) {
        let ttl = Duration::from_secs(self.ttl as u64);
        (self.last.0 + ttl, self.last.1 + ttl)
    }
}

/// Every key deleted under `prefix`, with when its delete arrived here.
pub fn deletions(client: Client, prefix: &str) -> Arc<Mutex<HashMap<String, Instant>>> {
    let seen = Arc::new(Mutex::new(HashMap::new()));
    let (s, prefix) = (seen.clone(), prefix.to_string());
    tokio::spawn(async move {
        let mut client = client;
        let mut stream = client.watch(prefix, Some(WatchOptions::new().with_prefix())).await.unwrap();
        while let Ok(Some(resp)) = stream.message().await {
            for ev in resp.events() {
                if ev.event_type() == EventType::Delete {
                    let key = String::from_utf8_lossy(ev.kv().unwrap().key()).into_owned();
                    s.lock().unwrap().insert(key, Instant::now());
                }
            }
        }
    });
    seen
}

/// `t` relative to `base`, in seconds, signed.
pub fn secs_after(t: Instant, base: Instant) -> f64 {
    match t.checked_duration_since(base) {
        Some(d) => d.as_secs_f64(),
        None => -(base - t).as_secs_f64(),
    }
}
