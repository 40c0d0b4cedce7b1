//! Driving an instance's operation toward its goal, one step at a time. Every
//! broker daemon drives every operation in progress in the background
//! ([`super::driver`]); requests only start operations and polling only reads.
//! Every step reads etcd afresh and is idempotent, so any broker can carry on
//! where another stopped. A short etcd lock keeps two brokers from driving one
//! instance at the same moment.

use std::collections::BTreeSet;
use std::sync::Arc;

use anyhow::Context;
use etcd_client::Client;

use super::catalog::{self, Plan};
use super::model::{self, InstanceSpec, OpKind, OpState, Operation};
use super::place;
use super::sql;
use crate::config::{BrokerConfig, parse_port_range};
use crate::etcd::lock::LeaseLock;
use crate::etcd::store::{self, CellRecord, Placement, RouterRecord};
use crate::etcd::{fleet, keys};
use crate::{metrics, names};

#[derive(Clone)]
pub struct Broker {
    pub etcd: Client,
    pub cfg: Arc<BrokerConfig>,
    /// Tells the background driver that an operation was started.
    pub wake: Arc<tokio::sync::Notify>,
}

/// What one call of [`Broker::drive`] found or did.
#[derive(Debug)]
pub enum Driven {
    /// No such instance (any more).
    Gone,
    /// Another broker holds the instance's drive lock.
    Busy,
    /// The operation is not in progress (succeeded or failed, before or by this step).
    Settled(Operation),
    /// One step done; more to do.
    Advanced(Operation),
    /// The step failed in a way that may pass: retry after a backoff.
    Retry(Operation),
}

/// How a step failed: callers retry a transient failure, never a permanent one.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    #[error("{0:#}")]
    Transient(#[from] anyhow::Error),
    #[error("{0}")]
    Permanent(String),
}

/// Suffix of a description that reports a step being retried.
const RETRYING: &str = " (retrying after: ";

impl Broker {
    pub fn new(etcd: Client, cfg: BrokerConfig) -> Self {
        Self { etcd, cfg: Arc::new(cfg), wake: Arc::new(tokio::sync::Notify::new()) }
    }

    /// The host handed out in credentials.
    pub async fn router_host(&self) -> anyhow::Result<String> {
        if !self.cfg.router_host.is_empty() {
            return Ok(self.cfg.router_host.clone());
        }
        let routers: Vec<RouterRecord> = store::list_json(&mut self.etcd.clone(), &keys::routers()).await?;
        routers.into_iter().next().map(|r| r.advertise_host).context("no router is registered yet")
    }

    /// Where clients of the instance connect: the router's host and the instance's port.
    pub async fn endpoint(&self, id: &str) -> anyhow::Result<(String, u16)> {
        let port = store::router_port_of(&mut self.etcd.clone(), id).await?.context("instance has no router port")?;
        Ok((self.router_host().await?, port))
    }

    /// Moves the instance's operation forward by one step, if no other broker is.
    pub async fn drive(&self, id: &str) -> anyhow::Result<Driven> {
        let mut etcd = self.etcd.clone();
        let (spec, op) = model::load(&mut etcd, id).await?;
        let (Some(spec), Some(op)) = (spec, op) else { return Ok(Driven::Gone) };
        if op.state != OpState::InProgress {
            return Ok(Driven::Settled(op));
        }
        let Some(lock) = take_drive_lock(&mut etcd, id, &self.cfg.name).await? else { return Ok(Driven::Busy) };
        let mut next = op.clone();
        next.description = op.description.split(RETRYING).next().unwrap_or_default().to_string();
        let res = if op.age_secs() > self.cfg.operation_timeout_secs {
            Err(StepError::Permanent(format!(
                "timed out after {} s: {}",
                self.cfg.operation_timeout_secs, next.description
            )))
        } else if op.kind == OpKind::Deprovision {
            self.drive_down(id, &mut next).await
        } else {
            self.drive_up(id, &spec, &mut next).await
        };
        let retry = match res {
            Ok(()) => false,
            Err(StepError::Permanent(why)) => {
                next.state = OpState::Failed;
                next.description = why;
                false
            }
            Err(StepError::Transient(e)) => {
                tracing::warn!(instance = id, operation = %op.id, error = %format!("{e:#}"), "step failed; retrying");
                next.description = format!("{}{RETRYING}{e:#})", next.description);
                true
            }
        };
        let gone = op.kind == OpKind::Deprovision && next.state == OpState::Succeeded;
        let saved = if gone { Ok(()) } else { model::save_progress(&mut etcd, id, &next).await };
        lock.release(&mut etcd).await;
        saved?;
        Ok(match next.state {
            OpState::InProgress if retry => Driven::Retry(next),
            OpState::InProgress => Driven::Advanced(next),
            _ => Driven::Settled(next),
        })
    }

    async fn drive_up(&self, id: &str, spec: &InstanceSpec, op: &mut Operation) -> Result<(), StepError> {
        let plan = catalog::plan(&spec.service_id, &spec.plan_id)
            .ok_or_else(|| StepError::Permanent("the instance's plan is no longer in the catalog".into()))?;
        let mut etcd = self.etcd.clone();
        let placements = store::instance_placements(&mut etcd, id).await?;
        let mut active: Vec<&Placement> = placements.iter().map(|(p, _)| p).filter(|p| !p.purge).collect();
        if active.len() < plan.members {
            return match self.place(id, spec, plan, &placements).await? {
                Ok(()) => self.report(op, "members placed; waiting for them to start").await,
                // A cell may be registering, or a deprovision freeing room: wait a little first.
                Err(why) if op.age_secs() < self.cfg.placement_wait_secs => {
                    self.report(op, &format!("waiting for capacity: {why}")).await
                }
                Err(why) => {
                    metrics::inc(&metrics::COUNTERS.placement_shortages);
                    if placements.is_empty() {
                        // Made for a reservation that lost its race, if any: no member uses them.
                        etcd.delete(keys::secrets(id), None).await.context("etcd delete unused secrets")?;
                    }
                    Err(StepError::Permanent(why))
                }
            };
        }
        let view = crate::patroni::read_view(&mut etcd, &names::scope(id)).await?;
        if active.len() > plan.members {
            // Scale down: remove replicas, never the leader.
            active.sort_by_key(|p| (view.leader.as_deref() == Some(p.member.as_str()), p.member.clone()));
            for p in &active[..active.len() - plan.members] {
                let rev = placements.iter().find(|(q, _)| q == *p).map(|(_, r)| *r).unwrap_or_default();
                // A lost swap (the placement changed) is seen and retried at the next step.
                let _ = store::update_placement(&mut etcd, &Placement { purge: true, ..(*p).clone() }, rev).await?;
            }
            return self.report(op, "removing members beyond the plan").await;
        }
        let range = parse_port_range(&self.cfg.router_port_range)?;
        store::ensure_router_port(&mut etcd, id, range).await?;
        let secrets = store::ensure_secrets(&mut etcd, id).await?;
        let cells: Vec<&str> = active.iter().map(|p| p.cell.as_str()).collect();
        let Some(primary) = view.primary() else {
            // Which members' Patroni runs, and how: "not started" for long points at the cell.
            let states: Vec<String> = active
                .iter()
                .map(|p| match view.members.get(&p.member) {
                    Some(m) => format!("{}: {} {}", p.cell, m.role, m.state),
                    None => format!("{}: not started", p.cell),
                })
                .collect();
            let n = active.len();
            return self
                .report(
                    op,
                    &format!("{n} member(s) on {}; waiting for a leader ({})", cells.join(", "), states.join(", ")),
                )
                .await;
        };
        let leader_cell = active.iter().find(|p| p.member == primary.name).map_or("?", |p| p.cell.as_str());
        let (host, port) = match self.endpoint(id).await {
            Ok(e) => e,
            Err(e) => {
                return self.report(op, &format!("leader running on {leader_cell}; waiting for a router: {e:#}")).await;
            }
        };
        let replicas = plan.members - 1;
        let members: Vec<&str> = active.iter().map(|p| p.member.as_str()).collect();
        let streaming = match streaming_members(&host, port, &secrets.superuser).await {
            // A base backup's WAL stream shows as `streaming` too: count only members
            // that Patroni reports running as replicas.
            Ok(names) => names
                .iter()
                .filter(|n| members.contains(&n.as_str()))
                .filter(|n| view.members.get(n.as_str()).is_some_and(|m| m.state == "running"))
                .count(),
            Err(e) => {
                tracing::debug!(instance = id, error = %format!("{e:#}"), "not reachable through the router yet");
                return self
                    .report(op, &format!("leader running on {leader_cell}; waiting to reach it through the router"))
                    .await;
            }
        };
        if streaming < replicas {
            return self
                .report(op, &format!("leader running on {leader_cell}, {streaming} of {replicas} replicas streaming"))
                .await;
        }
        if replicas > 0 && !view.failover_candidate().is_some_and(|m| members.contains(&m.name.as_str())) {
            // Until Patroni names a synchronous standby for this leader, no replica may be
            // promoted: not HA yet.
            return self
                .report(
                    op,
                    &format!("leader running on {leader_cell}, replicas streaming; waiting for a synchronous standby"),
                )
                .await;
        }
        if op.kind == OpKind::Provision && spec.parameters.restore.is_some() {
            let n = sql::drop_restored_binding_roles(&host, port, &secrets.superuser).await?;
            tracing::info!(instance = id, roles = n, "restored: the source's binding roles dropped");
        }
        sql::setup_instance(&host, port, &secrets.superuser, &spec.parameters.extensions).await?;
        op.state = OpState::Succeeded;
        op.description = format!(
            "ready: leader on {leader_cell}, {streaming} of {replicas} replicas streaming, through the router at {host}:{port}"
        );
        Ok(())
    }

    async fn report(&self, op: &mut Operation, description: &str) -> Result<(), StepError> {
        op.description = description.to_string();
        Ok(())
    }

    /// Places the missing members, all in one reservation; `Err(description)`
    /// when the fleet has too few cells with room. A reservation lost to a
    /// concurrent one (this broker's or another's) reads the fleet again and
    /// chooses again: only a real shortage is reported.
    async fn place(
        &self,
        id: &str,
        spec: &InstanceSpec,
        plan: &Plan,
        placements: &[(Placement, i64)],
    ) -> anyhow::Result<Result<(), String>> {
        let mut etcd = self.etcd.clone();
        // A cell being retired takes no new member.
        let (retiring, _) = store::get_prefix(&mut etcd, &keys::retirings()).await?;
        let retiring: BTreeSet<String> =
            retiring.iter().filter_map(|(k, _)| k.strip_prefix(&keys::retirings()).map(String::from)).collect();
        let taken: BTreeSet<String> = placements.iter().map(|(p, _)| p.cell.clone()).collect();
        let need = plan.members - placements.iter().filter(|(p, _)| !p.purge).count();
        let mut env = vec![];
        for attempt in 0..place::MAX_ATTEMPTS {
            let fleet = fleet::read(&mut etcd).await?;
            let mut candidates = place::candidates(&fleet);
            candidates.retain(|c| !retiring.contains(&c.name));
            let zones: BTreeSet<String> = placements
                .iter()
                .filter(|(p, _)| !p.purge)
                .filter_map(|(p, _)| fleet.cell(&p.cell).map(|c| c.record.zone.clone()))
                .collect();
            let chosen = place::choose(&candidates, &taken, &zones, need);
            if chosen.len() < need {
                return Ok(Err(place::shortage(&candidates, &taken, plan.members, need)));
            }
            // Made only when there is room: an instance that never fits keeps no passwords.
            if env.is_empty() {
                env = model::member_env(&mut etcd, id).await?.context("the instance's spec vanished")?.to_bytes()?;
            }
            let wants = chosen
                .iter()
                .map(|cell| Placement {
                    instance_id: id.into(),
                    scope: names::scope(id),
                    member: names::member(id, cell),
                    cell: cell.clone(),
                    slot: 0,
                    pg_port: 0,
                    api_port: 0,
                    service_id: spec.service_id.clone(),
                    plan_id: plan.id.into(),
                    memory_mb: plan.memory_mb,
                    purge: false,
                })
                .collect();
            if let Some(placed) = fleet::reserve(&mut etcd, &fleet, wants, &env).await? {
                let on: Vec<String> = placed.iter().map(|p| format!("{}#{}", p.cell, p.slot)).collect();
                tracing::info!(instance = id, placed = ?on, existing = ?taken, attempt, "members placed");
                return Ok(Ok(()));
            }
            metrics::inc(&metrics::COUNTERS.placement_races);
            tracing::debug!(instance = id, ?chosen, attempt, "placement lost a race; choosing again");
            tokio::time::sleep(place::retry_delay(attempt, rand::random())).await;
        }
        anyhow::bail!("placement lost {} races in a row to concurrent placements", place::MAX_ATTEMPTS)
    }

    async fn drive_down(&self, id: &str, op: &mut Operation) -> Result<(), StepError> {
        let mut etcd = self.etcd.clone();
        let mut placements = store::instance_placements(&mut etcd, id).await?;
        // A member marked purge on a cell that is gone is purged by that cell
        // when it returns: it does not hold the deprovision up.
        let live: BTreeSet<String> =
            store::list_json::<CellRecord>(&mut etcd, &keys::cells()).await?.into_iter().map(|c| c.name).collect();
        placements.retain(|(p, _)| !p.purge || live.contains(&p.cell));
        if placements.is_empty() {
            // The tombstone first: a broker dying in between leaves the keys, and
            // the next step deletes them; the other order would forget the 410.
            model::remember_deleted(&mut etcd, id, &op.id).await?;
            // Its backups stay (a deleted instance is restorable); say since when.
            crate::backup::mark_deleted(&mut etcd, id).await?;
            store::delete_instance_keys(&mut etcd, id).await?;
            op.state = OpState::Succeeded;
            op.description = "deleted: containers, data, router port and keys".into();
            return Ok(());
        }
        for (p, rev) in &placements {
            if !p.purge {
                // A lost swap (the placement changed) is seen and retried at the next step.
                let _ = store::update_placement(&mut etcd, &Placement { purge: true, ..p.clone() }, *rev).await?;
            }
        }
        let cells: Vec<&str> = placements.iter().map(|(p, _)| p.cell.as_str()).collect();
        self.report(op, &format!("removing {} member(s) on {}", placements.len(), cells.join(", "))).await
    }
}

/// `application_name`s streaming from the primary (Patroni sets them to member names).
async fn streaming_members(host: &str, port: u16, password: &str) -> anyhow::Result<Vec<String>> {
    let c = sql::connect(host, port, password, "postgres").await?;
    let rows = c.query("SELECT application_name FROM pg_stat_replication WHERE state = 'streaming'", &[]).await?;
    Ok(rows.iter().map(|r| r.get::<_, String>(0)).collect())
}

/// How long a drive lock outlives a broker that died holding it (it is kept
/// alive while its holder runs a step, however long the step takes).
const DRIVE_LOCK_SECS: i64 = 5;

/// `/pgcell/instances/<id>/driving`: whoever holds it drives that instance.
async fn take_drive_lock(etcd: &mut Client, id: &str, owner: &str) -> anyhow::Result<Option<LeaseLock>> {
    LeaseLock::take(etcd, &format!("{}driving", keys::instance(id)), owner, DRIVE_LOCK_SECS).await
}
