//! hop: the round-trip latency one proxy hop adds, the router against haproxy.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::harness::*;
use super::rss::router_cpu_us;
use super::support::free_port;
use super::{LOOPBACK, Outcome, progress};

// no PostgreSQL (and its noise) behind it: one connection each, 64-byte
// ping-pongs with an echo server, in interleaved blocks. Informative: no target.

/// Writes `tag` on accept, then echoes.
pub(crate) async fn echo_server(tag: u8) -> anyhow::Result<u16> {
    let listener = TcpListener::bind((LOOPBACK, 0)).await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let _ = s.set_nodelay(true);
            tokio::spawn(async move {
                if s.write_all(&[tag]).await.is_err() {
                    return;
                }
                let mut buf = [0u8; 4096];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    Ok(port)
}

pub(crate) fn start_haproxy(guard: &mut Guard, target: u16) -> anyhow::Result<u16> {
    let port = free_port()?;
    let cfg = guard.dir.path().join("haproxy.cfg");
    std::fs::write(
        &cfg,
        format!(
            "global\n    maxconn 4096\ndefaults\n    mode tcp\n    timeout connect 3s\n    timeout client 1h\n    \
             timeout server 1h\nlisten bench\n    bind {LOOPBACK}:{port}\n    server s {LOOPBACK}:{target}\n"
        ),
    )?;
    let log = std::fs::File::create(guard.dir.path().join("haproxy.log"))?;
    let child = Command::new("haproxy")
        .arg("-f")
        .arg(&cfg)
        .arg("-db")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("starting haproxy (is it installed? scripts/setup.sh)")?;
    guard.children.push(("haproxy", child));
    Ok(port)
}

pub(crate) async fn hop(blocks: usize) -> anyhow::Result<Outcome> {
    const ROUND_TRIPS: usize = 2000;
    progress(format!("hop: {blocks} blocks of {ROUND_TRIPS} round trips per target"));
    let mut h = Harness::start("hop").await?;
    let echo = echo_server(b'E').await?;
    let router = free_port()?;
    let id = h.id(0);
    let ops = h.instance_ops(&id, router, &[("m", echo)], "m");
    h.put_ops(ops).await?;
    wait_until("the route", Duration::from_secs(15), || async { probe(router).await.ok().filter(|(_, t)| *t == b'E') })
        .await?;
    let haproxy = start_haproxy(&mut h.guard, echo)?;
    wait_until("haproxy", Duration::from_secs(15), || async { probe(haproxy).await.ok().filter(|(_, t)| *t == b'E') })
        .await?;
    let targets = [("direct", echo), ("router", router), ("haproxy", haproxy)];
    let mut conns = vec![];
    for (name, port) in targets {
        let (s, _) = probe(port).await.with_context(|| format!("connecting via {name}"))?;
        s.set_nodelay(true)?;
        conns.push(s);
    }
    let mut means: Vec<Vec<f64>> = vec![vec![]; targets.len()];
    let cpu0 = router_cpu_us(h.router_pid)?;
    let mut router_trips = 0usize;
    let (ping, mut pong) = ([7u8; 64], [0u8; 64]);
    for b in 0..blocks {
        for k in 0..targets.len() {
            let t = (b + k) % targets.len();
            let s = &mut conns[t];
            let start = Instant::now();
            for _ in 0..ROUND_TRIPS {
                s.write_all(&ping).await?;
                s.read_exact(&mut pong).await?;
            }
            means[t].push(start.elapsed().as_secs_f64() * 1e6 / ROUND_TRIPS as f64);
            if t == 1 {
                router_trips += ROUND_TRIPS;
            }
        }
    }
    let router_cpu = (router_cpu_us(h.router_pid)? - cpu0) / router_trips as f64;
    h.remove_keys().await;
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let m: Vec<f64> = means.iter_mut().map(median).collect();
    Ok(Outcome {
        pass: true,
        line: format!(
            "hop: 64-byte round trips, median of {blocks} interleaved blocks of {ROUND_TRIPS}: direct {:.1} us, \
             router {:.1} us (+{:.1}), haproxy {:.1} us (+{:.1}); router CPU {router_cpu:.1} us per round trip \
             (informative, no target)",
            m[0],
            m[1],
            m[1] - m[0],
            m[2],
            m[2] - m[0]
        ),
    })
}
