//! `RouterTableActor`: follows etcd (router ports and every Patroni cluster),
//! keeps the shared table the data path reads, and starts or stops one
//! listener per router port. While a new lock holder promotes, it asks that
//! member's Patroni whether it is writable yet (the promotion gate decides
//! what the port does meanwhile). When etcd is unreachable for longer than the
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
use crate::router::fence::{Action as FenceAction, Event as FenceEvent, OutageFence, Source};
use crate::router::gate::{Probe, PromoteGate, Target};
use crate::router::proxy::{self, PortEntry, PortState, Stats, Table};
use crate::router::table::{Affected, Route, RoutingTable};

/// How often a promoting lock holder's Patroni is asked: every write waits for
/// the answer, a promotion takes 150–400 ms here, and a probe is one small
/// request (Patroni runs one query for it), for those few hundred ms only.
const PROBE_EVERY: Duration = Duration::from_millis(25);
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

pub struct RouterTableActor {
    etcd: Client,
    table: Table,
    stats: Arc<Stats>,
    listen_host: String,
    data_path: tokio::runtime::Handle,
    routing: RoutingTable,
    /// Instance → the port it is published on.
    published: HashMap<String, u16>,
    fence: OutageFence,
    gate: PromoteGate,
    /// Instance → the probe of its promoting lock holder.
    probes: HashMap<String, SpawnHandle>,
    http: reqwest::Client,
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
    /// Longest hold of new connections while the lock holder promotes (zero: none).
    pub promote_wait: Duration,
}

impl RouterTableActor {
    pub fn new(parts: RouterParts, status: ActorStatus, lifeline: Lifeline) -> Self {
        let RouterParts { etcd, table, stats, listen_host, data_path, grace, promote_wait } = parts;
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
            fence: OutageFence::new(grace),
            gate: PromoteGate::new(promote_wait),
            probes: HashMap::new(),
            // Without a client the gate still opens, by the member key or the bound.
            http: reqwest::Client::builder().timeout(PROBE_TIMEOUT).build().unwrap_or_default(),
            status,
            _lifeline: lifeline,
        }
    }

    /// Makes the shared table and the listeners match every route (after a full read).
    fn sync_all(&mut self, ctx: &mut Context<Self>) {
        let routes = self.routing.routes();
        let gone: Vec<u16> = self.table.iter().map(|e| *e.key()).filter(|p| !routes.contains_key(p)).collect();
        for port in gone {
            if let Some(instance) = self.remove_port(port) {
                let (_, probe) = self.gate.target(&instance, None, Instant::now());
                self.probe(probe, ctx);
            }
        }
        for (port, route) in routes {
            self.publish(port, route, ctx);
        }
        let state = if self.fence.fenced() { ActorState::Fenced } else { ActorState::Routing };
        self.status.event(state, format!("ports={}", self.table.len()));
    }

    /// Updates one instance's route only: what most events change.
    fn sync_instance(&mut self, id: &str, ctx: &mut Context<Self>) {
        let want = self.routing.route(id);
        if let Some(old) = self.published.get(id).copied()
            && want.as_ref().is_none_or(|(p, _)| *p != old)
        {
            self.remove_port(old);
        }
        match want {
            Some((port, route)) => self.publish(port, route, ctx),
            None => {
                let (_, probe) = self.gate.target(id, None, Instant::now());
                self.probe(probe, ctx);
            }
        }
    }

    /// Returns the instance the port was published for.
    fn remove_port(&mut self, port: u16) -> Option<String> {
        // Dropping the entry stops its listener and drops its sender: open connections see it and close.
        let (_, entry) = self.table.remove(&port)?;
        if self.published.get(&entry.instance) == Some(&port) {
            self.published.remove(&entry.instance);
        }
        tracing::info!(port, "router port released");
        Some(entry.instance.clone())
    }

    fn publish(&mut self, port: u16, Route { instance, leader }: Route, ctx: &mut Context<Self>) {
        let leader = if self.fence.fenced() { None } else { leader };
        let (target, probe) = self.gate.target(&instance, leader.as_ref(), Instant::now());
        self.probe(probe, ctx);
        // A port taken over by another instance (while this actor was not
        // following), or whose listener ended, gets a fresh entry.
        let stale = self.table.get(&port).is_some_and(|e| e.instance != instance || !e.is_serving());
        if stale {
            self.remove_port(port);
        }
        match self.table.get(&port) {
            Some(state) => {
                let (mut switched, mut changed) = (false, false);
                state.target.send_if_modified(|cur| {
                    switched = cur.addr() != target.addr();
                    changed = *cur != target;
                    *cur = target.clone();
                    changed
                });
                if switched {
                    self.stats.switches.fetch_add(1, Relaxed);
                }
                if changed {
                    tracing::info!(port, %instance, target = ?target, "route changed");
                }
            }
            None => {
                tracing::info!(port, %instance, target = ?target, "router port added");
                let (tx, _) = tokio::sync::watch::channel(target);
                self.published.insert(instance.clone(), port);
                let listener = self.spawn_listener(port);
                self.table.insert(port, PortEntry::new(PortState { instance, target: tx }, listener));
            }
        }
    }

    /// Starts or stops asking a promoting lock holder's Patroni whether it is writable.
    fn probe(&mut self, probe: Option<Probe>, ctx: &mut Context<Self>) {
        match probe {
            None => {}
            Some(Probe::Stop { instance }) => {
                if let Some(h) = self.probes.remove(&instance) {
                    ctx.cancel_future(h);
                }
            }
            Some(Probe::Start { instance, member, api_url }) => {
                if let Some(h) = self.probes.remove(&instance) {
                    ctx.cancel_future(h);
                }
                tracing::info!(%instance, %member, "new lock holder: holding new connections until it is writable");
                let ask = crate::patroni::rest::until_writable_leader(self.http.clone(), api_url, PROBE_EVERY);
                let id = instance.clone();
                let handle = ctx.spawn(ask.into_actor(self).map(move |(), act, ctx| {
                    act.probes.remove(&id);
                    if act.gate.confirmed(&id, &member) {
                        tracing::info!(instance = %id, %member, "lock holder writable: routing to it");
                        act.sync_instance(&id, ctx);
                    }
                }));
                self.probes.insert(instance.clone(), handle);
                // The bound: the gate opens by itself at the end of the wait.
                ctx.run_later(self.gate.wait(), move |act, ctx| {
                    if act.gate.overdue(&instance, Instant::now()) {
                        act.stats.holds_expired.fetch_add(1, Relaxed);
                        tracing::warn!(%instance, wait = ?act.gate.wait(), "lock holder not confirmed writable in time: routing to it anyway");
                    }
                    act.sync_instance(&instance, ctx);
                });
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

    /// Feeds the outage fence and performs what it says.
    fn on_fence(&mut self, ev: FenceEvent, ctx: &mut Context<Self>) {
        for action in self.fence.on_event(ev, Instant::now()) {
            match action {
                FenceAction::SyncAll => self.sync_all(ctx),
                FenceAction::RefuseAll => {
                    // Too little read to know the routes: refuse on every port we have.
                    for e in self.table.iter() {
                        e.target.send_if_modified(|t| std::mem::replace(t, Target::Refuse) != Target::Refuse);
                    }
                }
            }
        }
    }
}

impl Actor for RouterTableActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let instances = watch_prefix(self.etcd.clone(), keys::router_ports()).map(|e| (Source::Instances, e));
        let patroni = watch_prefix(self.etcd.clone(), keys::PATRONI_NAMESPACE.into()).map(|e| (Source::Patroni, e));
        ctx.add_stream(futures::stream::select(instances, patroni));
        ctx.run_interval(Duration::from_millis(250), |act, ctx| act.on_fence(FenceEvent::Tick, ctx));
    }
}

impl StreamHandler<(Source, WatchEvent)> for RouterTableActor {
    fn handle(&mut self, (source, ev): (Source, WatchEvent), ctx: &mut Context<Self>) {
        match &ev {
            WatchEvent::Interrupted { error } => {
                self.status.error(&anyhow::anyhow!(error.clone()));
                return self.on_fence(FenceEvent::Interrupted(source), ctx);
            }
            WatchEvent::Live => return self.on_fence(FenceEvent::Live(source), ctx),
            _ => {}
        }
        let affected = match source {
            Source::Instances => self.routing.apply_instances(&ev),
            Source::Patroni => self.routing.apply_patroni(&ev),
        };
        if let WatchEvent::Snapshot { .. } = ev {
            let first_full_read = !self.fence.ready();
            self.on_fence(FenceEvent::Snapshot(source), ctx);
            if first_full_read {
                return;
            }
        }
        // Until both prefixes were read in full, the shared table is left as it
        // is: a restarted actor must not cut connections on half a view.
        if !self.fence.ready() {
            return;
        }
        match affected {
            Affected::All => self.sync_all(ctx),
            Affected::Instance(id) => self.sync_instance(&id, ctx),
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
