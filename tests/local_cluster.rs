//! The local demo (`cargo run --example local-cluster`) as a user runs it:
//! the short walkthrough ends with its summary and no lost write; with
//! `--keep-running` it writes its endpoints, serves the broker from them, and
//! Ctrl-C leaves nothing behind.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::http::osb_with;
use serde_json::{Value, json};

/// The example's binary (`cargo test --all-targets` builds it; built here otherwise).
/// It runs with `PGCELL_BIN`, so it does not run cargo itself.
fn example() -> Command {
    let profile = PathBuf::from(common::pgcell_bin()).parent().unwrap().to_path_buf();
    let path = profile.join("examples/local-cluster");
    if !path.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let ok = Command::new(cargo).args(["build", "--quiet", "--example", "local-cluster"]).status().unwrap();
        assert!(ok.success(), "cannot build the example");
    }
    let mut cmd = Command::new(path);
    cmd.env("PGCELL_BIN", common::pgcell_bin()).current_dir(env!("CARGO_MANIFEST_DIR"));
    cmd
}

#[test]
fn short_walkthrough_prints_its_summary_and_loses_nothing() {
    let out = example().arg("--short").output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{}", String::from_utf8_lossy(&out.stderr));
    println!("{stdout}");
    assert!(stdout.contains("summary"), "{stdout}");
    let lost = stdout.lines().find(|l| l.contains("acknowledged writes lost")).unwrap();
    assert!(lost.trim_end().ends_with(" 0"), "{lost}");
    let failover = stdout.lines().find(|l| l.contains("leader's cell lost to first write")).unwrap();
    assert!(failover.contains(" s"), "{failover}");
}

/// Stops the example if the test fails half-way (Ctrl-C, so it cleans up after itself).
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            let _ = Command::new("kill").args(["-INT", &self.0.id().to_string()]).status();
            let _ = self.0.wait();
        }
    }
}

#[tokio::test]
async fn keep_running_serves_its_endpoints_and_ctrl_c_removes_everything() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("endpoints.json");
    let log = dir.path().join("example.log");
    let out = std::fs::File::create(&log).unwrap();
    let child = example()
        .args(["--keep-running", "--endpoints-file", file.to_str().unwrap()])
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap();
    let mut child = KillOnDrop(child);
    let child = &mut child.0;
    let t0 = Instant::now();
    let output = || std::fs::read_to_string(&log).unwrap_or_default();
    while !file.exists() {
        assert!(t0.elapsed() < Duration::from_secs(120), "no endpoints file; the example said:\n{}", output());
        assert!(child.try_wait().unwrap().is_none(), "the example exited early:\n{}", output());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let ep: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    let (url, user, pass) = (
        ep["broker"]["url"].as_str().unwrap().to_string(),
        ep["broker"]["username"].as_str().unwrap().to_string(),
        ep["broker"]["password"].as_str().unwrap().to_string(),
    );
    assert_eq!(ep["cells"].as_array().unwrap().len(), 3);
    assert_eq!(ep["routers"].as_array().unwrap().len(), 1);
    assert!(!ep["etcd"][0].as_str().unwrap().is_empty());
    let deployment_dir = PathBuf::from(ep["directory"].as_str().unwrap());
    assert!(deployment_dir.exists());

    // Drive the broker from the file.
    let h = [("X-Broker-API-Version", "2.17")];
    let auth = Some((user.as_str(), pass.as_str()));
    let cat = osb_with("GET", &format!("{url}/v2/catalog"), None, &h, auth).await;
    assert_eq!(cat.status, 200);
    let single =
        cat.body["services"][0]["plans"].as_array().unwrap().iter().find(|p| p["name"] == "single").unwrap().clone();
    let body = json!({"service_id": cat.body["services"][0]["id"], "plan_id": single["id"], "organization_guid": "o", "space_guid": "s"});
    let r = osb_with(
        "PUT",
        &format!("{url}/v2/service_instances/kr1?accepts_incomplete=true"),
        Some(&body.to_string()),
        &h,
        auth,
    )
    .await;
    assert_eq!(r.status, 202, "{}", r.text);
    let t1 = Instant::now();
    loop {
        let r = osb_with("GET", &format!("{url}/v2/service_instances/kr1/last_operation"), None, &h, auth).await;
        if r.body["state"] == "succeeded" {
            break;
        }
        assert_ne!(r.body["state"], "failed", "{}", r.text);
        assert!(t1.elapsed() < Duration::from_secs(120), "{}", r.text);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let label = format!("label=org.pgcell.deployment=local-{}", child.id());
    assert_eq!(common::docker_names(&label).len(), 1, "one member container running");

    // Ctrl-C: everything it started is gone.
    assert!(Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap().success());
    let t2 = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        assert!(t2.elapsed() < Duration::from_secs(60), "the example did not stop on SIGINT");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "{status:?}");
    assert!(common::docker_names(&label).is_empty(), "containers left");
    assert!(!deployment_dir.exists(), "data left in {}", deployment_dir.display());
    for cell in ep["cells"].as_array().unwrap() {
        let health = format!("{}/healthz", cell["api_url"].as_str().unwrap());
        assert!(reqwest::get(&health).await.is_err(), "{health} still answers");
    }
    let etcd = ep["etcd"][0].as_str().unwrap();
    assert!(std::net::TcpStream::connect(etcd).is_err(), "etcd still running");
}
