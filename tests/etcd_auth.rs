//! A fleet on a locked-down etcd: TLS with client certificates, authentication
//! on, every daemon (and every member's Patroni) as its own least-privilege
//! user. Everything works; what a role must not do, the real `etcdctl` is refused.

mod common;

use std::time::Duration;

use common::http::{osb, wait_operation};
use common::*;
use pgcell::broker::catalog::{PLANS, SERVICE_ID};
use serde_json::json;

fn plan_id(name: &str) -> &'static str {
    PLANS.iter().find(|p| p.name == name).unwrap().id
}

#[tokio::test]
async fn every_daemon_on_its_own_role_over_tls() {
    let mut d = Deployment::start_secure(2, 1).await;
    d.start_router("r1", 8000).await;
    let broker = d.start_broker("b1").await;
    let inst = format!("{broker}/v2/service_instances/a1");

    // Provision and bind through the broker; write through the router.
    let body =
        json!({"service_id": SERVICE_ID, "plan_id": plan_id("ha-2"), "organization_guid": "o", "space_guid": "s"});
    let r = osb("PUT", &format!("{inst}?accepts_incomplete=true"), Some(&body.to_string())).await;
    assert_eq!(r.status, 202, "{}", r.text);
    let (state, desc, secs) = wait_operation(&broker, "a1", Duration::from_secs(240)).await;
    assert_eq!(state, "succeeded", "{desc}");
    eprintln!("ha-2 provisioned on the locked-down etcd in {secs:.1}s");
    let leader = d.leader("a1").await.expect("Patroni elected a leader through TLS and its user");
    let bind = json!({"service_id": SERVICE_ID, "plan_id": plan_id("ha-2")}).to_string();
    let b = osb("PUT", &format!("{inst}/service_bindings/k1"), Some(&bind)).await;
    assert_eq!(b.status, 201, "{}", b.text);
    assert_eq!(b.body["credentials"]["port"].as_u64().unwrap() as u16, d.router_port("a1").await);
    let uri = common::tls::binding_url(&b.body["credentials"], d.tmp.path());
    wait_for("a write through the router", Duration::from_secs(60), || {
        let uri = uri.clone();
        async move { psql(&uri, "create table if not exists t(x int); insert into t values (1)").ok() }
    })
    .await;
    assert_eq!(psql(&uri, "select count(*) from t").unwrap(), "1");
    let members: Vec<String> = d.etcd.dump("/service/cf-a1/members/").await.into_iter().map(|(k, _)| k).collect();
    assert_eq!(members.len(), 2, "both members' Patroni register: {members:?}");
    // The operator's commands work with the root user from the environment.
    assert!(d.pgcell(&["leaders"]).contains("cf-a1 postgres://"), "pgcell leaders");

    // What each role must not do, with the real etcdctl.
    let secrets = "/pgcell/instances/a1/secrets";
    let leader_key = "/service/cf-a1/leader";
    let (ok, out) = d.etcd.etcdctl(Some("pgcell-router"), true, &["get", "--prefix", "/pgcell/router_ports/"]);
    assert!(ok && out.contains("a1"), "the router reads its index: {out}");
    let (ok, out) = d.etcd.etcdctl(Some("pgcell-router"), true, &["get", secrets]);
    assert!(!ok && out.contains("permission denied"), "router reads secrets: {out}");
    let (ok, out) = d.etcd.etcdctl(Some("pgcell-router"), true, &["get", "--prefix", "/pgcell/instances/"]);
    assert!(!ok && out.contains("permission denied"), "router reads instances: {out}");
    let (ok, out) = d.etcd.etcdctl(Some("pgcell-router"), true, &["put", leader_key, "intruder"]);
    assert!(!ok && out.contains("permission denied"), "router writes a leader key: {out}");
    assert_eq!(d.leader("a1").await.as_deref(), Some(leader.as_str()), "the leader key is untouched");

    let (a, b) = (format!("pgcell-cell-{}", d.cells[0].name), d.cells[1].name.clone());
    let own = format!("/pgcell/placements/{}/a1", d.cells[0].name);
    let (ok, out) = d.etcd.etcdctl(Some(&a), true, &["get", &own]);
    assert!(ok && out.contains("\"member\""), "cell A reads its placement: {out}");
    let other = format!("/pgcell/placements/{b}/a1");
    let (ok, out) = d.etcd.etcdctl(Some(&a), true, &["put", &other, "{}"]);
    assert!(!ok && out.contains("permission denied"), "cell A writes cell B's placement: {out}");
    let (ok, out) = d.etcd.etcdctl(Some(&a), true, &["put", &format!("/pgcell/ports/{b}/0"), "x"]);
    assert!(!ok && out.contains("permission denied"), "cell A writes cell B's port slot: {out}");
    // A cell holds its own members' passwords, and no other key of the instance.
    let own_env = format!("/pgcell/member_env/{}/a1", d.cells[0].name);
    let (ok, out) = d.etcd.etcdctl(Some(&a), true, &["get", &own_env]);
    assert!(ok && out.contains("superuser"), "cell A reads its member's env: {out}");
    for key in [secrets.to_string(), format!("/pgcell/member_env/{b}/a1"), "/pgcell/instances/a1/bindings/k1".into()] {
        let (ok, out) = d.etcd.etcdctl(Some(&a), true, &["get", &key]);
        assert!(!ok && out.contains("permission denied"), "cell A reads {key}: {out}");
    }

    // Without a user: the certificate alone opens nothing; without a certificate, no connection.
    let (ok, out) = d.etcd.etcdctl(None, true, &["get", secrets]);
    assert!(!ok, "a certificate without a user reads secrets: {out}");
    let (ok, out) = d.etcd.etcdctl(Some("pgcell-broker"), false, &["get", "--prefix", "/pgcell/"]);
    assert!(!ok, "a client without a certificate is served: {out}");
    let (ok, out) = d.etcd.etcdctl(Some("root"), true, &["get", secrets]);
    assert!(ok && out.contains("superuser"), "root reads everything: {out}");
    let mut wrong = d.etcd.access(Some("pgcell-broker"));
    wrong.password = Some("not-the-password".into());
    let endpoints = vec![d.etcd.endpoint.clone()];
    let err = pgcell::etcd::connect(&endpoints, &wrong).await.err().expect("a wrong password is refused");
    assert!(format!("{err:#}").contains("authentication failed"), "{err:#}");

    // The operator's drain (BOSH runs it as the cell's user) moves the leader
    // away with the Patroni password from the cell's own member env.
    let on = d.cells[d.cell_of("a1", &leader)].name.clone();
    let (ok, out) = pgcell_as(&d, &format!("pgcell-cell-{on}"), &["drain", &on]);
    assert!(ok, "pgcell drain {on} as its cell: {out}");
    let moved = d.leader("a1").await;
    assert!(moved.is_some() && moved.as_deref() != Some(leader.as_str()), "leader still {leader}: {out}");

    // Every daemon still at work: the router routes the leader, the broker unbinds.
    assert_eq!(psql(&uri, "select count(*) from t").unwrap(), "1");
    let q = format!("service_id={SERVICE_ID}&plan_id={}", plan_id("ha-2"));
    let r = osb("DELETE", &format!("{inst}/service_bindings/k1?{q}"), None).await;
    assert_eq!(r.status, 200, "{}", r.text);
    // Deprovision: the broker deletes the instance's and Patroni's keys, the cells purge their members.
    let r = osb("DELETE", &format!("{inst}?accepts_incomplete=true&{q}"), None).await;
    assert_eq!(r.status, 202, "{}", r.text);
    let (state, _, _) = wait_operation(&broker, "a1", Duration::from_secs(120)).await;
    assert_eq!(state, "gone");
    assert!(d.etcd.dump("/service/cf-a1/").await.is_empty() && d.etcd.dump("/pgcell/instances/a1/").await.is_empty());
    wait_for("the members' containers gone", Duration::from_secs(30), || {
        let left = d.containers().len();
        async move { (left == 0).then_some(()) }
    })
    .await;
    for daemon in d.routers.iter().chain(&d.brokers) {
        assert!(!daemon.log().contains("permission denied"), "{}: {}", daemon.name, daemon.log());
    }
    for cell in &d.cells {
        assert!(!cell.log().contains("permission denied"), "{}: {}", cell.name, cell.log());
    }
    // A VM being deleted: BOSH's drain retires its cell, as the cell's user.
    let (ok, out) = pgcell_as(&d, &a, &["cells", "retire", &d.cells[0].name, "--timeout", "30"]);
    assert!(ok && out.contains("retiring"), "pgcell cells retire as {a}: {out}");
    // Cell B taken out of the fleet: applying the roles without it removes its user and role.
    let a_name = d.cells[0].name.clone();
    d.etcd.enable_auth(pgcell_bin(), std::slice::from_ref(&a_name));
    let (ok, users) = d.etcd.etcdctl(Some("root"), true, &["user", "list"]);
    assert!(ok && users.contains(&format!("pgcell-cell-{a_name}")), "{users}");
    assert!(!users.contains(&format!("pgcell-cell-{b}")), "cell B's user kept: {users}");
    let (ok, roles) = d.etcd.etcdctl(Some("root"), true, &["role", "list"]);
    assert!(ok && !roles.contains(&format!("pgcell-cell-{b}")), "cell B's role kept: {roles}");
}

/// `pgcell <args>` as etcd user `user` (with the test client certificate): (success, stdout + stderr).
fn pgcell_as(d: &Deployment, user: &str, args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(pgcell_bin())
        .args(args)
        .env("PGCELL_ETCD_ENDPOINTS", d.etcd.endpoints())
        .envs(d.etcd.access_env(user))
        .output()
        .unwrap();
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}
