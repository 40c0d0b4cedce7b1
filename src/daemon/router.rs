//! `pgcell router`: the table actor on actix, the data path on its own
//! multi-threaded tokio runtime, and the HTTP side (health, debug, metrics).

use std::sync::Arc;
use std::time::Duration;

use actix::{Actor, Addr};
use actix_web::{App, HttpResponse, HttpServer, get, post, web};
use anyhow::Context;

use crate::actors::router_table::{RouterParts, RouterTableActor};
use crate::actors::supervise::{self, Children, Verdict};
use crate::actors::{ActorKind, ActorStatus, GetState, InjectFailure};
use crate::config::RouterConfig;
use crate::etcd::{keys, registration, store::RouterRecord};
use crate::http::{self, auth::Authorized, auth::Credentials, osb::OsbError};
use crate::router::gate::Target;
use crate::router::proxy::{Stats, Table};

struct RouterHttp {
    /// The table actor now (a new one after a failure).
    actor: tokio::sync::watch::Receiver<Addr<RouterTableActor>>,
    table: Table,
    stats: Arc<Stats>,
    failpoints: bool,
}

pub async fn run(cfg: RouterConfig) -> anyhow::Result<()> {
    let listener = std::net::TcpListener::bind(&cfg.http_listen)
        .with_context(|| format!("cannot listen on {} (http_listen)", cfg.http_listen))?;
    serve(cfg, listener).await
}

pub async fn serve(mut cfg: RouterConfig, listener: std::net::TcpListener) -> anyhow::Result<()> {
    if cfg.password.is_empty() {
        cfg.password = crate::secret::random_password(24).into();
        tracing::warn!("no password configured: /debug and /metrics use a random one (set PGCELL_PASSWORD)");
    }
    let etcd = crate::etcd::connect(&cfg.etcd_endpoints, &cfg.etcd_access).await?;
    supervise::install_panic_hook();
    let data_path = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cfg.data_threads.max(1))
        .thread_name("pgcell-data")
        .enable_all()
        .build()
        .context("data path runtime")?;
    let table: Table = Arc::default();
    let stats: Arc<Stats> = Arc::default();
    let parts = RouterParts {
        etcd: etcd.clone(),
        table: Arc::clone(&table),
        stats: Arc::clone(&stats),
        listen_host: cfg.listen_host.clone(),
        data_path: data_path.handle().clone(),
        grace: Duration::from_millis(cfg.grace_ms),
        promote_wait: Duration::from_millis(cfg.promote_wait_ms),
    };
    let actor = supervise_table(parts);
    let addr = listener.local_addr()?;
    let record = RouterRecord {
        name: cfg.name.clone(),
        advertise_host: cfg.advertise_host.clone(),
        debug_url: format!("http://{}:{}", cfg.advertise_host, addr.port()),
    };
    actix::spawn(registration::run(etcd, keys::router(&cfg.name), serde_json::to_vec(&record)?));
    tracing::info!(router = %cfg.name, http = %addr, "router running");

    let state = web::Data::new(RouterHttp { actor, table, stats, failpoints: cfg.failpoints });
    let creds = web::Data::new(Credentials { username: cfg.username.clone(), password: cfg.password.clone() });
    let server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .app_data(creds.clone())
            .service(http::healthz)
            .service(debug_routes)
            .service(debug_actors)
            .service(fail_table)
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

/// Runs the table actor and starts a new one (after a backoff) whenever it
/// fails; the shared table and its listeners serve on meanwhile.
fn supervise_table(parts: RouterParts) -> tokio::sync::watch::Receiver<Addr<RouterTableActor>> {
    let mut children = Children::default();
    let start = move |children: &mut Children| {
        let (generation, restarts, last_error) = children.starting(ActorKind::RouterTable, "routes");
        let (lifeline, ended) = supervise::root(ActorKind::RouterTable, "routes", generation);
        let status = ActorStatus::new(ActorKind::RouterTable, "routes").restarted(restarts, last_error);
        (RouterTableActor::new(parts.clone(), status, lifeline).start(), ended)
    };
    let (addr, mut ended) = start(&mut children);
    let (tx, rx) = tokio::sync::watch::channel(addr);
    actix::spawn(async move {
        while let Ok(ev) = ended.await {
            let Verdict::Restart(delay) = children.ended(&ev) else { return };
            crate::metrics::inc(&crate::metrics::COUNTERS.actor_restarts);
            tracing::error!(reason = %ev.reason, ?delay, "router table actor failed; starting it again");
            tokio::time::sleep(delay).await;
            let (addr, next) = start(&mut children);
            tx.send_replace(addr);
            ended = next;
        }
    });
    rx
}

#[get("/debug/routes")]
async fn debug_routes(_: Authorized, s: web::Data<RouterHttp>) -> HttpResponse {
    let mut routes: Vec<_> = s
        .table
        .iter()
        .map(|e| {
            let target = e.target.borrow();
            let held = matches!(*target, Target::Hold { .. });
            serde_json::json!({"port": e.key(), "instance": e.instance, "primary": target.addr(), "held": held})
        })
        .collect();
    routes.sort_by_key(|r| r["port"].as_u64());
    HttpResponse::Ok().json(routes)
}

#[get("/debug/actors")]
async fn debug_actors(_: Authorized, s: web::Data<RouterHttp>) -> Result<HttpResponse, OsbError> {
    let actor = s.actor.borrow().clone();
    let state = match tokio::time::timeout(Duration::from_secs(1), actor.send(GetState)).await {
        Ok(Ok(st)) => st,
        _ => ActorStatus::unresponsive(ActorKind::RouterTable, "routes"),
    };
    Ok(HttpResponse::Ok().json([state]))
}

/// Fault injection (only with `failpoints` on): the table actor panics.
#[post("/debug/actors/router_table/routes/fail")]
async fn fail_table(_: Authorized, s: web::Data<RouterHttp>) -> Result<HttpResponse, OsbError> {
    if !s.failpoints {
        return http::not_found().await;
    }
    s.actor.borrow().do_send(InjectFailure);
    Ok(HttpResponse::Accepted().json(serde_json::json!({})))
}

#[get("/metrics")]
async fn metrics(_: Authorized, s: web::Data<RouterHttp>) -> HttpResponse {
    use crate::metrics::{counter_samples, render};
    use std::sync::atomic::Ordering::Relaxed;
    let st = &s.stats;
    let with_primary = s.table.iter().filter(|e| e.target.borrow().addr().is_some()).count() as u64;
    let held = s.table.iter().filter(|e| matches!(*e.target.borrow(), Target::Hold { .. })).count() as u64;
    let router: [(&'static str, &'static str, u64); 12] = [
        ("pgcell_router_ports", "gauge", s.table.len() as u64),
        ("pgcell_router_ports_with_primary", "gauge", with_primary),
        ("pgcell_router_connections_accepted_total", "counter", st.accepted.load(Relaxed)),
        ("pgcell_router_connections_refused_total", "counter", st.refused.load(Relaxed)),
        ("pgcell_router_connections_active", "gauge", st.active.load(Relaxed)),
        ("pgcell_router_connections_cut_on_switch_total", "counter", st.cut_on_switch.load(Relaxed)),
        ("pgcell_router_bytes_to_primary_total", "counter", st.bytes_to_primary.load(Relaxed)),
        ("pgcell_router_bytes_to_client_total", "counter", st.bytes_to_client.load(Relaxed)),
        ("pgcell_router_switches_total", "counter", st.switches.load(Relaxed)),
        ("pgcell_router_ports_holding", "gauge", held),
        ("pgcell_router_connections_held_total", "counter", st.held.load(Relaxed)),
        ("pgcell_router_holds_expired_total", "counter", st.holds_expired.load(Relaxed)),
    ];
    let (mut samples, mut kinds) = counter_samples();
    for (name, kind, v) in router {
        samples.push((name, vec![], v));
        kinds.push((name, kind));
    }
    HttpResponse::Ok().content_type("text/plain; version=0.0.4").body(render(&samples, &kinds))
}
