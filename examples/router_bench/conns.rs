//! conns: memory per idle proxied connection.

use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use tokio::net::TcpStream;

use super::harness::*;
use super::support::free_port;
use super::{CONN_LIMIT_KIB, Outcome, progress};

pub(crate) fn open_files_limit() -> anyhow::Result<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits")?;
    let line = limits.lines().find(|l| l.starts_with("Max open files")).context("no open files limit")?;
    let soft = line.split_whitespace().nth(3).context("open files limit")?;
    Ok(if soft == "unlimited" { u64::MAX } else { soft.parse()? })
}

pub(crate) async fn conns(n: usize) -> anyhow::Result<Outcome> {
    progress(format!("conns: {n} idle connections"));
    // This process holds both ends it owns (client + server side), the router holds two per connection.
    let need = 2 * n as u64 + 256;
    let limit = open_files_limit()?;
    ensure!(
        limit >= need,
        "open files limit (ulimit -n) is {limit}; {n} connections need at least {need}: run `ulimit -n {need}` first"
    );
    let mut h = Harness::start("conns").await?;
    let server = tag_server(b'C').await?;
    let port = free_port()?;
    let id = h.id(0);
    let ops = h.instance_ops(&id, port, &[("m", server)], "m");
    h.put_ops(ops).await?;
    wait_until("the route", Duration::from_secs(15), || async { probe(port).await.ok().filter(|(_, t)| *t == b'C') })
        .await?;
    // Warm-up: the first connections on each data thread allocate once.
    let warm: Vec<_> = futures_join(64, port).await?;
    drop(warm);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = h.router_rss_kib()?;
    let t0 = Instant::now();
    let mut held = Vec::with_capacity(n);
    for i in 0..n {
        let (s, tag) = probe(port).await.with_context(|| format!("connection {i}"))?;
        ensure!(tag == b'C', "connection {i} reached the wrong server");
        held.push(s);
    }
    let open_took = t0.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let active = h.metric("pgcell_router_connections_active").await?;
    let after = h.router_rss_kib()?;
    drop(held);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let closed = h.router_rss_kib()?;
    // More open/close cycles: memory the allocator kept is reused, not grown (no leak).
    let mut cycles = vec![format!("{after}/{closed}")];
    for _ in 0..3 {
        let mut again = Vec::with_capacity(n);
        for i in 0..n {
            again.push(probe(port).await.with_context(|| format!("connection {i} of a later cycle"))?.0);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let open = h.router_rss_kib()?;
        drop(again);
        tokio::time::sleep(Duration::from_secs(1)).await;
        cycles.push(format!("{open}/{}", h.router_rss_kib()?));
    }
    h.remove_keys().await;
    let per_conn = after.saturating_sub(before) as f64 / n as f64;
    Ok(Outcome {
        pass: per_conn <= CONN_LIMIT_KIB && active as usize == n,
        line: format!(
            "conns: {n} idle proxied connections (opened in {:.2} s, router reports {active} active): \
             VmRSS {before} KiB -> {after} KiB = {per_conn:.1} KiB per connection (target <= {CONN_LIMIT_KIB} KiB); \
             VmRSS open/closed over {} open-close cycles: {} KiB",
            open_took.as_secs_f64(),
            cycles.len(),
            cycles.join(", ")
        ),
    })
}

/// Opens `n` connections through `port` at once and reads each one's byte.
pub(crate) async fn futures_join(n: usize, port: u16) -> anyhow::Result<Vec<TcpStream>> {
    let tasks: Vec<_> = (0..n).map(|_| tokio::spawn(probe(port))).collect();
    let mut out = Vec::with_capacity(n);
    for t in tasks {
        out.push(t.await??.0);
    }
    Ok(out)
}
