//! `pgcell router`: the table actor on actix, the data path on its own
//! multi-threaded tokio runtime, and the HTTP side (health, debug, metrics).

use std::sync::Arc;
use std::time::Duration;

use actix::Addr;
use actix_web::{App, HttpResponse, HttpServer, get, web};
use anyhow::Context;

use super::proxy::{Stats, Table};
use crate::actors::router_table::RouterTableActor;
use crate::actors::{ActorStatus, GetState};
use crate::config::RouterConfig;
use crate::etcd::{keys, registration, store::RouterRecord};
use crate::http::{self, auth::Authorized, auth::Credentials, osb::OsbError};

struct RouterHttp {
    actor: Addr<RouterTableActor>,
    table: Table,
    stats: Arc<Stats>,
}

pub async fn run(cfg: RouterConfig) -> anyhow::Result<()> {
    let listener = std::net::TcpListener::bind(&cfg.http_listen)
        .with_context(|| format!("cannot listen on {} (http_listen)", cfg.http_listen))?;
    serve(cfg, listener).await
}

pub async fn serve(mut cfg: RouterConfig, listener: std::net::TcpListener) -> anyhow::Result<()> {
    if cfg.password.is_empty() {
        cfg.password = crate::secret::random_password(24);
        tracing::warn!("no password configured: /debug and /metrics use a random one (set PGCELL_PASSWORD)");
    }
    let etcd = crate::etcd::connect(&cfg.etcd_endpoints).await?;
    let data_path = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cfg.data_threads.max(1))
        .thread_name("pgcell-data")
        .enable_all()
        .build()
        .context("data path runtime")?;
    let table: Table = Arc::default();
    let stats: Arc<Stats> = Arc::default();
    let (etcd2, table2, stats2) = (etcd.clone(), Arc::clone(&table), Arc::clone(&stats));
    let (host, handle, grace) =
        (cfg.listen_host.clone(), data_path.handle().clone(), Duration::from_millis(cfg.grace_ms));
    let actor = actix::Supervisor::start(move |_| RouterTableActor::new(etcd2, table2, stats2, host, handle, grace));
    let addr = listener.local_addr()?;
    let record = RouterRecord {
        name: cfg.name.clone(),
        advertise_host: cfg.advertise_host.clone(),
        debug_url: format!("http://{}:{}", cfg.advertise_host, addr.port()),
    };
    actix::spawn(registration::run(etcd, keys::router(&cfg.name), serde_json::to_vec(&record)?));
    tracing::info!(router = %cfg.name, http = %addr, "router running");

    let state = web::Data::new(RouterHttp { actor, table, stats });
    let creds = web::Data::new(Credentials { username: cfg.username.clone(), password: cfg.password.clone() });
    let server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .app_data(creds.clone())
            .service(http::healthz)
            .service(debug_routes)
            .service(debug_actors)
            .service(metrics)
            .default_service(web::to(http::not_found))
    })
    .workers(1)
    .listen(listener)?
    .run();
    let res = server.await.context("router HTTP server");
    data_path.shutdown_background();
    res
}

#[get("/debug/routes")]
async fn debug_routes(_: Authorized, s: web::Data<RouterHttp>) -> HttpResponse {
    let mut routes: Vec<_> = s
        .table
        .iter()
        .map(|e| serde_json::json!({"port": e.key(), "instance": e.instance, "primary": *e.primary.borrow()}))
        .collect();
    routes.sort_by_key(|r| r["port"].as_u64());
    HttpResponse::Ok().json(routes)
}

#[get("/debug/actors")]
async fn debug_actors(_: Authorized, s: web::Data<RouterHttp>) -> Result<HttpResponse, OsbError> {
    let state = match tokio::time::timeout(Duration::from_secs(1), s.actor.send(GetState)).await {
        Ok(Ok(st)) => st,
        _ => ActorStatus { state: "unresponsive".into(), ..ActorStatus::new("router_table", "routes") },
    };
    Ok(HttpResponse::Ok().json([state]))
}

#[get("/metrics")]
async fn metrics(_: Authorized, s: web::Data<RouterHttp>) -> HttpResponse {
    use crate::http::metrics::{counter_samples, render};
    use std::sync::atomic::Ordering::Relaxed;
    let st = &s.stats;
    let with_primary = s.table.iter().filter(|e| e.primary.borrow().is_some()).count() as u64;
    let router: [(&'static str, &'static str, u64); 9] = [
        ("pgcell_router_ports", "gauge", s.table.len() as u64),
        ("pgcell_router_ports_with_primary", "gauge", with_primary),
        ("pgcell_router_connections_accepted_total", "counter", st.accepted.load(Relaxed)),
        ("pgcell_router_connections_refused_total", "counter", st.refused.load(Relaxed)),
        ("pgcell_router_connections_active", "gauge", st.active.load(Relaxed)),
        ("pgcell_router_connections_cut_on_switch_total", "counter", st.cut_on_switch.load(Relaxed)),
        ("pgcell_router_bytes_to_primary_total", "counter", st.bytes_to_primary.load(Relaxed)),
        ("pgcell_router_bytes_to_client_total", "counter", st.bytes_to_client.load(Relaxed)),
        ("pgcell_router_switches_total", "counter", st.switches.load(Relaxed)),
    ];
    let (mut samples, mut kinds) = counter_samples();
    for (name, kind, v) in router {
        samples.push((name, vec![], v));
        kinds.push((name, kind));
    }
    HttpResponse::Ok().content_type("text/plain; version=0.0.4").body(render(&samples, &kinds))
}
