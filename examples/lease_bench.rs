//! Lease reaper benchmark: how long after its lease expires a leader key whose
//! keepalives stopped is deleted, with the cells' reaper (`etcd::lease_reaper`,
//! two agents per key as with two members) against the baseline, etcd 3.4's own
//! sweep (every 500 ms). That delay adds to every failover of a dead leader.
//!
//! ```sh
//! bench/lease.sh [LEASES]    # or: cargo run --release --example lease_bench -- [--leases N] [--out PATH]
//! ```
//!
//! Starts its own etcd (the test kit's, on tmpfs); per mode, N keys on leases of
//! 3 s whose keepalives stop at instants spread over one second (so the expiries
//! meet the sweep at every phase); each delay is measured from the lease's
//! expiry (the last keepalive's round trip midpoint + 3 s) to the delete seen by
//! a watch. Report in docs/bench-lease-latest.md (or `--out`).

use std::time::{Duration, Instant};

use anyhow::Context;
use etcd_client::Client;
use pgcell::etcd::lease_reaper;

#[path = "../tests/common/etcd.rs"]
mod etcd;
#[path = "../tests/common/lease.rs"]
mod lease;

const TTL: i64 = 3;

/// Delays (seconds) from expiry to delete of `n` keys, reaped or left to etcd.
async fn round(client: &Client, n: usize, reaped: bool) -> anyhow::Result<Vec<f64>> {
    let prefix = format!("/service/bench-{}/", if reaped { "reaper" } else { "sweep" });
    let deleted = lease::deletions(client.clone(), &prefix);
    let mut reapers = vec![];
    let mut keepers = vec![];
    for i in 0..n {
        let key = format!("{prefix}c{i}/leader");
        if reaped {
            for _ in 0..2 {
                reapers.push(tokio::spawn(lease_reaper::run(client.clone(), key.clone(), |_| {})));
            }
        }
        let mut c = client.clone();
        let stop = Duration::from_millis(600 + (i * 1000 / n) as u64);
        keepers.push(tokio::spawn(async move {
            let mut k = lease::Kept::grant(&mut c, &key, TTL).await;
            let start = Instant::now();
            loop {
                tokio::time::sleep(Duration::from_millis(300).min(stop.saturating_sub(start.elapsed()))).await;
                if start.elapsed() >= stop {
                    return (key, k);
                }
                k.keep_alive().await;
            }
        }));
    }
    let mut kept = vec![];
    for k in keepers {
        kept.push(k.await?);
    }
    let deadline = Instant::now() + Duration::from_secs(TTL as u64 + 3);
    while deleted.lock().unwrap().len() < n && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    reapers.iter().for_each(|r| r.abort());
    let deleted = deleted.lock().unwrap().clone();
    let mut delays = vec![];
    for (key, k) in kept {
        let at = *deleted.get(&key).with_context(|| format!("{key} was not deleted within {} s", TTL + 3))?;
        let (lo, hi) = k.expiry();
        let mid = lo + (hi - lo) / 2;
        let d = lease::secs_after(at, mid);
        anyhow::ensure!(at >= lo, "{key} was deleted {:.3} s before its lease expired", -d);
        delays.push(d);
    }
    delays.sort_by(f64::total_cmp);
    Ok(delays)
}

fn pct(v: &[f64], p: f64) -> f64 {
    v[((v.len() - 1) as f64 * p).round() as usize]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut n = 40;
    let mut out = std::path::PathBuf::from("docs/bench-lease-latest.md");
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--leases" => {
                n = it.next().and_then(|v| v.parse().ok()).filter(|n| *n > 0).context("--leases needs N > 0")?
            }
            "--out" => out = it.next().context("--out needs a path")?.into(),
            "-h" | "--help" => {
                println!(
                    "lease_bench [--leases N] [--out PATH]: expiry → delete of a leader key, reaper vs etcd's sweep"
                );
                return Ok(());
            }
            other => anyhow::bail!("unknown argument {other:?} (see --help)"),
        }
    }
    let etcd = etcd::Etcd::start();
    let client = Client::connect([etcd.endpoint.as_str()], None).await?;
    eprintln!("lease_bench: {n} leases left to etcd's sweep (baseline)");
    let sweep = round(&client, n, false).await?;
    eprintln!("lease_bench: {n} leases followed by the reaper");
    let reaper = round(&client, n, true).await?;
    let row = |name: &str, v: &[f64]| {
        format!("| {name} | {:.3} | {:.3} | {:.3} | {:.3} |\n", pct(v, 0.0), pct(v, 0.5), pct(v, 0.9), pct(v, 1.0))
    };
    let mut md = String::from("# Lease reaper benchmark: latest run\n\n");
    md.push_str(&format!(
        "Written by `bench/lease.sh` (`cargo run --release --example lease_bench -- --leases {n}`); etcd 3.4 on tmpfs, \
         leases of {TTL} s, keepalives stopped at instants spread over 1 s.\n\n\
         Seconds from a lease's expiry to its key's delete (seen by a watch):\n\n\
         | who ends the lease | min | p50 | p90 | max |\n|---|---|---|---|---|\n"
    ));
    md.push_str(&row("etcd's sweep (baseline)", &sweep));
    md.push_str(&row("the cells' reaper", &reaper));
    md.push_str(&format!(
        "\nRatio reaper / sweep: p50 {:.2}, max {:.2}\n",
        pct(&reaper, 0.5) / pct(&sweep, 0.5),
        pct(&reaper, 1.0) / pct(&sweep, 1.0)
    ));
    print!("{md}");
    std::fs::write(&out, &md).with_context(|| format!("cannot write {}", out.display()))?;
    Ok(())
}
