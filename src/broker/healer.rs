//! The healer loop: every broker daemon runs it, one at a time does the work
//! (the holder of `/pgcell/healer`, a lease kept alive). Each pass reads the
//! fleet from etcd, asks [`heal::plan`] and performs the actions; everything it
//! needs is in etcd, so a healer killed half-way is finished by the next one.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use anyhow::Context;
use etcd_client::{Client, Compare, CompareOp, GetOptions, Txn, TxnOp};

use super::engine::Broker;
use super::heal::{self, Fleet, Heal, LiveCell, Replacement};
use crate::config::parse_port_range;
use crate::etcd::keys;
use crate::etcd::lock::LeaseLock;
use crate::etcd::store::{self, CellPorts, CellRecord, PlaceError, Placed, Placement};
use crate::metrics::{COUNTERS, inc};
use crate::names;

/// How often the healer looks.
const PASS: Duration = Duration::from_secs(1);
/// How long the healer's lock outlives a broker that died holding it.
const LOCK_SECS: i64 = 5;

pub async fn run(broker: Broker) {
    let mut lock: Option<LeaseLock> = None;
    let mut stuck: BTreeMap<String, String> = BTreeMap::new();
    loop {
        tokio::time::sleep(PASS).await;
        let mut etcd = broker.etcd.clone();
        if lock.as_ref().is_some_and(|l| !l.held()) {
            tracing::warn!("healer lock lost");
            lock = None;
        }
        if lock.is_none() {
            match LeaseLock::take(&mut etcd, &keys::healer_lock(), &broker.cfg.name, LOCK_SECS).await {
                Ok(Some(l)) => {
                    tracing::info!(broker = %broker.cfg.name, "this broker runs the healer");
                    lock = Some(l);
                }
                Ok(None) => continue,
                Err(e) => {
                    tracing::debug!(error = %format!("{e:#}"), "cannot take the healer lock");
                    continue;
                }
            }
        }
        if let Err(e) = pass(&mut etcd, &broker, &mut stuck).await {
            tracing::warn!(error = %format!("{e:#}"), "healing pass failed; trying again");
        }
    }
}

/// One pass: read, decide, act.
async fn pass(etcd: &mut Client, broker: &Broker, stuck: &mut BTreeMap<String, String>) -> anyhow::Result<()> {
    let (fleet, records) = read_fleet(etcd).await?;
    if let Err(e) = backfill_envs(etcd, &fleet).await {
        tracing::warn!(error = %format!("{e:#}"), "writing members' envs failed; trying again next pass");
    }
    let actions = heal::plan(&fleet, crate::broker::model::now(), broker.cfg.replace_after_secs);
    let mut still_stuck = BTreeMap::new();
    for action in actions {
        match action {
            Heal::Stuck { old, why } => {
                if stuck.get(&old.member) != Some(&why) {
                    tracing::warn!(member = %old.member, %why, "cannot replace the member yet; the cluster stays degraded");
                }
                still_stuck.insert(old.member, why);
            }
            other => {
                if let Err(e) = perform(etcd, broker, &records, other).await {
                    tracing::warn!(error = %format!("{e:#}"), "healing step failed; trying again next pass");
                }
            }
        }
    }
    COUNTERS.heal_stuck.store(still_stuck.len() as u64, Relaxed);
    *stuck = still_stuck;
    Ok(())
}

async fn perform(etcd: &mut Client, broker: &Broker, cells: &[CellRecord], action: Heal) -> anyhow::Result<()> {
    match action {
        Heal::NoteLost(cell) => {
            let key = keys::lost(&cell);
            let txn = Txn::new()
                .when([Compare::create_revision(key.as_str(), CompareOp::Equal, 0)])
                .and_then([TxnOp::put(key.as_str(), crate::broker::model::now().to_string(), None)]);
            etcd.txn(txn).await.context("etcd txn (note lost cell)")?;
            tracing::warn!(%cell, replace_after = broker.cfg.replace_after_secs, "cell lost; its members are replaced if it stays away");
        }
        Heal::Returned(cell) => {
            etcd.delete(keys::lost(&cell), None).await.context("etcd delete (lost cell)")?;
            tracing::info!(%cell, "lost cell is back");
        }
        Heal::Replace { old, new_cell } => replace(etcd, cells, &old, &new_cell).await?,
        Heal::MoveLeader(old) => {
            let outcome = crate::cell::drain::move_leader(etcd, &old).await?;
            tracing::info!(member = %old.member, %outcome, "moving the leader off a retiring cell");
        }
        Heal::Finish { old, rev } => {
            let key = keys::placement(&old.cell, &old.instance_id);
            let purged = Placement { purge: true, ..old.clone() };
            let txn = Txn::new().when([Compare::mod_revision(key.as_str(), CompareOp::Equal, rev)]).and_then([
                TxnOp::put(key.as_str(), serde_json::to_vec(&purged)?, None),
                TxnOp::delete(keys::replacement(&old.member), None),
            ]);
            if etcd.txn(txn).await.context("etcd txn (finish replacement)")?.succeeded() {
                inc(&COUNTERS.replacements_finished);
                tracing::info!(member = %old.member, cell = %old.cell, "replaced: redundancy restored; the old member is purged when its cell returns");
            }
        }
        Heal::Stuck { .. } => {}
    }
    Ok(())
}

/// Places the replacement of `old` on `new_cell`, with its record, in one transaction.
async fn replace(etcd: &mut Client, cells: &[CellRecord], old: &Placement, new_cell: &str) -> anyhow::Result<()> {
    let rec = cells.iter().find(|c| c.name == new_cell).context("the chosen cell vanished")?;
    let ports = CellPorts::new(new_cell, parse_port_range(&rec.port_range)?, rec.capacity);
    let want = Placement {
        member: names::member(&old.instance_id, new_cell),
        cell: new_cell.to_string(),
        slot: 0,
        pg_port: 0,
        api_port: 0,
        purge: false,
        ..old.clone()
    };
    let record = Replacement {
        instance: old.instance_id.clone(),
        old_member: old.member.clone(),
        old_cell: old.cell.clone(),
        new_member: want.member.clone(),
        new_cell: new_cell.to_string(),
        started: crate::broker::model::now(),
    };
    let key = keys::replacement(&old.member);
    let env = env_of(etcd, old).await?;
    match store::place_with(etcd, &ports, want, &env, Some((&key, serde_json::to_vec(&record)?))).await {
        Ok(Placed::Created(p)) => {
            inc(&COUNTERS.replacements_started);
            tracing::info!(old = %old.member, new = %p.member, cell = %new_cell, "replacing a member of a cell that is gone");
            Ok(())
        }
        Ok(Placed::Exists(_)) => Ok(()),
        Err(PlaceError::NoCapacity(c)) => anyhow::bail!("{c} has no free slot any more"),
        Err(PlaceError::Etcd(e)) => Err(e),
    }
}

/// A member's env for a new member of the same instance: the one its cell was
/// given (a seed instance's too), else made from the instance's keys.
async fn env_of(etcd: &mut Client, p: &Placement) -> anyhow::Result<Vec<u8>> {
    let key = keys::member_env(&p.cell, &p.instance_id);
    if let Some(kv) = etcd.get(key.as_str(), None).await.context("etcd get member env")?.kvs().first() {
        return Ok(kv.value().to_vec());
    }
    let env = crate::broker::model::member_env(etcd, &p.instance_id)
        .await?
        .with_context(|| format!("{key} is missing and {} is not a broker's instance", p.instance_id))?;
    env.to_bytes()
}

/// Gives every member placed before member envs existed its env (create-only:
/// never overwrites one), so that its cell can render it with a scoped role.
async fn backfill_envs(etcd: &mut Client, fleet: &Fleet) -> anyhow::Result<()> {
    // Keys only: every pass reads them, and the values hold passwords.
    let opts = GetOptions::new().with_prefix().with_keys_only();
    let resp = etcd.get(keys::member_envs(), Some(opts)).await.context("etcd get member envs")?;
    let have: std::collections::BTreeSet<String> =
        resp.kvs().iter().filter_map(|kv| kv.key_str().ok().map(String::from)).collect();
    for (p, rev) in fleet.placements.iter().filter(|(p, _)| !p.purge) {
        let key = keys::member_env(&p.cell, &p.instance_id);
        if have.contains(&key) {
            continue;
        }
        let Some(env) = crate::broker::model::member_env(etcd, &p.instance_id).await? else { continue };
        // Only while that placement is the one read: none is left behind a removed member.
        let placement = keys::placement(&p.cell, &p.instance_id);
        let txn = Txn::new()
            .when([
                Compare::create_revision(key.as_str(), CompareOp::Equal, 0),
                Compare::mod_revision(placement.as_str(), CompareOp::Equal, *rev),
            ])
            .and_then([TxnOp::put(key.as_str(), env.to_bytes()?, None)]);
        etcd.txn(txn).await.context("etcd txn (member env)")?;
        tracing::info!(member = %p.member, "wrote the env of a member placed before member envs");
    }
    Ok(())
}

/// The fleet as the healer needs it, and the live cells' records.
pub async fn read_fleet(etcd: &mut Client) -> anyhow::Result<(Fleet, Vec<CellRecord>)> {
    let records: Vec<CellRecord> = store::list_json(etcd, &keys::cells()).await?;
    let resp =
        etcd.get(keys::placements(), Some(GetOptions::new().with_prefix())).await.context("etcd get placements")?;
    let placements: Vec<(Placement, i64)> = resp
        .kvs()
        .iter()
        .filter_map(|kv| Some((serde_json::from_slice(kv.value()).ok()?, kv.mod_revision())))
        .collect();
    let mut live = BTreeMap::new();
    for r in &records {
        let Ok(range) = parse_port_range(&r.port_range) else { continue };
        let slots = CellPorts::new(&r.name, range, r.capacity).slots;
        let used = placements.iter().filter(|(p, _)| p.cell == r.name).count() as u32;
        live.insert(r.name.clone(), LiveCell { zone: r.zone.clone(), free: slots.saturating_sub(used) });
    }
    let (lost, _) = store::get_prefix(etcd, &keys::losts()).await?;
    let lost_since = lost
        .iter()
        .filter_map(|(k, v)| {
            Some((k.strip_prefix(&keys::losts())?.to_string(), std::str::from_utf8(v).ok()?.parse().ok()?))
        })
        .collect();
    let (retiring, _) = store::get_prefix(etcd, &keys::retirings()).await?;
    let retiring = retiring.iter().filter_map(|(k, _)| Some(k.strip_prefix(&keys::retirings())?.to_string())).collect();
    let replacements: Vec<Replacement> = store::list_json(etcd, &keys::replacements()).await?;
    let replacements = replacements.into_iter().map(|r| (r.old_member.clone(), r)).collect();
    let (patroni, _) = store::get_prefix(etcd, keys::PATRONI_NAMESPACE).await?;
    let clusters = crate::patroni::view::views_from_kvs(patroni.iter().map(|(k, v)| (k.as_str(), v.as_slice())));
    Ok((Fleet { live, placements, lost_since, retiring, replacements, clusters }, records))
}
