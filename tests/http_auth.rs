//! Every HTTP endpoint but health needs auth: the router's and the broker's
//! debug and metrics endpoints, in-process against a real etcd (no Docker).
//! (The per-cell API's table is in `tests/cell.rs`: a cell agent needs Docker.)

mod common;

use std::time::Duration;

use common::http::call;
use common::inproc::{start_broker, start_router};
use common::*;

async fn healthy(url: &str) {
    let health = format!("{url}/healthz");
    wait_for("health without credentials", Duration::from_secs(10), || async {
        (call("GET", &health, None, None).await.status == 200).then_some(())
    })
    .await;
}

#[tokio::test]
async fn debug_and_metrics_need_credentials_health_does_not() {
    let etcd = Etcd::start();
    let router = start_router(&etcd.endpoint, "r1");
    let broker = start_broker(&etcd.endpoint, "b1", (41040, 41049));
    healthy(&router).await;
    healthy(&broker).await;
    let cases = [
        (&router, "GET", "/metrics", ("admin", ROUTER_PASSWORD)),
        (&router, "GET", "/debug/routes", ("admin", ROUTER_PASSWORD)),
        (&router, "GET", "/debug/actors", ("admin", ROUTER_PASSWORD)),
        (&broker, "GET", "/metrics", ("broker", BROKER_PASSWORD)),
        (&broker, "GET", "/debug/actors", ("broker", BROKER_PASSWORD)),
    ];
    for (base, method, path, (user, password)) in cases {
        let url = format!("{base}{path}");
        let none = call(method, &url, None, None).await;
        assert_eq!(none.status, 401, "{method} {url} without credentials: {}", none.text);
        assert!(none.body["description"].is_string(), "{url}: no error body: {}", none.text);
        assert_eq!(call(method, &url, Some((user, "wrong")), None).await.status, 401, "{url} wrong password");
        assert_eq!(call(method, &url, Some(("someone", password)), None).await.status, 401, "{url} wrong user");
        let ok = call(method, &url, Some((user, password)), None).await;
        assert_eq!(ok.status, 200, "{method} {url} with credentials: {}", ok.text);
    }
    // Fault injection is off unless configured: 404 even with credentials, 401 without.
    let fail = format!("{router}/debug/actors/router_table/routes/fail");
    assert_eq!(call("POST", &fail, None, None).await.status, 401);
    assert_eq!(call("POST", &fail, Some(("admin", ROUTER_PASSWORD)), None).await.status, 404);
    let metrics = call("GET", &format!("{router}/metrics"), Some(("admin", ROUTER_PASSWORD)), None).await;
    assert!(metrics.text.contains("# TYPE"), "{}", metrics.text);
}
