//! `RouterTableActor`: follows etcd (router ports and every Patroni cluster),
//! keeps the shared table the data path reads, and starts or stops one
//! listener per router port. When etcd is unreachable for longer than the
//! grace period it refuses new connections rather than guess. If it fails,
//! the router daemon starts a new one (after a backoff); the shared table and
//! its listeners keep serving meanwhile, and the new actor reads etcd afresh.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use actix::prelude::*;
use futures::StreamExt;
use tokio::task::AbortHandle;

use super::supervise::Lifeline;
use super::{ActorState, ActorStatus, GetState, InjectFailure};
use crate::etcd::watch::{WatchEvent, watch_prefix};
use crate::etcd::{Client, keys};
use crate::router::proxy::{self, PortEntry, PortState, Stats, Table};
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
    /// Instance → the port it is published on.
    published: HashMap<String, u16>,
    grace: Duration,
    down_since: Option<Instant>,
    /// Sources whose watch is broken now; routing resumes when none is.
    interrupted: [bool; 2],
    /// Sources read in full at least once: until both are, the shared table is
    /// left as it is (a restarted actor must not cut connections on half a view).
    read: [bool; 2],
    fenced: bool,
    status: ActorStatus,
    _lifeline: Lifeline,
}

/// What the table actor is started with (kept by the daemon to start it again).
#[derive(Clone)]
pub struct RouterParts {
    pub etcd: Client,
    pub table: Table,
    pub stats: Arc<Stats>,
    pub listen_host: String,
    pub data_path: tokio::runtime::Handle,
    pub grace: Duration,
}

impl RouterTableActor {
    pub fn new(parts: RouterParts, status: ActorStatus, lifeline: Lifeline) -> Self {
        let RouterParts { etcd, table, stats, listen_host, data_path, grace } = parts;
        // A previous actor's ports are still served: know them, so updates and removals find them.
        let published = table.iter().map(|e| (e.instance.clone(), *e.key())).collect();
        Self {
            etcd,
            table,
            stats,
            listen_host,
            data_path,
            routing: RoutingTable::default(),
            published,
            grace,
            down_since: None,
            interrupted: [false; 2],
            read: [false; 2],
            fenced: false,
            status,
            _lifeline: lifeline,
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
        let state = if self.fenced { ActorState::Fenced } else { ActorState::Routing };
        self.status.event(state, format!("ports={}", self.table.len()));
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
        // Dropping the entry stops its listener and drops its sender: open connections see it and close.
        if let Some((_, entry)) = self.table.remove(&port)
            && self.published.get(&entry.instance) == Some(&port)
        {
            self.published.remove(&entry.instance);
        }
        tracing::info!(port, "router port released");
    }

    fn publish(&mut self, port: u16, Route { instance, primary }: Route) {
        let primary = if self.fenced { None } else { primary };
        // A port taken over by another instance (while this actor was not
        // following), or whose listener ended, gets a fresh entry.
        let stale = self.table.get(&port).is_some_and(|e| e.instance != instance || !e.is_serving());
        if stale {
            self.remove_port(port);
        }
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
                let listener = self.spawn_listener(port);
                self.table.insert(port, PortEntry::new(PortState { instance, primary: tx }, listener));
            }
        }
    }

    fn spawn_listener(&self, port: u16) -> AbortHandle {
        let (host, table, stats) = (self.listen_host.clone(), Arc::clone(&self.table), Arc::clone(&self.stats));
        self.data_path
            .spawn(async move {
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
            .abort_handle()
    }

    fn check_grace(&mut self) {
        if let Some(since) = self.down_since
            && !self.fenced
            && since.elapsed() >= self.grace
        {
            tracing::error!(grace = ?self.grace, "etcd unreachable past the grace period: refusing new connections until it returns");
            self.fenced = true;
            if self.read.iter().all(|r| *r) {
                self.sync_all();
            } else {
                // Too little read to know the routes: refuse on every port we have.
                for e in self.table.iter() {
                    e.primary.send_if_modified(|p| p.take().is_some());
                }
            }
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

impl StreamHandler<(Source, WatchEvent)> for RouterTableActor {
    fn handle(&mut self, (source, ev): (Source, WatchEvent), _: &mut Context<Self>) {
        let src = source as usize;
        match &ev {
            WatchEvent::Interrupted { error } => {
                self.interrupted[src] = true;
                self.down_since.get_or_insert_with(Instant::now);
                self.status.error(&anyhow::anyhow!(error.clone()));
                return;
            }
            WatchEvent::Live => {
                self.interrupted[src] = false;
                if self.interrupted.iter().any(|i| *i) {
                    return;
                }
                self.down_since = None;
                if self.fenced {
                    tracing::info!("etcd reachable again: routing resumes");
                    self.fenced = false;
                    if self.read.iter().all(|r| *r) {
                        self.sync_all();
                    }
                }
                return;
            }
            _ => {}
        }
        let affected = match source {
            Source::Instances => self.routing.apply_instances(&ev),
            Source::Patroni => self.routing.apply_patroni(&ev),
        };
        if let WatchEvent::Snapshot { .. } = ev
            && !self.read[src]
        {
            self.read[src] = true;
            if self.read.iter().all(|r| *r) {
                self.sync_all();
            }
            return;
        }
        if !self.read.iter().all(|r| *r) {
            return;
        }
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

impl Handler<InjectFailure> for RouterTableActor {
    type Result = ();

    fn handle(&mut self, _: InjectFailure, ctx: &mut Context<Self>) {
        ctx.run_later(Duration::ZERO, |_, _| panic!("injected failure in the router table actor"));
    }
}
