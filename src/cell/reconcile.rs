//! Reconciling a cell: desired members come from the placements in etcd,
//! actual ones from Docker. This module only decides; the actors act.

use std::collections::{BTreeMap, BTreeSet};

use crate::docker::MemberContainer;
use crate::etcd::keys;
use crate::etcd::store::Placement;
use crate::etcd::watch::WatchEvent;

/// The placements of one cell, kept current from a prefix watch.
#[derive(Debug, Default)]
pub struct Desired {
    /// Placement key → placement.
    by_key: BTreeMap<String, Placement>,
    /// False until the first full read: before it, an empty set means "unknown", not "none".
    pub known: bool,
}

impl Desired {
    /// Applies a watch event; returns whether the desired set may have changed.
    pub fn apply(&mut self, ev: &WatchEvent) -> bool {
        match ev {
            WatchEvent::Snapshot { kvs, .. } => {
                self.by_key = kvs.iter().filter_map(|(k, v)| Some((k.clone(), parse(k, v)?))).collect();
                self.known = true;
            }
            WatchEvent::Put { key, value, .. } => match parse(key, value) {
                Some(p) => {
                    self.by_key.insert(key.clone(), p);
                }
                None => return false,
            },
            WatchEvent::Delete { key, .. } => {
                self.by_key.remove(key);
            }
            WatchEvent::Interrupted { .. } | WatchEvent::Live => return false,
        }
        true
    }

    /// Member name → placement.
    /// Records a placement just written by this cell, before its watch event arrives.
    pub fn insert(&mut self, p: Placement) {
        self.by_key.insert(keys::placement(&p.cell, &p.instance_id), p);
    }

    pub fn remove(&mut self, cell: &str, instance: &str) {
        self.by_key.remove(&keys::placement(cell, instance));
    }

    /// Member name → placement, for the members that should run.
    pub fn members(&self) -> BTreeMap<String, Placement> {
        self.by_key.values().filter(|p| !p.purge).map(|p| (p.member.clone(), p.clone())).collect()
    }

    /// Placements marked for removal with their data.
    pub fn purges(&self) -> Vec<Placement> {
        self.by_key.values().filter(|p| p.purge).cloned().collect()
    }
}

fn parse(key: &str, value: &[u8]) -> Option<Placement> {
    keys::placement_instance(key)?;
    match serde_json::from_slice(value) {
        Ok(p) => Some(p),
        Err(e) => {
            tracing::warn!(%key, error = %e, "ignoring a placement that does not parse");
            None
        }
    }
}

/// What the cell does next.
#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    /// Desired members with no actor yet: start one (it creates or starts the container).
    pub adopt: Vec<Placement>,
    /// Members with an actor but no placement any more: retire them (container removed, data kept).
    pub retire: Vec<String>,
    /// Desired members with an actor whose container is missing or stopped.
    pub ensure: Vec<String>,
    /// Containers of this cell with neither placement nor actor: remove the container, keep the data.
    pub orphans: Vec<String>,
    /// Members to remove with their data (then their placement).
    pub purge: Vec<Placement>,
}

pub fn plan(desired: &Desired, actors: &BTreeSet<String>, containers: &[MemberContainer]) -> Plan {
    if !desired.known {
        return Plan::default();
    }
    let want = desired.members();
    let purge = desired.purges();
    let purging = |m: &String| purge.iter().any(|p| &p.member == m);
    Plan {
        adopt: want.values().filter(|p| !actors.contains(&p.member)).cloned().collect(),
        retire: actors.iter().filter(|m| !want.contains_key(*m) && !purging(m)).cloned().collect(),
        ensure: want
            .keys()
            .filter(|m| actors.contains(*m))
            .filter(|m| container_step(containers.iter().find(|c| &c.member == *m)) != ContainerStep::Nothing)
            .cloned()
            .collect(),
        orphans: containers
            .iter()
            .filter(|c| !want.contains_key(&c.member) && !actors.contains(&c.member) && !purging(&c.member))
            .map(|c| c.name.clone())
            .collect(),
        purge,
    }
}

/// What a member's actor does to its container.
#[derive(Debug, PartialEq)]
pub enum ContainerStep {
    Create,
    Start,
    Nothing,
}

pub fn container_step(container: Option<&MemberContainer>) -> ContainerStep {
    match container {
        None => ContainerStep::Create,
        Some(c) if !c.running => ContainerStep::Start,
        Some(_) => ContainerStep::Nothing,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn placement(id: &str) -> Placement {
        Placement::sample(id, "a")
    }

    fn container(id: &str, running: bool) -> MemberContainer {
        MemberContainer::sample(id, "a", running)
    }

    fn put(p: &Placement) -> WatchEvent {
        WatchEvent::Put {
            key: keys::placement("a", &p.instance_id),
            value: serde_json::to_vec(p).unwrap(),
            revision: 1,
        }
    }

    #[test]
    fn nothing_happens_before_the_first_read() {
        let d = Desired::default();
        assert_eq!(plan(&d, &BTreeSet::new(), &[container("1", true)]), Plan::default());
    }

    #[test]
    fn adopts_retires_and_removes_orphans() {
        let mut d = Desired::default();
        d.apply(&WatchEvent::Snapshot { kvs: vec![], revision: 1 });
        assert!(d.apply(&put(&placement("1"))));
        assert!(d.apply(&put(&placement("2"))));
        let actors: BTreeSet<String> = ["cf-2-a".to_string(), "cf-3-a".to_string()].into();
        let p = plan(&d, &actors, &[container("1", false), container("4", true)]);
        assert_eq!(p.adopt, vec![placement("1")]);
        assert_eq!(p.ensure, vec!["cf-2-a".to_string()], "desired, has an actor, no container");
        assert_eq!(p.retire, vec!["cf-3-a".to_string()]);
        assert_eq!(p.orphans, vec!["pgcell-cf-4-a".to_string()]);
        d.apply(&WatchEvent::Delete { key: keys::placement("a", "1"), revision: 2 });
        assert!(d.members().keys().eq(["cf-2-a"]));
    }

    #[test]
    fn purged_members_are_neither_run_nor_orphans() {
        let mut d = Desired::default();
        d.apply(&WatchEvent::Snapshot { kvs: vec![], revision: 1 });
        d.apply(&put(&Placement { purge: true, ..placement("1") }));
        let actors: BTreeSet<String> = ["cf-1-a".to_string()].into();
        let p = plan(&d, &actors, &[container("1", true)]);
        assert!(p.adopt.is_empty() && p.retire.is_empty() && p.orphans.is_empty() && p.ensure.is_empty(), "{p:?}");
        assert_eq!(p.purge.len(), 1);
    }

    #[test]
    fn garbage_placements_are_ignored() {
        let mut d = Desired::default();
        d.apply(&WatchEvent::Snapshot { kvs: vec![(keys::placement("a", "1"), b"nope".to_vec())], revision: 1 });
        assert!(d.known && d.members().is_empty());
        assert!(!d.apply(&WatchEvent::Put { key: keys::placement("a", "2"), value: b"{".to_vec(), revision: 2 }));
    }

    #[test]
    fn container_steps() {
        assert_eq!(container_step(None), ContainerStep::Create);
        assert_eq!(container_step(Some(&container("1", false))), ContainerStep::Start);
        assert_eq!(container_step(Some(&container("1", true))), ContainerStep::Nothing);
    }
}
