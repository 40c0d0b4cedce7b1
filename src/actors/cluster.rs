//! `ClusterActor`: follows one Patroni cluster (`/service/<scope>/`) that has a
//! member on this cell, and keeps its [`ClusterView`]. Its parent (the
//! `CellActor`) restarts it if it fails; the new one reads the cluster afresh.
//! It also revokes the leader's lease as soon as it has expired
//! (`etcd::lease_reaper`), so a dead leader's lock does not wait for etcd's sweep.

use actix::prelude::*;

use super::supervise::Lifeline;
use super::{ActorState, ActorStatus, GetState, InjectFailure};
use crate::etcd::watch::{WatchEvent, watch_prefix};
use crate::etcd::{Client, keys, lease_reaper};
use crate::patroni::ClusterView;

pub struct ClusterActor {
    etcd: Client,
    view: ClusterView,
    status: ActorStatus,
    revoke_expired: bool,
    _lifeline: Lifeline,
}

impl ClusterActor {
    pub fn new(etcd: Client, scope: &str, status: ActorStatus, lifeline: Lifeline) -> Self {
        Self { etcd, view: ClusterView::new(scope), status, revoke_expired: false, _lifeline: lifeline }
    }

    pub fn revoking_expired_leases(mut self, on: bool) -> Self {
        self.revoke_expired = on;
        self
    }

    fn summary(&self) -> String {
        let members =
            self.view.members.values().map(|m| format!("{}/{}/{}", m.name, m.role, m.state)).collect::<Vec<_>>();
        format!("leader={} members=[{}]", self.view.leader.as_deref().unwrap_or("none"), members.join(" "))
    }
}

impl Actor for ClusterActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let prefix = keys::patroni_scope(&self.view.scope);
        ctx.add_stream(watch_prefix(self.etcd.clone(), prefix));
        if self.revoke_expired {
            let key = keys::patroni_leader(&self.view.scope);
            let count = |_| crate::metrics::inc(&crate::metrics::COUNTERS.expired_leases_revoked);
            // Ends with the actor, like the watch.
            ctx.spawn(lease_reaper::run(self.etcd.clone(), key, count).into_actor(self));
        }
    }
}

impl StreamHandler<WatchEvent> for ClusterActor {
    fn handle(&mut self, ev: WatchEvent, _: &mut Context<Self>) {
        let prefix = keys::patroni_scope(&self.view.scope);
        let leader_before = self.view.leader.clone();
        match ev {
            WatchEvent::Snapshot { kvs, .. } => {
                self.view = ClusterView::new(&self.view.scope);
                for (k, v) in &kvs {
                    if let Some(rel) = k.strip_prefix(&prefix) {
                        self.view.apply(rel, Some(v));
                    }
                }
            }
            WatchEvent::Put { key, value, .. } => {
                if let Some(rel) = key.strip_prefix(&prefix) {
                    self.view.apply(rel, Some(&value));
                }
            }
            WatchEvent::Delete { key, .. } => {
                if let Some(rel) = key.strip_prefix(&prefix) {
                    self.view.apply(rel, None);
                }
            }
            WatchEvent::Live => return,
            WatchEvent::Interrupted { error } => {
                self.status.error(&anyhow::anyhow!(error));
                return;
            }
        }
        if self.view.leader != leader_before {
            if leader_before.is_some() {
                crate::metrics::inc(&crate::metrics::COUNTERS.failovers_seen);
            }
            tracing::info!(scope = %self.view.scope, leader = ?self.view.leader, "leader changed");
        }
        // The first event is a full snapshot, so the view is always whole here.
        let health = self.view.health();
        let no_sync = health == crate::patroni::Health::NoSyncStandby;
        crate::metrics::HEALTH.observe(&self.view.scope, health.as_str(), no_sync, std::time::Instant::now());
        self.status.event(ActorState::Following, self.summary());
    }
}

/// Ask for the current view of the cluster.
#[derive(Message)]
#[rtype(result = "ClusterView")]
pub struct GetClusterView;

impl Handler<GetClusterView> for ClusterActor {
    type Result = MessageResult<GetClusterView>;

    fn handle(&mut self, _: GetClusterView, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.view.clone())
    }
}

/// No member of the cluster is left on this cell.
#[derive(Message)]
#[rtype(result = "()")]
pub struct StopFollowing;

impl Handler<StopFollowing> for ClusterActor {
    type Result = ();

    fn handle(&mut self, _: StopFollowing, ctx: &mut Context<Self>) {
        crate::metrics::HEALTH.forget(&self.view.scope);
        ctx.stop();
    }
}

impl Handler<GetState> for ClusterActor {
    type Result = MessageResult<GetState>;

    fn handle(&mut self, _: GetState, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.status.clone())
    }
}

impl Handler<InjectFailure> for ClusterActor {
    type Result = ();

    fn handle(&mut self, _: InjectFailure, ctx: &mut Context<Self>) {
        ctx.run_later(std::time::Duration::ZERO, |act, _| {
            panic!("injected failure in the cluster actor of {}", act.view.scope)
        });
    }
}
