//! The Open Service Broker with real cells, routers, Patroni and psql.

mod common;

use std::time::{Duration, Instant};

use common::http::{osb, wait_operation};
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

fn member_cells(d: &Deployment, id: &str) -> Vec<String> {
    let mut v: Vec<String> = d
        .containers()
        .into_iter()
        .filter_map(|n| n.strip_prefix(&format!("pgcell-cf-{id}-")).map(String::from))
        .collect();
    v.sort();
    v
}

async fn superuser_password(d: &Deployment, id: &str) -> String {
    let url = d.superuser_url(id, 1).await;
    url.strip_prefix("postgres://postgres:").unwrap().split_once('@').unwrap().0.to_string()
}

/// What a binding's user tries beyond its database fails with a permission
/// error, as psql shows it: its role can do ordinary work in `app` (checked by
/// the caller) and nothing else. The superuser password is in no credentials.
async fn binding_has_least_privilege(d: &Deployment, uri: &str, credentials: &[&str]) {
    let superuser = superuser_password(d, "i1").await;
    for c in credentials {
        assert!(!c.contains(&superuser), "the superuser password is in a binding's credentials");
    }
    for (what, sql) in [
        ("create a role", "create role intruder login password 'x'"),
        ("create a database", "create database other"),
        ("read passwords", "select rolname, rolpassword from pg_authid"),
        ("become the superuser", "set role postgres"),
        ("grant itself superuser", "alter role current_user superuser"),
    ] {
        let err = psql(uri, sql).expect_err(&format!("a binding could {what}"));
        assert!(err.contains("permission denied") || err.contains("must be superuser"), "{what}: {err}");
    }
    // The postgres database is closed: the same login, another database.
    assert!(uri.contains("/app"), "{uri}");
    for db in ["postgres", "template1"] {
        let err = psql(&uri.replacen("/app", &format!("/{db}"), 1), "select 1")
            .expect_err(&format!("a binding could connect to {db}"));
        assert!(err.contains("permission denied for database"), "{db}: {err}");
    }
    // Its attributes, and that neither it nor the owner role it acts as owns
    // anything outside `app` (pg_shdepend covers every database).
    let attrs = "select rolsuper, rolreplication, rolcreaterole, rolcreatedb, rolbypassrls from pg_roles \
                 where rolname in (session_user, 'app_owner')";
    assert_eq!(psql(uri, attrs).unwrap(), "f|f|f|f|f\nf|f|f|f|f");
    let owned_by_binding = "select count(*) from pg_shdepend where deptype = 'o' \
                            and refobjid = (select oid from pg_roles where rolname = session_user)";
    assert_eq!(psql(uri, owned_by_binding).unwrap(), "0");
    let app = "(select oid from pg_database where datname = 'app')";
    let owned_elsewhere = format!(
        "select count(*) from pg_shdepend where deptype = 'o' \
         and refobjid = (select oid from pg_roles where rolname = 'app_owner') \
         and dbid <> {app} and not (classid = 'pg_database'::regclass and objid = {app})"
    );
    assert_eq!(psql(uri, &owned_elsewhere).unwrap(), "0");
    assert!(
        psql(uri, "select count(*) from pg_shdepend where deptype = 'o'").unwrap() != "0",
        "the owner owns app's tables"
    );
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
    let uri1 = common::tls::binding_url(c1, d.tmp.path());
    psql(&uri1, "create table shared(x int); insert into shared values (1); select digest('a', 'sha256')").unwrap();
    let b2 = osb("PUT", &format!("{inst}/service_bindings/k2"), Some(&bind_body)).await;
    assert_eq!(b2.status, 201, "{}", b2.text);
    let uri2 = common::tls::binding_url(&b2.body["credentials"], d.tmp.path());
    assert_ne!(uri1, uri2, "each binding has its own role");
    psql(&uri2, "insert into shared values (2)").unwrap();
    assert_eq!(psql(&uri2, "select count(*) from shared").unwrap(), "2");
    binding_has_least_privilege(&d, &uri2, &[&b1.text, &b2.text]).await;
    assert_eq!(osb("PUT", &format!("{inst}/service_bindings/k2"), Some(&bind_body)).await.status, 200);
    let fetched = osb("GET", &format!("{inst}/service_bindings/k2"), None).await;
    assert_eq!(fetched.body["credentials"], b2.body["credentials"]);

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

    let superuser = superuser_password(&d, "i1").await;
    let mut logs = d.logs();
    for c in d.containers() {
        logs.push_str(&docker_logs(&c, &[]));
    }
    assert!(logs.len() > 1000, "no logs to search");
    assert!(!logs.contains(&superuser), "the superuser password is in a log");

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
        .filter(|(k, _)| k != "/pgcell/healer")
        // The fleet CA (generated: no tls.ca_cert_file) belongs to the fleet, not to an instance.
        .filter(|(k, _)| k != "/pgcell/tls/ca")
        // The backup state outlives the instance: it stays restorable for the retention period.
        .filter(|(k, _)| k != "/pgcell/backups/i1")
        .collect();
    // Only the tombstone, on its lease, so polling answers 410 Gone for a day.
    assert_eq!(left.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(), ["/pgcell/deleted/i1"], "keys left");
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
    // Both brokers drive in the background; let them place everything.
    wait_for("every member placed and every router port claimed", Duration::from_secs(30), || async {
        let ports = d.etcd.dump("/pgcell/router_ports/").await.len();
        (d.etcd.dump("/pgcell/placements/").await.len() == 6 && ports == 3).then_some(())
    })
    .await;
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

/// The instance's last operation as stored in etcd (read directly: nobody polls the broker).
async fn stored_operation(d: &Deployment, id: &str) -> Option<Value> {
    let kv = d.etcd.dump(&format!("/pgcell/instances/{id}/operation")).await;
    kv.first().map(|(_, v)| serde_json::from_str(v).unwrap())
}

async fn wait_stored_state(d: &Deployment, id: &str, want: &str, timeout: Duration) -> f64 {
    let t0 = Instant::now();
    wait_for(&format!("{id} {want} with nobody polling"), timeout, || async {
        let op = stored_operation(d, id).await;
        let state = op.as_ref().map_or("gone".to_string(), |o| o["state"].as_str().unwrap().to_string());
        assert_ne!(state, "failed", "{id}: {op:?}");
        (state == want).then_some(())
    })
    .await;
    t0.elapsed().as_secs_f64()
}

#[tokio::test]
async fn operations_finish_by_themselves_across_broker_deaths() {
    let mut d = Deployment::start(2).await;
    d.start_router("r1", 8000).await;
    let b1 = d.start_broker("b1").await;
    let put = |b: &str, id: &str| {
        let url = format!("{b}/v2/service_instances/{id}?accepts_incomplete=true");
        async move { osb("PUT", &url, Some(&provision_body("single", json!({})))).await }
    };
    let q = format!("accepts_incomplete=true&service_id={SERVICE_ID}&plan_id={}", plan_id("single"));

    // Never polled: it succeeds in its usual time; a DELETE meanwhile is refused, then accepted.
    assert_eq!(put(&b1, "s1").await.status, 202);
    let r = osb("DELETE", &format!("{b1}/v2/service_instances/s1?{q}"), None).await;
    assert_eq!((r.status, r.body["error"].as_str()), (422, Some("ConcurrencyError")), "{}", r.text);
    let secs = wait_stored_state(&d, "s1", "succeeded", Duration::from_secs(60)).await;
    eprintln!("single provisioned with nobody polling in {secs:.1}s");
    assert!(secs < 30.0, "took {secs:.1}s");
    let r = osb("DELETE", &format!("{b1}/v2/service_instances/s1?{q}"), None).await;
    assert_eq!(r.status, 202, "{}", r.text);
    wait_stored_state(&d, "s1", "gone", Duration::from_secs(60)).await;

    // The only broker killed (-9) mid-provision and started again: it finishes.
    assert_eq!(put(&b1, "s2").await.status, 202);
    wait_for("s2 placed", Duration::from_secs(10), || async {
        (!d.etcd.dump("/pgcell/placements/").await.is_empty()).then_some(())
    })
    .await;
    d.brokers[0].kill();
    let b1 = d.start_broker("b1").await;
    let secs = wait_stored_state(&d, "s2", "succeeded", Duration::from_secs(60)).await;
    eprintln!("s2 finished by the restarted broker {secs:.1}s after its restart");

    // Two brokers: the one driving is killed; the other finishes.
    let b2 = d.start_broker("b2").await;
    assert_eq!(put(&b1, "s3").await.status, 202);
    let driver = wait_for("someone driving s3", Duration::from_secs(10), || async {
        let kv = d.etcd.dump("/pgcell/instances/s3/driving").await;
        kv.first().map(|(_, owner)| owner.clone())
    })
    .await;
    let (dead, alive) = if driver == "b1" { (1, &b2) } else { (2, &b1) };
    d.brokers[dead].kill();
    eprintln!("killed {driver}, the one driving s3");
    let secs = wait_stored_state(&d, "s3", "succeeded", Duration::from_secs(60)).await;
    eprintln!("s3 finished by the other broker {secs:.1}s after the kill");
    let r = osb("GET", &format!("{alive}/v2/service_instances/s3/last_operation"), None).await;
    assert_eq!(r.body["state"], "succeeded", "{}", r.text);
}
