//! `ContainerActor`: owns one member container of this cell. It makes the
//! container exist and run, restarts it (with backoff) when it dies while
//! still desired, and removes it when the member is retired. Its parent (the
//! `CellActor`) restarts it if it fails; the new one adopts the running
//! container from Docker without restarting it.

use std::time::Duration;

use actix::prelude::*;

use super::supervise::Lifeline;
use super::{ActorState, ActorStatus, GetState, InjectFailure};
use crate::backoff::Backoff;
use crate::cell::member::CellDeps;
use crate::cell::reconcile::ContainerStep;
use crate::etcd::store::Placement;

pub struct ContainerActor {
    deps: CellDeps,
    placement: Placement,
    status: ActorStatus,
    backoff: Backoff,
    retiring: bool,
    /// Times the container died and was started again (the actor's own
    /// restarts are in `status.restarts`).
    container_restarts: u32,
    _lifeline: Lifeline,
}

impl ContainerActor {
    pub fn new(deps: CellDeps, placement: Placement, status: ActorStatus, lifeline: Lifeline) -> Self {
        let backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
        Self { deps, placement, status, backoff, retiring: false, container_restarts: 0, _lifeline: lifeline }
    }

    fn running(&self) -> String {
        match self.container_restarts {
            0 => String::new(),
            n => format!("container started again {n}x"),
        }
    }

    fn ensure(&mut self) -> ResponseActFuture<Self, Result<(), String>> {
        let (deps, p) = (self.deps.clone(), self.placement.clone());
        Box::pin(async move { deps.ensure_running(&p).await }.into_actor(self).map(|res, act, _| match res {
            Ok(step) => {
                if step != ContainerStep::Nothing {
                    tracing::info!(member = %act.placement.member, ?step, "member container started");
                }
                act.status.event(ActorState::Running, act.running());
                Ok(())
            }
            Err(e) => {
                tracing::error!(member = %act.placement.member, error = %format!("{e:#}"), "cannot run member container");
                act.status.error(&e);
                Err(format!("{e:#}"))
            }
        }))
    }
}

impl Actor for ContainerActor {
    type Context = Context<Self>;
}

/// Make the container exist and run (idempotent).
#[derive(Message)]
#[rtype(result = "Result<(), String>")]
pub struct EnsureRunning;

impl Handler<EnsureRunning> for ContainerActor {
    type Result = AtomicResponse<Self, Result<(), String>>;

    fn handle(&mut self, _: EnsureRunning, _: &mut Context<Self>) -> Self::Result {
        AtomicResponse::new(self.ensure())
    }
}

/// Docker says the container stopped.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ContainerDied;

impl Handler<ContainerDied> for ContainerActor {
    type Result = ();

    fn handle(&mut self, _: ContainerDied, ctx: &mut Context<Self>) {
        if self.retiring {
            return;
        }
        self.status.event(ActorState::Exited, "");
        self.container_restarts += 1;
        crate::metrics::inc(&crate::metrics::COUNTERS.containers_died);
        // First end the dead leader's lock (if it was the leader), so a replica
        // is promoted in seconds; then start the container again after a backoff.
        let (deps, p) = (self.deps.clone(), self.placement.clone());
        let end_lock = async move { deps.end_lock_if_dead(&p).await }.into_actor(self).map(|res, act, ctx| {
            match res {
                Ok(true) => {
                    crate::metrics::inc(&crate::metrics::COUNTERS.leader_locks_ended);
                    tracing::warn!(member = %act.placement.member, "leader container died: its lock is ended")
                }
                Ok(false) => {}
                Err(e) => tracing::error!(member = %act.placement.member, error = %format!("{e:#}"), "cannot end the dead leader's lock"),
            }
            let delay = act.backoff.next_delay();
            tracing::warn!(member = %act.placement.member, ?delay, "member container died; starting it again");
            ctx.run_later(delay, |act, ctx| {
                if !act.retiring {
                    ctx.wait(act.ensure().map(|_, _, _| ()));
                }
            });
        });
        ctx.wait(end_lock);
    }
}

/// Docker says the container started.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ContainerStarted;

impl Handler<ContainerStarted> for ContainerActor {
    type Result = ();

    fn handle(&mut self, _: ContainerStarted, _: &mut Context<Self>) {
        self.status.event(ActorState::Running, self.running());
    }
}

/// The member is no longer desired here: remove its container (data stays) and stop.
#[derive(Message)]
#[rtype(result = "Result<(), String>")]
pub struct Retire;

impl Handler<Retire> for ContainerActor {
    type Result = AtomicResponse<Self, Result<(), String>>;

    fn handle(&mut self, _: Retire, _: &mut Context<Self>) -> Self::Result {
        self.retiring = true;
        self.status.event(ActorState::Retiring, "");
        let (deps, member) = (self.deps.clone(), self.placement.member.clone());
        AtomicResponse::new(Box::pin(async move { deps.remove_container(&member).await }.into_actor(self).map(
            |res, act, ctx| {
                ctx.stop();
                res.map_err(|e| {
                    tracing::error!(member = %act.placement.member, error = %format!("{e:#}"), "cannot remove member container");
                    format!("{e:#}")
                })
            },
        )))
    }
}

/// The cell is shutting down: stop the container (no restart), keep it and its data.
#[derive(Message)]
#[rtype(result = "Result<(), String>")]
pub struct StopForShutdown;

impl Handler<StopForShutdown> for ContainerActor {
    type Result = AtomicResponse<Self, Result<(), String>>;

    fn handle(&mut self, _: StopForShutdown, _: &mut Context<Self>) -> Self::Result {
        self.retiring = true;
        self.status.event(ActorState::Stopping, "");
        let (deps, member) = (self.deps.clone(), self.placement.member.clone());
        AtomicResponse::new(Box::pin(
            async move { deps.stop_container(&member).await }
                .into_actor(self)
                .map(|res, _, _| res.map_err(|e| format!("{e:#}"))),
        ))
    }
}

impl Handler<GetState> for ContainerActor {
    type Result = MessageResult<GetState>;

    fn handle(&mut self, _: GetState, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.status.clone())
    }
}

impl Handler<InjectFailure> for ContainerActor {
    type Result = ();

    fn handle(&mut self, _: InjectFailure, ctx: &mut Context<Self>) {
        ctx.run_later(Duration::ZERO, |act, _| {
            panic!("injected failure in the container actor of {}", act.placement.member)
        });
    }
}
