//! Backups with real pgBackRest and PostgreSQL: the first backup after
//! provisioning, point-in-time restore through the broker, clones, restore of
//! a deprovisioned instance, bad targets.

mod common;

use std::time::{Duration, Instant};

use common::http::osb;
use common::*;
use pgcell::broker::catalog::{PLANS, SERVICE_ID};
use serde_json::{Value, json};

fn plan_id(name: &str) -> &'static str {
    PLANS.iter().find(|p| p.name == name).unwrap().id
}

fn provision_body(plan: &str, params: Value) -> String {
    json!({"service_id": SERVICE_ID, "plan_id": plan_id(plan), "organization_guid": "org", "space_guid": "space", "parameters": params})
        .to_string()
}

async fn provision(broker: &str, id: &str, plan: &str, params: Value) -> common::http::Resp {
    osb(
        "PUT",
        &format!("{broker}/v2/service_instances/{id}?accepts_incomplete=true"),
        Some(&provision_body(plan, params)),
    )
    .await
}

/// Polls `last_operation` until it settles; (state or "gone", description).
async fn wait_operation(broker: &str, id: &str, timeout: Duration) -> (String, String) {
    let t0 = Instant::now();
    let url = format!("{broker}/v2/service_instances/{id}/last_operation");
    let mut last = String::new();
    loop {
        let r = osb("GET", &url, None).await;
        if r.status == 410 {
            return ("gone".into(), String::new());
        }
        assert_eq!(r.status, 200, "{}", r.text);
        let (state, desc) =
            (r.body["state"].as_str().unwrap().to_string(), r.body["description"].as_str().unwrap_or("").to_string());
        if desc != last {
            eprintln!("  [{:5.1}s] {id}: {state}: {desc}", t0.elapsed().as_secs_f64());
            last = desc.clone();
        }
        if state != "in progress" {
            return (state, desc);
        }
        assert!(t0.elapsed() < timeout, "operation on {id} still in progress after {timeout:?}: {desc}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The instance's backup state as the leader's cell published it.
async fn backup_state(d: &Deployment, id: &str) -> Option<Value> {
    let mut c = d.etcd.client().await;
    let resp = c.get(format!("/pgcell/backups/{id}"), None).await.ok()?;
    resp.kvs().first().map(|kv| serde_json::from_slice(kv.value()).unwrap())
}

/// Waits for at least `n` backups of the instance.
async fn wait_backups(d: &Deployment, id: &str, n: usize, timeout: Duration) -> Value {
    wait_for(&format!("{n} backup(s) of {id}"), timeout, || async move {
        backup_state(d, id).await.filter(|s| s["info"]["backups"].as_array().is_some_and(|b| b.len() >= n))
    })
    .await
}

/// The superuser URL of the instance's `app` database, through the router.
async fn app_url(d: &Deployment, id: &str) -> String {
    let url = d.superuser_url(id, d.router_port(id).await).await;
    format!("{}/app", url.strip_suffix("/postgres").unwrap())
}

#[tokio::test]
async fn first_backup_after_provisioning_and_on_demand() {
    let mut d = Deployment::start(1).await;
    d.start_router("r1", 8000).await;
    let broker = d.start_broker("b1").await;
    let t0 = Instant::now();
    assert_eq!(provision(&broker, "f1", "single", json!({})).await.status, 202);
    let (state, desc) = wait_operation(&broker, "f1", Duration::from_secs(120)).await;
    assert_eq!(state, "succeeded", "{desc}");
    let provisioned = t0.elapsed().as_secs_f64();
    let s = wait_backups(&d, "f1", 1, Duration::from_secs(120)).await;
    eprintln!(
        "provisioned in {provisioned:.1} s; first backup done {:.1} s after the request",
        t0.elapsed().as_secs_f64()
    );
    assert_eq!(s["info"]["backups"][0]["kind"], "full");
    // The WAL archive moves (archive_timeout 10 s in tests, heartbeats commit).
    wait_for("WAL archived", Duration::from_secs(60), || async {
        backup_state(&d, "f1").await.filter(|s| s["last_archived_wal"].is_string())
    })
    .await;
    let out = d.pgcell(&["backups", "f1"]);
    eprintln!("{out}");
    assert!(out.starts_with("f1: recoverable from "), "{out}");
    assert!(out.contains(" full "), "{out}");

    // On demand, through the CLI (waits for it) and through the broker's update.
    let out = d.pgcell(&["backup", "f1", "--type", "diff"]);
    assert!(out.contains("done: diff"), "{out}");
    let upd = json!({"service_id": SERVICE_ID, "parameters": {"backup": "full"}}).to_string();
    let r = osb("PATCH", &format!("{broker}/v2/service_instances/f1?accepts_incomplete=true"), Some(&upd)).await;
    assert!(r.status == 200 || r.status == 202, "{}", r.text);
    let s = wait_backups(&d, "f1", 3, Duration::from_secs(120)).await;
    let kinds: Vec<&str> =
        s["info"]["backups"].as_array().unwrap().iter().map(|b| b["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["full", "diff", "full"]);
    let bad = json!({"service_id": SERVICE_ID, "parameters": {"backup": "yesterday"}}).to_string();
    let r = osb("PATCH", &format!("{broker}/v2/service_instances/f1?accepts_incomplete=true"), Some(&bad)).await;
    assert_eq!(r.status, 400, "{}", r.text);
}
