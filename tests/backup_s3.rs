//! Backups in an S3-compatible repository: moto (S3 API) behind haproxy
//! (TLS; pgBackRest 2.45 speaks only HTTPS to S3) with a generated
//! certificate, an encrypted repository, a clone restored from it, a restore
//! check.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::backup::*;
use common::*;
use serde_json::json;

/// A process killed (by PID) when the test ends, however it ends.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(cmd: &mut Command) -> Killed {
    Killed(cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap())
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
}

#[tokio::test]
async fn s3_repository_encrypted_backup_and_clone() {
    let dir = tempfile::tempdir().unwrap();
    let p = |f: &str| dir.path().join(f).display().to_string();
    run(Command::new("openssl")
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=DNS:localhost", "-keyout", &p("key.pem"), "-out", &p("cert.pem")]));
    let both = std::fs::read_to_string(p("cert.pem")).unwrap() + &std::fs::read_to_string(p("key.pem")).unwrap();
    std::fs::write(p("both.pem"), both).unwrap();
    let (moto_port, tls_port) = (free_port(), free_port());
    let _moto = spawn(Command::new("moto_server").args(["-H", "127.0.0.1", "-p", &moto_port.to_string()]));
    std::fs::write(
        p("haproxy.cfg"),
        format!(
            "global\n  maxconn 256\ndefaults\n  mode http\n  timeout connect 5s\n  timeout client 120s\n  timeout server 120s\n\
             frontend s3\n  bind 127.0.0.1:{tls_port} ssl crt {}\n  default_backend moto\n\
             backend moto\n  server m 127.0.0.1:{moto_port}\n",
            p("both.pem")
        ),
    )
    .unwrap();
    let _haproxy = spawn(Command::new("haproxy").args(["-db", "-f", &p("haproxy.cfg")]));
    // pgBackRest never creates the bucket.
    wait_for("moto", Duration::from_secs(30), || async move {
        let c = reqwest::Client::new();
        c.put(format!("http://127.0.0.1:{moto_port}/pgcell-test")).send().await.ok().filter(|r| r.status().is_success())
    })
    .await;
    let secret = "s3-secret-never-logged";
    let mut d = Deployment::start(0).await;
    let name = format!("{}-c0", d.id);
    let env = [
        ("PGCELL_BACKUP_REPO_TYPE", "s3".to_string()),
        ("PGCELL_S3_ENDPOINT", "localhost".into()),
        ("PGCELL_S3_PORT", tls_port.to_string()),
        ("PGCELL_S3_BUCKET", "pgcell-test".into()),
        ("PGCELL_S3_CA_FILE", p("cert.pem")),
        ("PGCELL_S3_KEY", "test-key".into()),
        ("PGCELL_S3_KEY_SECRET", secret.into()),
        ("PGCELL_BACKUP_CIPHER_PASS", "cipher-pass-never-logged".into()),
        // A restore check soon after the first backup (daily by default).
        ("PGCELL_BACKUP_CHECK_EVERY_SECS", "20".into()),
    ];
    d.add_cell_with_env(&name, &env).await;
    d.start_router("r1", 8000).await;
    let broker = d.start_broker("b1").await;
    assert_eq!(provision(&broker, "s3a", "single", json!({})).await.status, 202);
    assert_eq!(wait_operation(&broker, "s3a", Duration::from_secs(120)).await.0, "succeeded");
    let url = app_url(&d, "s3a").await;
    psql(&url, "create table t(x int); insert into t select generate_series(1, 9)").unwrap();
    let s = wait_backups(&d, "s3a", 1, Duration::from_secs(180)).await;
    assert!(s["repo_error"].is_null(), "{}", s["repo_error"]);
    let switched = psql(&url, "select pg_walfile_name(pg_switch_wal())").unwrap();
    wait_for("WAL archived to S3", Duration::from_secs(60), || async {
        let s = backup_state(&d, "s3a").await?;
        (s["last_archived_wal"].as_str()? >= switched.as_str()).then_some(())
    })
    .await;
    let r = provision(&broker, "s3b", "single", json!({"restore": {"from": "s3a"}})).await;
    assert_eq!(r.status, 202, "{}", r.text);
    let (state, desc) = wait_operation(&broker, "s3b", Duration::from_secs(180)).await;
    assert_eq!(state, "succeeded", "{desc}\n{}", d.logs());
    assert_eq!(count(&app_url(&d, "s3b").await), "9");
    // The restore check's scratch container reaches the object store too.
    let s = wait_for("a restore check", Duration::from_secs(240), || async {
        backup_state(&d, "s3a").await.filter(|s| s["last_check"].is_object())
    })
    .await;
    assert_eq!(s["last_check"]["ok"], true, "{}", s["last_check"]);
    let logs = d.logs();
    assert!(!logs.contains(secret) && !logs.contains("cipher-pass-never-logged"), "a secret reached a log");
}
