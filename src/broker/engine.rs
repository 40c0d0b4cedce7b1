//! Driving an instance's operation toward its goal, one step at a time. Every
//! broker daemon drives every operation in progress in the background
//! ([`super::driver`]); requests only start operations and polling only reads.
//! Every step reads etcd afresh and is idempotent, so any broker can carry on
//! where another stopped. A short etcd lock keeps two brokers from driving one
//! instance at the same moment.

use std::collections::BTreeSet;
use std::sync::Arc;

use anyhow::Context;
use etcd_client::{Client, Compare, CompareOp, PutOptions, Txn, TxnOp};

use super::catalog::{self, Plan};
use super::model::{self, InstanceSpec, OpKind, OpState, Operation};
use super::place::{Candidate, choose};
use super::sql;
use crate::config::{BrokerConfig, parse_port_range};
use crate::etcd::keys;
use crate::etcd::store::{self, CellPorts, CellRecord, PlaceError, Placement, RouterRecord};
use crate::names;

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
        let Some(lock) = DriveLock::take(&mut etcd, id, &self.cfg.name).await? else { return Ok(Driven::Busy) };
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
            if let Err(why) = self.place(id, spec, plan, &placements).await? {
                return Err(StepError::Permanent(why));
            }
            return self.report(op, "members placed; waiting for them to start").await;
        }
        let view = crate::patroni::read_view(&mut etcd, &names::scope(id)).await?;
        if active.len() > plan.members {
            // Scale down: remove replicas, never the leader.
            active.sort_by_key(|p| (view.leader.as_deref() == Some(p.member.as_str()), p.member.clone()));
            for p in &active[..active.len() - plan.members] {
                let rev = placements.iter().find(|(q, _)| q == *p).map(|(_, r)| *r).unwrap_or_default();
                store::update_placement(&mut etcd, &Placement { purge: true, ..(*p).clone() }, rev).await?;
            }
            return self.report(op, "removing members beyond the plan").await;
        }
        let range = parse_port_range(&self.cfg.router_port_range)?;
        store::ensure_router_port(&mut etcd, id, range).await?;
        let secrets = store::ensure_secrets(&mut etcd, id).await?;
        let cells: Vec<&str> = active.iter().map(|p| p.cell.as_str()).collect();
        let Some(primary) = view.primary() else {
            return self
                .report(op, &format!("{} member(s) on {}; waiting for a leader", active.len(), cells.join(", ")))
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
        if replicas > 0 && !view.sync_standby.as_deref().is_some_and(|s| members.contains(&s)) {
            // Until Patroni names a synchronous standby, no replica may be promoted: not HA yet.
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

    /// Places the missing members; `Err(description)` when the fleet has too few cells.
    async fn place(
        &self,
        id: &str,
        spec: &InstanceSpec,
        plan: &Plan,
        placements: &[(Placement, i64)],
    ) -> anyhow::Result<Result<(), String>> {
        let mut etcd = self.etcd.clone();
        let cells: Vec<CellRecord> = store::list_json(&mut etcd, &keys::cells()).await?;
        let (used, _) = store::get_prefix(&mut etcd, &keys::placements()).await?;
        let candidates: Vec<Candidate> = cells
            .iter()
            .filter_map(|c| {
                let slots = CellPorts::new(&c.name, parse_port_range(&c.port_range).ok()?, c.capacity).slots;
                let prefix = keys::cell_placements(&c.name);
                let taken = used.iter().filter(|(k, _)| k.starts_with(&prefix)).count() as u32;
                Some(Candidate { name: c.name.clone(), zone: c.zone.clone(), free: slots.saturating_sub(taken) })
            })
            .collect();
        let taken: BTreeSet<String> = placements.iter().map(|(p, _)| p.cell.clone()).collect();
        let zones: BTreeSet<String> = placements
            .iter()
            .filter(|(p, _)| !p.purge)
            .filter_map(|(p, _)| cells.iter().find(|c| c.name == p.cell).map(|c| c.zone.clone()))
            .collect();
        let active = placements.iter().filter(|(p, _)| !p.purge).count();
        let need = plan.members - active;
        let mut placed = 0;
        let chosen = choose(&candidates, &taken, &zones, need);
        tracing::info!(instance = id, ?chosen, existing = ?taken, need, "placing members");
        for cell in chosen {
            let Some(rec) = cells.iter().find(|c| c.name == cell) else { continue };
            let ports = CellPorts::new(&cell, parse_port_range(&rec.port_range)?, rec.capacity);
            let want = Placement {
                instance_id: id.into(),
                scope: names::scope(id),
                member: names::member(id, &cell),
                cell: cell.clone(),
                slot: 0,
                pg_port: 0,
                api_port: 0,
                service_id: spec.service_id.clone(),
                plan_id: plan.id.into(),
                memory_mb: plan.memory_mb,
                purge: false,
            };
            match store::place_member(&mut etcd, &ports, want).await {
                Ok(_) => placed += 1,
                Err(PlaceError::NoCapacity(_)) => {}
                Err(PlaceError::Etcd(e)) => return Err(e),
            }
        }
        if placed < need {
            let have = candidates.iter().filter(|c| c.free > 0 && !taken.contains(&c.name)).count();
            return Ok(Err(format!(
                "not enough cells: the plan needs {} members on distinct cells; {} more needed, {} cell(s) with free capacity",
                plan.members, need, have
            )));
        }
        Ok(Ok(()))
    }

    async fn drive_down(&self, id: &str, op: &mut Operation) -> Result<(), StepError> {
        let mut etcd = self.etcd.clone();
        let placements = store::instance_placements(&mut etcd, id).await?;
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
                store::update_placement(&mut etcd, &Placement { purge: true, ..p.clone() }, *rev).await?;
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

/// How long a drive lock outlives a broker that died holding it; kept alive
/// while its holder runs a step, however long the step takes.
const DRIVE_LOCK_SECS: i64 = 5;
const DRIVE_LOCK_KEEPALIVE: std::time::Duration = std::time::Duration::from_millis(1500);

/// `/pgcell/instances/<id>/driving`, on a short lease: whoever holds it drives.
struct DriveLock {
    key: String,
    lease: i64,
    keeper: tokio::task::AbortHandle,
}

impl DriveLock {
    /// The key's value names the broker holding it (for operators and tests).
    async fn take(etcd: &mut Client, id: &str, owner: &str) -> anyhow::Result<Option<Self>> {
        let key = format!("{}driving", keys::instance(id));
        // Held by another broker: answered without creating a lease.
        if etcd.get(key.as_str(), None).await.context("etcd get (drive lock)")?.count() > 0 {
            return Ok(None);
        }
        let lease = etcd.lease_grant(DRIVE_LOCK_SECS, None).await.context("lease for the drive lock")?.id();
        let txn = Txn::new()
            .when([Compare::create_revision(key.as_str(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key.as_str(), owner, Some(PutOptions::new().with_lease(lease)))]);
        if !etcd.txn(txn).await.context("etcd txn (drive lock)")?.succeeded() {
            let _ = etcd.lease_revoke(lease).await;
            return Ok(None);
        }
        let mut c = etcd.clone();
        let keeper = tokio::spawn(async move {
            let Ok((mut keeper, mut replies)) = c.lease_keep_alive(lease).await else { return };
            loop {
                tokio::time::sleep(DRIVE_LOCK_KEEPALIVE).await;
                if keeper.keep_alive().await.is_err() || replies.message().await.is_err() {
                    return;
                }
            }
        })
        .abort_handle();
        Ok(Some(Self { key, lease, keeper }))
    }

    async fn release(self, etcd: &mut Client) {
        self.keeper.abort();
        // Revoking the lease deletes the key, and only if it is still ours.
        if let Err(e) = etcd.lease_revoke(self.lease).await {
            tracing::warn!(key = %self.key, error = %e, "cannot release the drive lock; it expires with its lease");
        }
    }
}
