//! `RouterTableActor`: follows etcd (router ports and every Patroni cluster),
//! keeps the shared table the data path reads, and starts or stops one
//! listener per router port. When etcd is unreachable for longer than the
//! grace period it refuses new connections rather than guess.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use actix::prelude::*;
use futures::StreamExt;
use tokio::task::JoinHandle;

use super::{ActorStatus, GetState};
use crate::etcd::watch::{WatchEvent, watch_prefix};
use crate::etcd::{Client, keys};
use crate::router::proxy::{self, PortState, Stats, Table};
use crate::router::table::{Affected, Route, RoutingTable};

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Source {
    Instances,
    Patroni,
}

pub struct RouterTableActor {
    etcd: Client,
    table: Table,
    stats: Arc<Stats>,
    listen_host: String,
    data_path: tokio::runtime::Handle,
    routing: RoutingTable,
    listeners: HashMap<u16, JoinHandle<()>>,
    /// Instance → the port it is published on.
    published: HashMap<String, u16>,
    grace: Duration,
    down_since: Option<Instant>,
    fenced: bool,
    status: ActorStatus,
}

impl RouterTableActor {
    pub fn new(
        etcd: Client,
        table: Table,
        stats: Arc<Stats>,
        listen_host: String,
        data_path: tokio::runtime::Handle,
        grace: Duration,
    ) -> Self {
        Self {
            etcd,
            table,
            stats,
            listen_host,
            data_path,
            routing: RoutingTable::default(),
            listeners: HashMap::new(),
            published: HashMap::new(),
            grace,
            down_since: None,
            fenced: false,
            status: ActorStatus::new("router_table", "routes"),
        }
    }

    /// Makes the shared table and the listeners match every route (after a full read).
    fn sync_all(&mut self) {
        let routes = self.routing.routes();
        let gone: Vec<u16> = self.table.iter().map(|e| *e.key()).filter(|p| !routes.contains_key(p)).collect();
        for port in gone {
            self.remove_port(port);
        }
        for (port, route) in routes {
            self.publish(port, route);
        }
        self.status.event(format!("ports={} fenced={}", self.table.len(), self.fenced));
    }

    /// Updates one instance's route only: what most events change.
    fn sync_instance(&mut self, id: &str) {
        let want = self.routing.route(id);
        if let Some(old) = self.published.get(id).copied()
            && want.as_ref().is_none_or(|(p, _)| *p != old)
        {
            self.remove_port(old);
        }
        if let Some((port, route)) = want {
            self.publish(port, route);
        }
    }

    fn remove_port(&mut self, port: u16) {
        // Dropping the state drops its sender: open connections see it and close.
        if let Some((_, state)) = self.table.remove(&port) {
            self.published.remove(&state.instance);
        }
        if let Some(h) = self.listeners.remove(&port) {
            h.abort();
        }
        tracing::info!(port, "router port released");
    }

    fn publish(&mut self, port: u16, Route { instance, primary }: Route) {
        let primary = if self.fenced { None } else { primary };
        match self.table.get(&port) {
            Some(state) => {
                let changed = state.primary.send_if_modified(|cur| {
                    let changed = *cur != primary;
                    *cur = primary.clone();
                    changed
                });
                if changed {
                    self.stats.switches.fetch_add(1, Relaxed);
                    tracing::info!(port, %instance, primary = ?primary, "route changed");
                }
            }
            None => {
                tracing::info!(port, %instance, primary = ?primary, "router port added");
                let (tx, _) = tokio::sync::watch::channel(primary);
                self.published.insert(instance.clone(), port);
                self.table.insert(port, Arc::new(PortState { instance, primary: tx }));
                self.listeners.insert(port, self.spawn_listener(port));
            }
        }
    }

    fn spawn_listener(&self, port: u16) -> JoinHandle<()> {
        let (host, table, stats) = (self.listen_host.clone(), Arc::clone(&self.table), Arc::clone(&self.stats));
        self.data_path.spawn(async move {
            loop {
                match tokio::net::TcpListener::bind((host.as_str(), port)).await {
                    Ok(l) => return proxy::serve_port(l, port, table, stats).await,
                    Err(e) => {
                        tracing::error!(port, error = %e, "cannot listen on router port; retrying");
                        tokio::time::sleep(Duration::from_secs(2)).await;
                    }
                }
            }
        })
    }

    fn check_grace(&mut self) {
        if let Some(since) = self.down_since
            && !self.fenced
            && since.elapsed() >= self.grace
        {
            tracing::error!(grace = ?self.grace, "etcd unreachable past the grace period: refusing new connections until it returns");
            self.fenced = true;
            self.sync_all();
        }
    }
}

impl Actor for RouterTableActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let instances = watch_prefix(self.etcd.clone(), keys::instances()).map(|e| (Source::Instances, e));
        let patroni = watch_prefix(self.etcd.clone(), keys::PATRONI_NAMESPACE.into()).map(|e| (Source::Patroni, e));
        ctx.add_stream(futures::stream::select(instances, patroni));
        ctx.run_interval(Duration::from_millis(250), |act, _| act.check_grace());
    }
}

/// Restarted by its `Supervisor` if it stops: the table is rebuilt from a full
/// read; the shared table and the listeners stay up meanwhile.
impl actix::Supervised for RouterTableActor {
    fn restarting(&mut self, _: &mut Context<Self>) {
        self.routing = RoutingTable::default();
        self.status.restarts += 1;
        tracing::warn!("router table actor restarted; reading etcd again");
    }
}

impl StreamHandler<(Source, WatchEvent)> for RouterTableActor {
    fn handle(&mut self, (source, ev): (Source, WatchEvent), _: &mut Context<Self>) {
        match &ev {
            WatchEvent::Interrupted { error } => {
                self.down_since.get_or_insert_with(Instant::now);
                self.status.error(&anyhow::anyhow!(error.clone()));
                return;
            }
            WatchEvent::Live => {
                self.down_since = None;
                if self.fenced {
                    tracing::info!("etcd reachable again: routing resumes");
                    self.fenced = false;
                    self.sync_all();
                }
                return;
            }
            _ => {}
        }
        let affected = match source {
            Source::Instances => self.routing.apply_instances(&ev),
            Source::Patroni => self.routing.apply_patroni(&ev),
        };
        match affected {
            Affected::All => self.sync_all(),
            Affected::Instance(id) => self.sync_instance(&id),
            Affected::Nothing => {}
        }
    }
}

impl Handler<GetState> for RouterTableActor {
    type Result = MessageResult<GetState>;

    fn handle(&mut self, _: GetState, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.status.clone())
    }
}
