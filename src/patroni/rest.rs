//! Patroni's REST API, as the drain and the router use it.

use std::time::Duration;

use anyhow::Context;

/// `http://host:port/patroni` (a member's `api_url`) → `http://host:port`.
pub fn api_base(api_url: &str) -> &str {
    api_url.strip_suffix("/patroni").unwrap_or(api_url).trim_end_matches('/')
}

/// Asks the leader's Patroni to switch over to a healthy replica (Patroni
/// picks the synchronous standby). Retries while Patroni answers 412 (no
/// candidate ready yet), up to `patience`.
pub async fn switchover(api_url: &str, admin_password: &str, leader: &str, patience: Duration) -> anyhow::Result<()> {
    let client = reqwest::Client::builder().timeout(Duration::from_secs(30)).build()?;
    let url = format!("{}/switchover", api_base(api_url));
    let deadline = tokio::time::Instant::now() + patience;
    loop {
        let resp = client
            .post(&url)
            .basic_auth("admin", Some(admin_password))
            .json(&serde_json::json!({ "leader": leader }))
            .send()
            .await
            .with_context(|| format!("POST {url}"))?;
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        if status.is_success() {
            return Ok(());
        }
        if status.as_u16() != 412 || tokio::time::Instant::now() >= deadline {
            anyhow::bail!("Patroni refused the switchover ({status}): {}", text.trim());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Whether a member is the leader *and* out of recovery, from its `GET
/// /primary`. Patroni 3.0.2 answers 200 as soon as it holds the lock, before
/// its promotion ends; the body's `role` is `master` only once
/// `pg_is_in_recovery()` is false (it comes from the same query, asked now).
pub async fn is_writable_leader(client: &reqwest::Client, api_url: &str) -> anyhow::Result<bool> {
    let url = format!("{}/primary", api_base(api_url));
    let resp = client.get(&url).send().await.with_context(|| format!("GET {url}"))?;
    if resp.status() != reqwest::StatusCode::OK {
        return Ok(false);
    }
    let body: serde_json::Value = resp.json().await.with_context(|| format!("GET {url}: not JSON"))?;
    Ok(body["role"].as_str().is_some_and(super::view::is_primary_role))
}

/// Asks `is_writable_leader` every `every` until it says yes (the caller
/// drops the future to stop asking).
pub async fn until_writable_leader(client: reqwest::Client, api_url: String, every: Duration) {
    loop {
        match is_writable_leader(&client, &api_url).await {
            Ok(true) => return,
            Ok(false) => {}
            Err(e) => tracing::debug!(%api_url, error = %format!("{e:#}"), "promotion probe failed"),
        }
        tokio::time::sleep(every).await;
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn api_base() {
        assert_eq!(super::api_base("http://127.0.0.1:30001/patroni"), "http://127.0.0.1:30001");
        assert_eq!(super::api_base("http://h:1/"), "http://h:1");
    }
}
