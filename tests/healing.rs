//! Self-healing with real cells, Patroni and psql: a cell gone for good has its
//! members replaced elsewhere and purges them when it returns; a cell can be
//! retired (refused without room).

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::http::osb;
use common::*;
use pgcell::broker::catalog::{PLANS, SERVICE_ID};
use serde_json::{Value, json};

fn plan_id(name: &str) -> &'static str {
    PLANS.iter().find(|p| p.name == name).unwrap().id
}

async fn provision(d: &Deployment, broker: &str, id: &str, plan: &str) {
    let body = json!({"service_id": SERVICE_ID, "plan_id": plan_id(plan), "organization_guid": "o", "space_guid": "s"});
    let r = osb("PUT", &format!("{broker}/v2/service_instances/{id}?accepts_incomplete=true"), Some(&body.to_string()))
        .await;
    assert_eq!(r.status, 202, "{}", r.text);
    wait_for(&format!("{id} provisioned"), Duration::from_secs(180), || async {
        let kv = d.etcd.dump(&format!("/pgcell/instances/{id}/operation")).await;
        let op: Value = serde_json::from_str(&kv.first()?.1).ok()?;
        assert_ne!(op["state"], "failed", "{op}");
        (op["state"] == "succeeded").then_some(())
    })
    .await;
}

async fn sync_standby(d: &Deployment, id: &str) -> Option<String> {
    let kv = d.etcd.dump(&format!("/service/cf-{id}/sync")).await;
    let v: Value = serde_json::from_str(&kv.first()?.1).ok()?;
    v["sync_standby"].as_str().map(String::from)
}

/// The cells holding a member of `id` that is not marked purge.
async fn member_cells(d: &Deployment, id: &str) -> Vec<String> {
    let mut cells: Vec<String> = d
        .etcd
        .dump("/pgcell/placements/")
        .await
        .into_iter()
        .filter_map(|(_, v)| serde_json::from_str::<Value>(&v).ok())
        .filter(|p| p["instance_id"] == id && p["purge"] == false)
        .map(|p| p["cell"].as_str().unwrap().to_string())
        .collect();
    cells.sort();
    cells
}

/// Provisions `id` and starts a writer through the router on it: (its URL, the
/// writer's stop flag, the writer).
async fn writing_instance(
    d: &Deployment,
    broker: &str,
    id: &str,
    plan: &str,
) -> (String, Arc<AtomicBool>, std::thread::JoinHandle<(Vec<i32>, u32)>) {
    provision(d, broker, id, plan).await;
    let url = d.superuser_url(id, d.router_port(id).await).await;
    psql(&url, "create table acked(id int primary key)").unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let w = writer(url.clone(), stop.clone());
    (url, stop, w)
}

/// Joins the (stopped) writer and checks every write it was told committed is
/// there; returns how many there were.
fn check_nothing_lost(url: &str, w: std::thread::JoinHandle<(Vec<i32>, u32)>) -> usize {
    let (acked, failed) = w.join().unwrap();
    let present: HashSet<i32> =
        psql(url, "select id from acked").unwrap().lines().filter_map(|l| l.parse().ok()).collect();
    let missing: Vec<&i32> = acked.iter().filter(|i| !present.contains(i)).collect();
    eprintln!("writes: acknowledged {}, failed {failed}, lost {}", acked.len(), missing.len());
    assert!(missing.is_empty(), "acknowledged writes lost: {missing:?}");
    acked.len()
}

/// A writer through the router on its own thread; returns the ids it was told were committed.
fn writer(url: String, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<(Vec<i32>, u32)> {
    std::thread::spawn(move || {
        let (mut acked, mut failed, mut id) = (vec![], 0u32, 0);
        while !stop.load(Ordering::Relaxed) {
            id += 1;
            match psql(&url, &format!("insert into acked values ({id})")) {
                Ok(_) => acked.push(id),
                Err(_) => failed += 1,
            }
        }
        (acked, failed)
    })
}

#[tokio::test]
async fn a_lost_cell_is_replaced_and_purges_its_member_when_it_returns() {
    let mut d = Deployment::start(3).await;
    d.start_router("r1", 30_000).await;
    let fast = [("PGCELL_REPLACE_AFTER_SECS", "3".to_string())];
    let b1 = d.start_broker_with_env("b1", &fast).await;
    let b2 = d.start_broker_with_env("b2", &fast).await;
    let (url, stop, w) = writing_instance(&d, &b1, "h1", "ha-2").await;
    let names: Vec<String> = d.cells.iter().map(|c| c.name.clone()).collect();
    let first = member_cells(&d, "h1").await;
    let spare = names.iter().find(|n| !first.contains(n)).unwrap().clone();

    // The leader's cell is lost for good.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let leader = d.leader("h1").await.unwrap();
    let lost = d.cell_of("h1", &leader);
    let old_container = docker_ids(&format!("name=^pgcell-cf-h1-{}$", names[lost]));
    assert_eq!(old_container.len(), 1);
    let t0 = Instant::now();
    d.cells[lost].kill_cell();
    // The broker running the healer dies as soon as the replacement is placed: the other finishes it, once.
    let healer = wait_for("a replacement placed", Duration::from_secs(90), || async {
        let placed = !d.etcd.dump("/pgcell/replacements/").await.is_empty();
        let holder = d.etcd.dump("/pgcell/healer").await.first().map(|(_, v)| v.clone());
        holder.filter(|_| placed)
    })
    .await;
    let (dead, broker) = if healer == "b1" { (0, b2.clone()) } else { (1, b1.clone()) };
    d.brokers[dead].kill();
    eprintln!("killed {healer}, the broker running the healer, mid-replacement");
    let new_member = format!("cf-h1-{spare}");
    wait_for("the replacement named synchronous standby", Duration::from_secs(120), || async {
        (sync_standby(&d, "h1").await.as_deref() == Some(new_member.as_str())).then_some(())
    })
    .await;
    eprintln!(
        "cell loss -> replacement is the synchronous standby: {:.1}s (replace_after 3 s)",
        t0.elapsed().as_secs_f64()
    );
    wait_for("the lost member marked for purge", Duration::from_secs(10), || async {
        let cells = member_cells(&d, "h1").await;
        (cells.contains(&spare) && !cells.contains(&names[lost])).then_some(())
    })
    .await;
    let metrics =
        common::http::call("GET", &format!("{broker}/metrics"), Some(("broker", BROKER_PASSWORD)), None).await;
    assert!(
        metrics.text.contains("pgcell_replacements_finished_total 1"),
        "the survivor finished it: {}",
        metrics.text
    );
    assert!(metrics.text.contains("pgcell_replacements_started_total 0"), "and placed nothing twice: {}", metrics.text);

    // Lose the other original cell too: the replacement takes over; nothing acknowledged is lost.
    let second = d.cell_of("h1", &d.leader("h1").await.unwrap());
    assert_ne!(second, lost);
    d.cells[second].kill_cell();
    wait_for("the replacement leading", Duration::from_secs(60), || async {
        (d.leader("h1").await.as_deref() == Some(new_member.as_str())).then_some(())
    })
    .await;
    wait_for("writes through the router again", Duration::from_secs(30), || {
        let url = url.clone();
        async move { psql(&url, "insert into acked values (-1)").ok() }
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    let acked = check_nothing_lost(&url, w);
    assert!(acked > 20, "the writer barely wrote");
    // No spare cell for the second loss: degraded, and said so.
    wait_for("the unreplaceable member counted", Duration::from_secs(30), || async {
        let m = common::http::call("GET", &format!("{broker}/metrics"), Some(("broker", BROKER_PASSWORD)), None).await;
        m.text.contains("pgcell_members_unreplaceable 1").then_some(())
    })
    .await;

    // The first cell returns: it purges the member that moved away (its old
    // container and data), never runs it; then, with room again, the second
    // lost member is replaced there and the cluster is redundant again.
    d.cells[lost].start_agent();
    wait_for("the moved member's old container purged by its cell", Duration::from_secs(60), || async {
        docker_ids(&format!("id={}", old_container[0])).is_empty().then_some(())
    })
    .await;
    let mut want = vec![names[lost].clone(), spare.clone()];
    want.sort();
    wait_for("re-placement resumed on the returned cell", Duration::from_secs(180), || async {
        let again = member_cells(&d, "h1").await == want;
        (again && sync_standby(&d, "h1").await.is_some()).then_some(())
    })
    .await;
    assert_eq!(d.leader("h1").await.as_deref(), Some(new_member.as_str()), "no split brain: the leader stayed");
    assert_eq!(psql(&url, "select count(*) > 0 from acked").unwrap(), "t");
}

#[tokio::test]
async fn retire_moves_every_member_and_is_refused_without_room() {
    let mut d = Deployment::start(2).await;
    d.start_router("r1", 30_000).await;
    let broker = d.start_broker("b1").await;
    provision(&d, &broker, "h2", "ha-2").await;
    provision(&d, &broker, "s2", "single").await;
    let s2 = d.superuser_url("s2", d.router_port("s2").await).await;
    psql(&s2, "create table kept(x int); insert into kept values (42)").unwrap();
    let single_cell = member_cells(&d, "s2").await.remove(0);
    let out = std::process::Command::new(pgcell_bin())
        .args(["cells", "retire", &single_cell])
        .env("PGCELL_ETCD_ENDPOINTS", &d.etcd.endpoint)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "retire without room must be refused");
    assert!(err.contains("refused") && err.contains("no cell can take"), "{err}");
    assert!(d.etcd.dump("/pgcell/retiring/").await.is_empty(), "a refused retire changes nothing");

    // With a third cell it goes: the single member moves with its data.
    let third = format!("{}-c2", d.id);
    d.add_cell(&third).await;
    let t0 = Instant::now();
    let out = d.pgcell(&["cells", "retire", &single_cell, "--timeout", "240"]);
    eprintln!("{out}retired in {:.1}s", t0.elapsed().as_secs_f64());
    assert!(out.contains("empty"), "{out}");
    for id in ["h2", "s2"] {
        let cells = member_cells(&d, id).await;
        assert!(!cells.contains(&single_cell), "{id} still on the retired cell: {cells:?}");
    }
    assert_eq!(member_cells(&d, "h2").await.len(), 2, "h2 is fully redundant again");
    // "Fully redundant": a standby Patroni may promote, not the member that moved away.
    let sync = sync_standby(&d, "h2").await;
    assert!(sync.as_deref().is_some_and(|s| !s.ends_with(&single_cell)), "h2's sync standby: {sync:?}");
    let states = d.pgcell(&["states"]);
    assert!(!states.contains("degraded"), "{states}");
    assert_eq!(psql(&s2, "select x from kept").unwrap(), "42", "the single instance kept its data");
    let cells = d.pgcell(&["cells"]);
    assert!(cells.lines().any(|l| l.starts_with(&single_cell) && l.contains("retiring")), "{cells}");
}

#[tokio::test]
async fn ha3_loses_two_cells_one_after_the_other_and_heals_both() {
    let mut d = Deployment::start(5).await;
    d.start_router("r1", 30_000).await;
    let broker = d.start_broker_with_env("b1", &[("PGCELL_REPLACE_AFTER_SECS", "2".into())]).await;
    let (url, stop, w) = writing_instance(&d, &broker, "h3", "ha-3").await;
    let names: Vec<String> = d.cells.iter().map(|c| c.name.clone()).collect();
    let mut lost = vec![];
    for round in 0..2 {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let leader = d.leader("h3").await.unwrap();
        let cell = d.cell_of("h3", &leader);
        d.cells[cell].kill_cell();
        lost.push(cell);
        let t0 = Instant::now();
        wait_for("three members again, none on a lost cell, a sync standby", Duration::from_secs(180), || async {
            let cells = member_cells(&d, "h3").await;
            let clear = lost.iter().all(|l| !cells.contains(&names[*l]));
            (cells.len() == 3 && clear && sync_standby(&d, "h3").await.is_some()).then_some(())
        })
        .await;
        eprintln!("round {round}: leader's cell lost -> three members again in {:.1}s", t0.elapsed().as_secs_f64());
    }
    stop.store(true, Ordering::Relaxed);
    check_nothing_lost(&url, w);
    // Both lost cells come back and purge what moved away.
    for l in &lost {
        d.cells[*l].start_agent();
    }
    wait_for("the lost cells purged their old members", Duration::from_secs(90), || async {
        let left: usize = placements_on(&d, &lost, &names).await;
        (left == 0).then_some(())
    })
    .await;
    assert_eq!(member_cells(&d, "h3").await.len(), 3);
}

/// Placements still on the given cells.
async fn placements_on(d: &Deployment, cells: &[usize], names: &[String]) -> usize {
    let mut n = 0;
    for c in cells {
        n += d.etcd.dump(&format!("/pgcell/placements/{}/", names[*c])).await.len();
    }
    n
}

/// A cell cut off from etcd (alive, its containers running): its leader stops
/// serving writes, its member is replaced elsewhere, and when the cut heals the
/// cell purges that member instead of running it.
#[tokio::test]
async fn a_partitioned_cell_is_replaced_and_purges_its_member_when_the_cut_heals() {
    let mut d = Deployment::start(0).await;
    let mut link = EtcdLink::new(&d.etcd.endpoint);
    let names: Vec<String> = (0..3).map(|i| format!("{}-c{i}", d.id)).collect();
    let through_link =
        [("PGCELL_ETCD_ENDPOINTS", format!("127.0.0.1:{}", link.port)), ("PGCELL_ETCD_PROXIES", "true".into())];
    d.add_cell_with_env(&names[0], &through_link).await;
    d.add_cell(&names[1]).await;
    d.add_cell(&names[2]).await;
    d.start_router("r1", 30_000).await;
    d.start_broker_with_env("b1", &[("PGCELL_REPLACE_AFTER_SECS", "3".into())]).await;
    seed_cluster(&d, "p", &[0, 1]).await;
    let old_member = format!("cf-p-{}", names[0]);
    assert_eq!(d.leader("p").await.as_deref(), Some(old_member.as_str()));
    let url = d.superuser_url("p", d.router_port("p").await).await;
    psql(&url, "create table t(id serial primary key)").unwrap();
    let direct = d.superuser_url("p", d.cells[0].ports.0).await;

    link.cut();
    let t0 = Instant::now();
    wait_for("writes through the router on another cell", Duration::from_secs(60), || {
        let (url, port) = (url.clone(), d.cells[0].ports.0.to_string());
        async move {
            let out = psql(&url, "insert into t default values returning inet_server_port()").ok();
            out.and_then(|o| o.lines().next().map(str::to_string)).filter(|p| *p != port)
        }
    })
    .await;
    eprintln!("partition: writes elsewhere after {:.1}s", t0.elapsed().as_secs_f64());
    let new_member = format!("cf-p-{}", names[2]);
    wait_for("the cut-off member replaced and the replacement sync standby", Duration::from_secs(120), || async {
        let cells = member_cells(&d, "p").await;
        let moved = cells == [names[1].clone(), names[2].clone()];
        (moved && sync_standby(&d, "p").await.as_deref() == Some(new_member.as_str())).then_some(())
    })
    .await;
    eprintln!("partition: replacement is the synchronous standby after {:.1}s", t0.elapsed().as_secs_f64());
    // The cut-off member, still running, does not take writes.
    match psql(&direct, "select pg_is_in_recovery()") {
        Ok(v) => assert_eq!(v, "t", "the cut-off member must not be a primary any more"),
        Err(e) => eprintln!("the cut-off member refuses connections: {e}"),
    }
    assert!(psql(&direct, "insert into t default values").is_err(), "the cut-off member accepted a write");

    // The cut heals: the cell purges the member that moved away, never runs it again.
    link.up();
    let old_container = format!("pgcell-{old_member}");
    wait_for("the moved member purged by its cell", Duration::from_secs(90), || async {
        let gone = !d.containers().contains(&old_container);
        let placement = d.etcd.dump(&format!("/pgcell/placements/{}/p", names[0])).await;
        (gone && placement.is_empty() && dir_is_empty_or_missing(&d.cells[0].data_root)).then_some(())
    })
    .await;
    assert_ne!(d.leader("p").await.as_deref(), Some(old_member.as_str()), "no split brain");
    assert_eq!(psql(&url, "select count(*) > 0 from t").unwrap(), "t");
}
