//! switch: how soon after the leader key changes do new connections reach the new primary?

use std::time::{Duration, Instant};

use anyhow::ensure;
use tokio::io::AsyncReadExt;

use super::harness::*;
use super::support::free_port;
use super::{Outcome, SWITCH_P99_MS, progress};

pub(crate) async fn switch(switches: usize) -> anyhow::Result<Outcome> {
    progress(format!("switch: {switches} leader changes"));
    let mut h = Harness::start("switch").await?;
    let (a, b) = (tag_server(b'A').await?, tag_server(b'B').await?);
    let port = free_port()?;
    let id = h.id(0);
    let ops = h.instance_ops(&id, port, &[("a", a), ("b", b)], "a");
    h.put_ops(ops).await?;
    wait_until("the route to A", Duration::from_secs(15), || async {
        probe(port).await.ok().filter(|(_, t)| *t == b'A')
    })
    .await?;

    let leader_key = format!("/service/cf-{id}/leader");
    let mut lat = Vec::with_capacity(switches);
    let mut attempts = 0usize;
    let mut cut = 0usize;
    for i in 0..switches {
        let (name, tag) = if i % 2 == 0 { ("b", b'B') } else { ("a", b'A') };
        // A connection held to the old primary across the switch: it must be cut.
        let (mut held, _) = probe(port).await?;
        h.etcd.put(leader_key.as_str(), name, None).await?;
        let t0 = Instant::now();
        loop {
            attempts += 1;
            if let Ok((_, got)) = probe(port).await
                && got == tag
            {
                break;
            }
            ensure!(t0.elapsed() < Duration::from_secs(5), "switch {i}: still not routed to {name} after 5 s");
        }
        lat.push(t0.elapsed());
        let mut buf = [0u8; 1];
        if let Ok(Ok(0)) = tokio::time::timeout(Duration::from_secs(1), held.read(&mut buf)).await {
            cut += 1;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    h.remove_keys().await;
    lat.sort();
    let (p50, p99, max) = (percentile(&lat, 50.0), percentile(&lat, 99.0), lat[lat.len() - 1]);
    Ok(Outcome {
        pass: ms(p99) <= SWITCH_P99_MS && cut == switches,
        line: format!(
            "switch: {switches} leader changes, put returned -> new connection reaches the new primary: \
             p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({:.1} connection attempts per switch); \
             held connections cut {cut}/{switches} (target p99 <= {SWITCH_P99_MS} ms, every held connection cut)",
            ms(p50),
            ms(p99),
            ms(max),
            attempts as f64 / switches as f64
        ),
    })
}
