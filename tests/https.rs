//! HTTPS on the broker and the per-cell API when a certificate is configured,
//! in-process against a real etcd (no member): curl with the CA reaches the
//! catalog, health answers without credentials, everything else still needs
//! them, plain HTTP to the HTTPS port and clients trusting another CA fail.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;
use pgcell::config::{BrokerConfig, CellConfig, Https};

/// A CA and a server certificate for 127.0.0.1/localhost signed by it, made
/// with the openssl CLI as an operator would.
fn certificates(dir: &Path, name: &str) -> (PathBuf, Https) {
    let p = |f: &str| dir.join(format!("{name}-{f}"));
    let run = |args: &[&str]| {
        let out = Command::new("openssl").args(args).output().expect("openssl runs");
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    let s = |p: &PathBuf| p.to_str().unwrap().to_string();
    let (ca_key, ca, key, csr, cert, ext) =
        (p("ca.key"), p("ca.pem"), p("key.pem"), p("req.csr"), p("cert.pem"), p("ext.cnf"));
    std::fs::write(&ext, "subjectAltName=IP:127.0.0.1,DNS:localhost\n").unwrap();
    run(&["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", &format!("/CN={name} CA")]
        .iter()
        .copied()
        .chain(["-keyout", &s(&ca_key), "-out", &s(&ca)])
        .collect::<Vec<_>>());
    run(&["req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost", "-keyout", &s(&key), "-out", &s(&csr)]);
    run(&[
        "x509",
        "-req",
        "-in",
        &s(&csr),
        "-CA",
        &s(&ca),
        "-CAkey",
        &s(&ca_key),
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        &s(&ext),
        "-out",
        &s(&cert),
    ]);
    (ca, Https { cert_file: cert, key_file: key })
}

/// `curl` as a user runs it: the HTTP status (`000`: no HTTP answer) and its exit code.
fn curl(url: &str, ca: Option<&Path>, auth: Option<(&str, &str)>) -> (String, i32) {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "-m", "5", "-o", "/dev/null", "-w", "%{http_code}", "-H", "X-Broker-API-Version: 2.17"]);
    if let Some(ca) = ca {
        cmd.arg("--cacert").arg(ca);
    }
    if let Some((u, p)) = auth {
        cmd.args(["-u", &format!("{u}:{p}")]);
    }
    let out = cmd.arg(url).output().expect("curl runs");
    (String::from_utf8_lossy(&out.stdout).trim().to_string(), out.status.code().unwrap_or(-1))
}

fn spawn<F: std::future::Future<Output = anyhow::Result<()>> + 'static>(
    what: &'static str,
    f: impl FnOnce() -> F + Send + 'static,
) {
    std::thread::spawn(move || {
        if let Err(e) = actix_web::rt::System::new().block_on(f()) {
            eprintln!("in-process {what} ended: {e:#}");
        }
    });
}

/// What a user of one HTTPS endpoint checks, `auth` being its credentials.
async fn https_only(base: &str, ca: &Path, other_ca: &Path, auth: (&str, &str)) {
    let https = format!("https://{base}");
    wait_for("health over HTTPS", Duration::from_secs(15), || async {
        (curl(&format!("{https}/healthz"), Some(ca), None).0 == "200").then_some(())
    })
    .await;
    let catalog = format!("{https}/v2/catalog");
    assert_eq!(curl(&catalog, Some(ca), Some(auth)), ("200".into(), 0), "{catalog} with the CA and credentials");
    let body = Command::new("curl")
        .args(["-sS", "-m", "5", "--cacert", ca.to_str().unwrap(), "-H", "X-Broker-API-Version: 2.17"])
        .args(["-u", &format!("{}:{}", auth.0, auth.1), &catalog])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&body.stdout).expect("the catalog is JSON");
    assert!(v["services"].as_array().is_some_and(|s| !s.is_empty()), "{v}");
    assert_eq!(curl(&catalog, Some(ca), None).0, "401", "credentials are still required");
    assert_eq!(curl(&catalog, Some(ca), Some((auth.0, "wrong"))).0, "401");
    // curl's 60: the peer's certificate cannot be verified with the CA it trusts.
    assert_eq!(curl(&catalog, Some(other_ca), Some(auth)), ("000".into(), 60), "a client trusting another CA");
    assert_eq!(curl(&catalog, None, Some(auth)), ("000".into(), 60), "a client trusting the system's CAs");
    let (code, rc) = curl(&format!("http://{base}/healthz"), None, None);
    assert!(code != "200" && rc != 0, "plain HTTP to the HTTPS port answered: {code} (curl exit {rc})");
}

#[tokio::test]
async fn broker_and_cell_api_serve_https_with_a_certificate() {
    let etcd = Etcd::start();
    let tmp = tempfile::tempdir().unwrap();
    let (ca, https) = certificates(tmp.path(), "fleet");
    let (other_ca, _) = certificates(tmp.path(), "other");

    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let broker = listener.local_addr().unwrap().to_string();
    let cfg = BrokerConfig {
        password: BROKER_PASSWORD.into(),
        router_host: "127.0.0.1".into(),
        router_port_range: "41050-41059".into(),
        etcd_endpoints: vec![etcd.endpoint.clone()],
        https: https.clone(),
        ..BrokerConfig::default()
    };
    spawn("broker", move || pgcell::daemon::broker::serve(cfg, listener));
    https_only(&broker, &ca, &other_ca, ("broker", BROKER_PASSWORD)).await;

    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let cell = listener.local_addr().unwrap().to_string();
    let deployment = format!("t{}-{}", std::process::id(), free_port());
    let mut cfg = CellConfig {
        name: "a".into(),
        deployment,
        data_root: tmp.path().join("data"),
        etcd_endpoints: vec![etcd.endpoint.clone()],
        image: "pgcell/postgres:none".into(),
        https,
        ..CellConfig::default()
    };
    cfg.backup.enabled = false;
    spawn("cell", move || pgcell::daemon::cell::serve(cfg, listener));
    https_only(&cell, &ca, &other_ca, ("containers", "containers")).await;
    // What the cell advertises in etcd says HTTPS too.
    let record = etcd.dump("/pgcell/cells/a").await;
    let port = cell.rsplit_once(':').unwrap().1;
    let advertised = format!("\"api_url\":\"https://127.0.0.1:{port}\"");
    assert!(record.iter().any(|(_, v)| v.contains(&advertised)), "{record:?}");
}

/// A bad certificate stops the daemon at start with an error naming the file,
/// instead of a daemon serving plain HTTP by surprise.
#[test]
fn a_missing_certificate_stops_the_start_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("nowhere.pem");
    let cfg = BrokerConfig {
        password: "x".into(),
        etcd_endpoints: vec!["127.0.0.1:1".into()],
        https: Https { cert_file: missing.clone(), key_file: missing },
        ..BrokerConfig::default()
    };
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let err = actix_web::rt::System::new().block_on(pgcell::daemon::broker::serve(cfg, listener)).unwrap_err();
    assert!(format!("{err:#}").contains("nowhere.pem"), "{err:#}");
}
