//! rss: the router's resident memory with many instances, and its CPU per key update.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use super::harness::*;
use super::{LOOPBACK, Outcome, RSS_LIMIT_KIB, progress};

/// `n` consecutive ports from 42000 up that can be bound now.
pub(crate) fn free_port_range(n: usize) -> anyhow::Result<u16> {
    let mut base: u32 = 42000;
    while base + n as u32 <= 61000 {
        match (base..base + n as u32).find(|p| std::net::TcpListener::bind((LOOPBACK, *p as u16)).is_err()) {
            Some(busy) => base = busy + 1,
            None => return Ok(base as u16),
        }
    }
    bail!("no {n} consecutive free ports between 42000 and 61000")
}

pub(crate) async fn rss(instances: usize) -> anyhow::Result<Outcome> {
    progress(format!("rss: {instances} instances"));
    let mut h = Harness::start("rss").await?;
    let server = tag_server(b'S').await?;
    let base = free_port_range(instances)?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle = h.router_rss_kib()?;
    // Cost of one Patroni key update (as every member writes on each loop) with one instance...
    let ops = h.instance_ops(&h.id(0), base, &[("m", server)], "m");
    h.put_ops(ops).await?;
    wait_until("the first route", Duration::from_secs(15), || async {
        h.routes_with_primary().await.ok().filter(|n| *n == 1)
    })
    .await?;
    let cpu_one = update_cpu(&mut h, 1, server, UPDATES).await?;
    let t0 = Instant::now();
    // etcd takes at most 128 operations per transaction: 42 instances of 3 keys.
    let mut ops = vec![];
    for i in 1..instances {
        let id = h.id(i);
        ops.extend(h.instance_ops(&id, base + i as u16, &[("m", server)], "m"));
        if ops.len() >= 126 || i + 1 == instances {
            h.put_ops(std::mem::take(&mut ops)).await?;
        }
    }
    let put_took = t0.elapsed();
    let ready = wait_until("every route with a primary", Duration::from_secs(60), || async {
        h.routes_with_primary().await.ok().filter(|n| *n == instances)
    })
    .await;
    ready.with_context(|| {
        format!("router log:\n{}", std::fs::read_to_string(h.guard.dir.path().join("router.log")).unwrap_or_default())
    })?;
    let ready_after = t0.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss = h.router_rss_kib()?;
    // Every port listens and forwards (checked after the measurement).
    let mut ok = 0;
    for i in 0..instances {
        if matches!(probe(base + i as u16).await, Ok((_, b'S'))) {
            ok += 1;
        }
    }
    let after_probe = h.router_rss_kib()?;
    // ... and with every instance.
    let cpu_all = update_cpu(&mut h, instances, server, UPDATES).await?;
    h.remove_keys().await;
    Ok(Outcome {
        pass: rss <= RSS_LIMIT_KIB && ok == instances,
        line: format!(
            "rss: {instances} instances (ports {base}-{}): router VmRSS {:.1} MiB ({rss} KiB; {:.1} MiB with no instance), \
             all routed {:.2} s after the first put (puts took {:.2} s); {ok}/{instances} ports forward; \
             VmRSS after one connection per port {:.1} MiB (target <= {} MiB); \
             router CPU per Patroni member-key update: {cpu_one:.0} us with 1 instance, {cpu_all:.0} us with {instances} \
             (= {:.0}% of a core at one update per instance per second)",
            base as usize + instances - 1,
            rss as f64 / 1024.0,
            idle as f64 / 1024.0,
            ready_after.as_secs_f64(),
            put_took.as_secs_f64(),
            after_probe as f64 / 1024.0,
            RSS_LIMIT_KIB / 1024,
            cpu_all * instances as f64 / 1e4
        ),
    })
}

pub(crate) const UPDATES: usize = 1000;

/// The router's CPU time (user + system), in microseconds.
pub(crate) fn router_cpu_us(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces): state is field 3, utime 14, stime 15.
    let rest = stat.rsplit_once(')').context("malformed stat")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f[11].parse::<u64>()? + f[12].parse::<u64>()?;
    Ok(ticks as f64 * 1e6 / clock_ticks() as f64)
}

pub(crate) fn clock_ticks() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100)
}

/// Rewrites one member key `updates` times (its xlog_location moving, as Patroni does),
/// spread over the first `instances` instances; returns the router's CPU microseconds per update.
pub(crate) async fn update_cpu(h: &mut Harness, instances: usize, server: u16, updates: usize) -> anyhow::Result<f64> {
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = router_cpu_us(h.router_pid)?;
    for u in 0..updates {
        let id = h.id(u % instances);
        let value = member_json(server).replace(r#""version""#, &format!(r#""xlog_location":{u},"version""#));
        h.etcd.put(format!("/service/cf-{id}/members/m"), value, None).await?;
    }
    // Let the router drain its watch.
    tokio::time::sleep(Duration::from_secs(1)).await;
    Ok((router_cpu_us(h.router_pid)? - before) / updates as f64)
}
