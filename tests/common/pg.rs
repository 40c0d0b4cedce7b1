//! psql as a user runs it, and the seed's walkthrough.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use super::*;

/// A `psql` session held open: statements go to its stdin; dropping the
/// stdin ends it.
pub fn psql_session(url: &str) -> (std::process::Child, std::process::ChildStdin) {
    let mut held = Command::new("psql")
        .args([url, "-X", "-tA", "-v", "ON_ERROR_STOP=1"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdin = held.stdin.take().unwrap();
    (held, stdin)
}

pub fn dir_is_empty_or_missing(p: &Path) -> bool {
    std::fs::read_dir(p).map(|mut d| d.next().is_none()).unwrap_or(true)
}

/// The seed's walkthrough: PUT instance `id` on each cell in turn; returns once
/// the first cell's member leads and every other member streams.
pub async fn seed_cluster(d: &Deployment, id: &str, cells: &[usize]) {
    for (i, &c) in cells.iter().enumerate() {
        let cell = &d.cells[c];
        let r =
            http::call("PUT", &cell.url(&format!("/v2/service_instances/{id}")), http::SEED_AUTH, Some(&seed_body()))
                .await;
        assert_eq!(r.status, 201, "{}", r.text);
        if i == 0 {
            let url = d.superuser_url(id, d.member_port(id, c).await).await;
            wait_for("the first member accepting writes", Duration::from_secs(60), || {
                let url = url.clone();
                async move {
                    psql(&url, "select 1")
                        .ok()
                        .filter(|_| psql(&url, "select pg_is_in_recovery()").ok() == Some("f".into()))
                }
            })
            .await;
        }
    }
    let leader = d.superuser_url(id, d.member_port(id, cells[0]).await).await;
    let want = cells.len() - 1;
    wait_for("every replica streaming", Duration::from_secs(120), || {
        let url = leader.clone();
        async move {
            let n: usize =
                psql(&url, "select count(*) from pg_stat_replication where state = 'streaming'").ok()?.parse().ok()?;
            (n == want).then_some(())
        }
    })
    .await;
    if want > 0 {
        // Synchronous mode: only the standby Patroni names in `/sync` may be promoted.
        wait_for("a synchronous standby", Duration::from_secs(90), || async {
            let mut c = d.etcd.client().await;
            let resp = c.get(format!("/service/cf-{id}/sync"), None).await.ok()?;
            let v: serde_json::Value = serde_json::from_slice(resp.kvs().first()?.value()).ok()?;
            v["sync_standby"].as_str().map(|_| ())
        })
        .await;
    }
}
