//! `pgcell broker`: the OSB API over etcd.

use actix_web::dev::Service;
use actix_web::{App, HttpResponse, HttpServer, get, web};
use anyhow::Context;

use crate::actors::{ActorKind, ActorState, ActorStatus};
use crate::broker::engine::Broker;
use crate::config::BrokerConfig;
use crate::http::{self, auth::Authorized, auth::Credentials};
use crate::metrics;

pub async fn run(cfg: BrokerConfig) -> anyhow::Result<()> {
    let listener = std::net::TcpListener::bind(&cfg.listen)
        .with_context(|| format!("cannot listen on {} (listen)", cfg.listen))?;
    serve(cfg, listener).await
}

pub async fn serve(cfg: BrokerConfig, listener: std::net::TcpListener) -> anyhow::Result<()> {
    // Bad certificate files stop the start, before anything else runs.
    let tls = http::tls::server_config(&cfg.https)?;
    let etcd = crate::etcd::connect(&cfg.etcd_endpoints, &cfg.etcd_access).await?;
    // The fleet CA: instances are reached over TLS verified against it, and bindings hand it out.
    let ca = crate::etcd::ca::fleet_ca(&mut etcd.clone(), &cfg.tls).await.context("the fleet CA")?;
    crate::broker::sql::trust_fleet_ca(&ca.cert_pem)?;
    let creds = web::Data::new(Credentials { username: cfg.username.clone(), password: cfg.password.clone() });
    tracing::info!(broker = %cfg.name, listen = %listener.local_addr()?, https = tls.is_some(), "broker running");
    let broker = Broker::new(etcd, cfg);
    actix_web::rt::spawn(crate::broker::driver::run(broker.clone()));
    actix_web::rt::spawn(crate::broker::healer::run(broker.clone()));
    let broker = web::Data::new(broker);
    let server = HttpServer::new(move || {
        App::new()
            .app_data(broker.clone())
            .app_data(creds.clone())
            .app_data(
                web::PathConfig::default()
                    .error_handler(|e, _| http::osb::OsbError::bad_request(format!("bad path: {e}")).into()),
            )
            .app_data(
                web::QueryConfig::default()
                    .error_handler(|e, _| http::osb::OsbError::bad_request(format!("bad query: {e}")).into()),
            )
            .wrap_fn(|req, srv| {
                // Echo the request identity; log who originated it; count by endpoint and status.
                let identity = req.headers().get("x-broker-api-request-identity").cloned();
                if let Some(origin) = req.headers().get("x-broker-api-originating-identity") {
                    tracing::info!(method = %req.method(), path = %req.path(), origin = ?origin, "OSB request");
                }
                let endpoint =
                    format!("{} {}", req.method(), req.match_pattern().unwrap_or_else(|| "unmatched".into()));
                let fut = srv.call(req);
                async move {
                    let mut res = fut.await?;
                    if let Some(id) = identity {
                        res.headers_mut().insert(
                            actix_web::http::header::HeaderName::from_static("x-broker-api-request-identity"),
                            id,
                        );
                    }
                    *metrics::COUNTERS.requests.entry((endpoint, res.status().as_u16())).or_default() += 1;
                    Ok(res)
                }
            })
            .service(http::healthz)
            .service(debug_actors)
            .service(broker_metrics)
            .configure(http::broker::routes)
            .default_service(web::to(http::not_found))
    })
    .workers(2);
    let server = match tls {
        Some(tls) => server.listen_rustls_0_23(listener, tls)?,
        None => server.listen(listener)?,
    };
    server.run().await.context("broker HTTP server")
}

/// The broker has no long-lived actors: it reports itself, so every daemon answers alike.
#[get("/debug/actors")]
async fn debug_actors(_: Authorized, b: web::Data<Broker>) -> HttpResponse {
    let mut s = ActorStatus::new(ActorKind::Broker, b.cfg.name.clone());
    s.event(ActorState::Serving, "");
    HttpResponse::Ok().json([s])
}

#[get("/metrics")]
async fn broker_metrics(_: Authorized, b: web::Data<Broker>) -> HttpResponse {
    let (mut samples, mut kinds) = metrics::counter_samples();
    // The fleet's free slots, read afresh: what the next provisions can use.
    match crate::etcd::fleet::read(&mut b.etcd.clone()).await {
        Ok(fleet) => {
            let (s, k) = fleet.samples();
            samples.extend(s);
            kinds.extend(k);
        }
        Err(e) => tracing::warn!(error = %format!("{e:#}"), "cannot read the fleet's capacity for /metrics"),
    }
    HttpResponse::Ok().content_type("text/plain; version=0.0.4").body(metrics::render(&samples, &kinds))
}
