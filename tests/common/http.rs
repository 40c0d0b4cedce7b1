//! HTTP helpers for tests.

use serde_json::Value;

pub struct Resp {
    pub status: u16,
    pub body: Value,
    pub text: String,
}

pub async fn call(method: &str, url: &str, auth: Option<(&str, &str)>, body: Option<&str>) -> Resp {
    let client = reqwest::Client::new();
    let mut req = client.request(method.parse().unwrap(), url);
    if let Some((u, p)) = auth {
        req = req.basic_auth(u, Some(p));
    }
    if let Some(b) = body {
        req = req.header("content-type", "application/json").body(b.to_string());
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or(Value::Null);
    Resp { status, body, text }
}

pub const SEED_AUTH: Option<(&str, &str)> = Some(("containers", "containers"));
