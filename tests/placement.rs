//! Placement under contention, in-process against a real etcd, no Docker:
//! many provisions (and a scale-out) at once through two brokers on fake cells
//! of known capacity place exactly what fits, spread as one-at-a-time
//! placement would, never over a cell's capacity, never two members of one
//! cluster on one cell; a shortage fails exactly the operations that cannot
//! fit and leaves nothing of them behind, but first waits a little for room
//! (a deprovision freeing slots).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::http::osb;
use common::inproc::start_broker;
use common::*;
use pgcell::broker::catalog::{PLANS, SERVICE_ID};
use pgcell::broker::model::{OpKind, OpState, Operation};
use pgcell::etcd::fleet;
use pgcell::etcd::store::Placement;
use serde_json::{Value, json};

fn plan_id(name: &str) -> &'static str {
    PLANS.iter().find(|p| p.name == name).unwrap().id
}

/// A cell record with no agent behind it: placements succeed, members never start.
async fn fake_cell(etcd: &Etcd, name: &str, capacity: u32) {
    let rec = json!({"name": name, "deployment": "t", "advertise_host": "127.0.0.1", "api_url": "",
        "port_range": "31000-31099", "capacity": capacity, "zone": ""});
    etcd.client().await.put(format!("/pgcell/cells/{name}"), rec.to_string(), None).await.unwrap();
}

fn want(id: &str, cell: &str) -> Placement {
    Placement {
        instance_id: id.into(),
        scope: format!("cf-{id}"),
        member: format!("cf-{id}-{cell}"),
        cell: cell.into(),
        slot: 0,
        pg_port: 0,
        api_port: 0,
        service_id: SERVICE_ID.into(),
        plan_id: plan_id("ha-2").into(),
        memory_mb: 1024,
        purge: false,
    }
}

async fn placements(etcd: &Etcd) -> Vec<Placement> {
    etcd.dump("/pgcell/placements/").await.iter().map(|(_, v)| serde_json::from_str(v).unwrap()).collect()
}

async fn state(etcd: &Etcd, id: &str) -> Value {
    let kv = etcd.dump(&format!("/pgcell/instances/{id}/operation")).await;
    kv.first().map_or(Value::Null, |(_, v)| serde_json::from_str(v).unwrap())
}

/// Starts two brokers; waits until both answer.
async fn two_brokers(etcd: &Etcd, ports: (u16, u16)) -> [String; 2] {
    let brokers = [start_broker(&etcd.endpoint, "b1", ports), start_broker(&etcd.endpoint, "b2", ports)];
    for b in &brokers {
        wait_for("a broker", Duration::from_secs(10), || async {
            (osb("GET", &format!("{b}/v2/catalog"), None).await.status == 200).then_some(())
        })
        .await;
    }
    brokers
}

/// PUTs (plan name) or PATCHes (`up:` plan name) every `(id, what)` at the same moment,
/// alternating between the brokers; every request must be accepted.
async fn all_at_once(brokers: &[String; 2], ops: &[(String, &str)]) {
    let mut tasks = vec![];
    for (i, (id, what)) in ops.iter().enumerate() {
        let url = format!("{}/v2/service_instances/{id}?accepts_incomplete=true", brokers[i % 2]);
        let (method, body) = match what.strip_prefix("up:") {
            Some(plan) => ("PATCH", json!({"service_id": SERVICE_ID, "plan_id": plan_id(plan)})),
            None => (
                "PUT",
                json!({"service_id": SERVICE_ID, "plan_id": plan_id(what), "organization_guid": "o", "space_guid": "s"}),
            ),
        };
        tasks.push(tokio::spawn(async move { osb(method, &url, Some(&body.to_string())).await }));
    }
    for (t, (id, what)) in tasks.into_iter().zip(ops) {
        let r = t.await.unwrap();
        assert_eq!(r.status, 202, "{what} {id}: {}", r.text);
    }
}

/// Members per cell; asserts no cell over `capacity` and no two members of one instance on one cell.
fn check_placements(ps: &[Placement], capacity: &BTreeMap<&str, usize>) -> BTreeMap<String, usize> {
    let mut per_cell = BTreeMap::<String, usize>::new();
    let mut per_instance = BTreeMap::<&str, BTreeSet<&str>>::new();
    let mut slots = BTreeSet::new();
    for p in ps {
        *per_cell.entry(p.cell.clone()).or_default() += 1;
        assert!(
            per_instance.entry(&p.instance_id).or_default().insert(&p.cell),
            "two members of {} on {}",
            p.instance_id,
            p.cell
        );
        assert!(slots.insert((p.cell.clone(), p.slot)), "slot {} of {} taken twice", p.slot, p.cell);
    }
    for (cell, n) in &per_cell {
        assert!(*n <= capacity[cell.as_str()], "{cell} holds {n}, over its capacity {}", capacity[cell.as_str()]);
    }
    per_cell
}

#[tokio::test]
async fn a_reservation_commits_only_on_the_fleet_it_read_and_all_or_nothing() {
    let etcd = Etcd::start();
    for c in ["a", "b"] {
        fake_cell(&etcd, c, 2).await;
    }
    let mut client = etcd.client().await;
    let stale = fleet::read(&mut client).await.unwrap();
    assert_eq!((stale.total(), stale.free()), (4, 4));
    // Another placement takes a slot on b after the read: a two-member reservation on a and b fails whole.
    let fresh = fleet::read(&mut client).await.unwrap();
    assert!(fleet::reserve(&mut client, &fresh, vec![want("x", "b")], b"{}").await.unwrap().is_some());
    assert!(fleet::reserve(&mut client, &stale, vec![want("y", "a"), want("y", "b")], b"{}").await.unwrap().is_none());
    assert_eq!(placements(&etcd).await.len(), 1, "nothing of y on a");
    // Read again: it fits, b's next slot.
    let now = fleet::read(&mut client).await.unwrap();
    let placed = fleet::reserve(&mut client, &now, vec![want("y", "a"), want("y", "b")], b"{}").await.unwrap().unwrap();
    assert_eq!(placed.iter().map(|p| (p.cell.as_str(), p.slot)).collect::<Vec<_>>(), [("a", 0), ("b", 1)]);
    // Any slot taken on a chosen cell since the read fails it, not only the slot it would take:
    // the free count the choice was made on must still hold when it commits.
    let before = fleet::read(&mut client).await.unwrap();
    fake_cell(&etcd, "c", 3).await;
    let before_c = fleet::read(&mut client).await.unwrap();
    client.put("/pgcell/ports/c/2", "cf-v-c", None).await.unwrap();
    assert!(fleet::reserve(&mut client, &before_c, vec![want("v", "c")], b"{}").await.unwrap().is_none());
    assert!(fleet::reserve(&mut client, &before, vec![want("v", "c")], b"{}").await.is_err(), "c was not in that read");
    // A removal since the read does not invalidate it (it only frees room).
    let before = fleet::read(&mut client).await.unwrap();
    client.delete("/pgcell/ports/b/0", None).await.unwrap();
    assert!(fleet::reserve(&mut client, &before, vec![want("z", "a")], b"{}").await.unwrap().is_some());
    // A cell that re-registered since the read (its capacity may have changed) is read again.
    let before = fleet::read(&mut client).await.unwrap();
    fake_cell(&etcd, "b", 3).await;
    assert!(fleet::reserve(&mut client, &before, vec![want("w", "b")], b"{}").await.unwrap().is_none());
}

#[tokio::test]
async fn concurrent_provisions_and_a_scale_out_through_two_brokers_fit_and_spread() {
    let etcd = Etcd::start();
    let capacity: BTreeMap<&str, usize> = [("c1", 10), ("c2", 10), ("c3", 10)].into();
    for (c, n) in &capacity {
        fake_cell(&etcd, c, *n as u32).await;
    }
    let brokers = two_brokers(&etcd, (41100, 41159)).await;
    // u1: an ha-2 instance already there (provisioned, members on c1 and c2).
    let mut client = etcd.client().await;
    let f = fleet::read(&mut client).await.unwrap();
    fleet::reserve(&mut client, &f, vec![want("u1", "c1"), want("u1", "c2")], b"{}").await.unwrap().unwrap();
    let spec = json!({"service_id": SERVICE_ID, "plan_id": plan_id("ha-2"), "parameters": {"extensions": []}});
    // Written as the broker writes it: starting the update compares the stored operation byte for byte.
    let mut op = Operation::new(OpKind::Provision, "ready");
    op.state = OpState::Succeeded;
    let op = serde_json::to_string(&op).unwrap();
    client.put("/pgcell/instances/u1/spec", spec.to_string(), None).await.unwrap();
    client.put("/pgcell/instances/u1/operation", op, None).await.unwrap();

    // 12 single + 4 ha-2 provisions and u1's scale-out to ha-3, all at once: 21 new members on 28 free slots.
    let mut ops: Vec<(String, &str)> = (0..12).map(|i| (format!("s{i}"), "single")).collect();
    ops.extend((0..4).map(|i| (format!("h{i}"), "ha-2")));
    ops.insert(7, ("u1".into(), "up:ha-3"));
    all_at_once(&brokers, &ops).await;
    let t0 = std::time::Instant::now();
    let ps = wait_for("every member placed", Duration::from_secs(30), || async {
        for (id, _) in &ops {
            let op = state(&etcd, id).await;
            assert_ne!(op["state"], "failed", "{id} failed: {op}");
        }
        let ps = placements(&etcd).await;
        (ps.len() == 23).then_some(ps)
    })
    .await;
    eprintln!("21 members placed in {:.2}s", t0.elapsed().as_secs_f64());
    let per_cell = check_placements(&ps, &capacity);
    // One at a time, most free first, keeps three equal cells within one member of each
    // other; u1's third member can only go on c3, wherever c3 stands then: one more.
    let (min, max) = (per_cell.values().min().unwrap(), per_cell.values().max().unwrap());
    assert!(max - min <= 2, "not spread as one at a time would: {per_cell:?}");
    let count = |id: &str| ps.iter().filter(|p| p.instance_id == id).count();
    assert_eq!(count("u1"), 3, "the scale-out placed its third member");
    assert!((0..4).all(|i| count(&format!("h{i}")) == 2) && (0..12).all(|i| count(&format!("s{i}")) == 1));
    assert_eq!(etcd.dump("/pgcell/ports/").await.len(), 23, "one slot key per member");
    // Nothing failed or waits for capacity: every operation went on to wait for its (fake) members.
    for (id, _) in &ops {
        let op = state(&etcd, id).await;
        assert_eq!(op["state"], "in progress", "{id}: {op}");
        assert!(!op["description"].as_str().unwrap().contains("capacity"), "{id}: {op}");
    }
    // The broker shows what is left.
    let m = osb("GET", &format!("{}/metrics", brokers[0]), None).await;
    assert!(m.text.lines().any(|l| l == "pgcell_fleet_slots_free 7"), "{}", m.text);
    assert!(m.text.lines().any(|l| l == "pgcell_fleet_slots 30"), "{}", m.text);
}

#[tokio::test]
async fn a_fleet_one_slot_short_fails_exactly_what_cannot_fit_and_leaves_nothing() {
    let etcd = Etcd::start();
    let capacity: BTreeMap<&str, usize> = [("c1", 2), ("c2", 2), ("c3", 1)].into();
    for (c, n) in &capacity {
        fake_cell(&etcd, c, *n as u32).await;
    }
    let brokers = two_brokers(&etcd, (41160, 41179)).await;
    // 6 members wanted, 5 slots: whichever order they race in, exactly one operation cannot fit.
    let ops: Vec<(String, &str)> =
        vec![("h0".into(), "ha-2"), ("s0".into(), "single"), ("h1".into(), "ha-2"), ("s1".into(), "single")];
    all_at_once(&brokers, &ops).await;
    let states = wait_for("every operation placed or failed", Duration::from_secs(30), || async {
        let mut out = BTreeMap::new();
        for (id, _) in &ops {
            let op = state(&etcd, id).await;
            let desc = op["description"].as_str().unwrap_or("").to_string();
            let settled = op["state"] == "failed" || desc.contains("waiting for a leader");
            settled.then_some(())?;
            out.insert(id.clone(), (op["state"].as_str().unwrap().to_string(), desc));
        }
        Some(out)
    })
    .await;
    let failed: Vec<_> = states.iter().filter(|(_, (s, _))| s == "failed").collect();
    assert_eq!(failed.len(), 1, "exactly one operation cannot fit: {states:#?}");
    let (id, (_, why)) = failed[0];
    eprintln!("{id} failed: {why}");
    assert!(why.starts_with("not enough cells: the plan needs"), "{why}");
    assert!(why.contains("cell(s) with free capacity") && why.contains("free slot(s)"), "{why}");
    let ps = placements(&etcd).await;
    check_placements(&ps, &capacity);
    assert!(ps.iter().all(|p| &p.instance_id != id), "the failed {id} left a placement: {ps:?}");
    let keys: Vec<String> = etcd.dump("/pgcell/").await.into_iter().map(|(k, _)| k).collect();
    let mine = |k: &&String| k.contains(&format!("/{id}/")) || k.ends_with(&format!("/{id}"));
    let left: Vec<&String> =
        keys.iter().filter(mine).filter(|k| !k.ends_with("/spec") && !k.ends_with("/operation")).collect();
    assert!(left.is_empty(), "the failed {id} left keys: {left:?}");
    let slots = etcd.dump("/pgcell/ports/").await;
    assert!(slots.iter().all(|(_, member)| !member.starts_with(&format!("cf-{id}-"))), "{slots:?}");
    assert_eq!(slots.len(), ps.len());
    // What did fit is what one-at-a-time would have placed: 5 members (a single lost) or 4 (an ha-2 lost, 1 slot left).
    let want = if id.starts_with('s') { 5 } else { 4 };
    assert_eq!(ps.len(), want, "{ps:?}");
}

#[tokio::test]
async fn a_shortage_waits_for_slots_a_deprovision_frees() {
    let etcd = Etcd::start();
    fake_cell(&etcd, "c1", 1).await;
    let mut client = etcd.client().await;
    // The only slot is held by a member being purged (its cell has not removed it yet).
    let f = fleet::read(&mut client).await.unwrap();
    let old =
        fleet::reserve(&mut client, &f, vec![Placement { purge: true, ..want("old", "c1") }], b"{}").await.unwrap();
    let old = old.unwrap().remove(0);
    let brokers = two_brokers(&etcd, (41180, 41189)).await;
    all_at_once(&brokers, &[("n1".into(), "single")]).await;
    let op = wait_for("n1 waiting for capacity", Duration::from_secs(5), || async {
        let op = state(&etcd, "n1").await;
        op["description"]
            .as_str()
            .is_some_and(|d| d.starts_with("waiting for capacity: not enough cells"))
            .then_some(op)
    })
    .await;
    assert_eq!(op["state"], "in progress", "{op}");
    // The cell finishes the purge: placement and slot go together (as `store::remove_placement` does).
    let (_, rev) = pgcell::etcd::store::instance_placements(&mut client, "old").await.unwrap().remove(0);
    assert!(pgcell::etcd::store::remove_placement(&mut client, &old, rev).await.unwrap().done());
    wait_for("n1 placed in the freed slot", Duration::from_secs(5), || async {
        let ps = placements(&etcd).await;
        ps.iter().any(|p| p.instance_id == "n1" && p.slot == 0).then_some(())
    })
    .await;
    assert_ne!(state(&etcd, "n1").await["state"], "failed");
}
