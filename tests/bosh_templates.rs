//! The BOSH release's templates render into configurations pgcell accepts.
//! `deploy/bosh/test/render.rb` renders every job's templates for the
//! scenarios of `sample-properties.yml` and checks scripts, YAML, specs,
//! manifests and ops files; here every rendered TOML file is parsed, the cell's
//! and the router's into pgcell's own config structs (unknown keys rejected).

use std::path::{Path, PathBuf};
use std::process::Command;

use pgcell::config::{CellConfig, RouterConfig};

fn ruby_available() -> bool {
    Command::new("ruby").arg("--version").output().is_ok_and(|o| o.status.success())
}

/// Runs render.rb into a temporary directory; `None` when ruby is missing outside CI.
fn render() -> Option<tempfile::TempDir> {
    if !ruby_available() {
        assert!(
            std::env::var_os("CI").is_none(),
            "ruby is needed to render the BOSH templates under CI (scripts/setup.sh installs it)"
        );
        eprintln!("SKIPPED bosh_templates: ruby is not installed (apt-get install ruby); CI is not set");
        return None;
    }
    let out = tempfile::tempdir().unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/bosh/test/render.rb");
    let run = Command::new("ruby").arg(&script).arg(out.path()).output().unwrap();
    assert!(
        run.status.success(),
        "render.rb failed\n--- stdout\n{}\n--- stderr\n{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    Some(out)
}

fn read(out: &Path, file: &str) -> String {
    std::fs::read_to_string(out.join(file)).unwrap_or_else(|e| panic!("{file}: {e}"))
}

fn toml_files(dir: &Path, found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            toml_files(&path, found);
        } else if path.extension().is_some_and(|e| e == "toml") {
            found.push(path);
        }
    }
}

fn cell(out: &Path, scenario: &str) -> CellConfig {
    let text = read(out, &format!("{scenario}/pgcell-cell/config/cell.toml"));
    let cfg: CellConfig = toml::from_str(&text).unwrap_or_else(|e| panic!("{scenario} cell.toml: {e}\n{text}"));
    cfg.validate().unwrap_or_else(|e| panic!("{scenario} cell.toml is refused by the agent: {e:#}"));
    cfg
}

fn router(out: &Path, scenario: &str) -> RouterConfig {
    let text = read(out, &format!("{scenario}/pgcell-router/config/router.toml"));
    toml::from_str(&text).unwrap_or_else(|e| panic!("{scenario} router.toml: {e}\n{text}"))
}

fn broker(out: &Path, scenario: &str) -> toml::Table {
    let text = read(out, &format!("{scenario}/pgcell-broker/config/broker.toml"));
    toml::from_str(&text).unwrap_or_else(|e| panic!("{scenario} broker.toml: {e}\n{text}"))
}

fn strings(value: &toml::Value) -> Vec<&str> {
    value.as_array().expect("an array").iter().map(|v| v.as_str().expect("a string")).collect()
}

const LINKED_ETCD: [&str; 3] = ["10.244.0.2:4001", "10.244.0.3:4001", "10.244.0.4:4001"];
const EXISTING_ETCD: [&str; 2] = ["etcd-a.example:2379", "etcd-b.example:2379"];

#[test]
fn bosh_templates_render_into_valid_configs() {
    let Some(dir) = render() else { return };
    let out = dir.path();

    let mut found = Vec::new();
    toml_files(out, &mut found);
    assert_eq!(found.len(), 10, "cell, router and broker in three scenarios, a cell in a fourth: {found:?}");
    for path in &found {
        let text = std::fs::read_to_string(path).unwrap();
        if let Err(e) = toml::from_str::<toml::Table>(&text) {
            panic!("{} is not TOML: {e}\n{text}", path.display());
        }
    }

    // A deployment with its own etcd: endpoints from the link, the rest from
    // the instance and the manifest, the other keys defaulted by the spec.
    let c = cell(out, "own-etcd");
    assert_eq!(c.etcd_endpoints, LINKED_ETCD);
    assert_eq!((c.name.as_str(), c.deployment.as_str(), c.zone.as_str()), ("cell-1", "pgcell-test", "z2"));
    assert_eq!((c.advertise_host.as_str(), c.listen_host()), ("10.244.1.11", "10.244.1.11"));
    assert_eq!(c.api_password.expose(), r#"pa"ss\word $HOME"#, "quotes and backslashes survive");
    assert_eq!((c.capacity, c.memory_mb, c.patroni.ttl, c.patroni.loop_wait), (7, 512, 15, 1));
    assert!(c.patroni.failsafe_mode, "on by default");
    assert_eq!(c.data_root, Path::new("/var/vcap/store/pgcell"));
    assert_eq!((c.port_range.as_str(), c.router_port_range.as_str()), ("30000-30999", "40000-40999"));
    assert!(c.drain_on_stop);
    assert!(c.revoke_expired_leader_leases, "on by default");

    let r = router(out, "own-etcd");
    assert_eq!(r.etcd_endpoints, LINKED_ETCD);
    assert_eq!((r.name.as_str(), r.advertise_host.as_str()), ("router-1", "10.244.1.11"));
    assert_eq!((r.password.expose(), r.grace_ms, r.data_threads), ("router-secret", 12_000, 2));
    assert_eq!(r.promote_wait_ms, 5_000);

    let b = broker(out, "own-etcd");
    assert_eq!(strings(&b["etcd_endpoints"]), LINKED_ETCD);
    assert_eq!(b["router_host"].as_str(), Some("10.244.2.10"), "the first router of the link");
    assert_eq!(b["password"].as_str(), Some("broker-secret"));
    assert_eq!(b["router_port_range"].as_str(), Some(c.router_port_range.as_str()));

    // An existing etcd cluster (use-existing-etcd.yml): no link, the property.
    let c = cell(out, "existing-etcd");
    assert_eq!(c.etcd_endpoints, EXISTING_ETCD);
    assert_eq!((c.name.as_str(), c.zone.as_str()), ("cell-east", "east"));
    let r = router(out, "existing-etcd");
    assert_eq!(r.etcd_endpoints, EXISTING_ETCD);
    assert_eq!(r.name, "edge");
    let b = broker(out, "existing-etcd");
    assert_eq!(strings(&b["etcd_endpoints"]), EXISTING_ETCD, "the broker follows the routers' etcd");
    assert_eq!(b["router_host"].as_str(), Some("pg.example.com"));

    let drain = read(out, "own-etcd/pgcell-cell/bin/drain");
    assert!(drain.contains(&format!("ETCD={}", LINKED_ETCD.join(","))), "{drain}");
    assert!(drain.contains("CELL=cell-1"), "{drain}");

    assert_eq!(c.etcd_access, Default::default(), "no etcd properties: an open etcd");

    // etcd locked down: TLS and a user per job; the etcd job serves TLS and sets up the roles.
    let files = "/var/vcap/jobs/pgcell-cell/config/etcd";
    let c = cell(out, "locked-etcd");
    let a = &c.etcd_access;
    assert_eq!(a.ca_file, Some(PathBuf::from(format!("{files}/ca.pem"))));
    assert_eq!(a.key_file, Some(PathBuf::from(format!("{files}/key.pem"))));
    assert_eq!(a.user(), Some(("pgcell-cell-cell-1", "cell 'one' pw")));
    assert_eq!(read(out, "locked-etcd/pgcell-cell/config/etcd/key.pem").trim(), "CLIENT KEY");
    let r = router(out, "locked-etcd");
    assert_eq!(
        (r.etcd_access.user(), r.etcd_access.cert_file.as_ref()),
        (Some(("pgcell-router", "router-etcd-pw")), None)
    );
    let b = broker(out, "locked-etcd");
    assert_eq!(b["etcd_access"]["username"].as_str(), Some("pgcell-broker"));
    let drain = read(out, "locked-etcd/pgcell-cell/bin/drain");
    assert!(drain.contains("PGCELL_ETCD_USERNAME=pgcell-cell-cell-1"), "{drain}");
    let etcd = read(out, "locked-etcd/etcd/config/etcd.yml");
    assert!(etcd.contains("client-cert-auth: true") && etcd.contains("https://10.244.0.2:2379"), "{etcd}");
    // Peers on TLS with certificates of the same CA: the replication stream is not readable on the network.
    assert!(etcd.contains("peer-transport-security:") && etcd.contains("https://10.244.0.2:2380"), "{etcd}");
    assert_eq!(read(out, "locked-etcd/etcd/config/tls/peer.key").trim(), "PEER KEY");
    let open = read(out, "own-etcd/etcd/config/etcd.yml");
    assert!(!open.contains("peer-transport-security") && open.contains("http://"), "{open}");
    let post_start = read(out, "locked-etcd/etcd/bin/post-start");
    assert!(post_start.contains("etcd-roles apply --cell cell-1"), "{post_start}");
    assert!(post_start.contains(r"PGCELL_ETCD_CELL_PASSWORD_CELL_1=cell\ \'one\'\ pw"), "{post_start}");
    assert!(read(out, "own-etcd/etcd/bin/post-start").contains("exit 0"), "no root password: no role setup");
    // One key for a group of cells: each cell (here cell-1, spec.index 1) its own user, the
    // password derived alike by the cell and by the etcd job's role setup, rendered nowhere else.
    let keyed = cell(out, "keyed-etcd");
    let (user, password) = keyed.etcd_access.user().expect("a user from the key");
    assert_eq!(user, "pgcell-cell-cell-1");
    assert!(password.len() == 64 && password.chars().all(|c| c.is_ascii_hexdigit()), "{password}");
    let roles = read(out, "keyed-etcd/etcd/bin/post-start");
    assert!(roles.contains(&format!("PGCELL_ETCD_CELL_PASSWORD_CELL_1={password}")), "{roles}");
    assert!(roles.contains("PGCELL_ETCD_CELL_PASSWORD_CELL_2=given-pw"), "{roles}");
    let cell0 = roles.lines().find(|l| l.contains("PASSWORD_CELL_0=")).unwrap();
    assert!(!cell0.contains(password), "two cells with one password: {cell0}");
    assert!(roles.contains("--cell cell-0 --cell cell-1 --cell cell-2"), "{roles}");
    let drain = read(out, "keyed-etcd/pgcell-cell/bin/drain");
    assert!(
        drain.contains(&format!("PGCELL_ETCD_USERNAME=pgcell-cell-cell-1 PGCELL_ETCD_PASSWORD={password}")),
        "{drain}"
    );
    assert!(!read(out, "keyed-etcd/pgcell-cell/config/cell.toml").contains("cells' key"), "the key itself rendered");
    // HTTPS: with a certificate in the manifest the broker and the per-cell API
    // get it as files and serve HTTPS; without one they stay plain HTTP.
    let c = cell(out, "own-etcd");
    assert_eq!(c.https.cert_file, Path::new("/var/vcap/jobs/pgcell-cell/config/https.crt"));
    assert_eq!(c.https.key_file, Path::new("/var/vcap/jobs/pgcell-cell/config/https.key"));
    assert!(read(out, "own-etcd/pgcell-cell/config/https.crt").contains("-----BEGIN CERTIFICATE-----\ncell\n"));
    assert!(read(out, "own-etcd/pgcell-cell/config/https.key").contains("cell-key"));
    let b: pgcell::config::BrokerConfig =
        toml::from_str(&read(out, "own-etcd/pgcell-broker/config/broker.toml")).unwrap();
    assert_eq!(b.https.cert_file, Path::new("/var/vcap/jobs/pgcell-broker/config/https.crt"));
    assert!(read(out, "own-etcd/pgcell-broker/config/https.key").contains("broker-key"));
    assert!(!cell(out, "existing-etcd").https.enabled(), "no certificate: HTTP");
    assert!(broker(out, "existing-etcd").get("https").is_none(), "no certificate: HTTP");
}
