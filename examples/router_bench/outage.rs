//! outage: how soon after etcd is back does the router route again?
//!
//! Each round kills etcd (SIGKILL), waits until the router refuses (its grace
//! period, 1 s here, is over), keeps etcd down a while longer (0.5 to 2.75 s,
//! so retries are at different points of their backoff), starts etcd again on
//! the same data, and times from the first moment etcd answers a read to the
//! first new connection through the router that reaches the primary. Target:
//! every round within 1 s (the "normal again within a second").

use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use etcd_client::{Client, ConnectOptions};

use super::harness::{Harness, ms, percentile, probe, spawn_etcd, tag_server, wait_until};
use super::{Outcome, progress};
use crate::support::{free_port, wait_every};

const GRACE_MS: &str = "1000";
const TARGET: Duration = Duration::from_secs(1);
/// The times measured are short: poll often.
const STEP: Duration = Duration::from_millis(5);
const LIMIT: Duration = Duration::from_secs(15);

pub async fn outage(rounds: usize) -> anyhow::Result<Outcome> {
    ensure!(
        std::env::var("PGCELL_ETCD_ENDPOINTS").map_or(true, |e| e.trim().is_empty()),
        "outage kills etcd: it runs its own only (unset PGCELL_ETCD_ENDPOINTS)"
    );
    progress(format!("outage: {rounds} etcd outages past the router's grace period ({GRACE_MS} ms)"));
    let mut h = Harness::start_with("outage", &[("PGCELL_GRACE_MS", GRACE_MS)]).await?;
    let primary = tag_server(b'A').await?;
    let port = free_port()?;
    let id = h.id(0);
    let ops = h.instance_ops(&id, port, &[("a", primary)], "a");
    h.put_ops(ops).await?;
    let routed = || async { probe(port).await.ok().filter(|(_, t)| *t == b'A').map(|_| ()) };
    wait_until("the route to the primary", Duration::from_secs(15), routed).await?;
    let (client, peer) = h.guard.etcd_ports.context("no etcd of ours")?;

    let mut back = Vec::with_capacity(rounds);
    for round in 0..rounds {
        let down = Instant::now();
        kill_etcd(&mut h)?;
        wait_until("the router to refuse", Duration::from_secs(10), || async {
            probe(port).await.is_err().then_some(())
        })
        .await?;
        let extra = Duration::from_millis(500 + 750 * (round as u64 % 4));
        tokio::time::sleep(extra).await;
        let endpoint = spawn_etcd(&mut h.guard, client, peer)?;
        let spawned = Instant::now();
        // A fresh client per attempt: a cached one would add its own reconnect delay.
        let serving = wait_every("etcd to serve again", LIMIT, STEP, || {
            let endpoint = endpoint.clone();
            async move {
                let read = async {
                    let opts = ConnectOptions::new().with_connect_timeout(Duration::from_millis(50));
                    Client::connect([endpoint], Some(opts)).await?.get("/pgcell/", None).await
                };
                let got = tokio::time::timeout(Duration::from_millis(100), read).await;
                matches!(got, Ok(Ok(_))).then(Instant::now)
            }
        })
        .await?;
        wait_every("routing again", LIMIT, STEP, routed).await?;
        let took = serving.elapsed();
        progress(format!(
            "round {}: etcd down {:.1} s, serving {:.0} ms after its start; routing again {:.0} ms after that",
            round + 1,
            (spawned - down).as_secs_f64(),
            ms(serving - spawned),
            ms(took)
        ));
        back.push(took);
    }
    h.remove_keys().await;
    back.sort();
    let (p50, p99, max) = (percentile(&back, 50.0), percentile(&back, 99.0), back[back.len() - 1]);
    Ok(Outcome {
        pass: max <= TARGET,
        line: format!(
            "outage: {rounds} etcd outages past the grace period, etcd serving again -> a new connection \
             through the router reaches the primary: p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms \
             ({:.2}x the 1 s target at max)",
            ms(p50),
            ms(p99),
            ms(max),
            max.as_secs_f64() / TARGET.as_secs_f64()
        ),
    })
}

fn kill_etcd(h: &mut Harness) -> anyhow::Result<()> {
    let i = h.guard.children.iter().position(|(what, _)| *what == "etcd").context("no etcd of ours")?;
    let (_, mut child) = h.guard.children.remove(i);
    child.kill()?;
    child.wait()?;
    Ok(())
}
