//! The seed's per-cell API against an in-process cell agent and a real etcd:
//! bad input gets a 4xx with an OSB body and changes nothing, and every
//! endpoint but health needs credentials. No member is started.

mod common;

use std::time::Duration;

use common::http::{SEED_AUTH, call};
use common::inproc::start_cell;
use common::*;
use serde_json::json;

#[tokio::test]
async fn bad_input_gets_4xx_with_osb_body_and_changes_nothing() {
    let etcd = Etcd::start();
    let tmp = tempfile::tempdir().unwrap();
    let deployment = format!("t{}-{}", std::process::id(), free_port());
    let cell = start_cell(&etcd.endpoints(), "a", &deployment, tmp.path());
    let url = |p: &str| format!("{cell}{p}");
    wait_for("cell agent registered", Duration::from_secs(15), || {
        let etcd = &etcd;
        async move { (!etcd.dump("/pgcell/cells/a").await.is_empty()).then_some(()) }
    })
    .await;
    // Existing state that bad input must leave alone: instance 7's member on
    // another cell (a record with no agent, so nothing starts).
    let mut c = etcd.client().await;
    let other = json!({"name": "b", "deployment": deployment, "advertise_host": "127.0.0.1", "api_url": "",
        "port_range": "31000-31019", "capacity": 4, "zone": ""});
    c.put("/pgcell/cells/b", other.to_string(), None).await.unwrap();
    let placement = json!({"instance_id": "7", "scope": "cf-7", "member": "cf-7", "cell": "b", "slot": 0,
        "pg_port": 31000, "api_port": 31001, "service_id": SEED_SERVICE, "plan_id": SEED_PLAN, "memory_mb": 1024});
    c.put("/pgcell/placements/b/7", placement.to_string(), None).await.unwrap();
    let before = etcd.dump("/pgcell/").await;

    let body = seed_body();
    let other_plan = body.replace(SEED_PLAN, "00000000-0000-0000-0000-000000000000");
    let other_service = body.replace(SEED_SERVICE, "00000000-0000-0000-0000-000000000000");
    let huge = format!(r#"{{"service_id":"{SEED_SERVICE}","plan_id":"{SEED_PLAN}","x":"{}"}}"#, "a".repeat(200_000));
    type Case<'a> = (&'a str, String, Option<(&'a str, &'a str)>, Option<&'a str>, u16);
    let cases: Vec<Case> = vec![
        ("PUT", "/v2/service_instances/8".into(), None, Some(&body), 401),
        ("PUT", "/v2/service_instances/8".into(), Some(("containers", "wrong")), Some(&body), 401),
        ("GET", "/v2/catalog".into(), None, None, 401),
        ("GET", "/debug/actors".into(), None, None, 401),
        ("GET", "/metrics".into(), None, None, 401),
        ("DELETE", "/v2/service_instances/7".into(), None, None, 401),
        ("PUT", "/v2/service_instances/8".into(), SEED_AUTH, Some(&other_plan), 400),
        ("PUT", "/v2/service_instances/8".into(), SEED_AUTH, Some(&other_service), 400),
        ("PUT", "/v2/service_instances/8".into(), SEED_AUTH, Some("{not json"), 400),
        ("PUT", "/v2/service_instances/8".into(), SEED_AUTH, Some(r#"{"service_id":1,"plan_id":[]}"#), 400),
        ("PUT", "/v2/service_instances/8".into(), SEED_AUTH, None, 400),
        ("PUT", "/v2/service_instances/8".into(), SEED_AUTH, Some(&huge), 413),
        ("PUT", "/v2/service_instances/a..b".into(), SEED_AUTH, Some(&body), 400),
        ("PUT", "/v2/service_instances/-x".into(), SEED_AUTH, Some(&body), 400),
        // The client resolves `..` away: the path reaches no endpoint.
        ("PUT", "/v2/service_instances/%2e%2e".into(), SEED_AUTH, Some(&body), 404),
        ("PUT", "/v2/service_instances/a%2Fb".into(), SEED_AUTH, Some(&body), 400),
        ("PUT", format!("/v2/service_instances/{}", "x".repeat(64)), SEED_AUTH, Some(&body), 400),
        ("PUT", "/v2/service_instances/7".into(), SEED_AUTH, Some(&other_plan), 400),
        // 7 has a member and no seed secrets: the broker's, not the per-cell API's to grow.
        ("PUT", "/v2/service_instances/7".into(), SEED_AUTH, Some(&body), 409),
        ("DELETE", "/v2/service_instances/7?plan_id=nope".into(), SEED_AUTH, None, 400),
        ("DELETE", "/v2/service_instances/a%20b".into(), SEED_AUTH, None, 400),
        ("DELETE", "/v2/service_instances/9".into(), SEED_AUTH, None, 410),
        ("POST", "/debug/actors/cell/a/fail".into(), SEED_AUTH, None, 404),
    ];
    for (method, path, auth, body, want) in cases {
        let r = call(method, &url(&path), auth, body).await;
        assert_eq!(r.status, want, "{method} {path}: {}", r.text);
        assert!(
            r.body.get("description").and_then(|d| d.as_str()).is_some(),
            "{method} {path}: no OSB body: {}",
            r.text
        );
    }
    assert_eq!(etcd.dump("/pgcell/").await, before, "etcd changed");
    assert!(docker_names(&format!("label=org.pgcell.deployment={deployment}")).is_empty(), "a container was made");
    assert!(std::fs::read_dir(tmp.path()).unwrap().next().is_none(), "a member directory was made");
    // Health needs no auth; it is the only endpoint that does not.
    assert_eq!(call("GET", &url("/healthz"), None, None).await.status, 200);
}

/// An operator tool whose reader goes away (`pgcell cells | head -n 1`) ends
/// quietly with success, as Unix tools do, instead of panicking.
#[tokio::test]
async fn a_tool_whose_reader_went_away_ends_quietly() {
    let etcd = Etcd::start();
    let rec = json!({"name": "a", "deployment": "t", "advertise_host": "127.0.0.1", "api_url": "",
        "port_range": "31000-31019", "capacity": 4, "zone": ""});
    etcd.client().await.put("/pgcell/cells/a", rec.to_string(), None).await.unwrap();
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = std::process::Command::new(pgcell_bin())
        .arg("cells")
        .env("PGCELL_ETCD_ENDPOINTS", etcd.endpoints())
        .stdout(writer)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{:?}: {stderr}", out.status);
    assert!(!stderr.contains("panicked"), "{stderr}");
}
