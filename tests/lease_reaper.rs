//! The lease reaper against a real etcd: a key whose keepalives stop is gone
//! when its lease expires (not up to half a second later, at etcd's sweep),
//! never before; a lease still kept alive, even one that came close to expiring,
//! is never touched.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::etcd::Etcd;
use common::lease::{Kept, deletions, secs_after};
use etcd_client::Client;
use pgcell::etcd::lease_reaper;

const TTL: i64 = 3;
/// Past the expiry, what the reaper may take: its fast poll (25 ms), the reads
/// and the revoke, and the watch bringing the delete here; etcd's own sweep
/// would take anything up to 500 ms.
const LATE_BOUND: Duration = Duration::from_millis(150);

#[tokio::test]
async fn expired_leases_are_revoked_at_expiry_and_live_ones_never() {
    let etcd = Etcd::start();
    let mut client = Client::connect([etcd.endpoint.as_str()], None).await.unwrap();
    let deleted = deletions(client.clone(), "/service/");
    let revoked = Arc::new(Mutex::new(Vec::new()));
    let mut reapers = Vec::new();
    for i in 0..6 {
        let key = format!("/service/c{i}/leader");
        // Two agents follow every key, as two cells with members of one cluster do.
        for _ in 0..2 {
            let r = revoked.clone();
            let on_revoke = move |lease| r.lock().unwrap().push(lease);
            reapers.push(tokio::spawn(lease_reaper::run(client.clone(), key.clone(), on_revoke)));
        }
    }
    let mut kept = Vec::new();
    for i in 0..6 {
        kept.push(Kept::grant(&mut client, &format!("/service/c{i}/leader"), TTL).await);
    }
    // c0..c3 stop at staggered times (each meets etcd's sweep at another phase);
    // c4 is kept alive throughout; c5 pauses 2.4 s (its TTL reads 0) and resumes.
    let start = Instant::now();
    let stops = [1300, 1700, 2150, 2600].map(Duration::from_millis);
    let end = start + Duration::from_millis(2600) + Duration::from_secs(TTL as u64) + Duration::from_secs(1);
    let mut c5_paused_until = None;
    while Instant::now() < end {
        let now = Instant::now() - start;
        for (i, k) in kept.iter_mut().enumerate() {
            let alive = match i {
                0..=3 => now < stops[i],
                4 => true,
                _ => now < Duration::from_millis(500) || c5_paused_until.is_some_and(|u| now >= u),
            };
            if alive && k.last.1.elapsed() >= Duration::from_millis(400) {
                k.keep_alive().await;
            }
        }
        if c5_paused_until.is_none() && now >= Duration::from_millis(500) {
            c5_paused_until = Some(kept[5].last.1 - start + Duration::from_millis(2400));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let deleted = deleted.lock().unwrap().clone();
    for (i, k) in kept.iter().enumerate().take(4) {
        let key = format!("/service/c{i}/leader");
        let at = *deleted.get(&key).unwrap_or_else(|| panic!("{key} was never deleted"));
        let (earliest, latest) = k.expiry();
        let offset = |t: Instant| format!("{:.3}", secs_after(t, earliest));
        println!("{key}: deleted {} s after the earliest expiry (latest {} s)", offset(at), offset(latest));
        assert!(at >= earliest, "{key} deleted before its lease expired");
        assert!(at <= latest + LATE_BOUND, "{key} deleted {} s after its expiry", offset(at));
        assert!(revoked.lock().unwrap().contains(&k.lease), "{key}'s lease was swept by etcd, not revoked");
    }
    for key in ["/service/c4/leader", "/service/c5/leader"] {
        assert!(!deleted.contains_key(key), "{key} was deleted while its lease was kept alive");
    }
    let mut revoked = revoked.lock().unwrap().clone();
    revoked.sort();
    let n = revoked.len();
    revoked.dedup();
    assert_eq!(n, revoked.len(), "a lease was revoked twice: {revoked:?}");
    assert_eq!(n, 4, "revoked: {revoked:?}");
    for r in reapers {
        r.abort();
    }
}
