//! `pgcell cell`: wires the cell agent together.

use std::sync::Arc;

use actix::Actor;
use actix_web::{App, HttpServer, web};
use anyhow::Context;

use crate::actors::cell::{CellActor, Shutdown};
use crate::cell::member::CellDeps;
use crate::config::CellConfig;
use crate::etcd::{registration, store::CellRecord};
use crate::http::{self, auth::Credentials, cell_api::CellApi};

pub async fn run(cfg: CellConfig) -> anyhow::Result<()> {
    let listener = std::net::TcpListener::bind(&cfg.api_listen)
        .with_context(|| format!("cannot listen on {} (api_listen)", cfg.api_listen))?;
    serve(cfg, listener).await
}

/// Runs the agent with an already-bound API listener (tests bind port 0).
pub async fn serve(cfg: CellConfig, listener: std::net::TcpListener) -> anyhow::Result<()> {
    // Bad certificate files stop the start, before anything else runs.
    let tls = http::tls::server_config(&cfg.https)?;
    let docker = crate::docker::connect().await?;
    let etcd = crate::etcd::connect(&cfg.etcd_endpoints, &cfg.etcd_access).await?;
    std::fs::create_dir_all(&cfg.data_root)
        .with_context(|| format!("cannot create data_root {}", cfg.data_root.display()))?;
    let addr = listener.local_addr()?;
    let record = CellRecord {
        name: cfg.name.clone(),
        deployment: cfg.deployment.clone(),
        advertise_host: cfg.advertise_host.clone(),
        api_url: format!("{}://{}:{}", cfg.https.scheme(), cfg.advertise_host, addr.port()),
        port_range: cfg.port_range.clone(),
        capacity: cfg.capacity,
        zone: cfg.zone.clone(),
    };
    let creds = Credentials { username: cfg.api_username.clone(), password: cfg.api_password.clone() };
    let deps = CellDeps { cfg: Arc::new(cfg), docker, etcd: etcd.clone() };
    crate::actors::supervise::install_panic_hook();
    let (lifeline, root_ended) =
        crate::actors::supervise::root(crate::actors::ActorKind::Cell, deps.cfg.name.clone(), 0);
    let cell = CellActor::new(deps.clone(), lifeline).start();
    // Backups of the instances led from here; its state is all in etcd and
    // pgBackRest's repository, so a restarted agent simply carries on. A root
    // too: if it fails, the agent exits and is restarted (as for the CellActor)
    // rather than run on without backups.
    let backup_ended = deps.cfg.backup.enabled.then(|| {
        let (lifeline, ended) =
            crate::actors::supervise::root(crate::actors::ActorKind::Backup, deps.cfg.name.clone(), 0);
        crate::actors::backup::BackupActor::new(deps.clone(), lifeline).start();
        ended
    });
    let backup_ended = async move {
        match backup_ended {
            Some(rx) => rx.await,
            None => std::future::pending().await,
        }
    };
    // Members' server certificates: renewed before expiry or when the names change.
    actix::spawn(crate::cell::certs::run(deps.clone()));
    actix::spawn(registration::run(etcd, crate::etcd::keys::cell(&record.name), serde_json::to_vec(&record)?));
    tracing::info!(cell = %deps.cfg.name, api = %addr, https = tls.is_some(), "cell agent running");

    let api = web::Data::new(CellApi { cell: cell.clone(), deps: deps.clone() });
    let creds = web::Data::new(creds);
    let server = HttpServer::new(move || {
        App::new()
            .app_data(api.clone())
            .app_data(creds.clone())
            .service(http::healthz)
            .configure(http::cell_api::routes)
            .default_service(web::to(http::not_found))
    })
    .workers(2)
    .disable_signals();
    let server = match tls {
        Some(tls) => server.listen_rustls_0_23(listener, tls)?,
        None => server.listen(listener)?,
    }
    .run();
    let handle = server.handle();
    actix::spawn(async move {
        let signal = stop_signal().await;
        tracing::info!(signal, "stopping the cell agent");
        planned_stop(&deps, &cell).await;
        handle.stop(true).await;
    });
    tokio::select! {
        res = server => res.context("cell API server"),
        // The root actor failed. Exiting is safe (the containers keep running
        // and the next agent re-adopts them) and lets the service manager
        // start a clean agent.
        Ok(ev) = root_ended => anyhow::bail!("the cell actor failed ({}); exiting so the agent is restarted", ev.reason),
        Ok(ev) = backup_ended => anyhow::bail!("the backup actor failed ({}); exiting so the agent is restarted", ev.reason),
    }
}

async fn stop_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        tracing::error!("cannot install signal handlers; the agent stops only when killed");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    }
}

/// A planned stop: leaders switched away first (unless configured not to), then
/// the containers stopped. They start again with the agent.
async fn planned_stop(deps: &CellDeps, cell: &actix::Addr<CellActor>) {
    if deps.cfg.drain_on_stop {
        match crate::cell::drain::drain(&mut deps.etcd.clone(), &deps.cfg.name).await {
            Ok(outcomes) => {
                for (scope, outcome) in outcomes {
                    tracing::info!(%scope, %outcome, "drained");
                }
            }
            Err(e) => tracing::error!(error = %format!("{e:#}"), "drain failed; stopping anyway"),
        }
    }
    let _ = cell.send(Shutdown).await;
}
