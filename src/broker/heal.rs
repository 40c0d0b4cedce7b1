//! Self-healing, the decisions: which cells are gone (lost longer than
//! `replace_after`, or being retired), which of their members get a
//! replacement where (the provisioning rules: distinct cells, new zones first,
//! most free capacity), and when a replacement has restored redundancy so the
//! old member can be purged. Plain data in, actions out; [`super::healer`]
//! reads the fleet from etcd and performs them.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::place::{Candidate, choose};
use crate::etcd::store::Placement;
use crate::patroni::view::ClusterView;

/// A member being replaced: recorded (create-only) with the new placement, so
/// one member never gets two replacements, whoever runs the healer.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct Replacement {
    pub instance: String,
    pub old_member: String,
    pub old_cell: String,
    pub new_member: String,
    pub new_cell: String,
    /// Unix seconds.
    pub started: u64,
}

/// A live cell: its zone and free member slots.
#[derive(Clone, Debug, PartialEq)]
pub struct LiveCell {
    pub zone: String,
    pub free: u32,
}

/// Everything the healer looks at, read from etcd in one pass.
#[derive(Debug, Default)]
pub struct Fleet {
    /// Cells whose lease lives.
    pub live: BTreeMap<String, LiveCell>,
    /// Every placement with its mod revision.
    pub placements: Vec<(Placement, i64)>,
    /// Cell → when it was first seen lost (unix seconds).
    pub lost_since: BTreeMap<String, u64>,
    /// Cells an operator asked to empty.
    pub retiring: BTreeSet<String>,
    /// Old member → its replacement in progress.
    pub replacements: BTreeMap<String, Replacement>,
    /// Scope → what Patroni says.
    pub clusters: BTreeMap<String, ClusterView>,
}

#[derive(Debug, PartialEq)]
pub enum Heal {
    /// A cell with members has no lease: start its clock.
    NoteLost(String),
    /// A cell noted lost has a lease again.
    Returned(String),
    /// Place `new_cell`'s member for `old`, with its replacement record.
    Replace { old: Placement, new_cell: String },
    /// No replacement possible now (said once per pass; retried next pass).
    Stuck { old: Placement, why: String },
    /// `old` still leads on a cell being retired; its replacement is ready: switch over first.
    MoveLeader(Placement),
    /// The replacement streams and a synchronous standby is named: purge `old`.
    Finish { old: Placement, rev: i64 },
}

/// Decides one pass. `replace_after` 0 disables replacing lost cells (retiring still works).
pub fn plan(f: &Fleet, now: u64, replace_after: u64) -> Vec<Heal> {
    let mut out = vec![];
    let active = || f.placements.iter().filter(|(p, _)| !p.purge);
    let with_members: BTreeSet<&str> = active().map(|(p, _)| p.cell.as_str()).collect();
    for cell in &with_members {
        if !f.live.contains_key(*cell) && !f.lost_since.contains_key(*cell) {
            out.push(Heal::NoteLost(cell.to_string()));
        }
    }
    for cell in f.lost_since.keys() {
        if f.live.contains_key(cell) {
            out.push(Heal::Returned(cell.clone()));
        }
    }
    let gone = |cell: &str| -> bool {
        f.retiring.contains(cell)
            || (!f.live.contains_key(cell)
                && replace_after > 0
                && f.lost_since.get(cell).is_some_and(|t| now.saturating_sub(*t) >= replace_after))
    };
    let mut free: BTreeMap<&str, u32> = f.live.iter().map(|(n, c)| (n.as_str(), c.free)).collect();
    for (old, rev) in active().filter(|(p, _)| gone(&p.cell)) {
        let view = f.clusters.get(&old.scope);
        match f.replacements.get(&old.member) {
            Some(r) => {
                let Some(view) = view else { continue };
                if view.members.get(&r.new_member).is_none_or(|m| m.state != "running") {
                    continue;
                }
                if view.leader.as_deref() == Some(old.member.as_str()) {
                    out.push(Heal::MoveLeader(old.clone()));
                } else if restored(f, view, old) {
                    out.push(Heal::Finish { old: old.clone(), rev: *rev });
                }
            }
            None => match choose_cell(f, old, view, &free, &gone) {
                Ok(cell) => {
                    if let Some(n) = free.get_mut(cell.as_str()) {
                        *n = n.saturating_sub(1);
                    }
                    out.push(Heal::Replace { old: old.clone(), new_cell: cell });
                }
                Err(why) => out.push(Heal::Stuck { old: old.clone(), why }),
            },
        }
    }
    out
}

/// Redundancy is back without `old` (which no longer leads): a leader, every
/// other placed member running, and with two or more of them a synchronous
/// standby named. It may still be `old` when `old` runs (a cell being retired):
/// Patroni names another within a loop once `old` stops, and commits wait for
/// that rather than go unreplicated.
fn restored(f: &Fleet, view: &ClusterView, old: &Placement) -> bool {
    let others: Vec<&Placement> = f
        .placements
        .iter()
        .map(|(p, _)| p)
        .filter(|p| p.instance_id == old.instance_id && !p.purge && p.member != old.member)
        .collect();
    let running = |m: &str| view.members.get(m).is_some_and(|s| s.state == "running");
    let all_run = others.iter().all(|p| running(&p.member));
    let sync_ok =
        others.len() < 2 || view.sync_standby.as_deref().is_some_and(|s| s != old.member || running(&old.member));
    view.primary().is_some() && all_run && sync_ok
}

/// Where the replacement of `old` goes, or why it cannot be placed now.
fn choose_cell(
    f: &Fleet,
    old: &Placement,
    view: Option<&ClusterView>,
    free: &BTreeMap<&str, u32>,
    gone: &dyn Fn(&str) -> bool,
) -> Result<String, String> {
    // A new member copies from the running leader; with none left the data is
    // only on the cell that is gone (or in the backups). A retiring cell is
    // alive: its own member may be the leader to copy from.
    let source =
        view.and_then(ClusterView::primary).is_some_and(|m| m.name != old.member || f.live.contains_key(&old.cell));
    if !source {
        return Err(format!("{}: no running leader to copy from; its data is on {} only", old.scope, old.cell));
    }
    let instance: Vec<&Placement> =
        f.placements.iter().map(|(p, _)| p).filter(|p| p.instance_id == old.instance_id).collect();
    let taken: BTreeSet<String> = instance.iter().map(|p| p.cell.clone()).collect();
    let zones: BTreeSet<String> = instance
        .iter()
        .filter(|p| !p.purge && p.member != old.member)
        .filter_map(|p| f.live.get(&p.cell).map(|c| c.zone.clone()))
        .collect();
    let candidates: Vec<Candidate> = f
        .live
        .iter()
        .filter(|(name, _)| !gone(name))
        .map(|(name, c)| Candidate {
            name: name.clone(),
            zone: c.zone.clone(),
            free: free.get(name.as_str()).copied().unwrap_or(0),
        })
        .collect();
    choose(&candidates, &taken, &zones, 1).into_iter().next().ok_or_else(|| {
        let room = candidates.iter().filter(|c| c.free > 0 && !taken.contains(&c.name)).count();
        format!(
            "{}: no cell can take a replacement for {} ({} live cell(s) without a member of it have free capacity)",
            old.scope, old.member, room
        )
    })
}

#[cfg(test)]
#[path = "heal_tests.rs"]
mod tests;
