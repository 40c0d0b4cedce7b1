//! The seed's walkthrough on two real cells: PUT on cell A gives a leader,
//! PUT on cell B a streaming replica; the operator tools print the seed's
//! formats; DELETE on both removes containers, data and keys.

mod common;

use std::time::{Duration, Instant};

use common::http::{SEED_AUTH, call};
use common::*;

#[tokio::test]
async fn seed_walkthrough_leader_replica_tools_and_delete() {
    let d = Deployment::start(2).await;
    let (a, b) = (&d.cells[0], &d.cells[1]);

    let t0 = Instant::now();
    let r = call("PUT", &a.url("/v2/service_instances/1"), SEED_AUTH, Some(&seed_body())).await;
    assert_eq!(r.status, 201, "{}", r.text);
    let leader_port = a.ports.0;
    let expect = format!("cf-1 postgres:// 127.0.0.1 {leader_port} postgres");
    wait_for("a leader on cell A", Duration::from_secs(60), || {
        let out = d.pgcell(&["leaders"]);
        let expect = expect.clone();
        async move { (out.trim() == expect).then_some(()) }
    })
    .await;
    let url = d.superuser_url("1", leader_port).await;
    wait_for("the leader accepting writes", Duration::from_secs(30), || {
        let url = url.clone();
        async move { psql(&url, "create table if not exists t(x int)").ok() }
    })
    .await;
    eprintln!("PUT to writable leader: {:.1}s", t0.elapsed().as_secs_f64());

    // Same PUT again: idempotent.
    let r = call("PUT", &a.url("/v2/service_instances/1"), SEED_AUTH, Some(&seed_body())).await;
    assert_eq!(r.status, 200, "{}", r.text);

    let t1 = Instant::now();
    let r = call("PUT", &b.url("/v2/service_instances/1"), SEED_AUTH, Some(&seed_body())).await;
    assert_eq!(r.status, 201, "{}", r.text);
    let replica = format!("cf-1-{}", b.name);
    wait_for("cell B's member streaming", Duration::from_secs(90), || {
        let url = url.clone();
        let replica = replica.clone();
        async move {
            let sql = format!("select state from pg_stat_replication where application_name = '{replica}'");
            psql(&url, &sql).ok().filter(|s| s == "streaming")
        }
    })
    .await;
    eprintln!("second PUT to streaming replica: {:.1}s", t1.elapsed().as_secs_f64());

    // A write on the leader reaches the replica.
    psql(&url, "insert into t values (42)").unwrap();
    let replica_url = d.superuser_url("1", b.ports.0).await;
    wait_for("the row on the replica", Duration::from_secs(10), || {
        let u = replica_url.clone();
        async move { psql(&u, "select x from t").ok().filter(|s| s == "42") }
    })
    .await;

    // Neither member runs anything as root or keeps a capability.
    for cell in [a, b] {
        assert_least_privilege(&format!("pgcell-cf-1-{}", cell.name));
    }

    // The operator tools, and the seed's scripts, print the seed's formats.
    wait_for("states to show both members running", Duration::from_secs(30), || {
        let out = d.pgcell(&["states"]);
        async move { (out == "cf-1 master/running/127.0.0.1 replica/running/127.0.0.1 \n").then_some(()) }
    })
    .await;
    let script = std::process::Command::new("scripts/leaders.sh")
        .env("PGCELL_BIN", pgcell_bin())
        .env("PGCELL_ETCD_ENDPOINTS", &d.etcd.endpoint)
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&script.stdout).trim(),
        format!("cf-1 postgres:// 127.0.0.1 {leader_port} postgres")
    );
    let script = std::process::Command::new("scripts/service_states.sh")
        .env("PGCELL_BIN", pgcell_bin())
        .env("PGCELL_ETCD_ENDPOINTS", &d.etcd.endpoint)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&script.stdout), "cf-1 master/running/127.0.0.1 replica/running/127.0.0.1 \n");

    // DELETE on both cells removes containers, data and the cluster's keys.
    assert_eq!(d.containers().len(), 2);
    let q = format!("?service_id={SEED_SERVICE}&plan_id={SEED_PLAN}");
    for cell in [b, a] {
        let r = call("DELETE", &cell.url(&format!("/v2/service_instances/1{q}")), SEED_AUTH, None).await;
        assert_eq!(r.status, 200, "{}", r.text);
    }
    assert!(d.containers().is_empty(), "containers left: {:?}", d.containers());
    for cell in [a, b] {
        assert!(dir_is_empty_or_missing(&cell.data_root), "data left in {}", cell.data_root.display());
    }
    assert!(d.etcd.dump("/service/").await.is_empty());
    let (backups, left): (Vec<_>, Vec<_>) = d
        .etcd
        .dump("/pgcell/")
        .await
        .into_iter()
        .filter(|(k, _)| !k.starts_with("/pgcell/cells/") && k != "/pgcell/tls/ca")
        .partition(|(k, _)| k == "/pgcell/backups/1");
    assert!(left.is_empty(), "keys left: {left:?}");
    // The backup state outlives the instance (restorable for the retention period), marked deleted.
    for (_, v) in backups {
        assert!(serde_json::from_str::<serde_json::Value>(&v).unwrap()["deleted_at"].is_u64(), "{v}");
    }
    // A DELETE of what is gone is 410, as OSB says.
    let r = call("DELETE", &a.url(&format!("/v2/service_instances/1{q}")), SEED_AUTH, None).await;
    assert_eq!(r.status, 410, "{}", r.text);
    assert_eq!(d.pgcell(&["leaders"]), "");
}

/// The per-cell DELETE writes an intent (placement marked `purge`) that the cell
/// carries out: an agent dead before it did still removes everything on restart.
#[tokio::test]
async fn a_purge_intent_outlives_the_agent() {
    let mut d = Deployment::start(1).await;
    seed_cluster(&d, "5", &[0]).await;
    assert_eq!(d.containers().len(), 1);
    // The DELETE's first step, then the agent dies before carrying it out.
    d.cells[0].kill_agent();
    let mut c = d.etcd.client().await;
    let key = format!("/pgcell/placements/{}/5", d.cells[0].name);
    let mut p: serde_json::Value =
        serde_json::from_slice(c.get(key.as_str(), None).await.unwrap().kvs()[0].value()).unwrap();
    p["purge"] = serde_json::json!(true);
    c.put(key.as_str(), p.to_string(), None).await.unwrap();
    assert_eq!(d.containers().len(), 1, "the member still runs while its agent is down");
    d.cells[0].start_agent();
    wait_for("the member purged by the restarted agent", Duration::from_secs(60), || async {
        let keys: Vec<_> = d
            .etcd
            .dump("/pgcell/")
            .await
            .into_iter()
            .filter(|(k, _)| !k.starts_with("/pgcell/cells/") && k != "/pgcell/tls/ca")
            .collect();
        (keys.is_empty() && d.containers().is_empty() && d.etcd.dump("/service/").await.is_empty()).then_some(())
    })
    .await;
    assert!(dir_is_empty_or_missing(&d.cells[0].data_root), "data left in {}", d.cells[0].data_root.display());
}
