//! Daemons started inside the test process (no Docker): each HTTP server runs
//! in its own actix `System` on a thread, on a listener bound to port 0.

use pgcell::config::BrokerConfig;

/// Starts `pgcell broker` in-process against `etcd`; returns its base URL.
pub fn start_broker(etcd: &str, name: &str, router_ports: (u16, u16)) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let cfg = BrokerConfig {
        name: name.into(),
        password: super::BROKER_PASSWORD.into(),
        router_host: "127.0.0.1".into(),
        router_port_range: format!("{}-{}", router_ports.0, router_ports.1),
        etcd_endpoints: vec![etcd.into()],
        // Fake cells never come: a shortage need not wait for one as long as in production.
        placement_wait_secs: 2,
        ..BrokerConfig::default()
    };
    std::thread::spawn(move || {
        if let Err(e) = actix_web::rt::System::new().block_on(pgcell::daemon::broker::serve(cfg, listener)) {
            eprintln!("in-process broker ended: {e:#}");
        }
    });
    url
}

/// Starts `pgcell router` in-process (HTTP side on port 0); returns its base URL.
pub fn start_router(etcd: &str, name: &str) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let cfg = pgcell::config::RouterConfig {
        name: name.into(),
        password: super::ROUTER_PASSWORD.into(),
        etcd_endpoints: vec![etcd.into()],
        ..Default::default()
    };
    std::thread::spawn(move || {
        if let Err(e) = actix_web::rt::System::new().block_on(pgcell::daemon::router::serve(cfg, listener)) {
            eprintln!("in-process router ended: {e:#}");
        }
    });
    url
}

/// Starts `pgcell cell` in-process against `etcd` with its API on port 0 and
/// backups off; returns its base URL. It talks to the real Docker Engine but
/// starts nothing unless a placement names it (its image does not exist: a
/// test that lets it start a member fails loudly).
pub fn start_cell(etcd: &str, name: &str, deployment: &str, data_root: &std::path::Path) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let mut cfg = pgcell::config::CellConfig {
        name: name.into(),
        deployment: deployment.into(),
        data_root: data_root.into(),
        etcd_endpoints: vec![etcd.into()],
        image: "pgcell/postgres:none".into(),
        ..Default::default()
    };
    cfg.backup.enabled = false;
    std::thread::spawn(move || {
        if let Err(e) = actix_web::rt::System::new().block_on(pgcell::daemon::cell::serve(cfg, listener)) {
            eprintln!("in-process cell ended: {e:#}");
        }
    });
    url
}
