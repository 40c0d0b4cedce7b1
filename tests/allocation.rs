//! Allocators racing on real etcd never hand out one port twice.

mod common;

use pgcell::etcd::store::{self, CellPorts, PlaceError, Placed, Placement};

#[tokio::test]
async fn router_port_race_never_duplicates() {
    let etcd = common::Etcd::start();
    let (c1, c2) = (etcd.client().await, etcd.client().await);
    let ids: Vec<String> = (0..30).map(|i| format!("i{i}")).collect();
    let run = |mut c: etcd_client::Client, ids: Vec<String>| async move {
        let mut got = vec![];
        for id in ids {
            got.push((id.clone(), store::ensure_router_port(&mut c, &id, (41000, 41100)).await.unwrap()));
        }
        got
    };
    let mut rev = ids.clone();
    rev.reverse();
    let (a, b) = tokio::join!(tokio::spawn(run(c1, ids.clone())), tokio::spawn(run(c2, rev)));
    let (a, mut b) = (a.unwrap(), b.unwrap());
    b.sort();
    let mut a_sorted = a.clone();
    a_sorted.sort();
    assert_eq!(a_sorted, b, "both allocators see the same port per instance");
    let mut ports: Vec<u16> = a.iter().map(|(_, p)| *p).collect();
    ports.sort();
    ports.dedup();
    assert_eq!(ports.len(), ids.len(), "no port handed out twice");

    // Full range: a clear error, nothing written.
    let mut c = etcd.client().await;
    let err = store::ensure_router_port(&mut c, "late", (41000, 41000)).await.unwrap_err();
    assert!(err.to_string().contains("no free router port"), "{err}");
    assert!(store::router_port_of(&mut c, "late").await.unwrap().is_none());

    // Releasing frees exactly that instance's port.
    let p0 = store::router_port_of(&mut c, "i0").await.unwrap().unwrap();
    store::delete_instance_keys(&mut c, "i0").await.unwrap();
    assert!(store::router_port_of(&mut c, "i0").await.unwrap().is_none());
    assert_eq!(store::ensure_router_port(&mut c, "new", (41000, 41100)).await.unwrap(), p0);
    assert!(store::router_port_of(&mut c, "i1").await.unwrap().is_some());
}

#[tokio::test]
async fn placement_race_fills_slots_once() {
    let etcd = common::Etcd::start();
    let cell = CellPorts::new("c", (30000, 30009), 32);
    let want = |id: &str| Placement {
        instance_id: id.into(),
        scope: pgcell::names::scope(id),
        member: pgcell::names::member(id, "c"),
        cell: "c".into(),
        slot: 0,
        pg_port: 0,
        api_port: 0,
        service_id: "s".into(),
        plan_id: "p".into(),
        memory_mb: 1,
        purge: false,
    };
    let mut tasks = vec![];
    for i in 0..8 {
        let mut client = etcd.client().await;
        let (cell, p) = (cell.clone(), want(&format!("{}", i % 7)));
        tasks.push(tokio::spawn(async move { store::place_member(&mut client, &cell, p, b"{}").await }));
    }
    let mut created = vec![];
    let mut full = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(Placed::Created(p)) => created.push(p.slot),
            Ok(Placed::Exists(_)) => {}
            Err(PlaceError::NoCapacity(_)) => full += 1,
            Err(e) => panic!("{e}"),
        }
    }
    created.sort();
    assert_eq!(created, vec![0, 1, 2, 3, 4], "5 slots, each taken once");
    assert!(full >= 1, "the rest are told the cell is full");
}
