//! Client TLS to PostgreSQL, end to end: instances provisioned through the
//! broker, bindings used by psql with `sslmode=verify-full` and the binding's
//! CA (through the router and directly to the leader), a client trusting
//! another CA refused, `require_tls` refusing plaintext, and a certificate
//! rotated under a session held open through the router. One deployment,
//! with short certificate lifetimes so a rotation happens within the test.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::Command;
use std::time::{Duration, Instant};

use common::http::{osb, wait_operation};
use common::tls::{binding_url, write_ca};
use common::*;
use pgcell::broker::catalog::{PLANS, SERVICE_ID};
use serde_json::{Value, json};

/// Certificates live 120 s and are renewed in their last 90 s: a rotation about
/// every 30 s, checked every 2 s.
const LIFETIME_SECS: u64 = 120;
const RENEW_BEFORE_SECS: u64 = 90;

fn plan_id(name: &str) -> &'static str {
    PLANS.iter().find(|p| p.name == name).unwrap().id
}

fn provision_body(plan: &str, params: Value) -> String {
    json!({"service_id": SERVICE_ID, "plan_id": plan_id(plan), "organization_guid": "o", "space_guid": "s", "parameters": params})
        .to_string()
}

async fn bind(broker: &str, id: &str, plan: &str, bid: &str) -> Value {
    let body = json!({"service_id": SERVICE_ID, "plan_id": plan_id(plan)}).to_string();
    let r = osb("PUT", &format!("{broker}/v2/service_instances/{id}/service_bindings/{bid}"), Some(&body)).await;
    assert_eq!(r.status, 201, "{}", r.text);
    r.body["credentials"].clone()
}

/// The serial and validity of the certificate a new TLS session to `port` gets
/// (`openssl s_client -starttls postgres`, as an operator checks it).
fn server_cert(port: u16) -> String {
    let script = format!(
        "openssl s_client -starttls postgres -connect 127.0.0.1:{port} -servername localhost </dev/null 2>/dev/null \
         | openssl x509 -noout -serial -startdate"
    );
    let out = Command::new("sh").args(["-c", &script]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[tokio::test]
async fn verify_full_through_router_and_direct_require_tls_and_rotation() {
    let mut d = Deployment::start(0).await;
    let tls_env = [
        ("PGCELL_TLS_CERT_SECS", LIFETIME_SECS.to_string()),
        ("PGCELL_TLS_RENEW_BEFORE_SECS", RENEW_BEFORE_SECS.to_string()),
        ("PGCELL_TLS_CHECK_EVERY_SECS", "2".to_string()),
    ];
    for i in 0..2 {
        let name = format!("{}-c{i}", d.id);
        d.add_cell_with_env(&name, &tls_env).await;
    }
    d.start_router("r1", 8000).await;
    let broker = d.start_broker("b1").await;
    let dir = d.tmp.path().to_path_buf();

    // i1: ha-2, TLS offered; i2: a single member that requires TLS.
    let r = osb(
        "PUT",
        &format!("{broker}/v2/service_instances/i1?accepts_incomplete=true"),
        Some(&provision_body("ha-2", json!({}))),
    )
    .await;
    assert_eq!(r.status, 202, "{}", r.text);
    let body = provision_body("single", json!({"require_tls": true}));
    let r = osb("PUT", &format!("{broker}/v2/service_instances/i2?accepts_incomplete=true"), Some(&body)).await;
    assert_eq!(r.status, 202, "{}", r.text);
    for id in ["i1", "i2"] {
        let (state, desc, secs) = wait_operation(&broker, id, Duration::from_secs(240)).await;
        assert_eq!(state, "succeeded", "{id}: {desc}\n{}", d.logs());
        eprintln!("{id} provisioned in {secs:.1}s");
    }

    // The binding carries the CA and asks for verify-full.
    let c = bind(&broker, "i1", "ha-2", "k1").await;
    assert_eq!(c["sslmode"], "verify-full");
    assert!(c["uri"].as_str().unwrap().ends_with("/app?sslmode=verify-full"), "{c}");
    assert!(c["jdbcUrl"].as_str().unwrap().ends_with("&ssl=true&sslmode=verify-full"), "{c}");
    assert!(c["ca_cert"].as_str().unwrap().starts_with("-----BEGIN CERTIFICATE-----"), "{c}");
    for k in ["hostname", "port", "name", "username", "password"] {
        assert!(!c[k].is_null(), "credentials keep {k}: {c}");
    }
    let url = binding_url(&c, &dir);
    // A binding acts as the owner role, which may not see its own session's row
    // in pg_stat_ssl: back to the login role first (RESET ROLE would not do: the
    // owner role is the binding's default). psql prints SET, then the answer.
    let on_tls = "set role none; select ssl from pg_stat_ssl where pid = pg_backend_pid()";
    let tls = |url: &str| psql(url, on_tls).map(|out| out.lines().last().unwrap_or_default().to_string());
    assert_eq!(tls(&url).unwrap(), "t", "verify-full through the router");

    // Directly to the leader member, by IP and by name.
    let leader = d.leader("i1").await.expect("i1 has a leader");
    let cell = d.cells.iter().position(|c| leader.ends_with(&c.name)).expect("the leader's cell");
    let port = d.member_port("i1", cell).await;
    let (u, p, ca) = (
        c["username"].as_str().unwrap(),
        c["password"].as_str().unwrap(),
        write_ca(&dir, "fleet.crt", c["ca_cert"].as_str().unwrap()),
    );
    for host in ["127.0.0.1", "localhost"] {
        let direct = format!("postgres://{u}:{p}@{host}:{port}/app?sslmode=verify-full&sslrootcert={ca}");
        assert_eq!(tls(&direct).unwrap(), "t", "verify-full directly to the leader at {host}");
    }

    // A client trusting another CA refuses the server.
    let other = pgcell::tls::certs::generate_ca("not the fleet", 1).unwrap();
    let other_file = write_ca(&dir, "other.crt", &other.cert_pem);
    let wrong = format!("{}&sslrootcert={other_file}", c["uri"].as_str().unwrap());
    let err = psql(&wrong, "select 1").unwrap_err();
    assert!(err.contains("certificate verify failed"), "{err}");

    // require_tls: plaintext refused, verify-full accepted; fixed at provisioning.
    let c2 = bind(&broker, "i2", "single", "k2").await;
    let url2 = binding_url(&c2, &dir);
    assert_eq!(tls(&url2).unwrap(), "t");
    let plain = url2.replace("sslmode=verify-full", "sslmode=disable");
    let err = psql(&plain, "select 1").unwrap_err();
    assert!(err.contains("no encryption"), "a plaintext login is refused: {err}");
    let plain_i1 = url.replace("sslmode=verify-full", "sslmode=disable");
    assert_eq!(psql(&plain_i1, "select 1").unwrap(), "1", "without require_tls plaintext still works");
    let up = json!({"service_id": SERVICE_ID, "parameters": {"require_tls": false}}).to_string();
    let r = osb("PATCH", &format!("{broker}/v2/service_instances/i2?accepts_incomplete=true"), Some(&up)).await;
    assert_eq!(r.status, 400, "{}", r.text);
    assert!(r.text.contains("require_tls is fixed at provisioning"), "{}", r.text);

    // Rotation: a session held open through the router lives on; new sessions
    // get the new certificate.
    let router_port = d.router_port("i1").await;
    let (mut held, mut stdin) = psql_session(&url);
    let mut out = BufReader::new(held.stdout.take().unwrap());
    writeln!(stdin, "\\set QUIET 1\nset role none;").unwrap();
    let mut ask = |sql: &str| -> String {
        writeln!(stdin, "{sql};").unwrap();
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        line.trim().to_string()
    };
    let pid = ask("select pg_backend_pid()");
    assert!(pid.parse::<u32>().is_ok(), "the held session answers: {pid:?}");
    let before = server_cert(router_port);
    assert!(before.starts_with("serial="), "openssl sees the certificate: {before:?}");
    let t0 = Instant::now();
    let after = loop {
        let now = server_cert(router_port);
        if now.starts_with("serial=") && now != before {
            break now;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(LIFETIME_SECS),
            "no rotation within {LIFETIME_SECS} s: still {now:?}\n{}",
            d.logs()
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    eprintln!("rotated after {:.1}s: {before} -> {after}", t0.elapsed().as_secs_f64());
    assert_eq!(ask("select pg_backend_pid()"), pid, "the held session is the same backend");
    assert_eq!(ask("select ssl from pg_stat_ssl where pid = pg_backend_pid()"), "t", "and still on TLS");
    assert_eq!(tls(&url).unwrap(), "t", "a new session verifies the new certificate");
    drop(stdin);
    let _ = held.wait();
}
