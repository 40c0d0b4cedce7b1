//! Provisioning under load with real cells, members and routers: many
//! instances at once through two brokers on cells sized to fit all succeed,
//! no cell goes over its capacity, no two members of a cluster share a cell;
//! one more that cannot fit fails, says why and leaves nothing; then
//! deprovisioning everything at once leaves no container, data, port or key.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::http::osb;
use common::*;
use pgcell::broker::catalog::{PLANS, SERVICE_ID};
use pgcell::etcd::store::Placement;
use serde_json::{Value, json};

fn plan_id(name: &str) -> &'static str {
    PLANS.iter().find(|p| p.name == name).unwrap().id
}

/// The operation as stored (nobody needs to poll: the brokers drive it).
async fn stored(d: &Deployment, id: &str) -> Option<Value> {
    let kv = d.etcd.dump(&format!("/pgcell/instances/{id}/operation")).await;
    kv.first().map(|(_, v)| serde_json::from_str(v).unwrap())
}

/// Sends `method` for every instance at the same moment, alternating brokers; returns the statuses.
async fn at_once(brokers: &[String], method: &'static str, ids: &[(String, &'static str)]) -> Vec<u16> {
    let mut tasks = vec![];
    for (i, (id, plan)) in ids.iter().enumerate() {
        let base = format!("{}/v2/service_instances/{id}?accepts_incomplete=true", brokers[i % brokers.len()]);
        let (url, body) = if method == "DELETE" {
            (format!("{base}&service_id={SERVICE_ID}&plan_id={}", plan_id(plan)), None)
        } else {
            let body = json!({"service_id": SERVICE_ID, "plan_id": plan_id(plan), "organization_guid": "o", "space_guid": "s"});
            (base, Some(body.to_string()))
        };
        tasks.push(tokio::spawn(async move { osb(method, &url, body.as_deref()).await.status }));
    }
    let mut out = vec![];
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

#[tokio::test]
async fn twelve_single_and_four_ha2_at_once_through_two_brokers_then_all_deleted() {
    let mut d = Deployment::start(0).await;
    // 3 cells of 7: 21 slots for 20 members.
    for i in 0..3 {
        let name = format!("{}-c{i}", d.id);
        d.add_cell_with_env(&name, &[("PGCELL_CAPACITY", "7".to_string())]).await;
    }
    d.start_router("r1", 8000).await;
    let brokers = vec![d.start_broker("b1").await, d.start_broker("b2").await];
    wait_for("three cells registered", Duration::from_secs(15), || async {
        (d.etcd.dump("/pgcell/cells/").await.len() == 3).then_some(())
    })
    .await;
    let mut ids: Vec<(String, &'static str)> = (0..12).map(|i| (format!("s{i}"), "single")).collect();
    ids.extend((0..4).map(|i| (format!("h{i}"), "ha-2")));
    let t0 = Instant::now();
    assert!(at_once(&brokers, "PUT", &ids).await.iter().all(|s| *s == 202));
    // Time to succeeded per instance, read from etcd as the brokers record it.
    let mut done = BTreeMap::<String, f64>::new();
    while done.len() < ids.len() {
        assert!(t0.elapsed() < Duration::from_secs(600), "not all succeeded in 600 s: {done:?}");
        for (id, _) in &ids {
            if done.contains_key(id) {
                continue;
            }
            let op = stored(&d, id).await.unwrap();
            assert_ne!(op["state"], "failed", "{id}: {op}");
            if op["state"] == "succeeded" {
                done.insert(id.clone(), t0.elapsed().as_secs_f64());
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let mut secs: Vec<f64> = done.values().copied().collect();
    secs.sort_by(f64::total_cmp);
    eprintln!(
        "16 instances (20 members) succeeded: p50 {:.1}s, max {:.1}s",
        secs[secs.len() / 2],
        secs[secs.len() - 1]
    );

    // No cell over capacity, no two members of one cluster on one cell, every member running there.
    let ps: Vec<Placement> =
        d.etcd.dump("/pgcell/placements/").await.iter().map(|(_, v)| serde_json::from_str(v).unwrap()).collect();
    assert_eq!(ps.len(), 20);
    let mut per_cell = BTreeMap::<&str, usize>::new();
    let mut per_instance = BTreeMap::<&str, BTreeSet<&str>>::new();
    for p in &ps {
        *per_cell.entry(&p.cell).or_default() += 1;
        assert!(per_instance.entry(&p.instance_id).or_default().insert(&p.cell), "two members of {}", p.instance_id);
    }
    assert!(per_cell.values().all(|n| *n <= 7), "over capacity: {per_cell:?}");
    eprintln!("members per cell: {per_cell:?}");
    assert_eq!(d.containers().len(), 20, "{:?}", d.containers());
    let cells = d.pgcell(&["cells"]);
    eprintln!("{cells}");
    assert!(cells.contains("fleet: 20/21 slots used, 1 free"), "{cells}");

    // One more ha-2 does not fit (1 slot left): it fails, says so, and leaves nothing.
    let extra = vec![("x1".to_string(), "ha-2")];
    assert_eq!(at_once(&brokers, "PUT", &extra).await, [202]);
    let op = wait_for("x1 failed", Duration::from_secs(60), || async {
        stored(&d, "x1").await.filter(|op| op["state"] != "in progress")
    })
    .await;
    let why = op["description"].as_str().unwrap();
    assert_eq!(op["state"], "failed", "{op}");
    assert!(why.contains("not enough cells") && why.contains("1 cell(s) with free capacity: 1 short"), "{why}");
    let x1: Vec<_> =
        d.etcd.dump("/pgcell/").await.into_iter().filter(|(k, v)| k.contains("x1") || v.contains("cf-x1")).collect();
    let x1: Vec<&str> = x1.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        x1,
        ["/pgcell/instances/x1/operation", "/pgcell/instances/x1/spec"],
        "x1 left more than its failed operation"
    );
    assert_eq!(d.containers().len(), 20);

    // Everything deleted at once: nothing left.
    ids.extend(extra);
    let t1 = Instant::now();
    // The failed x1 is deleted like any other.
    assert!(at_once(&brokers, "DELETE", &ids).await.iter().all(|s| *s == 202), "deletes refused");
    wait_for("every instance gone", Duration::from_secs(300), || async {
        let mut left = 0;
        for (id, _) in &ids {
            if let Some(op) = stored(&d, id).await {
                assert_ne!(op["state"], "failed", "{id}: {op}");
                left += 1;
            }
        }
        (left == 0).then_some(())
    })
    .await;
    eprintln!("17 instances deprovisioned at once in {:.1}s", t1.elapsed().as_secs_f64());
    assert!(d.containers().is_empty(), "{:?}", d.containers());
    for c in &d.cells {
        assert!(dir_is_empty_or_missing(&c.data_root), "data left in {}", c.data_root.display());
    }
    assert!(d.etcd.dump("/service/").await.is_empty(), "Patroni keys left");
    let left: Vec<String> = d
        .etcd
        .dump("/pgcell/")
        .await
        .into_iter()
        .map(|(k, _)| k)
        .filter(|k| {
            !k.starts_with("/pgcell/cells/")
                && !k.starts_with("/pgcell/routers/")
                && !k.starts_with("/pgcell/deleted/")
                // Backups outlive their instance (restorable for the retention period).
                && !k.starts_with("/pgcell/backups/")
                && k != "/pgcell/healer"
                // The fleet CA belongs to the fleet, not to an instance.
                && k != "/pgcell/tls/ca"
        })
        .collect();
    assert!(left.is_empty(), "keys left: {left:?}");
    let cells = d.pgcell(&["cells"]);
    assert!(cells.contains("fleet: 0/21 slots used, 21 free"), "{cells}");
}
