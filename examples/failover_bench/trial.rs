//! One trial: wait for a healthy cluster, start the writer (and the
//! sessions), inject the fault, measure, and check what was written.

use std::collections::HashSet;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use serde_json::Value;

use super::deploy::Bench;
use super::pg::{Ack, Writer, WriterLog, pg_config, query, scalar};
use super::{ROUTER_PASSWORD, SCOPE, Scenario, sessions, wait_for};

// Cluster health

pub struct Health {
    pub leader: String,
    pub leader_cell: usize,
    pub leader_port: u16,
}

fn conn_port(member_json: &Value) -> Option<u16> {
    let url = member_json["conn_url"].as_str()?;
    let hostport = url.split("://").nth(1)?.split('/').next()?;
    hostport.rsplit(':').next()?.parse().ok()
}

/// The cluster is healthy: a running primary holding the lock, both members
/// running, the replica streaming and synchronous, `/sync` naming it, and the
/// router reaching the leader.
async fn check_health(b: &Bench, router_port: u16, password: &str) -> anyhow::Result<Health> {
    let leader = b.etcd_get(&format!("/service/{SCOPE}/leader")).await?.context("no leader key")?;
    let members = b.etcd_prefix(&format!("/service/{SCOPE}/members/")).await?;
    ensure!(members.len() == 2, "{} member keys", members.len());
    let mut leader_port = None;
    for (k, v) in &members {
        let m: Value = serde_json::from_str(v)?;
        ensure!(m["state"] == "running", "{k} is {}", m["state"]);
        if k.ends_with(&format!("/{leader}")) {
            ensure!(m["role"] == "master" || m["role"] == "primary", "leader role {}", m["role"]);
            leader_port = conn_port(&m);
        }
    }
    let leader_port = leader_port.context("no member key for the leader")?;
    let sync: Value =
        serde_json::from_str(&b.etcd_get(&format!("/service/{SCOPE}/sync")).await?.context("no sync key")?)?;
    ensure!(sync["leader"] == leader.as_str(), "sync key names leader {}", sync["leader"]);
    ensure!(sync["sync_standby"].is_string(), "no sync standby");
    let rep = query(
        leader_port,
        password,
        "select count(*) filter (where state = 'streaming'), count(*) filter (where sync_state = 'sync') from pg_stat_replication",
    )
    .await?;
    let row = rep.first().context("no row")?;
    ensure!(
        row.first().cloned().flatten().as_deref() == Some("1") && row.get(1).cloned().flatten().as_deref() == Some("1"),
        "replication not streaming+sync: {row:?}"
    );
    let via_router = scalar(router_port, password, "select inet_server_port()").await?;
    ensure!(via_router == leader_port.to_string(), "router reaches {via_router}, leader is on {leader_port}");
    let leader_cell = b.cell_of(&leader)?;
    Ok(Health { leader, leader_cell, leader_port })
}

pub async fn wait_healthy(b: &Bench, router_port: u16, password: &str, timeout: Duration) -> anyhow::Result<Health> {
    let t0 = Instant::now();
    loop {
        match check_health(b, router_port, password).await {
            Ok(h) => return Ok(h),
            Err(e) if t0.elapsed() > timeout => bail!("cluster not healthy after {timeout:?}: {e:#}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(300)).await,
        }
    }
}

/// Waits until `member` streams from the primary on `primary_port`.
pub async fn wait_streaming(primary_port: u16, password: &str, member: &str, timeout: Duration) -> anyhow::Result<()> {
    let sql = format!("select state from pg_stat_replication where application_name = '{member}'");
    wait_for(&format!("{member} streaming"), timeout, || {
        let sql = sql.clone();
        async move { scalar(primary_port, password, &sql).await.ok().filter(|s| s == "streaming").map(|_| ()) }
    })
    .await
}

// ---------------------------------------------------------------------------
// Trials

#[derive(Default)]
pub struct Trial {
    /// Kill (or drain start) → first acknowledged write on the other primary.
    pub first_write: Option<f64>,
    /// Longest gap between two acknowledged writes.
    pub longest_pause: Option<f64>,
    /// Agent start (hard), or kill (crash), or drain start (drain) → old member streaming.
    pub rejoin: Option<f64>,
    /// Drain start → `pgcell drain` exited.
    pub drain_exit: Option<f64>,
    pub timeline: Timeline,
    pub acked: usize,
    pub lost: usize,
    pub failed_attempts: u64,
    /// `--sessions`: what the sessions opened every 20 ms met.
    pub sessions: Option<sessions::Counts>,
}

pub struct Outcome {
    pub scenario: Scenario,
    pub trials: Vec<Trial>,
    pub error: Option<String>,
}

fn longest_gap(acks: &[Ack]) -> f64 {
    acks.windows(2).map(|w| (w[1].at - w[0].at).as_secs_f64()).fold(0.0, f64::max)
}

async fn lost_writes(router_port: u16, password: &str, trial: i32, log: &WriterLog) -> anyhow::Result<usize> {
    let sql = format!("select id from bench where trial = {trial}");
    let rows = wait_for("reading the written ids back", Duration::from_secs(30), || {
        let sql = sql.clone();
        async move { query(router_port, password, &sql).await.ok() }
    })
    .await?;
    let present: HashSet<i64> = rows.iter().filter_map(|r| r.first()?.as_ref()?.parse().ok()).collect();
    Ok(log.acks.iter().filter(|a| !present.contains(&a.id)).count())
}

/// When Patroni's keys changed after the fault, seconds after it: the old
/// leader's lock gone, another member holding it, that member's key saying
/// `running` as master/primary (Patroni writes it a loop or two after promoting;
/// the router already routes to a running lock holder).
#[derive(Default, Clone, Copy)]
pub struct Timeline {
    pub lock_gone: Option<f64>,
    pub new_leader: Option<f64>,
    pub new_primary: Option<f64>,
}

/// Samples `/service/cf-1/` every 50 ms from `t0` until a new primary runs (90 s at most).
fn watch_timeline(
    mut etcd: etcd_client::Client,
    old: String,
    t0: Instant,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Timeline> {
    tokio::spawn(async move {
        let mut tl = Timeline::default();
        let opts = || Some(etcd_client::GetOptions::new().with_prefix());
        while !stop.load(Ordering::Relaxed) && tl.new_primary.is_none() && t0.elapsed() < Duration::from_secs(90) {
            if let Ok(r) = etcd.get(format!("/service/{SCOPE}/"), opts()).await {
                let at = t0.elapsed().as_secs_f64();
                let kv = |suffix: &str| {
                    r.kvs()
                        .iter()
                        .find(|kv| kv.key().ends_with(suffix.as_bytes()))
                        .map(|kv| String::from_utf8_lossy(kv.value()).into_owned())
                };
                let leader = kv(&format!("{SCOPE}/leader"));
                if leader.as_deref() != Some(old.as_str()) {
                    tl.lock_gone.get_or_insert(at);
                }
                if let Some(l) = leader.filter(|l| *l != old) {
                    tl.new_leader.get_or_insert(at);
                    let m: Value =
                        kv(&format!("/members/{l}")).and_then(|v| serde_json::from_str(&v).ok()).unwrap_or_default();
                    if (m["role"] == "master" || m["role"] == "primary") && m["state"] == "running" {
                        tl.new_primary = Some(at);
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tl
    })
}

/// Polls the member on `port` every 200 ms from `t0` until `member` streams from it.
fn watch_rejoin(
    port: u16,
    password: String,
    member: String,
    t0: Instant,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Option<f64>> {
    tokio::spawn(async move {
        let sql = format!("select state from pg_stat_replication where application_name = '{member}'");
        while !stop.load(Ordering::Relaxed) && t0.elapsed() < Duration::from_secs(150) {
            if scalar(port, &password, &sql).await.ok().as_deref() == Some("streaming") {
                return Some(t0.elapsed().as_secs_f64());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        None
    })
}

/// Stops the helper tasks of a trial when it ends, also early.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

pub async fn run_trial(
    b: &mut Bench,
    s: Scenario,
    trial: i32,
    router_port: u16,
    password: &str,
    with_sessions: bool,
) -> anyhow::Result<Trial> {
    let h = wait_healthy(b, router_port, password, Duration::from_secs(180)).await?;
    let old_member = h.leader.clone();
    // The two members are on cells 0 and 1; the other one is the synchronous standby.
    let other_cell = 1 - h.leader_cell;
    let other_port = b.cells[other_cell].ports.0;
    let writer = Writer::start(router_port, password, trial);
    let held_before = (
        sessions::router_counter(b.router_http, ROUTER_PASSWORD, "pgcell_router_connections_held_total").await?,
        sessions::router_counter(b.router_http, ROUTER_PASSWORD, "pgcell_router_holds_expired_total").await?,
    );
    let opener = with_sessions.then(|| sessions::Opener::start(pg_config(router_port, password), trial));
    let etcd = b.etcd_client().await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let stop = StopOnDrop(Arc::new(AtomicBool::new(false)));
    let t0 = Instant::now();
    let timeline = watch_timeline(etcd, old_member.clone(), t0, stop.0.clone());
    let rejoin = (s != Scenario::Hard)
        .then(|| watch_rejoin(other_port, password.to_string(), old_member.clone(), t0, stop.0.clone()));
    let mut t = Trial::default();
    match s {
        Scenario::Hard => {
            b.kill_cell(h.leader_cell);
        }
        Scenario::Crash => {
            let out = Command::new("docker").args(["kill", &format!("pgcell-{old_member}")]).output()?;
            ensure!(out.status.success(), "docker kill: {}", String::from_utf8_lossy(&out.stderr));
        }
        Scenario::Drain => {
            let out = tokio::process::Command::new(&b.bin)
                .args(["drain", &b.cells[h.leader_cell].name])
                .env("PGCELL_ETCD_ENDPOINTS", &b.etcd)
                .output()
                .await?;
            t.drain_exit = Some(t0.elapsed().as_secs_f64());
            let stdout = String::from_utf8_lossy(&out.stdout);
            ensure!(
                out.status.success() && stdout.contains("switched over to"),
                "pgcell drain: {stdout} {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    let (first, new_port) = wait_for("a write on the new primary", Duration::from_secs(60), || {
        let r = writer.first_ack_elsewhere(t0, h.leader_port);
        async move { r }
    })
    .await?;
    ensure!(new_port == other_port, "the new primary is on port {new_port}, expected {other_port}");
    t.first_write = Some(first.as_secs_f64());
    // Keep writing a little on the new primary, then stop.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let log = writer.finish().await?;
    if let Some(opener) = opener {
        let mut c = opener.finish().await?;
        let (held, expired) = held_before;
        c.held = sessions::router_counter(b.router_http, ROUTER_PASSWORD, "pgcell_router_connections_held_total")
            .await?
            - held;
        c.holds_expired = sessions::router_counter(b.router_http, ROUTER_PASSWORD, "pgcell_router_holds_expired_total")
            .await?
            - expired;
        t.sessions = Some(c);
    }
    t.longest_pause = Some(longest_gap(&log.acks));
    t.acked = log.acks.len();
    t.failed_attempts = log.failures;
    ensure!(log.acks.iter().any(|a| a.at < t0), "the writer wrote nothing before the fault");
    t.lost = lost_writes(router_port, password, trial, &log).await?;
    t.timeline = timeline.await?;
    // Rejoin of the old member as a replica of the new primary.
    t.rejoin = match rejoin {
        Some(task) => Some(task.await?.context("the old member did not stream again within 150 s")?),
        None => {
            b.start_cell(h.leader_cell)?;
            let restarted = Instant::now();
            wait_streaming(new_port, password, &old_member, Duration::from_secs(120)).await?;
            Some(restarted.elapsed().as_secs_f64())
        }
    };
    Ok(t)
}
