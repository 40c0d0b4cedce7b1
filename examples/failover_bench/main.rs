//! Failover benchmark: how long writes through the router stop when a leader is
//! lost or moved, and whether any acknowledged write goes missing.
//!
//! ```sh
//! CARGO_TARGET_DIR=/work/target cargo run --release --example failover_bench -- [--trials N] [--only hard,crash,drain]
//!     [--sessions] [--promote-wait-ms MS] [--no-revoke] [--out PATH]
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
//! `--sessions` (`sessions.rs`) also opens a session through the router every
//! 20 ms during each trial and counts those that land on a member in recovery
//! (target 0: the router holds new connections until the new leader is
//! writable, issue #17); `--promote-wait-ms 0` runs the router without that
//! hold, for comparison.
//!
//! Results go to stdout and to `docs/bench-failover-latest.md` (or `--out`); progress to
//! stderr. Exit status 1 when a target is missed or a trial failed. Everything
//! started is removed on exit, on error and on Ctrl-C: processes by PID,
//! containers by the label `org.pgcell.deployment=<id>`, the temp dir.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use serde_json::Value;

mod deploy;
#[path = "../../tests/common/etcd.rs"]
mod etcd;
#[path = "../../tests/common/kit.rs"]
mod kit;
mod pg;
mod report;
mod sessions;
#[path = "../support/mod.rs"]
mod support;
mod trial;
use deploy::{Bench, Cell, free_block};
use pg::scalar;
use report::{print_table, report, sh};
use support::{build_pgcell, wait_every, wait_http};
use trial::{Outcome, Trial, run_trial, wait_healthy};

const ID: &str = "1";
const SCOPE: &str = "cf-1";
const ROUTER_PASSWORD: &str = "failover-bench-router";
const LOOPBACK: &str = "127.0.0.1";

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
    /// Cells leave expired leader leases to etcd's sweep (the baseline of the lease reaper).
    no_revoke: bool,
    /// Where the report goes (default `docs/bench-failover-latest.md`).
    out: Option<PathBuf>,
}

fn args() -> anyhow::Result<Args> {
    let mut a = Args {
        trials: 5,
        only: vec![Scenario::Hard, Scenario::Crash, Scenario::Drain],
        sessions: false,
        promote_wait_ms: None,
        no_revoke: false,
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
            "--no-revoke" => a.no_revoke = true,
            "--out" => a.out = Some(it.next().context("--out needs a path")?.into()),
            "-h" | "--help" => {
                println!(
                    "failover_bench: failover and drain timings through the router, with durability checks\n\n\
                     --trials N                  trials per scenario (default 5)\n\
                     --only hard,crash,drain     run only these scenarios\n\
                     --sessions                  also open a session through the router every 20 ms, count those on a member in recovery\n\
                     --promote-wait-ms N         the router's promote_wait_ms (0: no hold; default: the router's)\n\
                     --no-revoke                 cells leave an expired leader lease to etcd's sweep (the reaper's baseline)\n\
                     --out PATH                  the report (default docs/bench-failover-latest.md)"
                );
                std::process::exit(0);
            }
            o => bail!("unknown argument {o:?} (see --help)"),
        }
    }
    Ok(a)
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
        etcd_cluster: None,
        cells: vec![],
        router_ports,
        router: None,
        router_http: 0,
        failed: true,
        revoke_expired: !args.no_revoke,
    };

    // etcd (the test kit's)
    let etcd = etcd::Etcd::start();
    b.etcd = etcd.endpoints();
    b.etcd_cluster = Some(etcd);
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
    let secrets: Value =
        serde_json::from_str(&b.etcd_get(&pgcell::etcd::keys::seed_secrets(ID)).await?.context("no secrets in etcd")?)?;
    let password = secrets["superuser"].as_str().context("no superuser password")?.to_string();
    let router_port: u16 =
        b.etcd_get(&pgcell::etcd::keys::seed_router_port(ID)).await?.context("no router port")?.parse()?;
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
