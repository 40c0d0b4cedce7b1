//! HTTP helpers for tests.

use std::time::{Duration, Instant};

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

/// Polls `last_operation` until it is no longer in progress; returns (state or "gone", description, seconds).
pub async fn wait_operation(broker: &str, id: &str, timeout: Duration) -> (String, String, f64) {
    let t0 = Instant::now();
    let url = format!("{broker}/v2/service_instances/{id}/last_operation");
    let mut last = String::new();
    loop {
        let r = osb("GET", &url, None).await;
        if r.status == 410 {
            return ("gone".into(), String::new(), t0.elapsed().as_secs_f64());
        }
        assert_eq!(r.status, 200, "{}", r.text);
        let (state, desc) =
            (r.body["state"].as_str().unwrap().to_string(), r.body["description"].as_str().unwrap_or("").to_string());
        if desc != last {
            eprintln!("  [{:5.1}s] {id}: {state}: {desc}", t0.elapsed().as_secs_f64());
            last = desc.clone();
        }
        if state != "in progress" {
            return (state, desc, t0.elapsed().as_secs_f64());
        }
        assert!(t0.elapsed() < timeout, "operation on {id} still in progress after {timeout:?}: {desc}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
