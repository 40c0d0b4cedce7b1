//! OSB protocol rules against an in-process broker and a real etcd, no Docker:
//! auth and version before any lookup on every route, field presence and
//! types, conflicts, polling, and operations that advance with nobody polling.

mod common;

use std::time::{Duration, Instant};

use common::http::{osb, osb_with};
use common::inproc::start_broker;
use common::*;
use pgcell::broker::catalog::{PLANS, SERVICE_ID};
use serde_json::{Value, json};

fn plan_id(name: &str) -> &'static str {
    PLANS.iter().find(|p| p.name == name).unwrap().id
}

fn provision_body(plan: &str, params: Value) -> Value {
    json!({"service_id": SERVICE_ID, "plan_id": plan_id(plan), "organization_guid": "org", "space_guid": "space", "parameters": params})
}

fn with(mut body: Value, field: &str, value: Value) -> String {
    if value.is_null() {
        body.as_object_mut().unwrap().remove(field);
    } else {
        body[field] = value;
    }
    body.to_string()
}

/// A cell record with no agent behind it: placements succeed, members never start.
async fn fake_cell(etcd: &Etcd, name: &str, capacity: u32) {
    let rec = json!({"name": name, "deployment": "t", "advertise_host": "127.0.0.1", "api_url": "",
        "port_range": "31000-31019", "capacity": capacity, "zone": ""});
    etcd.client().await.put(format!("/pgcell/cells/{name}"), rec.to_string(), None).await.unwrap();
}

/// An instance as a finished provision leaves it, with one binding (no PostgreSQL needed to read it).
async fn ready_instance(etcd: &Etcd, id: &str, port: u16) {
    let mut c = etcd.client().await;
    let spec = json!({"service_id": SERVICE_ID, "plan_id": plan_id("single"), "parameters": {"extensions": []},
        "organization_guid": "org", "space_guid": "space"});
    let op =
        json!({"id": "provision-x", "kind": "provision", "state": "succeeded", "description": "ready", "started": 1});
    let binding = json!({"id": "k1", "username": "b_k1", "password": "pw1",
        "request": {"service_id": SERVICE_ID, "plan_id": plan_id("single"), "app_guid": "app-1"}});
    for (k, v) in [
        ("spec", spec.to_string()),
        ("operation", op.to_string()),
        ("router_port", port.to_string()),
        ("bindings/k1", binding.to_string()),
    ] {
        c.put(format!("/pgcell/instances/{id}/{k}"), v, None).await.unwrap();
    }
}

async fn operation(etcd: &Etcd, id: &str) -> Option<Value> {
    let kv = etcd.dump(&format!("/pgcell/instances/{id}/operation")).await;
    kv.first().map(|(_, v)| serde_json::from_str(v).unwrap())
}

async fn stable_dump(etcd: &Etcd) -> Vec<(String, String)> {
    etcd.dump("/pgcell/")
        .await
        .into_iter()
        .filter(|(k, _)| !k.ends_with("/operation") && !k.ends_with("/driving") && k != "/pgcell/healer")
        .collect()
}

#[tokio::test]
async fn auth_then_version_before_any_lookup_on_every_route() {
    let etcd = Etcd::start();
    let broker = start_broker(&etcd.endpoint, "b1", (41000, 41009));
    wait_for("the broker", Duration::from_secs(10), || async {
        (osb("GET", &format!("{broker}/v2/catalog"), None).await.status == 200).then_some(())
    })
    .await;
    let i = format!("{broker}/v2/service_instances/nope");
    let routes = [
        ("GET", format!("{broker}/v2/catalog")),
        ("PUT", i.clone()),
        ("GET", i.clone()),
        ("PATCH", i.clone()),
        ("DELETE", i.clone()),
        ("GET", format!("{i}/last_operation")),
        ("PUT", format!("{i}/service_bindings/b")),
        ("GET", format!("{i}/service_bindings/b")),
        ("DELETE", format!("{i}/service_bindings/b")),
        ("GET", format!("{i}/service_bindings/b/last_operation")),
    ];
    let auth = Some(("broker", BROKER_PASSWORD));
    for (method, url) in &routes {
        let v = [("X-Broker-API-Version", "2.17")];
        let r = osb_with(method, url, Some("{nope"), &v, None).await;
        assert_eq!(r.status, 401, "{method} {url} without credentials: {}", r.text);
        let r = osb_with(method, url, Some("{nope"), &v, Some(("broker", "wrong"))).await;
        assert_eq!(r.status, 401, "{method} {url} with a wrong password: {}", r.text);
        let r = osb_with(method, url, Some("{nope"), &[], auth).await;
        assert_eq!(r.status, 412, "{method} {url} without a version: {}", r.text);
        assert!(r.body["description"].is_string(), "{method} {url}: no OSB error body: {}", r.text);
    }
    let catalog = format!("{broker}/v2/catalog");
    for v in ["2.12", "abc", "3.0"] {
        let r = osb_with("GET", &catalog, None, &[("X-Broker-API-Version", v)], auth).await;
        assert_eq!(r.status, 412, "version {v}: {}", r.text);
    }
    for path in ["/metrics", "/debug/actors"] {
        assert_eq!(osb_with("GET", &format!("{broker}{path}"), None, &[], None).await.status, 401, "{path}");
    }
    let huge = format!(r#"{{"service_id":"{SERVICE_ID}","x":"{}"}}"#, "a".repeat(100_000));
    let r = osb("PUT", &format!("{i}?accepts_incomplete=true"), Some(&huge)).await;
    assert_eq!(r.status, 413, "{}", r.text);
    // The fleet CA is the broker's own start-up write, not a request's.
    let written: Vec<_> = etcd
        .dump("/pgcell/")
        .await
        .into_iter()
        .filter(|(k, _)| k != "/pgcell/healer" && k != "/pgcell/tls/ca")
        .collect();
    assert!(written.is_empty(), "rejected requests wrote to etcd: {written:?}");
    // The request identity is echoed; requests are counted by endpoint and status.
    let r = reqwest::Client::new()
        .get(&catalog)
        .basic_auth("broker", Some(BROKER_PASSWORD))
        .header("X-Broker-API-Version", "2.17")
        .header("X-Broker-API-Request-Identity", "req-42")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers().get("x-broker-api-request-identity").unwrap(), "req-42");
    let metrics = osb_with("GET", &format!("{broker}/metrics"), None, &[], auth).await;
    assert!(
        metrics.text.contains("pgcell_http_requests_total{endpoint=\"GET /v2/catalog\",status=\"412\"}"),
        "{}",
        metrics.text
    );
}

/// Method, URL, body, expected status, expected OSB error code.
type Case = (&'static str, String, Option<String>, u16, Option<&'static str>);

#[tokio::test]
async fn bad_requests_get_400_and_change_nothing() {
    let etcd = Etcd::start();
    fake_cell(&etcd, "c1", 4).await;
    let broker = start_broker(&etcd.endpoint, "b1", (41010, 41019));
    let inst = |id: &str| format!("{broker}/v2/service_instances/{id}?accepts_incomplete=true");
    wait_for("the broker", Duration::from_secs(10), || async {
        (osb("GET", &format!("{broker}/v2/catalog"), None).await.status == 200).then_some(())
    })
    .await;
    // One instance in progress (its member never starts), one ready with a binding.
    let r = osb("PUT", &inst("p1"), Some(&provision_body("single", json!({})).to_string())).await;
    assert_eq!(r.status, 202, "{}", r.text);
    ready_instance(&etcd, "q1", 41011).await;
    // Placed with its secrets, then its router port (the driver's next step, 0.5 s
    // later): from then on it only reports "waiting for a leader".
    wait_for("p1 placed by the background driver", Duration::from_secs(10), || async {
        (!etcd.dump("/pgcell/placements/").await.is_empty()
            && !etcd.dump("/pgcell/instances/p1/secrets").await.is_empty()
            && !etcd.dump("/pgcell/instances/p1/router_port").await.is_empty())
        .then_some(())
    })
    .await;
    let before = stable_dump(&etcd).await;

    let good = provision_body("single", json!({}));
    let bind = json!({"service_id": SERVICE_ID, "plan_id": plan_id("single")});
    let upd = json!({"service_id": SERVICE_ID});
    let q = format!("service_id={SERVICE_ID}&plan_id={}", plan_id("single"));
    let b = |id: &str, bid: &str| format!("{broker}/v2/service_instances/{id}/service_bindings/{bid}");
    let cases: Vec<Case> = vec![
        ("PUT", inst("n1"), Some(with(good.clone(), "organization_guid", Value::Null)), 400, None),
        ("PUT", inst("n1"), Some(with(good.clone(), "organization_guid", json!(""))), 400, None),
        ("PUT", inst("n1"), Some(with(good.clone(), "space_guid", Value::Null)), 400, None),
        ("PUT", inst("n1"), Some(with(good.clone(), "space_guid", json!(3))), 400, None),
        ("PUT", inst("n1"), Some(with(good.clone(), "context", json!("cf"))), 400, None),
        ("PUT", inst("n1"), Some(with(good.clone(), "context", json!([]))), 400, None),
        ("PUT", inst("n1"), Some(with(good.clone(), "parameters", json!("x"))), 400, None),
        ("PUT", inst("n1"), Some(with(good.clone(), "maintenance_info", json!(1))), 400, None),
        ("PUT", inst("n1"), Some(with(good.clone(), "maintenance_info", json!({"version": 2}))), 400, None),
        (
            "PUT",
            inst("n1"),
            Some(with(good.clone(), "maintenance_info", json!({"version": "1.0.0"}))),
            422,
            Some("MaintenanceInfoConflict"),
        ),
        ("PUT", inst("n1"), Some(with(good.clone(), "service_id", json!(1))), 400, None),
        ("PUT", inst("n1"), Some(with(good.clone(), "plan_id", Value::Null)), 400, None),
        ("PUT", inst("n1"), Some("[]".into()), 400, None),
        ("PUT", inst("n1"), Some("{nope".into()), 400, None),
        ("PUT", inst("n1"), None, 400, None),
        ("PUT", inst("n1"), Some(with(good.clone(), "maintenance_info", json!({}))), 202, None),
        ("PUT", format!("{broker}/v2/service_instances/n2"), Some(good.to_string()), 422, Some("AsyncRequired")),
        (
            "PUT",
            format!("{broker}/v2/service_instances/n2?accepts_incomplete=maybe"),
            Some(good.to_string()),
            400,
            None,
        ),
        ("PUT", inst("p1"), Some(provision_body("ha-3", json!({})).to_string()), 409, None),
        ("PUT", inst("p1"), Some(provision_body("single", json!({})).to_string()), 202, None),
        ("PATCH", inst("q1"), Some(with(upd.clone(), "context", json!("x"))), 400, None),
        ("PATCH", inst("q1"), Some(with(upd.clone(), "parameters", json!(1))), 400, None),
        ("PATCH", inst("q1"), Some(with(upd.clone(), "previous_values", json!("x"))), 400, None),
        ("PATCH", inst("q1"), Some(with(upd.clone(), "previous_values", json!({"plan_id": 1}))), 400, None),
        ("PATCH", inst("q1"), Some(with(upd.clone(), "service_id", Value::Null)), 400, None),
        ("PATCH", inst("q1"), Some(with(upd.clone(), "plan_id", json!("nope"))), 400, None),
        ("PATCH", inst("q1"), Some(upd.to_string()), 200, None),
        (
            "PATCH",
            inst("p1"),
            Some(with(upd.clone(), "plan_id", json!(plan_id("ha-2")))),
            422,
            Some("ConcurrencyError"),
        ),
        ("PATCH", inst("zz"), Some(upd.to_string()), 404, None),
        ("GET", format!("{broker}/v2/service_instances/zz"), None, 404, None),
        ("GET", format!("{broker}/v2/service_instances/p1"), None, 404, None),
        ("GET", format!("{broker}/v2/service_instances/zz/last_operation"), None, 404, None),
        ("GET", format!("{broker}/v2/service_instances/q1/last_operation?operation="), None, 400, None),
        ("GET", format!("{broker}/v2/service_instances/q1/last_operation?operation=other"), None, 200, None),
        ("PUT", inst("n3"), Some(with(good.clone(), "maintenance_info", json!({"description": "x"}))), 400, None),
        ("DELETE", format!("{}&{q}", inst("zz")), None, 410, None),
        ("DELETE", inst("q1"), None, 400, None),
        ("DELETE", format!("{}&service_id=&plan_id={}", inst("q1"), plan_id("single")), None, 400, None),
        ("DELETE", format!("{broker}/v2/service_instances/q1?{q}"), None, 422, Some("AsyncRequired")),
        ("DELETE", format!("{}&{q}", inst("p1")), None, 422, Some("ConcurrencyError")),
        ("PUT", inst("a.b"), Some(good.to_string()), 400, None),
        ("PUT", inst(&"x".repeat(64)), Some(good.to_string()), 400, None),
        ("PUT", b("zz", "k2"), Some(bind.to_string()), 404, None),
        ("PUT", b("p1", "k2"), Some(bind.to_string()), 422, Some("ConcurrencyError")),
        ("PUT", b("q1", "k2"), Some(with(bind.clone(), "app_guid", json!(5))), 400, None),
        ("PUT", b("q1", "k2"), Some(with(bind.clone(), "app_guid", json!(""))), 400, None),
        ("PUT", b("q1", "k2"), Some(with(bind.clone(), "bind_resource", json!("app"))), 400, None),
        ("PUT", b("q1", "k2"), Some(with(bind.clone(), "bind_resource", json!({"app_guid": 1}))), 400, None),
        ("PUT", b("q1", "k2"), Some(with(bind.clone(), "context", json!(1))), 400, None),
        ("PUT", b("q1", "k2"), Some(with(bind.clone(), "parameters", json!([]))), 400, None),
        ("PUT", b("q1", "k2"), Some(with(bind.clone(), "parameters", json!({"x": 1}))), 400, None),
        ("PUT", b("q1", "k2"), Some(with(bind.clone(), "plan_id", json!(plan_id("ha-2")))), 400, None),
        ("PUT", b("q1", "k2"), Some(with(bind.clone(), "service_id", Value::Null)), 400, None),
        ("PUT", b("q1", "k1"), Some(with(bind.clone(), "app_guid", json!("app-2"))), 409, None),
        ("PUT", b("q1", "k1"), Some(bind.to_string()), 409, None),
        ("PUT", b("q1", "k1"), Some(with(bind.clone(), "bind_resource", json!({"app_guid": "x"}))), 409, None),
        ("PUT", b("q1", "k1"), Some(with(bind.clone(), "plan_id", json!(plan_id("ha-2")))), 409, None),
        ("GET", b("q1", "k9"), None, 404, None),
        ("GET", format!("{}?plan_id=", b("q1", "k1")), None, 400, None),
        ("GET", format!("{}/last_operation", b("q1", "k9")), None, 404, None),
        ("GET", format!("{}/last_operation", b("zz", "k1")), None, 404, None),
        ("DELETE", format!("{}?{q}", b("q1", "k9")), None, 410, None),
        ("DELETE", b("q1", "k1"), None, 400, None),
        ("DELETE", format!("{}?service_id={SERVICE_ID}", b("q1", "k1")), None, 400, None),
        ("POST", format!("{broker}/v2/service_instances/p1"), None, 404, None),
    ];
    for (method, url, body, want, code) in cases {
        let r = osb(method, &url, body.as_deref()).await;
        assert_eq!(r.status, want, "{method} {url} {body:?}: {}", r.text);
        if want >= 400 {
            assert!(r.body["description"].is_string(), "{method} {url}: no OSB error body: {}", r.text);
        }
        if let Some(code) = code {
            assert_eq!(r.body["error"], code, "{method} {url}: {}", r.text);
        }
    }
    // n1's PUT with an empty maintenance_info was accepted ({} means none): drop it from the comparison.
    // Its router port claim (`/pgcell/router_ports/<port>` = "n1") too, once the driver got that far.
    let n1 = |k: &str, v: &str| {
        k.contains("/n1/")
            || k.ends_with("/n1")
            || v.contains("cf-n1-")
            || (k.starts_with("/pgcell/router_ports/") && v == "n1")
    };
    let after: Vec<_> = stable_dump(&etcd).await.into_iter().filter(|(k, v)| !n1(k, v)).collect();
    assert_eq!(after, before, "bad requests changed etcd");
}

#[tokio::test]
async fn bindings_retry_and_polling() {
    let etcd = Etcd::start();
    let broker = start_broker(&etcd.endpoint, "b1", (41020, 41029));
    ready_instance(&etcd, "q1", 41021).await;
    let b = format!("{broker}/v2/service_instances/q1/service_bindings/k1");
    let same = json!({"service_id": SERVICE_ID, "plan_id": plan_id("single"), "app_guid": "app-1"});
    let r = wait_for("the broker", Duration::from_secs(10), || async {
        let r = osb("PUT", &b, Some(&same.to_string())).await;
        (r.status != 0).then_some(r)
    })
    .await;
    assert_eq!(r.status, 200, "an identical retry: {}", r.text);
    assert_eq!(r.body["credentials"]["password"], "pw1", "the same credentials");
    assert_eq!(r.body["credentials"]["port"], 41021);
    let r = osb("GET", &format!("{b}/last_operation"), None).await;
    assert_eq!((r.status, r.body["state"].as_str()), (200, Some("succeeded")), "{}", r.text);
    let r = osb("GET", &format!("{broker}/v2/service_instances/q1/last_operation"), None).await;
    assert_eq!((r.status, r.body["state"].as_str()), (200, Some("succeeded")), "{}", r.text);
    // An id whose backups are kept (a deprovisioned instance's) is refused: its
    // stanza is the id, and a new cluster's replicas would restore the old one's data.
    let state = json!({"instance_id": "kept1", "deleted_at": 1000});
    etcd.client().await.put("/pgcell/backups/kept1", state.to_string(), None).await.unwrap();
    let before = stable_dump(&etcd).await;
    let body = provision_body("single", json!({})).to_string();
    let r = osb("PUT", &format!("{broker}/v2/service_instances/kept1?accepts_incomplete=true"), Some(&body)).await;
    assert_eq!(r.status, 409, "{}", r.text);
    assert!(r.body["description"].as_str().unwrap().contains("another id"), "{}", r.text);
    assert_eq!(stable_dump(&etcd).await, before, "a refused provision changes nothing");
    // A deprovisioned instance is remembered: 410 Gone (the platform forgets it), unlike an unknown one.
    etcd.client().await.put("/pgcell/deleted/gone1", "deprovision-x", None).await.unwrap();
    let r = osb("GET", &format!("{broker}/v2/service_instances/gone1/last_operation"), None).await;
    assert_eq!(r.status, 410, "{}", r.text);
}

#[tokio::test]
async fn operations_advance_with_nobody_polling() {
    let etcd = Etcd::start();
    fake_cell(&etcd, "c1", 4).await;
    let broker = start_broker(&etcd.endpoint, "b1", (41030, 41039));
    let put = |id: &str, plan: &str| {
        let url = format!("{broker}/v2/service_instances/{id}?accepts_incomplete=true");
        let body = provision_body(plan, json!({})).to_string();
        async move { osb("PUT", &url, Some(&body)).await }
    };
    let r = wait_for("the broker", Duration::from_secs(10), || async {
        let r = put("s1", "single").await;
        (r.status != 0).then_some(r)
    })
    .await;
    assert_eq!(r.status, 202, "{}", r.text);
    assert_eq!(put("h1", "ha-2").await.status, 202);
    let t0 = Instant::now();
    // Nobody polls: etcd is read directly. s1's member is placed, h1 fails (one cell for two members).
    let failed = wait_for("h1 failed by itself", Duration::from_secs(10), || async {
        operation(&etcd, "h1").await.filter(|op| op["state"] == "failed")
    })
    .await;
    assert!(failed["description"].as_str().unwrap().contains("not enough cells"), "{failed}");
    assert!(etcd.dump("/pgcell/instances/h1/secrets").await.is_empty(), "an instance that never fit keeps passwords");
    wait_for("s1 placed by itself", Duration::from_secs(10), || async {
        let placed = etcd.dump("/pgcell/placements/c1/s1").await;
        (!placed.is_empty()).then_some(())
    })
    .await;
    let op = wait_for("s1 waiting for its member", Duration::from_secs(10), || async {
        operation(&etcd, "s1").await.filter(|op| op["description"].as_str().unwrap().contains("waiting for a leader"))
    })
    .await;
    eprintln!("driven without polling in {:.2}s: {op}", t0.elapsed().as_secs_f64());
    assert_eq!(op["state"], "in progress");
}

/// A cell reads its members' passwords and settings from its own
/// `member_env/<cell>/` (its etcd role does not reach `instances/`): each is
/// written with the placement and goes with it.
#[tokio::test]
async fn each_member_gets_its_env_with_its_placement_and_loses_it_with_it() {
    let etcd = Etcd::start();
    fake_cell(&etcd, "c1", 4).await;
    fake_cell(&etcd, "c2", 4).await;
    let broker = start_broker(&etcd.endpoint, "b1", (41060, 41069));
    let url = format!("{broker}/v2/service_instances/e1?accepts_incomplete=true");
    let body = provision_body("ha-2", json!({"archive_timeout": 20, "require_tls": true})).to_string();
    wait_for("the broker", Duration::from_secs(10), || async {
        (osb("PUT", &url, Some(&body)).await.status == 202).then_some(())
    })
    .await;
    let envs = wait_for("both members placed", Duration::from_secs(10), || async {
        let envs = etcd.dump("/pgcell/member_env/").await;
        (envs.len() == 2 && etcd.dump("/pgcell/placements/").await.len() == 2).then_some(envs)
    })
    .await;
    let keys: Vec<&str> = envs.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, ["/pgcell/member_env/c1/e1", "/pgcell/member_env/c2/e1"]);
    let secrets: Value = serde_json::from_str(&etcd.dump("/pgcell/instances/e1/secrets").await[0].1).unwrap();
    for (k, v) in &envs {
        let env: Value = serde_json::from_str(v).unwrap();
        assert_eq!(env["secrets"], secrets, "{k}: not the instance's passwords");
        assert_eq!((env["archive_timeout"].as_u64(), env["require_tls"].as_bool()), (Some(20), Some(true)), "{k}");
    }
    // Written in the placement's own transaction (one revision), not after it
    // (the healer's backfill for older members would also write one).
    let mut c = etcd.client().await;
    let created = |resp: etcd_client::GetResponse| resp.kvs()[0].create_revision();
    for cell in ["c1", "c2"] {
        let env = created(c.get(format!("/pgcell/member_env/{cell}/e1"), None).await.unwrap());
        let placement = created(c.get(format!("/pgcell/placements/{cell}/e1"), None).await.unwrap());
        assert_eq!(env, placement, "{cell}: env and placement not written together");
    }
    // The cell removes a member (after a purge): its env goes in the same transaction.
    let resp = c.get("/pgcell/placements/c1/e1", None).await.unwrap();
    let kv = &resp.kvs()[0];
    let p: pgcell::etcd::store::Placement = serde_json::from_slice(kv.value()).unwrap();
    assert!(pgcell::etcd::store::remove_placement(&mut c, &p, kv.mod_revision()).await.unwrap().done());
    let left: Vec<String> = etcd.dump("/pgcell/member_env/").await.into_iter().map(|(k, _)| k).collect();
    assert_eq!(left, ["/pgcell/member_env/c2/e1"]);
}

#[tokio::test]
async fn a_failing_step_is_retried_with_backoff_and_said_in_the_description() {
    let etcd = Etcd::start();
    fake_cell(&etcd, "c1", 4).await;
    // One router port for the fleet: the second instance's step cannot get one (yet).
    let broker = start_broker(&etcd.endpoint, "b1", (41050, 41050));
    let put = |id: &str| {
        let url = format!("{broker}/v2/service_instances/{id}?accepts_incomplete=true");
        async move { osb("PUT", &url, Some(&provision_body("single", json!({})).to_string())).await }
    };
    wait_for("the broker", Duration::from_secs(10), || async { (put("r1").await.status == 202).then_some(()) }).await;
    wait_for("r1 holding the router port", Duration::from_secs(10), || async {
        (!etcd.dump("/pgcell/instances/r1/router_port").await.is_empty()).then_some(())
    })
    .await;
    assert_eq!(put("r2").await.status, 202);
    let url = format!("{broker}/v2/service_instances/r2/last_operation");
    let r = wait_for("r2's step failing and retried", Duration::from_secs(15), || async {
        let r = osb("GET", &url, None).await;
        r.body["description"].as_str().is_some_and(|d| d.contains("retrying after")).then_some(r)
    })
    .await;
    assert_eq!(r.status, 200, "polling never gets a 500 for a failed step");
    assert_eq!(r.body["state"], "in progress", "a transient failure does not fail the operation");
    assert!(r.body["description"].as_str().unwrap().contains("no free router port"), "{}", r.text);
    // (The backoff itself, 0.5 s doubling to 15 s, is unit-tested in broker::driver.)
    // Freeing the port (r1's keys deleted by hand here, as a deprovision would) lets r2 go on by itself.
    let mut c = etcd.client().await;
    let prefix = Some(etcd_client::DeleteOptions::new().with_prefix());
    c.delete("/pgcell/instances/r1/", prefix).await.unwrap();
    c.delete("/pgcell/router_ports/41050", None).await.unwrap();
    wait_for("r2 past the failing step", Duration::from_secs(30), || async {
        (!etcd.dump("/pgcell/instances/r2/router_port").await.is_empty()).then_some(())
    })
    .await;
}
