//! Daemons survive their sources failing: an agent killed and restarted keeps
//! PostgreSQL running; an etcd restart or outage restarts no postmaster (each
//! member's start time, read on its own port); an etcd outage past the
//! router's grace period makes it refuse, then recover.

mod common;

use std::time::{Duration, Instant};

use common::http::call;
use common::*;

fn start_time(url: &str) -> String {
    psql(url, "select pg_postmaster_start_time()").unwrap()
}

#[tokio::test]
async fn agent_kill_restart_readopts_without_restarting_postgres() {
    let mut d = Deployment::start(2).await;
    seed_cluster(&d, "1", &[0, 1]).await;
    let urls = [d.superuser_url("1", d.cells[0].ports.0).await, d.superuser_url("1", d.cells[1].ports.0).await];
    let before: Vec<String> = urls.iter().map(|u| start_time(u)).collect();
    let containers = d.containers();

    d.cells[0].kill_agent();
    let t0 = Instant::now();
    d.cells[0].start_agent();
    let actors = d.cells[0].url("/debug/actors");
    wait_for("the member re-adopted", Duration::from_secs(15), || {
        let a = actors.clone();
        async move {
            let r = call("GET", &a, common::http::SEED_AUTH, None).await;
            let adopted = r.body.as_array()?.iter().any(|x| x["kind"] == "container" && x["state"] == "running");
            adopted.then_some(())
        }
    })
    .await;
    let took = t0.elapsed();
    eprintln!("agent restart: member re-adopted {:.2}s after the agent started", took.as_secs_f64());
    assert!(took < Duration::from_secs(2), "re-adoption took {took:?}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after: Vec<String> = urls.iter().map(|u| start_time(u)).collect();
    assert_eq!(before, after, "no PostgreSQL restarted");
    assert_eq!(d.containers(), containers, "same containers");
    let r = call("GET", &actors, common::http::SEED_AUTH, None).await;
    let kinds: Vec<&str> = r.body.as_array().unwrap().iter().map(|a| a["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["cell", "container", "cluster"], "{}", r.text);
    assert_eq!(r.body[2]["state"], "following", "{}", r.text);
    assert!(r.body[2]["detail"].as_str().unwrap().contains("leader=cf-1-"), "{}", r.text);
    let m = call("GET", &d.cells[0].url("/metrics"), common::http::SEED_AUTH, None).await;
    assert!(m.text.contains("pgcell_cell_containers{state=\"running\"} 1"), "{}", m.text);
    assert!(m.text.contains("pgcell_cell_clusters{role=\"master\"} 1"), "{}", m.text);
    assert_eq!(call("GET", &d.cells[0].url("/metrics"), None, None).await.status, 401);
}

#[tokio::test]
async fn etcd_restart_and_outage_restart_nothing_and_routers_fence_then_recover() {
    let mut d = Deployment::start(2).await;
    d.start_router("r1", 3000).await;
    seed_cluster(&d, "1", &[0, 1]).await;
    let port = d.router_port("1").await;
    let via_router = d.superuser_url("1", port).await;
    let direct = [d.superuser_url("1", d.cells[0].ports.0).await, d.superuser_url("1", d.cells[1].ports.0).await];
    wait_for("the router", Duration::from_secs(10), || {
        let ok = psql(&via_router, "select 1").ok();
        async move { ok }
    })
    .await;
    let before: Vec<String> = direct.iter().map(|u| start_time(u)).collect();

    // A quick restart: nothing restarts, watches resume.
    d.etcd.stop();
    tokio::time::sleep(Duration::from_secs(1)).await;
    d.etcd.resume();
    // A change right after etcd returns is seen by watches resumed from their revision.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let secrets = d.secrets("1").await;
    let body = format!(r#"{{"leader":"cf-1-{}"}}"#, d.cells[0].name);
    let switch = format!("http://127.0.0.1:{}/switchover", d.cells[0].ports.0 + 1);
    let r = wait_for("Patroni to accept the switchover", Duration::from_secs(20), || {
        let (u, b, pw) = (switch.clone(), body.clone(), secrets["admin"].as_str().unwrap().to_string());
        async move { Some(call("POST", &u, Some(("admin", &pw)), Some(&b)).await).filter(|r| r.status == 200) }
    })
    .await;
    assert_eq!(r.status, 200);
    let b_port = d.cells[1].ports.0.to_string();
    wait_for("the router to follow the switchover made after the restart", Duration::from_secs(20), || {
        let ok = psql(&via_router, "select inet_server_port()").ok().filter(|p| *p == b_port);
        async move { ok }
    })
    .await;
    let m = call("GET", &d.routers[0].url("/metrics"), Some(("admin", ROUTER_PASSWORD)), None).await;
    let reconnects: u64 = m
        .text
        .lines()
        .find_map(|l| l.strip_prefix("pgcell_watch_reconnects_total "))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!(reconnects > 0, "{}", m.text);
    // The switchover demoted cell 0's member by design; cell 1's never restarted.
    assert_eq!(start_time(&direct[1]), before[1], "the new primary's postmaster was not restarted");
    wait_for("the old primary streaming", Duration::from_secs(60), || {
        let ok = psql(&direct[1], "select count(*) from pg_stat_replication where state='streaming'")
            .ok()
            .filter(|n| n == "1");
        async move { ok }
    })
    .await;
    let starts = container_starts(&d);
    let postmasters: Vec<String> = direct.iter().map(|u| postmaster(u)).collect();

    // An outage past the router's grace period (3 s here): refuses, then recovers.
    d.etcd.stop();
    let t0 = Instant::now();
    wait_for("the router to refuse after its grace period", Duration::from_secs(15), || {
        let refused = psql(&via_router, "select 1").is_err();
        async move { refused.then_some(()) }
    })
    .await;
    let fenced_after = t0.elapsed();
    eprintln!("etcd outage: router refusing after {:.1}s (grace 3 s)", fenced_after.as_secs_f64());
    assert!(fenced_after >= Duration::from_secs(2), "refused before the grace period: {fenced_after:?}");
    assert!(d.routers[0].log().contains("refusing new connections"), "{}", d.routers[0].log());
    tokio::time::sleep(Duration::from_secs(2)).await;
    d.etcd.resume();
    // "Back" is when etcd serves a read (it accepts connections a second or so
    // before it has elected itself).
    let endpoint = d.etcd.endpoint.clone();
    let t1 = wait_for("etcd to serve", Duration::from_secs(15), || {
        let endpoint = endpoint.clone();
        async move {
            let opts = etcd_client::ConnectOptions::new().with_connect_timeout(Duration::from_millis(100));
            let read = async { etcd_client::Client::connect([endpoint], Some(opts)).await?.get("/", None).await };
            let ok = matches!(tokio::time::timeout(Duration::from_millis(200), read).await, Ok(Ok(_)));
            ok.then(Instant::now)
        }
    })
    .await;
    loop {
        if psql(&via_router, "select 1").is_ok() {
            break;
        }
        assert!(t1.elapsed() < Duration::from_secs(10), "the router does not route again");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let back = t1.elapsed();
    eprintln!("etcd back: routing again {:.0} ms after etcd served", back.as_secs_f64() * 1000.0);
    assert!(back < Duration::from_secs(1), "routing resumed {back:?} after etcd served");
    // Failsafe mode: the primary rode out the outage (about 5 s); no postmaster
    // restarted, no new timeline, no container restarted.
    assert_eq!(container_starts(&d), starts, "no container restarted by pgcell");
    assert_eq!(direct.iter().map(|u| postmaster(u)).collect::<Vec<_>>(), postmasters, "no postmaster restarted");
}

/// A member's postmaster start time and timeline, read on its own port.
fn postmaster(url: &str) -> String {
    psql(url, "select pg_postmaster_start_time() || ' tl ' || timeline_id from pg_control_checkpoint()").unwrap()
}

/// A router cut off from etcd (within its grace) misses a switchover; once
/// its link is back its watches resume from their revision and it follows.
#[tokio::test]
async fn a_leader_change_made_while_the_router_is_cut_off_is_seen_after_it() {
    let mut d = Deployment::start(2).await;
    let mut link = EtcdLink::new(&d.etcd.endpoint);
    d.start_router_with_env("r1", 30_000, &[("PGCELL_ETCD_ENDPOINTS", format!("127.0.0.1:{}", link.port))]).await;
    seed_cluster(&d, "1", &[0, 1]).await;
    let via_router = d.superuser_url("1", d.router_port("1").await).await;
    let server_port = |url: &str| psql(url, "select inet_server_port()").ok();
    let (a_port, b_port) = (d.cells[0].ports.0.to_string(), d.cells[1].ports.0.to_string());
    wait_for("the router to reach A", Duration::from_secs(10), || {
        let ok = server_port(&via_router) == Some(a_port.clone());
        async move { ok.then_some(()) }
    })
    .await;

    link.cut();
    let secrets = d.secrets("1").await;
    let admin = ("admin", secrets["admin"].as_str().unwrap());
    let body = format!(r#"{{"leader":"cf-1-{}","candidate":"cf-1-{}"}}"#, d.cells[0].name, d.cells[1].name);
    let switch = format!("http://127.0.0.1:{}/switchover", d.cells[0].ports.0 + 1);
    let r = wait_for("Patroni to accept the switchover", Duration::from_secs(20), || {
        let (u, b) = (switch.clone(), body.clone());
        async move { Some(call("POST", &u, Some(admin), Some(&b)).await).filter(|r| r.status != 412) }
    })
    .await;
    assert_eq!(r.status, 200, "switchover: {}", r.text);
    let direct_b = d.superuser_url("1", d.cells[1].ports.0).await;
    wait_for("B to be the primary", Duration::from_secs(30), || {
        let ok = psql(&direct_b, "select pg_is_in_recovery()").ok() == Some("f".into());
        async move { ok.then_some(()) }
    })
    .await;
    let routes = d.routers[0].routes().await;
    assert!(routes.to_string().contains(&format!(":{a_port}")), "cut off, the router still has A: {routes}");

    link.up();
    let t0 = Instant::now();
    wait_for("the router to follow the switchover it missed", Duration::from_secs(10), || {
        let ok = server_port(&via_router) == Some(b_port.clone());
        async move { ok.then_some(()) }
    })
    .await;
    eprintln!("link back: the router follows the missed switchover after {:.2}s", t0.elapsed().as_secs_f64());
}

/// Each container's Docker start time.
fn container_starts(d: &Deployment) -> Vec<String> {
    d.containers()
        .iter()
        .map(|c| {
            let out = std::process::Command::new("docker")
                .args(["inspect", "-f", "{{.State.StartedAt}}", c])
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout).trim().to_string()
        })
        .collect()
}

/// A proxy of the Docker socket, in its own process group so that stopping it
/// also cuts the connections it already forked for.
struct DockerProxy {
    socket: std::path::PathBuf,
    child: Option<std::process::Child>,
}

impl DockerProxy {
    fn start(socket: &std::path::Path) -> Self {
        let _ = std::fs::remove_file(socket);
        let child = std::process::Command::new("setsid")
            .args(["socat", &format!("UNIX-LISTEN:{},fork", socket.display()), "UNIX-CONNECT:/var/run/docker.sock"])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("socat (scripts/setup.sh installs it)");
        let t0 = Instant::now();
        while !socket.exists() {
            assert!(t0.elapsed() < Duration::from_secs(5), "socat did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Self { socket: socket.into(), child: Some(child) }
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = std::process::Command::new("kill").args(["-KILL", "--", &format!("-{}", c.id())]).output();
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_file(&self.socket);
    }
}

impl Drop for DockerProxy {
    fn drop(&mut self) {
        self.stop();
    }
}

#[tokio::test]
async fn docker_event_stream_comes_back_and_relists_what_it_missed() {
    let mut d = Deployment::start(0).await;
    let socket = d.tmp.path().join("docker.sock");
    let mut proxy = DockerProxy::start(&socket);
    let name = format!("{}-c0", d.id);
    d.add_cell_with_env(&name, &[("DOCKER_HOST", format!("unix://{}", socket.display()))]).await;
    seed_cluster(&d, "1", &[0]).await;
    let container = format!("pgcell-cf-1-{name}");

    // The engine goes away; meanwhile the member dies: the agent cannot see that event.
    proxy.stop();
    assert!(std::process::Command::new("docker").args(["kill", &container]).output().unwrap().status.success());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut proxy = DockerProxy::start(&socket);
    let t0 = Instant::now();
    wait_for("the member started again after the stream came back", Duration::from_secs(30), || async {
        let out = std::process::Command::new("docker")
            .args(["inspect", "-f", "{{.State.Running}}", &container])
            .output()
            .ok()?;
        (String::from_utf8_lossy(&out.stdout).trim() == "true").then_some(())
    })
    .await;
    eprintln!("docker stream back: member running again {:.1}s after the engine returned", t0.elapsed().as_secs_f64());
    let log = d.cells[0].log();
    assert!(log.contains("docker event stream ended; resubscribing"), "{log}");
    let m = call("GET", &d.cells[0].url("/metrics"), common::http::SEED_AUTH, None).await;
    assert!(!m.text.contains("pgcell_docker_event_reconnects_total 0"), "{}", m.text);
    // And events flow again: a later death is seen at once.
    assert!(std::process::Command::new("docker").args(["kill", &container]).output().unwrap().status.success());
    wait_for("the member restarted after a death seen as an event", Duration::from_secs(20), || async {
        let died = d.cells[0].log().matches("member container died; starting it again").count();
        (died >= 1).then_some(())
    })
    .await;
    proxy.stop();
}
