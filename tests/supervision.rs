//! Supervision: an actor that fails (here: made to panic through the
//! failpoint endpoint) is started again with its state rebuilt from etcd and
//! Docker, while its siblings, PostgreSQL and open connections carry on.

mod common;

use std::io::Write;
use std::process::Command;
use std::time::Duration;

use common::http::{SEED_AUTH, call};
use common::*;

const ROUTER_AUTH: Option<(&str, &str)> = Some(("admin", ROUTER_PASSWORD));

async fn actors(url: &str, auth: Option<(&str, &str)>) -> Vec<serde_json::Value> {
    call("GET", url, auth, None).await.body.as_array().cloned().unwrap_or_default()
}

fn find<'a>(actors: &'a [serde_json::Value], kind: &str, id: &str) -> &'a serde_json::Value {
    actors.iter().find(|a| a["kind"] == kind && a["id"] == id).unwrap_or_else(|| panic!("no {kind} {id}: {actors:?}"))
}

/// Waits until the actor reports `restarts` and a state and detail that `state_ok` accepts.
async fn wait_restarted(url: &str, auth: Option<(&str, &str)>, kind: &str, id: &str, state_ok: fn(&str, &str) -> bool) {
    let what = format!("{kind} actor {id} restarted and rebuilt");
    wait_for(&what, Duration::from_secs(20), || async move {
        let all = actors(url, auth).await;
        let a = all.iter().find(|a| a["kind"] == kind && a["id"] == id)?;
        (a["restarts"] == 1 && state_ok(a["state"].as_str()?, a["detail"].as_str()?)).then_some(())
    })
    .await;
}

#[tokio::test]
async fn failed_actors_are_restarted_with_state_rebuilt_and_nothing_else_stops() {
    let mut d = Deployment::start(0).await;
    let on = [("PGCELL_FAILPOINTS", "true".to_string())];
    let c0 = format!("{}-c0", d.id);
    let c1 = format!("{}-c1", d.id);
    d.add_cell_with_env(&c0, &on).await;
    d.add_cell(&c1).await;
    d.start_router_with_env("r1", 8000, &on).await;
    seed_cluster(&d, "1", &[0, 1]).await;
    seed_cluster(&d, "2", &[0]).await;
    let (m1, m2) = (format!("cf-1-{c0}"), format!("cf-2-{c0}"));
    let port1 = d.router_port("1").await;
    let via_router = d.superuser_url("1", port1).await;
    let direct = [
        d.superuser_url("1", d.member_port("1", 0).await).await,
        d.superuser_url("2", d.member_port("2", 0).await).await,
    ];
    let start_time = |u: &String| psql(u, "select pg_postmaster_start_time()").unwrap();
    let started: Vec<String> = direct.iter().map(start_time).collect();
    let server_port = |url: &str| psql(url, "select inet_server_port()");
    let c0_port = d.cells[0].ports.0.to_string();
    wait_for("the router to reach cell 0", Duration::from_secs(10), || {
        let ok = server_port(&via_router).ok() == Some(c0_port.clone());
        async move { ok.then_some(()) }
    })
    .await;

    // Without failpoints the endpoint does not exist.
    let fail = |cell: usize, kind: &str, id: &str| d.cells[cell].url(&format!("/debug/actors/{kind}/{id}/fail"));
    let r = call("POST", &fail(1, "container", &format!("cf-1-{c1}")), SEED_AUTH, None).await;
    assert_eq!(r.status, 404, "{}", r.text);
    assert_eq!(call("POST", &fail(0, "container", &m2), None, None).await.status, 401, "auth first");
    assert_eq!(call("POST", &fail(0, "container", "nobody"), SEED_AUTH, None).await.status, 404);

    // One container actor and one cluster actor fail.
    let cell_actors = d.cells[0].url("/debug/actors");
    assert_eq!(call("POST", &fail(0, "container", &m2), SEED_AUTH, None).await.status, 202);
    assert_eq!(call("POST", &fail(0, "cluster", "cf-1"), SEED_AUTH, None).await.status, 202);
    wait_restarted(&cell_actors, SEED_AUTH, "container", &m2, |s, _| s == "running").await;
    wait_restarted(&cell_actors, SEED_AUTH, "cluster", "cf-1", |s, d| s == "following" && d.contains("leader=cf-1-"))
        .await;
    let all = actors(&cell_actors, SEED_AUTH).await;
    let failed = find(&all, "container", &m2);
    assert!(failed["last_error"].as_str().unwrap().starts_with("panicked: injected failure"), "{failed}");
    for (kind, id) in [("container", m1.as_str()), ("cluster", "cf-2")] {
        assert_eq!(find(&all, kind, id)["restarts"], 0, "a sibling is untouched: {all:?}");
    }
    assert_eq!(direct.iter().map(start_time).collect::<Vec<_>>(), started, "no PostgreSQL restarted");
    let m = call("GET", &d.cells[0].url("/metrics"), SEED_AUTH, None).await;
    assert!(m.text.contains("pgcell_actor_restarts_total 2"), "{}", m.text);
    assert!(d.cells[0].log().contains("actor failed; starting it again"));

    // The router's table actor fails: ports keep serving, an open session is kept.
    let (held, mut stdin) = psql_session(&via_router);
    writeln!(stdin, "select 'before';").unwrap();
    let router_fail = d.routers[0].url("/debug/actors/router_table/routes/fail");
    // Twice at once: the second is lost with the failed actor, never a second panic that aborts the router.
    assert_eq!(call("POST", &router_fail, ROUTER_AUTH, None).await.status, 202);
    assert_eq!(call("POST", &router_fail, ROUTER_AUTH, None).await.status, 202);
    assert_eq!(server_port(&via_router).unwrap(), c0_port, "routing goes on while the actor is restarted");
    let router_actors = d.routers[0].url("/debug/actors");
    wait_restarted(&router_actors, ROUTER_AUTH, "router_table", "routes", |s, d| {
        s == "routing" && d.starts_with("ports=")
    })
    .await;
    assert_eq!(call("GET", &d.routers[0].url("/healthz"), None, None).await.status, 200, "the router lives on");
    writeln!(stdin, "select 'kept';").unwrap();
    drop(stdin);
    let out = held.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && stdout.contains("before") && stdout.contains("kept"), "{stdout}");

    // Rebuilt, they still do their work: the restarted container actor starts
    // its container again after a crash, and the restarted cluster and router
    // table actors follow a switchover.
    let out = Command::new("docker").args(["kill", &format!("pgcell-{m2}")]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    wait_for("the crashed member running again", Duration::from_secs(60), || {
        let ok = psql(&direct[1], "select pg_is_in_recovery()").ok() == Some("f".into());
        async move { ok.then_some(()) }
    })
    .await;
    let secrets = d.secrets("1").await;
    let admin = ("admin", secrets["admin"].as_str().unwrap());
    let body = format!(r#"{{"leader":"{m1}","candidate":"cf-1-{c1}"}}"#);
    let switch_url = format!("http://127.0.0.1:{}/switchover", d.cells[0].ports.0 + 1);
    let r = wait_for("Patroni to accept the switchover", Duration::from_secs(20), || {
        let (u, b) = (switch_url.clone(), body.clone());
        async move { Some(call("POST", &u, Some(admin), Some(&b)).await).filter(|r| r.status != 412) }
    })
    .await;
    assert_eq!(r.status, 200, "switchover: {}", r.text);
    let c1_port = d.cells[1].ports.0.to_string();
    wait_for("the restarted router table to follow the switchover", Duration::from_secs(30), || {
        let ok = server_port(&via_router).ok() == Some(c1_port.clone());
        async move { ok.then_some(()) }
    })
    .await;
    let leader = format!("leader=cf-1-{c1}");
    wait_for("the restarted cluster actor to see the new leader", Duration::from_secs(10), || {
        let (url, leader) = (cell_actors.clone(), leader.clone());
        async move {
            let all = actors(&url, SEED_AUTH).await;
            find(&all, "cluster", "cf-1")["detail"].as_str()?.contains(&leader).then_some(())
        }
    })
    .await;
}

/// The cell actor is the root of the agent: when it fails the agent exits
/// (non-zero, for its service manager), and a new agent re-adopts everything.
#[tokio::test]
async fn a_failed_cell_actor_ends_the_agent_and_the_next_agent_readopts() {
    let mut d = Deployment::start(0).await;
    let name = format!("{}-c0", d.id);
    d.add_cell_with_env(&name, &[("PGCELL_FAILPOINTS", "true".to_string())]).await;
    seed_cluster(&d, "1", &[0]).await;
    let url = d.superuser_url("1", d.member_port("1", 0).await).await;
    let started = psql(&url, "select pg_postmaster_start_time()").unwrap();
    let fail = d.cells[0].url(&format!("/debug/actors/cell/{name}/fail"));
    assert_eq!(call("POST", &fail, SEED_AUTH, None).await.status, 202);
    let status = d.cells[0].wait_exit(Duration::from_secs(10));
    assert!(!status.success(), "the agent must exit non-zero: {status:?}");
    assert!(d.cells[0].log().contains("the cell actor failed (panicked: injected failure"), "{}", d.cells[0].log());
    d.cells[0].start_agent();
    let actors = d.cells[0].url("/debug/actors");
    wait_for("the member re-adopted", Duration::from_secs(15), || {
        let a = actors.clone();
        async move {
            let all = call("GET", &a, SEED_AUTH, None).await.body.as_array().cloned()?;
            all.iter().any(|x| x["kind"] == "container" && x["state"] == "running").then_some(())
        }
    })
    .await;
    assert_eq!(psql(&url, "select pg_postmaster_start_time()").unwrap(), started, "PostgreSQL kept running");
}
