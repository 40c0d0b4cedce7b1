//! Driving an instance's operation toward its goal. Runs whenever a request
//! (PUT, PATCH, DELETE, `last_operation`) asks; every step reads etcd afresh and
//! is idempotent, so any broker can carry on where another stopped. A short
//! etcd lock keeps two brokers from driving one instance at the same moment.

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
}

impl Broker {
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

    /// Moves the instance's operation forward and returns it (`None`: no instance).
    pub async fn drive(&self, id: &str) -> anyhow::Result<Option<Operation>> {
        let mut etcd = self.etcd.clone();
        let (spec, op) = model::load(&mut etcd, id).await?;
        let (Some(spec), Some(op)) = (spec, op) else { return Ok(None) };
        if op.state != OpState::InProgress {
            return Ok(Some(op));
        }
        let Some(lock) = DriveLock::take(&mut etcd, id).await? else { return Ok(Some(op)) };
        let mut next = op.clone();
        let res = if op.age_secs() > self.cfg.operation_timeout_secs {
            next.state = OpState::Failed;
            next.description = format!("timed out after {} s: {}", self.cfg.operation_timeout_secs, op.description);
            Ok(())
        } else if op.kind == OpKind::Deprovision {
            self.drive_down(id, &mut next).await
        } else {
            self.drive_up(id, &spec, &mut next).await
        };
        let gone = op.kind == OpKind::Deprovision && next.state == OpState::Succeeded;
        if !gone {
            model::save_progress(&mut etcd, id, &next).await?;
        }
        lock.release(&mut etcd).await;
        res.map(|()| Some(next))
    }

    async fn drive_up(&self, id: &str, spec: &InstanceSpec, op: &mut Operation) -> anyhow::Result<()> {
        let plan =
            catalog::plan(&spec.service_id, &spec.plan_id).context("the instance's plan is not in the catalog")?;
        let mut etcd = self.etcd.clone();
        let placements = store::instance_placements(&mut etcd, id).await?;
        let mut active: Vec<&Placement> = placements.iter().map(|(p, _)| p).filter(|p| !p.purge).collect();
        if active.len() < plan.members {
            if let Err(why) = self.place(id, spec, plan, &placements).await? {
                op.state = OpState::Failed;
                op.description = why;
                return Ok(());
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
        sql::setup_instance(&host, port, &secrets.superuser, &spec.parameters.extensions).await?;
        op.state = OpState::Succeeded;
        op.description = format!(
            "ready: leader on {leader_cell}, {streaming} of {replicas} replicas streaming, through the router at {host}:{port}"
        );
        Ok(())
    }

    async fn report(&self, op: &mut Operation, description: &str) -> anyhow::Result<()> {
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

    async fn drive_down(&self, id: &str, op: &mut Operation) -> anyhow::Result<()> {
        let mut etcd = self.etcd.clone();
        let placements = store::instance_placements(&mut etcd, id).await?;
        if placements.is_empty() {
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

/// `/pgcell/instances/<id>/driving`, on a short lease: whoever holds it drives.
struct DriveLock {
    key: String,
    lease: i64,
}

impl DriveLock {
    async fn take(etcd: &mut Client, id: &str) -> anyhow::Result<Option<Self>> {
        let key = format!("{}driving", keys::instance(id));
        let lease = etcd.lease_grant(30, None).await.context("lease for the drive lock")?.id();
        let txn = Txn::new()
            .when([Compare::create_revision(key.as_str(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key.as_str(), "", Some(PutOptions::new().with_lease(lease)))]);
        if etcd.txn(txn).await.context("etcd txn (drive lock)")?.succeeded() {
            Ok(Some(Self { key, lease }))
        } else {
            let _ = etcd.lease_revoke(lease).await;
            Ok(None)
        }
    }

    async fn release(self, etcd: &mut Client) {
        // Revoking the lease deletes the key, and only if it is still ours.
        if let Err(e) = etcd.lease_revoke(self.lease).await {
            tracing::warn!(key = %self.key, error = %e, "cannot release the drive lock; it expires with its lease");
        }
    }
}
