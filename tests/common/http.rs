//! HTTP helpers for tests.

use serde_json::Value;

pub struct Resp {
    pub status: u16,
    pub body: Value,
    pub text: String,
}

pub async fn call(method: &str, url: &str, auth: Option<(&str, &str)>, body: Option<&str>) -> Resp {
    osb_with(method, url, body, &[], auth).await
}

pub const SEED_AUTH: Option<(&str, &str)> = Some(("containers", "containers"));

/// An OSB request to a broker: version header, broker credentials, request identity.
pub async fn osb(method: &str, url: &str, body: Option<&str>) -> Resp {
    osb_with(method, url, body, &[("X-Broker-API-Version", "2.17")], Some(("broker", super::BROKER_PASSWORD))).await
}

pub async fn osb_with(
    method: &str,
    url: &str,
    body: Option<&str>,
    headers: &[(&str, &str)],
    auth: Option<(&str, &str)>,
) -> Resp {
    let client = reqwest::Client::new();
    let mut req = client.request(method.parse().unwrap(), url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    if let Some((u, p)) = auth {
        req = req.basic_auth(u, Some(p));
    }
    if let Some(b) = body {
        req = req.header("content-type", "application/json").body(b.to_string());
    }
    // Not listening (yet): status 0, so waits can retry.
    let resp = match req.send().await {
        Ok(r) => r,
        Err(e) => return Resp { status: 0, body: Value::Null, text: e.to_string() },
    };
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap_or_default();
    let body = serde_json::from_str(&text).unwrap_or(Value::Null);
    Resp { status, body, text }
}
