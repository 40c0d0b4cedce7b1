//! `CellActor`: reconciles this cell's placements (etcd) with its containers
//! (Docker), one `ContainerActor` per member and one `ClusterActor` per cluster
//! with a member here. A thin shell over [`CellMachine`], which decides; this
//! actor only holds the children's addresses and performs the actions. It
//! supervises its children: one that fails is started again after a backoff
//! (see [`super::supervise`]).

use std::collections::HashMap;
use std::time::Duration;

use actix::prelude::*;
use bollard::models::EventMessage;

use super::cluster::{ClusterActor, GetClusterView, StopFollowing};
use super::container::{ContainerActor, ContainerDied, ContainerStarted, EnsureRunning, Retire, StopForShutdown};
use super::supervise::{ChildEnded, Children, Lifeline, Verdict};
use super::{ActorKind, ActorState, ActorStatus, GetState, InjectFailure};
use crate::backoff::Backoff;
use crate::cell::machine::{Action, CellMachine, Child, Event};
use crate::cell::member::CellDeps;
use crate::docker;
use crate::etcd::keys;
use crate::etcd::store::Placement;
use crate::etcd::watch::{WatchEvent, watch_prefix};

/// A full reconcile also runs this often, to heal whatever an event missed.
const RESYNC: Duration = Duration::from_secs(30);

pub struct CellActor {
    deps: CellDeps,
    machine: CellMachine,
    members: HashMap<String, Addr<ContainerActor>>,
    clusters: HashMap<String, Addr<ClusterActor>>,
    children: Children,
    docker_backoff: Backoff,
    status: ActorStatus,
    _lifeline: Lifeline,
}

impl CellActor {
    pub fn new(deps: CellDeps, lifeline: Lifeline) -> Self {
        let status = ActorStatus::new(ActorKind::Cell, deps.cfg.name.clone());
        Self {
            deps,
            machine: CellMachine::default(),
            members: HashMap::new(),
            clusters: HashMap::new(),
            children: Children::default(),
            docker_backoff: Backoff::new(Duration::from_millis(200), Duration::from_secs(5)),
            status,
            _lifeline: lifeline,
        }
    }

    fn on_event(&mut self, ev: Event, ctx: &mut Context<Self>) {
        for action in self.machine.on_event(ev) {
            self.perform(action, ctx);
        }
        let (members, clusters) = self.machine.counts();
        self.status.event(
            ActorState::Running,
            format!("members={members} clusters={clusters} child_restarts={}", self.children.total_restarts()),
        );
    }

    fn perform(&mut self, action: Action, ctx: &mut Context<Self>) {
        match action {
            Action::ListContainers => {
                let deps = self.deps.clone();
                let list = async move { docker::list_cell(&deps.docker, &deps.cfg.name).await };
                ctx.spawn(list.into_actor(self).map(|res, act, ctx| match res {
                    Ok(containers) => act.on_event(Event::Listed(containers), ctx),
                    Err(e) => {
                        tracing::error!(error = %format!("{e:#}"), "cannot list containers; will retry");
                        act.status.error(&e);
                        act.on_event(Event::ListFailed, ctx);
                    }
                }));
            }
            Action::StartMember(p) => self.start_member(p, ctx),
            Action::EnsureRunning(member) => {
                if let Some(addr) = self.members.get(&member) {
                    addr.do_send(EnsureRunning);
                }
            }
            Action::RetireMember(member) => {
                self.children.release(ActorKind::Container, &member);
                if let Some(addr) = self.members.remove(&member) {
                    tracing::info!(%member, "member no longer placed here; removing its container (data kept)");
                    addr.do_send(Retire);
                }
            }
            Action::RemoveOrphan(name) => {
                tracing::warn!(container = %name, "container without placement; removing it (data kept)");
                let deps = self.deps.clone();
                let remove = async move {
                    if let Err(e) = docker::remove(&deps.docker, &name).await {
                        tracing::error!(error = %format!("{e:#}"), "cannot remove orphan container");
                    }
                };
                ctx.spawn(remove.into_actor(self));
            }
            Action::Purge(p) => self.purge(p, ctx),
            Action::FollowCluster(scope) => {
                let (generation, restarts, last_error) = self.children.starting(ActorKind::Cluster, &scope);
                let lifeline = Lifeline::to(ctx.address().recipient(), ActorKind::Cluster, scope.clone(), generation);
                let status = ActorStatus::new(ActorKind::Cluster, scope.clone()).restarted(restarts, last_error);
                let addr = ClusterActor::new(self.deps.etcd.clone(), &scope, status, lifeline)
                    .revoking_expired_leases(self.deps.cfg.revoke_expired_leader_leases)
                    .start();
                self.clusters.insert(scope, addr);
            }
            Action::StopFollowing(scope) => {
                self.children.release(ActorKind::Cluster, &scope);
                if let Some(addr) = self.clusters.remove(&scope) {
                    addr.do_send(StopFollowing);
                }
            }
            Action::WakeAfter(child, delay) => {
                ctx.run_later(delay, move |act, ctx| act.on_event(Event::BackoffOver(child), ctx));
            }
        }
    }

    /// Removes a member marked `purge`: container, data, Patroni member key, then its placement.
    fn purge(&mut self, p: Placement, ctx: &mut Context<Self>) {
        let actor = self.members.remove(&p.member);
        self.children.release(ActorKind::Container, &p.member);
        let deps = self.deps.clone();
        let member = p.member.clone();
        let work = async move {
            match actor {
                Some(a) => a.send(Retire).await.map_err(anyhow::Error::from)?.map_err(anyhow::Error::msg)?,
                None => deps.remove_container(&p.member).await?,
            }
            deps.purge(&p).await?;
            let mut etcd = deps.etcd.clone();
            let key = keys::placement(&p.cell, &p.instance_id);
            if let Some((cur, rev)) = crate::etcd::store::get_json::<Placement>(&mut etcd, &key).await?
                && cur.purge
            {
                // Before the placement goes, so an agent dying in between does it again on restart.
                crate::etcd::store::forget_seed_instance_if_last(&mut etcd, &cur).await?;
                if !crate::etcd::store::remove_placement(&mut etcd, &cur, rev).await?.done() {
                    // Changed since it was read: the next reconcile sees the new placement.
                    anyhow::bail!("placement of {} changed while it was purged", cur.member);
                }
            }
            anyhow::Ok(())
        };
        ctx.spawn(work.into_actor(self).map(move |res, act, ctx| {
            let ok = match res {
                Ok(()) => {
                    tracing::info!(%member, "member removed with its data");
                    true
                }
                Err(e) => {
                    tracing::error!(%member, error = %format!("{e:#}"), "cannot remove member; will retry");
                    false
                }
            };
            act.on_event(Event::PurgeEnded { member, ok }, ctx);
        }));
    }

    /// Starts the member's actor; it adopts the container if one runs.
    fn start_member(&mut self, p: Placement, ctx: &mut Context<Self>) {
        let (generation, restarts, last_error) = self.children.starting(ActorKind::Container, &p.member);
        let lifeline = Lifeline::to(ctx.address().recipient(), ActorKind::Container, p.member.clone(), generation);
        let status = ActorStatus::new(ActorKind::Container, p.member.clone()).restarted(restarts, last_error);
        let addr = ContainerActor::new(self.deps.clone(), p.clone(), status, lifeline).start();
        addr.do_send(EnsureRunning);
        self.members.insert(p.member, addr);
    }

    fn subscribe_docker(&mut self, ctx: &mut Context<Self>) {
        ctx.add_stream(docker::events(&self.deps.docker, &self.deps.cfg.name));
    }
}

impl Actor for CellActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let prefix = keys::cell_placements(&self.deps.cfg.name);
        ctx.add_stream(watch_prefix(self.deps.etcd.clone(), prefix));
        self.subscribe_docker(ctx);
        ctx.run_interval(RESYNC, |act, ctx| act.on_event(Event::Resync, ctx));
    }
}

impl StreamHandler<WatchEvent> for CellActor {
    fn handle(&mut self, ev: WatchEvent, ctx: &mut Context<Self>) {
        if let WatchEvent::Interrupted { error } = &ev {
            self.status.error(&anyhow::anyhow!(error.clone()));
        }
        self.on_event(Event::Placements(ev), ctx);
    }
}

impl StreamHandler<Result<EventMessage, bollard::errors::Error>> for CellActor {
    fn handle(&mut self, ev: Result<EventMessage, bollard::errors::Error>, ctx: &mut Context<Self>) {
        let ev = match ev {
            Ok(ev) => ev,
            Err(e) => {
                tracing::warn!(error = %e, "docker event stream error");
                return;
            }
        };
        self.docker_backoff.reset();
        let Some((member, action)) = docker::event_member(&ev) else {
            return;
        };
        let addr = self.members.get(&member);
        match (action.as_str(), addr) {
            ("die", Some(addr)) => addr.do_send(ContainerDied),
            ("start", Some(addr)) => addr.do_send(ContainerStarted),
            ("destroy", _) => self.on_event(Event::Resync, ctx),
            _ => {}
        }
    }

    fn finished(&mut self, ctx: &mut Context<Self>) {
        // The engine went away (restart, socket broken): resubscribe after a
        // backoff, and re-list so nothing that happened meanwhile is missed.
        let delay = self.docker_backoff.next_delay();
        crate::metrics::inc(&crate::metrics::COUNTERS.docker_reconnects);
        tracing::warn!(?delay, "docker event stream ended; resubscribing");
        ctx.run_later(delay, |act, ctx| {
            act.subscribe_docker(ctx);
            act.on_event(Event::Resync, ctx);
        });
    }
}

/// A placement for this cell was just written: run its member now.
#[derive(Message)]
#[rtype(result = "Result<(), String>")]
pub struct EnsureMember(pub Placement);

impl Handler<EnsureMember> for CellActor {
    type Result = ResponseFuture<Result<(), String>>;

    fn handle(&mut self, EnsureMember(p): EnsureMember, ctx: &mut Context<Self>) -> Self::Result {
        let member = p.member.clone();
        for action in self.machine.on_event(Event::EnsureAsked(p)) {
            // This member's ensure is awaited below, for the caller's answer.
            if action != Action::EnsureRunning(member.clone()) {
                self.perform(action, ctx);
            }
        }
        let addr = self.members.get(&member).cloned();
        Box::pin(async move {
            let addr = addr.ok_or_else(|| format!("no actor for member {member}"))?;
            addr.send(EnsureRunning).await.map_err(|e| e.to_string())?
        })
    }
}

/// A placement of this cell was marked `purge`: carry it out now rather than
/// at the next watch event (the per-cell DELETE waits for it).
#[derive(Message)]
#[rtype(result = "()")]
pub struct PurgeMember(pub Placement);

impl Handler<PurgeMember> for CellActor {
    type Result = ();

    fn handle(&mut self, PurgeMember(p): PurgeMember, ctx: &mut Context<Self>) {
        self.on_event(Event::PurgeAsked(p), ctx);
    }
}

impl Handler<ChildEnded> for CellActor {
    type Result = ();

    fn handle(&mut self, ev: ChildEnded, ctx: &mut Context<Self>) {
        let Verdict::Restart(delay) = self.children.ended(&ev) else { return };
        crate::metrics::inc(&crate::metrics::COUNTERS.actor_restarts);
        tracing::error!(kind = %ev.kind, id = %ev.id, reason = %ev.reason, ?delay, "actor failed; starting it again");
        // The dead address goes now: a retire or a purge meanwhile then works
        // on the container directly.
        let child = match ev.kind {
            ActorKind::Container => {
                self.members.remove(&ev.id);
                Child::Container(ev.id)
            }
            _ => {
                self.clusters.remove(&ev.id);
                Child::Cluster(ev.id)
            }
        };
        self.on_event(Event::ChildFailed { child, delay }, ctx);
    }
}

/// Fault injection: make one child actor, or the cell actor itself, fail (see [`InjectFailure`]).
#[derive(Message)]
#[rtype(result = "Result<(), String>")]
pub struct FailChild {
    pub kind: ActorKind,
    pub id: String,
}

impl Handler<FailChild> for CellActor {
    type Result = Result<(), String>;

    fn handle(&mut self, FailChild { kind, id }: FailChild, ctx: &mut Context<Self>) -> Self::Result {
        match kind {
            ActorKind::Cell if id == self.deps.cfg.name => {
                // After this reply, so the caller hears that it was accepted.
                ctx.run_later(Duration::ZERO, |_, _| panic!("injected failure in the cell actor"));
                return Ok(());
            }
            ActorKind::Cell => return Err(format!("no cell actor {id:?} here: this cell is {:?}", self.deps.cfg.name)),
            ActorKind::Container => self.members.get(&id).map(|a| a.do_send(InjectFailure)),
            ActorKind::Cluster => self.clusters.get(&id).map(|a| a.do_send(InjectFailure)),
            _ => return Err(format!("no {kind} actors on a cell: cell, container or cluster")),
        }
        .ok_or_else(|| format!("no {kind} actor {id:?} on this cell"))
    }
}

/// The agent is stopping: stop every member container (kept, with its data, for the restart).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Shutdown;

impl Handler<Shutdown> for CellActor {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, _: Shutdown, _: &mut Context<Self>) -> Self::Result {
        let members: Vec<_> = self.members.iter().map(|(m, a)| (m.clone(), a.clone())).collect();
        Box::pin(async move {
            let stops = members.into_iter().map(|(m, a)| async move {
                if let Ok(Err(e)) | Err(e) = a.send(StopForShutdown).await.map_err(|e| e.to_string()) {
                    tracing::error!(member = %m, error = %e, "cannot stop member container");
                }
            });
            futures::future::join_all(stops).await;
        })
    }
}

impl Handler<GetState> for CellActor {
    type Result = MessageResult<GetState>;

    fn handle(&mut self, _: GetState, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.status.clone())
    }
}

/// Every actor of the cell, each asked with a timeout so a stuck one cannot hang the answer.
#[derive(Message)]
#[rtype(result = "Vec<ActorStatus>")]
pub struct GetActors;

impl Handler<GetActors> for CellActor {
    type Result = ResponseFuture<Vec<ActorStatus>>;

    fn handle(&mut self, _: GetActors, _: &mut Context<Self>) -> Self::Result {
        let mine = self.status.clone();
        let members: Vec<_> = self.members.iter().map(|(k, a)| (k.clone(), a.clone().recipient())).collect();
        let clusters: Vec<_> = self.clusters.iter().map(|(k, a)| (k.clone(), a.clone().recipient())).collect();
        Box::pin(async move {
            let ask = |(id, r): (String, Recipient<GetState>), kind: ActorKind| async move {
                match tokio::time::timeout(Duration::from_secs(1), r.send(GetState)).await {
                    Ok(Ok(s)) => s,
                    _ => ActorStatus::unresponsive(kind, id),
                }
            };
            let mut out = vec![mine];
            out.extend(futures::future::join_all(members.into_iter().map(|m| ask(m, ActorKind::Container))).await);
            out.extend(futures::future::join_all(clusters.into_iter().map(|c| ask(c, ActorKind::Cluster))).await);
            out
        })
    }
}

/// The role of this cell's member in each cluster it follows (`unknown` when it has none yet).
#[derive(Message)]
#[rtype(result = "Vec<(String, String)>")]
pub struct GetMemberRoles;

impl Handler<GetMemberRoles> for CellActor {
    type Result = ResponseFuture<Vec<(String, String)>>;

    fn handle(&mut self, _: GetMemberRoles, _: &mut Context<Self>) -> Self::Result {
        let cell = self.deps.cfg.name.clone();
        let clusters: Vec<_> = self.clusters.iter().map(|(s, a)| (s.clone(), a.clone())).collect();
        Box::pin(async move {
            let ask = clusters.into_iter().map(|(scope, addr)| {
                let member = format!("{scope}-{cell}");
                async move {
                    let view = tokio::time::timeout(Duration::from_secs(1), addr.send(GetClusterView)).await;
                    let role = match view {
                        Ok(Ok(v)) => v.members.get(&member).map_or("unknown".to_string(), |m| m.role.clone()),
                        _ => "unresponsive".to_string(),
                    };
                    (scope, role)
                }
            });
            futures::future::join_all(ask).await
        })
    }
}
