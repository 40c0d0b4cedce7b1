//! The prefix watch every daemon uses, against a real etcd: it re-reads
//! everything when its revision was compacted while it was away, and notices a
//! watch that fell silent.

mod common;

use std::time::Duration;

use futures::StreamExt;
use pgcell::etcd::watch::{WatchEvent, watch_prefix};

async fn next(rx: &mut futures::channel::mpsc::UnboundedReceiver<WatchEvent>, secs: u64) -> WatchEvent {
    tokio::time::timeout(Duration::from_secs(secs), rx.next()).await.expect("an event in time").expect("stream open")
}

/// Skips events until one matches.
async fn until(
    rx: &mut futures::channel::mpsc::UnboundedReceiver<WatchEvent>,
    secs: u64,
    f: impl Fn(&WatchEvent) -> bool,
) -> WatchEvent {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now()).as_secs().max(1);
        let ev = next(rx, left).await;
        if f(&ev) {
            return ev;
        }
        assert!(tokio::time::Instant::now() < deadline, "no matching event; last {ev:?}");
    }
}

#[tokio::test]
async fn a_compacted_revision_means_a_full_read_again() {
    let etcd = common::Etcd::start();
    let mut c = etcd.client().await;
    c.put("/w/a", "1", None).await.unwrap();
    // The watcher reaches etcd through a link the test can cut.
    let mut link = common::EtcdLink::new(&etcd.endpoint);
    let through = etcd_client::Client::connect([format!("127.0.0.1:{}", link.port)], None).await.unwrap();
    let mut rx = watch_prefix(through, "/w/".into());
    assert!(matches!(next(&mut rx, 5).await, WatchEvent::Snapshot { ref kvs, .. } if kvs.len() == 1));
    until(&mut rx, 5, |e| *e == WatchEvent::Live).await;

    // While the watcher is cut off, history moves on and is compacted.
    link.cut();
    until(&mut rx, 10, |e| matches!(e, WatchEvent::Interrupted { .. })).await;
    c.put("/w/b", "2", None).await.unwrap();
    let rev = c.put("/w/c", "3", None).await.unwrap().header().unwrap().revision();
    c.compact(rev, None).await.unwrap();
    link.up();

    let ev = until(&mut rx, 20, |e| matches!(e, WatchEvent::Snapshot { .. })).await;
    let WatchEvent::Snapshot { kvs, .. } = ev else { unreachable!() };
    let keys: Vec<&str> = kvs.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, ["/w/a", "/w/b", "/w/c"], "a full read after the compaction");
    c.put("/w/d", "4", None).await.unwrap();
    until(&mut rx, 10, |e| matches!(e, WatchEvent::Put { key, .. } if key == "/w/d")).await;
}

#[tokio::test]
async fn a_silent_watch_is_noticed_and_replaced() {
    let etcd = common::Etcd::start();
    let mut rx = watch_prefix(etcd.client().await, "/s/".into());
    assert!(matches!(next(&mut rx, 5).await, WatchEvent::Snapshot { .. }));
    until(&mut rx, 5, |e| *e == WatchEvent::Live).await;

    // A frozen etcd keeps the connection open but answers nothing.
    etcd.signal("STOP");
    let ev = until(&mut rx, 20, |e| matches!(e, WatchEvent::Interrupted { .. })).await;
    etcd.signal("CONT");
    assert!(format!("{ev:?}").contains("silent"), "{ev:?}");
    until(&mut rx, 20, |e| *e == WatchEvent::Live).await;
    let mut c = etcd.client().await;
    c.put("/s/x", "1", None).await.unwrap();
    until(&mut rx, 10, |e| matches!(e, WatchEvent::Put { key, .. } if key == "/s/x")).await;
}
