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
