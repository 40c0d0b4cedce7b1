//! Patroni's REST API, as the drain uses it.

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

#[cfg(test)]
mod tests {
    #[test]
    fn api_base() {
        assert_eq!(super::api_base("http://127.0.0.1:30001/patroni"), "http://127.0.0.1:30001");
        assert_eq!(super::api_base("http://h:1/"), "http://h:1");
    }
}
