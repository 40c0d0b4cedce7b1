//! The routing mesh with real cells, Patroni and psql: connections reach the
//! primary, follow a switchover at once (old ones cut), are refused at once
//! without a leader, and two routers agree.

mod common;

use std::io::Write;
use std::process::Command;
use std::time::{Duration, Instant};

use common::http::call;
use common::*;

#[tokio::test]
async fn routes_follow_switchover_cut_old_connections_and_refuse_without_leader() {
    let mut d = Deployment::start(2).await;
    d.start_router("r1", 8000).await;
    d.start_router("r2", 8000).await;
    seed_cluster(&d, "1", &[0, 1]).await;
    let (a, b) = (&d.cells[0], &d.cells[1]);
    let port = d.router_port("1").await;
    assert!((d.router_ports.0..=d.router_ports.1).contains(&port));
    let via_router = d.superuser_url("1", port).await;
    let via_router2 = via_router.replace("127.0.0.1", &d.routers[1].host);

    // Through the router: reaches cell A's primary and writes.
    let server_port = |url: &str| psql(url, "select inet_server_port()");
    let a_port = a.ports.0.to_string();
    wait_for("both routers to reach A", Duration::from_secs(10), || {
        let ok = [&via_router, &via_router2].iter().all(|u| server_port(u).ok() == Some(a_port.clone()));
        async move { ok.then_some(()) }
    })
    .await;
    psql(&via_router, "create table t(x int); insert into t values (1)").unwrap();
    assert_eq!(d.routers[0].routes().await, d.routers[1].routes().await, "two routers, one table");

    // A session held open through the router across the switchover.
    let (held, mut stdin) = psql_session(&via_router);
    writeln!(stdin, "select 'before';").unwrap();

    let secrets = d.secrets("1").await;
    let admin = ("admin", secrets["admin"].as_str().unwrap());
    let (leader, candidate) = (format!("cf-1-{}", a.name), format!("cf-1-{}", b.name));
    let body = format!(r#"{{"leader":"{leader}","candidate":"{candidate}"}}"#);
    // Patroni accepts the candidate once it is the synchronous standby (a loop after it streams).
    let switch_url = format!("http://127.0.0.1:{}/switchover", a.ports.0 + 1);
    let r = wait_for("Patroni to accept the switchover", Duration::from_secs(15), || {
        let (u, b) = (switch_url.clone(), body.clone());
        async move { Some(call("POST", &u, Some(admin), Some(&b)).await).filter(|r| r.status != 412) }
    })
    .await;
    assert_eq!(r.status, 200, "switchover: {}", r.text);
    let t0 = Instant::now();
    let b_port = b.ports.0.to_string();
    wait_for("router to reach B", Duration::from_secs(30), || {
        let ok = server_port(&via_router).ok() == Some(b_port.clone());
        async move { ok.then_some(()) }
    })
    .await;
    eprintln!("switchover: new primary through the router after {:.2}s", t0.elapsed().as_secs_f64());
    assert_eq!(server_port(&via_router2).unwrap(), b_port, "the second router follows too");
    psql(&via_router, "insert into t values (2)").unwrap();
    assert_eq!(psql(&via_router, "select count(*) from t").unwrap(), "2");

    // The held session was cut: its next statement fails.
    writeln!(stdin, "select 'after';").unwrap();
    drop(stdin);
    let out = held.wait_with_output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("before") && !stdout.contains("after"), "stdout: {stdout} stderr: {stderr}");
    assert!(!out.status.success(), "the old session must be closed; stderr: {stderr}");
    assert_eq!(d.routers[0].routes().await, d.routers[1].routes().await, "two routers, one table");

    // No leader: every member stopped (agents first, so nothing restarts them).
    for c in &mut d.cells {
        c.kill_agent();
    }
    let containers = d.containers();
    let out = Command::new("docker").args(["stop", "-t", "20"]).args(&containers).output().unwrap();
    assert!(out.status.success());
    wait_for("routes without primary", Duration::from_secs(30), || {
        let r = d.routers[0].routes();
        async move { r.await[0]["primary"].is_null().then_some(()) }
    })
    .await;
    for r in &d.routers {
        assert!(r.routes().await[0]["primary"].is_null(), "{}: {}", r.name, r.routes().await);
    }
    for url in [&via_router, &via_router2] {
        let t = Instant::now();
        let err = psql(url, "select 1").unwrap_err();
        let took = t.elapsed();
        assert!(took < Duration::from_secs(1), "refusal took {took:?}: {err}");
    }
    let metrics = call("GET", &d.routers[0].url("/metrics"), Some(("admin", ROUTER_PASSWORD)), None).await;
    assert!(metrics.text.contains("pgcell_router_connections_cut_on_switch_total 1"), "{}", metrics.text);
    assert_eq!(call("GET", &d.routers[0].url("/metrics"), None, None).await.status, 401);
    assert_eq!(call("GET", &d.routers[0].url("/debug/routes"), None, None).await.status, 401);
}
