//! Failover benchmark: how long writes through the router stop when a leader is
//! lost or moved, and whether any acknowledged write goes missing.
//!
//! ```sh
//! CARGO_TARGET_DIR=/work/target cargo run --release --example failover_bench -- [--trials N] [--only hard,crash,drain]
//! ```
//!
//! Starts its own etcd, three cell agents (distinct port ranges) and one router
//! (the release `pgcell` binary next to this example, built first), all on
//! 127.0.0.1, and creates cluster `cf-1` with members on two cells through the
//! seed's per-cell API. Then, for each scenario, N trials (default 5), each on a
//! healthy cluster (two members running, the replica streaming, a synchronous
//! standby named in `/service/cf-1/sync`, the router on the leader):
//!
//! - `hard`: the leader's cell is lost (agent SIGKILL + `docker kill` of its
//!   containers). Kill → first write acknowledged by the other primary through
//!   the router (target ≤ ttl + 1 = 11 s); then the agent is started again:
//!   agent start → old member `streaming` in `pg_stat_replication` (≤ 30 s).
//! - `crash`: `docker kill` of the leader's container, its agent alive.
//!   Kill → first write on the other primary (≤ 3 s).
//! - `drain`: `pgcell drain <leader cell>` while a writer inserts. Longest gap
//!   between two acknowledged writes (≤ 3 s).
//!
//! In every trial a writer inserts through the router (one connection,
//! reconnecting on error, about 100 inserts/s), records every acknowledged id and
//! afterwards checks each is on the new primary (lost must be 0).
//!
//! Results go to stdout and to `docs/bench-failover-latest.md`; progress to
//! stderr. Exit status 1 when a target is missed or a trial failed. Everything
//! started is removed on exit, on error and on Ctrl-C: processes by PID,
//! containers by the label `org.pgcell.deployment=<id>`, the temp dir.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use serde_json::Value;
use tokio_postgres::{NoTls, SimpleQueryMessage};

mod report;
mod sessions;
#[path = "../support/mod.rs"]
mod support;
use report::{print_table, report, sh};
use support::{build_pgcell, wait_every, wait_http};

const ID: &str = "1";
const SCOPE: &str = "cf-1";
const SEED_BODY: &str = r#"{"service_id":"0f5c1670-6dc3-11e5-bc08-6c4008a663f0","plan_id":"1545e30e-6dc3-11e5-826a-6c4008a663f0","organization_guid":"bench","space_guid":"bench"}"#;
const ROUTER_PASSWORD: &str = "failover-bench-router";
const LOOPBACK: &str = "127.0.0.1";
/// Pause between two acknowledged inserts of the writer (about 100/s).
const WRITER_PACE: Duration = Duration::from_millis(10);
/// Pause after a failed insert or connection attempt.
const WRITER_RETRY: Duration = Duration::from_millis(20);

fn progress(msg: impl std::fmt::Display) {
    eprintln!("failover_bench: {msg}");
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Scenario {
    Hard,
    Crash,
    Drain,
}

impl Scenario {
    fn title(self) -> &'static str {
        match self {
            Scenario::Hard => "hard cell loss (agent SIGKILL + docker kill)",
            Scenario::Crash => "leader container crash, agent alive",
            Scenario::Drain => "planned drain (pgcell drain)",
        }
    }
}

struct Args {
    trials: usize,
    only: Vec<Scenario>,
    /// Open a session through the router every 20 ms during each trial.
    sessions: bool,
    /// The router's `promote_wait_ms` (its default when not given).
    promote_wait_ms: Option<u64>,
    /// Where the report goes (default `docs/bench-failover-latest.md`).
    out: Option<PathBuf>,
}

fn args() -> anyhow::Result<Args> {
    let mut a = Args {
        trials: 5,
        only: vec![Scenario::Hard, Scenario::Crash, Scenario::Drain],
        sessions: false,
        promote_wait_ms: None,
        out: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--trials" => {
                let n = it.next().context("--trials needs a number")?;
                a.trials = n.parse().ok().filter(|n| *n > 0).with_context(|| format!("bad --trials {n:?}"))?;
            }
            "--only" => {
                let list = it.next().context("--only needs a list: hard,crash,drain")?;
                a.only = list
                    .split(',')
                    .map(|s| match s.trim() {
                        "hard" => Ok(Scenario::Hard),
                        "crash" => Ok(Scenario::Crash),
                        "drain" => Ok(Scenario::Drain),
                        o => bail!("unknown scenario {o:?} (hard, crash, drain)"),
                    })
                    .collect::<anyhow::Result<_>>()?;
            }
            "--sessions" => a.sessions = true,
            "--promote-wait-ms" => {
                let n = it.next().context("--promote-wait-ms needs a number")?;
                a.promote_wait_ms = Some(n.parse().with_context(|| format!("bad --promote-wait-ms {n:?}"))?);
            }
            "--out" => a.out = Some(it.next().context("--out needs a path")?.into()),
            "-h" | "--help" => {
                println!(
                    "failover_bench: failover and drain timings through the router, with durability checks\n\n\
                     --trials N                  trials per scenario (default 5)\n\
                     --only hard,crash,drain     run only these scenarios\n\
                     --sessions                  also open a session through the router every 20 ms, count those on a member in recovery\n\
                     --promote-wait-ms N         the router's promote_wait_ms (0: no hold; default: the router's)\n\
                     --out PATH                  the report (default docs/bench-failover-latest.md)"
                );
                std::process::exit(0);
            }
            o => bail!("unknown argument {o:?} (see --help)"),
        }
    }
    Ok(a)
}

// ---------------------------------------------------------------------------
// The deployment, removed on drop.

struct Cell {
    name: String,
    api_port: u16,
    ports: (u16, u16),
    child: Option<Child>,
}

struct Bench {
    id: String,
    dir: tempfile::TempDir,
    bin: PathBuf,
    etcd: String,
    etcd_child: Option<Child>,
    cells: Vec<Cell>,
    router_ports: (u16, u16),
    router: Option<Child>,
    /// The router's HTTP port (metrics).
    router_http: u16,
    /// Set once the run went wrong: the logs' tails are printed on drop.
    failed: bool,
}

impl Drop for Bench {
    fn drop(&mut self) {
        // Agents first, so none restarts a container; then the router.
        for c in &mut self.cells {
            if let Some(mut ch) = c.child.take() {
                let _ = ch.kill();
                let _ = ch.wait();
            }
        }
        if let Some(mut ch) = self.router.take() {
            let _ = ch.kill();
            let _ = ch.wait();
        }
        let ids = docker_ids(&format!("label=org.pgcell.deployment={}", self.id), true);
        if !ids.is_empty() {
            let _ = Command::new("docker").args(["rm", "-f", "-v"]).args(&ids).output();
        }
        if let Some(mut ch) = self.etcd_child.take() {
            let _ = ch.kill();
            let _ = ch.wait();
        }
        if self.failed {
            for entry in std::fs::read_dir(self.dir.path()).into_iter().flatten().flatten() {
                let p = entry.path();
                if p.extension().is_some_and(|e| e == "log") {
                    let text = std::fs::read_to_string(&p).unwrap_or_default();
                    let lines: Vec<&str> = text.lines().collect();
                    eprintln!("--- {} (last 40 lines) ---", p.display());
                    for l in &lines[lines.len().saturating_sub(40)..] {
                        eprintln!("{l}");
                    }
                }
            }
        }
        progress(format!("cleaned up deployment {} ({} removed)", self.id, self.dir.path().display()));
    }
}

fn docker_ids(filter: &str, all: bool) -> Vec<String> {
    let mut cmd = Command::new("docker");
    cmd.arg("ps").arg("-q").args(["--filter", filter]);
    if all {
        cmd.arg("-a");
    }
    cmd.output()
        .map(|o| String::from_utf8_lossy(&o.stdout).split_whitespace().map(String::from).collect())
        .unwrap_or_default()
}

fn port_free(p: u16) -> bool {
    std::net::TcpListener::bind((LOOPBACK, p)).is_ok()
}

/// A block of `n` ports that nobody listens on, below the ephemeral range and
/// apart from the blocks already taken.
fn free_block(n: u16, taken: &mut Vec<(u16, u16)>) -> anyhow::Result<(u16, u16)> {
    let seed = (std::process::id() % 97) as u16;
    for k in 0..300u16 {
        let base = 31000 + ((seed * 37 + k * 41) % 250) * 32;
        let block = (base, base + n - 1);
        if taken.iter().any(|t| block.0 <= t.1 && t.0 <= block.1) {
            continue;
        }
        if (block.0..=block.1).all(port_free) {
            taken.push(block);
            return Ok(block);
        }
    }
    bail!("no free block of {n} ports")
}

impl Bench {
    fn log_file(&self, name: &str) -> anyhow::Result<(std::fs::File, std::fs::File)> {
        let f =
            std::fs::OpenOptions::new().create(true).append(true).open(self.dir.path().join(format!("{name}.log")))?;
        Ok((f.try_clone()?, f))
    }

    fn start_cell(&mut self, i: usize) -> anyhow::Result<()> {
        let c = &self.cells[i];
        let (out, err) = self.log_file(&c.name)?;
        let child = Command::new(&self.bin)
            .arg("cell")
            .env("PGCELL_CELL_NAME", &c.name)
            .env("PGCELL_DEPLOYMENT", &self.id)
            .env("PGCELL_API_LISTEN", format!("{LOOPBACK}:{}", c.api_port))
            .env("PGCELL_ADVERTISE_HOST", LOOPBACK)
            .env("PGCELL_PORT_RANGE", format!("{}-{}", c.ports.0, c.ports.1))
            .env("PGCELL_ROUTER_PORT_RANGE", format!("{}-{}", self.router_ports.0, self.router_ports.1))
            .env("PGCELL_DATA_ROOT", self.dir.path().join(&c.name))
            .env("PGCELL_MEMORY_MB", "512")
            .env("PGCELL_ETCD_ENDPOINTS", &self.etcd)
            .env("PGCELL_LOG", "info")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("cannot start cell {}", c.name))?;
        self.cells[i].child = Some(child);
        Ok(())
    }

    /// The whole cell lost at once: agent SIGKILL, then `docker kill` of its containers.
    fn kill_cell(&mut self, i: usize) {
        if let Some(mut c) = self.cells[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let ids = docker_ids(&format!("label=org.pgcell.cell={}", self.cells[i].name), false);
        if !ids.is_empty() {
            let _ = Command::new("docker").arg("kill").args(&ids).output();
        }
    }

    fn member(&self, i: usize) -> String {
        format!("{SCOPE}-{}", self.cells[i].name)
    }

    fn cell_of(&self, member: &str) -> anyhow::Result<usize> {
        (0..self.cells.len()).find(|&i| self.member(i) == member).with_context(|| format!("{member} is on no cell"))
    }

    async fn etcd_client(&self) -> anyhow::Result<etcd_client::Client> {
        Ok(etcd_client::Client::connect([&self.etcd], None).await?)
    }

    async fn etcd_get(&self, key: &str) -> anyhow::Result<Option<String>> {
        let mut c = self.etcd_client().await?;
        let r = c.get(key, None).await?;
        Ok(r.kvs().first().map(|kv| String::from_utf8_lossy(kv.value()).into_owned()))
    }

    async fn etcd_prefix(&self, prefix: &str) -> anyhow::Result<Vec<(String, String)>> {
        let mut c = self.etcd_client().await?;
        let r = c.get(prefix, Some(etcd_client::GetOptions::new().with_prefix())).await?;
        Ok(r.kvs()
            .iter()
            .map(|kv| {
                (String::from_utf8_lossy(kv.key()).into_owned(), String::from_utf8_lossy(kv.value()).into_owned())
            })
            .collect())
    }

    async fn put_member(&self, i: usize) -> anyhow::Result<()> {
        let url = format!("http://{LOOPBACK}:{}/v2/service_instances/{ID}", self.cells[i].api_port);
        let r = reqwest::Client::new()
            .put(&url)
            .basic_auth("containers", Some("containers"))
            .header("content-type", "application/json")
            .body(SEED_BODY)
            .send()
            .await?;
        let status = r.status().as_u16();
        ensure!(status == 201, "PUT {url}: {status} {}", r.text().await.unwrap_or_default());
        Ok(())
    }
}

/// Polls `f` every 200 ms until it returns `Some`, for at most `timeout`.
async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, f: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    wait_every(what, timeout, Duration::from_millis(200), f).await
}

// ---------------------------------------------------------------------------
// PostgreSQL

fn pg_config(port: u16, password: &str) -> tokio_postgres::Config {
    let mut c = tokio_postgres::Config::new();
    c.host(LOOPBACK)
        .port(port)
        .user("postgres")
        .password(password)
        .dbname("postgres")
        .connect_timeout(Duration::from_secs(1));
    c
}

/// One statement on a fresh connection (at most 5 s); rows of text columns.
async fn query(port: u16, password: &str, sql: &str) -> anyhow::Result<Vec<Vec<Option<String>>>> {
    let fut = async {
        let (client, conn) = pg_config(port, password).connect(NoTls).await?;
        tokio::spawn(conn);
        let msgs = client.simple_query(sql).await?;
        Ok::<_, anyhow::Error>(
            msgs.into_iter()
                .filter_map(|m| match m {
                    SimpleQueryMessage::Row(r) => Some((0..r.len()).map(|i| r.get(i).map(String::from)).collect()),
                    _ => None,
                })
                .collect(),
        )
    };
    tokio::time::timeout(Duration::from_secs(5), fut).await.context("query timed out")?
}

async fn scalar(port: u16, password: &str, sql: &str) -> anyhow::Result<String> {
    let rows = query(port, password, sql).await?;
    rows.first().and_then(|r| r.first().cloned().flatten()).context("no value")
}

struct Ack {
    id: i64,
    at: Instant,
    port: i32,
}

#[derive(Default)]
struct WriterLog {
    acks: Vec<Ack>,
    failures: u64,
}

/// A writer through the router: one connection, reconnecting after any error;
/// records every insert the server acknowledged.
struct Writer {
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<WriterLog>>,
    task: tokio::task::JoinHandle<()>,
}

impl Writer {
    fn start(router_port: u16, password: &str, trial: i32) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let log = Arc::new(Mutex::new(WriterLog::default()));
        let cfg = pg_config(router_port, password);
        let task = tokio::spawn({
            let (stop, log) = (stop.clone(), log.clone());
            async move {
                let mut client: Option<tokio_postgres::Client> = None;
                let mut id: i64 = 0;
                while !stop.load(Ordering::Relaxed) {
                    let c = match client.take() {
                        Some(c) => c,
                        None => match tokio::time::timeout(Duration::from_secs(2), cfg.connect(NoTls)).await {
                            Ok(Ok((c, conn))) => {
                                tokio::spawn(conn);
                                c
                            }
                            _ => {
                                log.lock().unwrap().failures += 1;
                                tokio::time::sleep(WRITER_RETRY).await;
                                continue;
                            }
                        },
                    };
                    id += 1;
                    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&trial, &id];
                    let insert = c.query_one(
                        "insert into bench(trial, id) values ($1, $2) returning inet_server_port()",
                        &params,
                    );
                    match tokio::time::timeout(Duration::from_secs(5), insert).await {
                        Ok(Ok(row)) => {
                            let ack = Ack { id, at: Instant::now(), port: row.get(0) };
                            log.lock().unwrap().acks.push(ack);
                            client = Some(c);
                            tokio::time::sleep(WRITER_PACE).await;
                        }
                        _ => {
                            log.lock().unwrap().failures += 1;
                            tokio::time::sleep(WRITER_RETRY).await;
                        }
                    }
                }
            }
        });
        Self { stop, log, task }
    }

    /// The first write acknowledged after `after` by a server other than `old_port`:
    /// (time since `after`, that server's port).
    fn first_ack_elsewhere(&self, after: Instant, old_port: u16) -> Option<(Duration, u16)> {
        let log = self.log.lock().unwrap();
        let a = log.acks.iter().find(|a| a.at > after && a.port != i32::from(old_port))?;
        Some((a.at - after, u16::try_from(a.port).ok()?))
    }

    async fn finish(mut self) -> anyhow::Result<WriterLog> {
        self.stop.store(true, Ordering::Relaxed);
        (&mut self.task).await?;
        let mut log = self.log.lock().unwrap();
        Ok(std::mem::take(&mut *log))
    }
}

impl Drop for Writer {
    /// A trial that fails half-way stops its writer too.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

// ---------------------------------------------------------------------------
// Cluster health

struct Health {
    leader: String,
    leader_cell: usize,
    leader_port: u16,
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

async fn wait_healthy(b: &Bench, router_port: u16, password: &str, timeout: Duration) -> anyhow::Result<Health> {
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
async fn wait_streaming(primary_port: u16, password: &str, member: &str, timeout: Duration) -> anyhow::Result<()> {
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
struct Trial {
    /// Kill (or drain start) → first acknowledged write on the other primary.
    first_write: Option<f64>,
    /// Longest gap between two acknowledged writes.
    longest_pause: Option<f64>,
    /// Agent start (hard), or kill (crash), or drain start (drain) → old member streaming.
    rejoin: Option<f64>,
    /// Drain start → `pgcell drain` exited.
    drain_exit: Option<f64>,
    timeline: Timeline,
    acked: usize,
    lost: usize,
    failed_attempts: u64,
    /// `--sessions`: what the sessions opened every 20 ms met.
    sessions: Option<sessions::Counts>,
}

struct Outcome {
    scenario: Scenario,
    trials: Vec<Trial>,
    error: Option<String>,
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
struct Timeline {
    lock_gone: Option<f64>,
    new_leader: Option<f64>,
    new_primary: Option<f64>,
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

async fn run_trial(
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

// ---------------------------------------------------------------------------

async fn run(args: &Args) -> anyhow::Result<bool> {
    let started = sh("date -u '+%Y-%m-%d %H:%M:%S UTC'");
    let t_start = Instant::now();
    let bin = build_pgcell(|m| progress(m))?;
    ensure!(bin.exists(), "no pgcell binary at {}", bin.display());
    ensure!(
        Command::new("docker").args(["image", "inspect", "pgcell/postgres:latest"]).output()?.status.success(),
        "the image pgcell/postgres:latest is missing (deploy/image/build.sh)"
    );
    let dir = tempfile::Builder::new().prefix("pgcell-failover-bench-").tempdir()?;
    let id = format!("fbench{}", std::process::id());
    let mut taken = vec![];
    let router_ports = free_block(10, &mut taken)?;
    let mut b = Bench {
        id: id.clone(),
        dir,
        bin,
        etcd: String::new(),
        etcd_child: None,
        cells: vec![],
        router_ports,
        router: None,
        router_http: 0,
        failed: true,
    };

    // etcd
    let (client, peer) = free_block(2, &mut taken)?;
    b.etcd = format!("{LOOPBACK}:{client}");
    let (c, p) = (format!("http://{}", b.etcd), format!("http://{LOOPBACK}:{peer}"));
    let (out, err) = b.log_file("etcd")?;
    b.etcd_child = Some(
        Command::new("etcd")
            .args(["--data-dir", &b.dir.path().join("etcd").display().to_string()])
            .args(["--listen-client-urls", &c, "--advertise-client-urls", &c])
            .args(["--listen-peer-urls", &p, "--initial-advertise-peer-urls", &p])
            .args(["--initial-cluster", &format!("default={p}")])
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .context("cannot start etcd")?,
    );
    wait_for("etcd", Duration::from_secs(15), || {
        let ok = std::net::TcpStream::connect(&b.etcd).is_ok();
        async move { ok.then_some(()) }
    })
    .await?;
    progress(format!("etcd on {}, deployment {id}, logs in {}", b.etcd, b.dir.path().display()));

    // Three cells
    for i in 0..3 {
        let ports = free_block(10, &mut taken)?;
        let (api_port, _) = free_block(1, &mut taken)?;
        b.cells.push(Cell { name: format!("{id}-c{i}"), api_port, ports, child: None });
        b.start_cell(i)?;
    }
    for c in &b.cells {
        wait_http(&format!("http://{LOOPBACK}:{}/healthz", c.api_port), &c.name, Duration::from_secs(20)).await?;
    }
    progress(format!(
        "cells up: {}",
        b.cells.iter().map(|c| format!("{} ({}-{})", c.name, c.ports.0, c.ports.1)).collect::<Vec<_>>().join(", ")
    ));

    // Router
    let (http, _) = free_block(1, &mut taken)?;
    b.router_http = http;
    let (out, err) = b.log_file("router")?;
    let mut router = Command::new(&b.bin);
    if let Some(ms) = args.promote_wait_ms {
        router.env("PGCELL_PROMOTE_WAIT_MS", ms.to_string());
    }
    b.router = Some(
        router
            .arg("router")
            .env("PGCELL_ROUTER_NAME", format!("{id}-r"))
            .env("PGCELL_HTTP_LISTEN", format!("{LOOPBACK}:{http}"))
            .env("PGCELL_PASSWORD", ROUTER_PASSWORD)
            .env("PGCELL_LISTEN_HOST", LOOPBACK)
            .env("PGCELL_ADVERTISE_HOST", LOOPBACK)
            .env("PGCELL_ETCD_ENDPOINTS", &b.etcd)
            .env("PGCELL_LOG", "info")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .context("cannot start the router")?,
    );
    wait_http(&format!("http://{LOOPBACK}:{http}/healthz"), "router", Duration::from_secs(20)).await?;

    // Cluster cf-1 on cells 0 and 1, as the seed's walkthrough does.
    progress("creating cf-1: PUT on cell 0, then on cell 1");
    b.put_member(0).await?;
    let secrets: Value = serde_json::from_str(
        &b.etcd_get(&format!("/pgcell/instances/{ID}/secrets")).await?.context("no secrets in etcd")?,
    )?;
    let password = secrets["superuser"].as_str().context("no superuser password")?.to_string();
    let router_port: u16 =
        b.etcd_get(&format!("/pgcell/instances/{ID}/router_port")).await?.context("no router port")?.parse()?;
    let first_port = b.cells[0].ports.0;
    wait_for("the first member accepting writes", Duration::from_secs(90), || {
        let pw = password.clone();
        async move { scalar(first_port, &pw, "select pg_is_in_recovery()").await.ok().filter(|v| v == "f") }
    })
    .await?;
    b.put_member(1).await?;
    let h = wait_healthy(&b, router_port, &password, Duration::from_secs(180)).await?;
    progress(format!("cf-1 healthy: leader {} on port {}, router port {router_port}", h.leader, h.leader_port));
    scalar(
        router_port,
        &password,
        "create table bench(trial int, id bigint, at timestamptz default now(), primary key (trial, id)); \
         create table bench_sessions(trial int, id bigint, primary key (trial, id)); select 1",
    )
    .await?;

    let mut outcomes = vec![];
    for (si, &s) in args.only.iter().enumerate() {
        let mut o = Outcome { scenario: s, trials: vec![], error: None };
        for k in 0..args.trials {
            let trial = (si * 1000 + k + 1) as i32;
            progress(format!("{}: trial {}/{}", s.title(), k + 1, args.trials));
            match run_trial(&mut b, s, trial, router_port, &password, args.sessions).await {
                Ok(t) => {
                    let f = |v: Option<f64>| v.map(|v| format!("{v:.2}")).unwrap_or_else(|| "-".into());
                    progress(format!(
                        "  lock gone {} s, new leader {} s, its member key master {} s, drain exited {} s, \
                         first write {} s, longest pause {} s, rejoin {} s, acknowledged {}, lost {}",
                        f(t.timeline.lock_gone),
                        f(t.timeline.new_leader),
                        f(t.timeline.new_primary),
                        f(t.drain_exit),
                        f(t.first_write),
                        f(t.longest_pause),
                        f(t.rejoin),
                        t.acked,
                        t.lost
                    ));
                    if let Some(c) = t.sessions {
                        progress(format!(
                            "  sessions: {} opened, {} connected, {} in recovery, {} read-only, {} held by the router",
                            c.opened, c.connected, c.in_recovery, c.read_only, c.held
                        ));
                    }
                    o.trials.push(t);
                }
                Err(e) => {
                    progress(format!("  trial failed: {e:#}"));
                    o.error = Some(format!("trial {}: {e:#}", k + 1));
                    break;
                }
            }
        }
        outcomes.push(o);
    }

    let (md, ok) = report(&outcomes, args, &started, t_start.elapsed());
    println!();
    print_table(&md);
    let path =
        args.out.clone().unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/bench-failover-latest.md"));
    std::fs::write(&path, &md).with_context(|| format!("cannot write {}", path.display()))?;
    progress(format!("wrote {}", path.display()));
    b.failed = outcomes.iter().any(|o| o.error.is_some());
    Ok(ok)
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = match args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("failover_bench: {e:#}");
            return ExitCode::from(2);
        }
    };
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("failover_bench: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Dropping `run` (on a signal) drops the deployment guard, which cleans up.
    let result = tokio::select! {
        r = run(&args) => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
        _ = term.recv() => Err(anyhow::anyhow!("terminated")),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("failover_bench: FAILED: {e:#}");
            ExitCode::FAILURE
        }
    }
}
