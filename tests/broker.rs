//! The Open Service Broker with real cells, routers, Patroni and psql.

mod common;

use std::time::{Duration, Instant};

use common::http::{osb, osb_with};
use common::*;
use pgcell::broker::catalog::{self, PLANS, SERVICE_ID};
use serde_json::{Value, json};

fn plan_id(name: &str) -> &'static str {
    PLANS.iter().find(|p| p.name == name).unwrap().id
}

fn provision_body(plan: &str, params: Value) -> String {
    json!({"service_id": SERVICE_ID, "plan_id": plan_id(plan), "organization_guid": "org", "space_guid": "space", "parameters": params})
        .to_string()
}

/// Polls `last_operation` until it is no longer in progress; returns (state or "gone", description, seconds).
async fn wait_operation(broker: &str, id: &str, timeout: Duration) -> (String, String, f64) {
    let t0 = Instant::now();
    let url = format!("{broker}/v2/service_instances/{id}/last_operation");
    let mut last = String::new();
    loop {
        let r = osb("GET", &url, None).await;
        if r.status == 410 {
            return ("gone".into(), String::new(), t0.elapsed().as_secs_f64());
        }
        assert_eq!(r.status, 200, "{}", r.text);
        let (state, desc) =
            (r.body["state"].as_str().unwrap().to_string(), r.body["description"].as_str().unwrap_or("").to_string());
        if desc != last {
            eprintln!("  [{:5.1}s] {id}: {state}: {desc}", t0.elapsed().as_secs_f64());
            last = desc.clone();
        }
        if state != "in progress" {
            return (state, desc, t0.elapsed().as_secs_f64());
        }
        assert!(t0.elapsed() < timeout, "operation on {id} still in progress after {timeout:?}: {desc}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn member_cells(d: &Deployment, id: &str) -> Vec<String> {
    let mut v: Vec<String> = d
        .containers()
        .into_iter()
        .filter_map(|n| n.strip_prefix(&format!("pgcell-cf-{id}-")).map(String::from))
        .collect();
    v.sort();
    v
}

#[tokio::test]
async fn ha_lifecycle_bind_share_unbind_update_deprovision() {
    let mut d = Deployment::start(3).await;
    d.start_router("r1", 8000).await;
    let broker = d.start_broker("b1").await;
    let inst = format!("{broker}/v2/service_instances/i1");

    let r = osb(
        "PUT",
        &format!("{inst}?accepts_incomplete=true"),
        Some(&provision_body("ha-2", json!({"extensions": ["pgcrypto"]}))),
    )
    .await;
    assert_eq!(r.status, 202, "{}", r.text);
    let op = r.body["operation"].as_str().unwrap().to_string();
    // The same PUT while it runs: 202 with the same operation.
    let again = osb(
        "PUT",
        &format!("{inst}?accepts_incomplete=true"),
        Some(&provision_body("ha-2", json!({"extensions": ["pgcrypto"]}))),
    )
    .await;
    assert_eq!((again.status, again.body["operation"].as_str()), (202, Some(op.as_str())));
    let (state, desc, secs) = wait_operation(&broker, "i1", Duration::from_secs(180)).await;
    assert_eq!(state, "succeeded", "{desc}");
    eprintln!("ha-2 provisioned in {secs:.1}s");
    assert_eq!(member_cells(&d, "i1").len(), 2, "two members on distinct cells");
    let r = osb("GET", &inst, None).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["plan_id"], plan_id("ha-2"));
    assert_eq!(
        osb(
            "PUT",
            &format!("{inst}?accepts_incomplete=true"),
            Some(&provision_body("ha-2", json!({"extensions": ["pgcrypto"]})))
        )
        .await
        .status,
        200
    );

    // Two bindings share tables; the extension is there.
    let bind_body = json!({"service_id": SERVICE_ID, "plan_id": plan_id("ha-2")}).to_string();
    let b1 = osb("PUT", &format!("{inst}/service_bindings/k1"), Some(&bind_body)).await;
    assert_eq!(b1.status, 201, "{}", b1.text);
    let c1 = &b1.body["credentials"];
    for k in ["uri", "jdbcUrl", "hostname", "port", "name", "username", "password"] {
        assert!(!c1[k].is_null(), "credentials lack {k}: {}", b1.text);
    }
    assert_eq!(c1["port"].as_u64().unwrap() as u16, d.router_port("i1").await, "credentials point at the router");
    let uri1 = c1["uri"].as_str().unwrap().to_string();
    psql(&uri1, "create table shared(x int); insert into shared values (1); select digest('a', 'sha256')").unwrap();
    let b2 = osb("PUT", &format!("{inst}/service_bindings/k2"), Some(&bind_body)).await;
    assert_eq!(b2.status, 201, "{}", b2.text);
    let uri2 = b2.body["credentials"]["uri"].as_str().unwrap().to_string();
    assert_ne!(uri1, uri2, "each binding has its own role");
    psql(&uri2, "insert into shared values (2)").unwrap();
    assert_eq!(psql(&uri2, "select count(*) from shared").unwrap(), "2");
    assert_eq!(osb("PUT", &format!("{inst}/service_bindings/k2"), Some(&bind_body)).await.status, 200);
    let fetched = osb("GET", &format!("{inst}/service_bindings/k2"), None).await;
    assert_eq!(fetched.body["credentials"]["uri"].as_str(), Some(uri2.as_str()));

    // Unbind k1: its logins fail, its table stays.
    let q = format!("service_id={SERVICE_ID}&plan_id={}", plan_id("ha-2"));
    let r = osb("DELETE", &format!("{inst}/service_bindings/k1?{q}"), None).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let err = psql(&uri1, "select 1").unwrap_err();
    assert!(err.contains("authentication failed") || err.contains("not permitted"), "{err}");
    assert_eq!(psql(&uri2, "select count(*) from shared").unwrap(), "2");
    assert_eq!(osb("DELETE", &format!("{inst}/service_bindings/k1?{q}"), None).await.status, 410);

    // Update to three members.
    let upd = json!({"service_id": SERVICE_ID, "plan_id": plan_id("ha-3")}).to_string();
    let r = osb("PATCH", &format!("{inst}?accepts_incomplete=true"), Some(&upd)).await;
    assert_eq!(r.status, 202, "{}", r.text);
    let (state, desc, secs) = wait_operation(&broker, "i1", Duration::from_secs(180)).await;
    assert_eq!(state, "succeeded", "{desc}");
    eprintln!("ha-2 -> ha-3 in {secs:.1}s");
    assert_eq!(member_cells(&d, "i1").len(), 3);
    assert_eq!(psql(&uri2, "select count(*) from shared").unwrap(), "2");

    // And back to two: a replica goes, with its data; the leader stays.
    let leader_before = d.leader("i1").await;
    let down = json!({"service_id": SERVICE_ID, "plan_id": plan_id("ha-2")}).to_string();
    let r = osb("PATCH", &format!("{inst}?accepts_incomplete=true"), Some(&down)).await;
    assert_eq!(r.status, 202, "{}", r.text);
    let (state, desc, secs) = wait_operation(&broker, "i1", Duration::from_secs(180)).await;
    assert_eq!(state, "succeeded", "{desc}");
    eprintln!("ha-3 -> ha-2 in {secs:.1}s");
    wait_for("the removed member's container gone", Duration::from_secs(30), || {
        let n = member_cells(&d, "i1").len();
        async move { (n == 2).then_some(()) }
    })
    .await;
    assert_eq!(d.leader("i1").await, leader_before, "the leader was not the member removed");
    assert_eq!(psql(&uri2, "select count(*) from shared").unwrap(), "2");

    // Deprovision: nothing of the instance remains.
    let q3 = format!("service_id={SERVICE_ID}&plan_id={}", plan_id("ha-2"));
    let r = osb("DELETE", &format!("{inst}?accepts_incomplete=true&{q3}"), None).await;
    assert_eq!(r.status, 202, "{}", r.text);
    let (state, _, secs) = wait_operation(&broker, "i1", Duration::from_secs(120)).await;
    assert_eq!(state, "gone");
    eprintln!("deprovisioned in {secs:.1}s");
    assert!(d.containers().is_empty(), "{:?}", d.containers());
    for c in &d.cells {
        assert!(dir_is_empty_or_missing(&c.data_root), "data left in {}", c.data_root.display());
    }
    assert!(d.etcd.dump("/service/").await.is_empty());
    let left: Vec<_> = d
        .etcd
        .dump("/pgcell/")
        .await
        .into_iter()
        .filter(|(k, _)| !k.starts_with("/pgcell/cells/") && !k.starts_with("/pgcell/routers/"))
        .collect();
    assert!(left.is_empty(), "keys left: {left:?}");
    assert_eq!(osb("GET", &inst, None).await.status, 404);
}

#[tokio::test]
async fn single_plan_extensions_and_not_enough_cells() {
    let mut d = Deployment::start(1).await;
    d.start_router("r1", 8000).await;
    let broker = d.start_broker("b1").await;
    let r = osb(
        "PUT",
        &format!("{broker}/v2/service_instances/s1?accepts_incomplete=true"),
        Some(&provision_body("single", json!({"extensions": ["citext", "uuid-ossp"]}))),
    )
    .await;
    assert_eq!(r.status, 202, "{}", r.text);
    let (state, desc, secs) = wait_operation(&broker, "s1", Duration::from_secs(120)).await;
    assert_eq!(state, "succeeded", "{desc}");
    eprintln!("single provisioned in {secs:.1}s");
    // Every extension the catalog offers is in the image.
    let url = d.superuser_url("s1", d.router_port("s1").await).await;
    let url = format!("{}/app", url.strip_suffix("/postgres").unwrap());
    let available = psql(&url, "select string_agg(name, ',') from pg_available_extensions").unwrap();
    for e in catalog::EXTENSIONS {
        assert!(available.split(',').any(|a| a == *e), "{e} is not in the image");
    }
    assert_eq!(psql(&url, "select count(*) from pg_extension where extname in ('citext', 'uuid-ossp')").unwrap(), "2");

    // ha-2 on a one-cell fleet fails, and says why.
    let r = osb(
        "PUT",
        &format!("{broker}/v2/service_instances/s2?accepts_incomplete=true"),
        Some(&provision_body("ha-2", json!({}))),
    )
    .await;
    assert_eq!(r.status, 202, "{}", r.text);
    let (state, desc, _) = wait_operation(&broker, "s2", Duration::from_secs(30)).await;
    assert_eq!(state, "failed");
    assert!(desc.contains("not enough cells"), "{desc}");
}

#[tokio::test]
async fn protocol_rules_and_bad_requests_change_nothing() {
    let mut d = Deployment::start(1).await;
    let broker = d.start_broker("b1").await;
    let good = provision_body("single", json!({}));
    let r = osb("PUT", &format!("{broker}/v2/service_instances/p1?accepts_incomplete=true"), Some(&good)).await;
    assert_eq!(r.status, 202, "{}", r.text);
    // The cell creates the cluster's secrets as it starts the member: wait for that.
    wait_for("the member's secrets", Duration::from_secs(30), || async {
        let has = d.etcd.dump("/pgcell/instances/p1/secrets").await;
        (!has.is_empty()).then_some(())
    })
    .await;
    let before = d.etcd.dump("/pgcell/").await;
    let before: Vec<_> =
        before.into_iter().filter(|(k, _)| !k.ends_with("/operation") && !k.ends_with("/driving")).collect();
    let inst = |id: &str| format!("{broker}/v2/service_instances/{id}");
    let v217 = [("X-Broker-API-Version", "2.17")];
    let auth = Some(("broker", BROKER_PASSWORD));
    let huge =
        format!(r#"{{"service_id":"{SERVICE_ID}","plan_id":"{}","x":"{}"}}"#, plan_id("single"), "a".repeat(100_000));
    type Case = (
        &'static str,
        String,
        Option<String>,
        Vec<(&'static str, &'static str)>,
        Option<(&'static str, &'static str)>,
        u16,
        Option<&'static str>,
    );
    let cases: Vec<Case> = vec![
        ("GET", format!("{broker}/v2/catalog"), None, vec![], auth, 412, None),
        ("GET", format!("{broker}/v2/catalog"), None, vec![("X-Broker-API-Version", "2.12")], auth, 412, None),
        ("GET", format!("{broker}/v2/catalog"), None, vec![("X-Broker-API-Version", "abc")], auth, 412, None),
        ("GET", format!("{broker}/v2/catalog"), None, v217.to_vec(), None, 401, None),
        ("GET", format!("{broker}/v2/catalog"), None, v217.to_vec(), Some(("broker", "nope")), 401, None),
        ("GET", format!("{broker}/metrics"), None, vec![], None, 401, None),
        ("GET", format!("{broker}/debug/actors"), None, vec![], None, 401, None),
        ("PUT", inst("n1"), Some(good.clone()), v217.to_vec(), auth, 422, Some("AsyncRequired")),
        (
            "PUT",
            format!("{}?accepts_incomplete=true", inst("n1")),
            Some("{nope".into()),
            v217.to_vec(),
            auth,
            400,
            None,
        ),
        ("PUT", format!("{}?accepts_incomplete=true", inst("n1")), None, v217.to_vec(), auth, 400, None),
        (
            "PUT",
            format!("{}?accepts_incomplete=true", inst("n1")),
            Some(r#"{"service_id":1}"#.into()),
            v217.to_vec(),
            auth,
            400,
            None,
        ),
        (
            "PUT",
            format!("{}?accepts_incomplete=true", inst("n1")),
            Some(good.replace(plan_id("single"), "no-such-plan")),
            v217.to_vec(),
            auth,
            400,
            None,
        ),
        (
            "PUT",
            format!("{}?accepts_incomplete=true", inst("n1")),
            Some(provision_body("single", json!({"extensions": ["postgis"]}))),
            v217.to_vec(),
            auth,
            400,
            None,
        ),
        (
            "PUT",
            format!("{}?accepts_incomplete=true", inst("n1")),
            Some(provision_body("single", json!({"shared_buffers": "1TB"}))),
            v217.to_vec(),
            auth,
            400,
            None,
        ),
        (
            "PUT",
            format!("{}?accepts_incomplete=true", inst("n1")),
            Some(provision_body("single", json!("x"))),
            v217.to_vec(),
            auth,
            400,
            None,
        ),
        ("PUT", format!("{}?accepts_incomplete=true", inst("n1")), Some(huge), v217.to_vec(), auth, 413, None),
        ("PUT", format!("{}?accepts_incomplete=true", inst("a.b")), Some(good.clone()), v217.to_vec(), auth, 400, None),
        (
            "PUT",
            format!("{}?accepts_incomplete=true", inst(&"x".repeat(64))),
            Some(good.clone()),
            v217.to_vec(),
            auth,
            400,
            None,
        ),
        (
            "PUT",
            format!("{}?accepts_incomplete=true", inst("p1")),
            Some(provision_body("ha-3", json!({}))),
            v217.to_vec(),
            auth,
            409,
            None,
        ),
        (
            "PATCH",
            format!("{}?accepts_incomplete=true", inst("p1")),
            Some(json!({"service_id": SERVICE_ID, "plan_id": plan_id("ha-2")}).to_string()),
            v217.to_vec(),
            auth,
            422,
            Some("ConcurrencyError"),
        ),
        (
            "PATCH",
            format!("{}?accepts_incomplete=true", inst("zz")),
            Some(json!({"service_id": SERVICE_ID}).to_string()),
            v217.to_vec(),
            auth,
            404,
            None,
        ),
        ("GET", inst("zz"), None, v217.to_vec(), auth, 404, None),
        ("GET", format!("{}/last_operation", inst("zz")), None, v217.to_vec(), auth, 410, None),
        (
            "DELETE",
            format!("{}?accepts_incomplete=true&service_id={SERVICE_ID}&plan_id={}", inst("zz"), plan_id("single")),
            None,
            v217.to_vec(),
            auth,
            410,
            None,
        ),
        ("DELETE", format!("{}?accepts_incomplete=true", inst("p1")), None, v217.to_vec(), auth, 400, None),
        (
            "DELETE",
            format!("{}?service_id={SERVICE_ID}&plan_id={}", inst("p1"), plan_id("single")),
            None,
            v217.to_vec(),
            auth,
            422,
            Some("AsyncRequired"),
        ),
        (
            "PUT",
            format!("{}/service_bindings/k1", inst("zz")),
            Some(json!({"service_id": SERVICE_ID, "plan_id": plan_id("single")}).to_string()),
            v217.to_vec(),
            auth,
            404,
            None,
        ),
        (
            "PUT",
            format!("{}/service_bindings/k1", inst("p1")),
            Some(json!({"service_id": SERVICE_ID, "plan_id": plan_id("single"), "parameters": {"x": 1}}).to_string()),
            v217.to_vec(),
            auth,
            400,
            None,
        ),
        ("GET", format!("{}/service_bindings/k9", inst("p1")), None, v217.to_vec(), auth, 404, None),
        (
            "DELETE",
            format!("{}/service_bindings/k9?service_id={SERVICE_ID}&plan_id={}", inst("p1"), plan_id("single")),
            None,
            v217.to_vec(),
            auth,
            410,
            None,
        ),
        ("POST", inst("p1"), None, v217.to_vec(), auth, 404, None),
    ];
    for (method, url, body, headers, auth, want, code) in cases {
        let r = osb_with(method, &url, body.as_deref(), &headers, auth).await;
        assert_eq!(r.status, want, "{method} {url}: {}", r.text);
        assert!(r.body["description"].is_string(), "{method} {url}: no OSB error body: {}", r.text);
        if let Some(code) = code {
            assert_eq!(r.body["error"], code, "{method} {url}: {}", r.text);
        }
    }
    let after: Vec<_> = d
        .etcd
        .dump("/pgcell/")
        .await
        .into_iter()
        .filter(|(k, _)| !k.ends_with("/operation") && !k.ends_with("/driving"))
        .collect();
    assert_eq!(after, before, "bad requests changed etcd");
    // The request identity is echoed.
    let r = reqwest::Client::new()
        .get(format!("{broker}/v2/catalog"))
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

#[tokio::test]
async fn two_brokers_provisioning_at_once_never_share_a_cell_or_port() {
    let mut d = Deployment::start(3).await;
    let (b1, b2) = (d.start_broker("b1").await, d.start_broker("b2").await);
    let mut puts = vec![];
    for i in 0..3 {
        let url = format!("{}/v2/service_instances/r{i}?accepts_incomplete=true", if i % 2 == 0 { &b1 } else { &b2 });
        puts.push(tokio::spawn(async move { osb("PUT", &url, Some(&provision_body("ha-2", json!({})))).await.status }));
        // The same instance through the other broker at the same moment.
        let other = format!("{}/v2/service_instances/r{i}?accepts_incomplete=true", if i % 2 == 0 { &b2 } else { &b1 });
        puts.push(tokio::spawn(
            async move { osb("PUT", &other, Some(&provision_body("ha-2", json!({})))).await.status },
        ));
    }
    for p in puts {
        assert_eq!(p.await.unwrap(), 202);
    }
    // Both brokers drive; let them place everything.
    for i in 0..3 {
        for b in [&b1, &b2] {
            osb("GET", &format!("{b}/v2/service_instances/r{i}/last_operation"), None).await;
        }
    }
    let placements: Vec<pgcell::etcd::store::Placement> =
        d.etcd.dump("/pgcell/placements/").await.iter().map(|(_, v)| serde_json::from_str(v).unwrap()).collect();
    let mut per_instance = std::collections::BTreeMap::<String, Vec<String>>::new();
    let mut ports = std::collections::BTreeSet::new();
    for p in &placements {
        per_instance.entry(p.instance_id.clone()).or_default().push(p.cell.clone());
        assert!(ports.insert((p.cell.clone(), p.pg_port)), "port {} on {} taken twice", p.pg_port, p.cell);
    }
    for (id, cells) in &per_instance {
        let mut unique = cells.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), cells.len(), "{id} has two members on one cell: {cells:?}");
        assert_eq!(cells.len(), 2, "{id}: {cells:?}");
    }
    let mut router_ports: Vec<u16> = vec![];
    for i in 0..3 {
        router_ports.push(d.router_port(&format!("r{i}")).await);
    }
    router_ports.sort();
    router_ports.dedup();
    assert_eq!(router_ports.len(), 3, "router ports shared");
}
