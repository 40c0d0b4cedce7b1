//! Broker and backup helpers for the backup tests.

use std::time::{Duration, Instant};

use pgcell::broker::catalog::{PLANS, SERVICE_ID};
use serde_json::{Value, json};

use super::http::osb;
use super::{Deployment, psql, wait_for};

pub fn plan_id(name: &str) -> &'static str {
    PLANS.iter().find(|p| p.name == name).unwrap().id
}

pub fn provision_body(plan: &str, params: Value) -> String {
    json!({"service_id": SERVICE_ID, "plan_id": plan_id(plan), "organization_guid": "org", "space_guid": "space", "parameters": params})
        .to_string()
}

pub async fn provision(broker: &str, id: &str, plan: &str, params: Value) -> super::http::Resp {
    osb(
        "PUT",
        &format!("{broker}/v2/service_instances/{id}?accepts_incomplete=true"),
        Some(&provision_body(plan, params)),
    )
    .await
}

/// Polls `last_operation` until it settles; (state or "gone", description).
pub async fn wait_operation(broker: &str, id: &str, timeout: Duration) -> (String, String) {
    let (state, desc, _) = super::http::wait_operation(broker, id, timeout).await;
    (state, desc)
}

/// The instance's backup state as the leader's cell published it.
pub async fn backup_state(d: &Deployment, id: &str) -> Option<Value> {
    let mut c = d.etcd.client().await;
    let resp = c.get(format!("/pgcell/backups/{id}"), None).await.ok()?;
    resp.kvs().first().map(|kv| serde_json::from_slice(kv.value()).unwrap())
}

/// Waits for at least `n` backups of the instance.
pub async fn wait_backups(d: &Deployment, id: &str, n: usize, timeout: Duration) -> Value {
    wait_for(&format!("{n} backup(s) of {id}"), timeout, || async move {
        backup_state(d, id).await.filter(|s| s["info"]["backups"].as_array().is_some_and(|b| b.len() >= n))
    })
    .await
}

/// The superuser URL of the instance's `app` database, through the router.
pub async fn app_url(d: &Deployment, id: &str) -> String {
    let url = d.superuser_url(id, d.router_port(id).await).await;
    format!("{}/app", url.strip_suffix("/postgres").unwrap())
}

/// Provisions `id` restored from `restore`, retrying while the target is not
/// archived yet (the broker says so with a 400); returns the last response.
pub async fn provision_restore(broker: &str, id: &str, restore: Value) -> super::http::Resp {
    let t0 = Instant::now();
    loop {
        let r = provision(broker, id, "single", json!({"restore": restore})).await;
        let waiting = r.status == 400 && r.text.contains("after the last archived WAL");
        if !waiting || t0.elapsed() > Duration::from_secs(90) {
            return r;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

pub fn count(url: &str) -> String {
    psql(url, "select count(*) from t").unwrap()
}

/// The value of a metric line `name{instance="id"} v` on the cell's `/metrics`.
pub async fn metric(d: &Deployment, name: &str, id: &str) -> Option<u64> {
    let text = super::http::call("GET", &d.cells[0].url("/metrics"), super::http::SEED_AUTH, None).await.text;
    let prefix = format!("{name}{{instance=\"{id}\"}} ");
    text.lines().find_map(|l| l.strip_prefix(&prefix)?.parse().ok())
}
