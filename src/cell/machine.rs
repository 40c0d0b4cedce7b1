//! The cell's bookkeeping as a plain state machine: which members have a
//! container actor, which are being retired or purged, which wait out a
//! restart backoff, which clusters are followed, and when Docker must be
//! listed again. `CellActor` feeds it events and performs the actions it
//! returns; no runtime is needed to test it.

use std::collections::BTreeSet;
use std::time::Duration;

use super::reconcile::{Desired, plan};
use crate::docker::MemberContainer;
use crate::etcd::store::Placement;
use crate::etcd::watch::WatchEvent;

/// A child of the cell actor.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Child {
    /// A member's container actor, by member name.
    Container(String),
    /// A cluster actor, by scope.
    Cluster(String),
}

#[derive(Debug)]
pub enum Event {
    /// The placements watch said something.
    Placements(WatchEvent),
    /// Time to look again (periodic resync, a container destroyed, Docker back).
    Resync,
    /// The list of this cell's containers, as asked by [`Action::ListContainers`].
    Listed(Vec<MemberContainer>),
    /// Listing failed; the next resync tries again.
    ListFailed,
    /// A placement was just written for this cell: run it now.
    EnsureAsked(Placement),
    /// A placement of this cell was marked purge: remove it now.
    PurgeAsked(Placement),
    /// A purge ended (`ok`: container, data and placement gone).
    PurgeEnded { member: String, ok: bool },
    /// A child failed; supervision restarts it after `delay`.
    ChildFailed { child: Child, delay: Duration },
    /// The backoff of a failed child is over.
    BackoffOver(Child),
}

#[derive(Debug, PartialEq)]
pub enum Action {
    ListContainers,
    /// Start a container actor for the placement (it adopts or creates the container).
    StartMember(Placement),
    /// Tell a member's actor to make sure its container runs.
    EnsureRunning(String),
    /// Its placement is gone: remove its container (data kept).
    RetireMember(String),
    /// A container with no placement and no actor: remove it (data kept).
    RemoveOrphan(String),
    /// Remove the member with its data, then its placement.
    Purge(Placement),
    FollowCluster(String),
    StopFollowing(String),
    /// Send [`Event::BackoffOver`] for the child after the delay.
    WakeAfter(Child, Duration),
}

#[derive(Debug, Default)]
pub struct CellMachine {
    desired: Desired,
    /// Members with a live container actor.
    members: BTreeSet<String>,
    /// Clusters followed by a live cluster actor.
    clusters: BTreeSet<String>,
    /// Members being purged: neither orphans nor to adopt.
    purging: BTreeSet<String>,
    /// Children that failed and wait out their backoff: not restarted early.
    restarting: BTreeSet<Child>,
    listing: bool,
    /// Something changed while a list was running: list again after it.
    dirty: bool,
}

impl CellMachine {
    pub fn on_event(&mut self, ev: Event) -> Vec<Action> {
        match ev {
            Event::Placements(w) => {
                if !self.desired.apply(&w) {
                    return vec![];
                }
                let mut out = self.follow_clusters();
                out.extend(self.list());
                out
            }
            Event::Resync => self.list(),
            Event::ListFailed => {
                self.listing = false;
                if std::mem::take(&mut self.dirty) { self.list() } else { vec![] }
            }
            Event::Listed(containers) => {
                self.listing = false;
                let mut out = self.apply(&containers);
                if std::mem::take(&mut self.dirty) {
                    out.extend(self.list());
                }
                out
            }
            Event::EnsureAsked(p) => {
                self.desired.insert(p.clone());
                let member = p.member.clone();
                self.restarting.remove(&Child::Container(member.clone()));
                let mut out = vec![];
                if self.members.insert(member.clone()) {
                    out.push(Action::StartMember(p));
                }
                out.push(Action::EnsureRunning(member));
                out.extend(self.follow_clusters());
                out
            }
            Event::PurgeAsked(p) => self.purge(p),
            Event::PurgeEnded { member, ok } => {
                self.purging.remove(&member);
                // A failed purge is tried again by the next resync (the intent stays in etcd).
                if ok { vec![] } else { self.list() }
            }
            Event::ChildFailed { child, delay } => {
                match &child {
                    Child::Container(m) => self.members.remove(m),
                    Child::Cluster(s) => self.clusters.remove(s),
                };
                self.restarting.insert(child.clone());
                vec![Action::WakeAfter(child, delay)]
            }
            Event::BackoffOver(child) => {
                if !self.restarting.remove(&child) {
                    return vec![];
                }
                match child {
                    Child::Container(_) => self.list(),
                    Child::Cluster(_) => self.follow_clusters(),
                }
            }
        }
    }

    fn list(&mut self) -> Vec<Action> {
        if self.listing {
            self.dirty = true;
            return vec![];
        }
        self.listing = true;
        vec![Action::ListContainers]
    }

    fn apply(&mut self, containers: &[MemberContainer]) -> Vec<Action> {
        let waiting = self.restarting.iter().filter_map(|c| match c {
            Child::Container(m) => Some(m),
            Child::Cluster(_) => None,
        });
        let known: BTreeSet<String> = self.members.iter().chain(&self.purging).chain(waiting).cloned().collect();
        let plan = plan(&self.desired, &known, containers);
        let mut out = vec![];
        for p in plan.purge {
            out.extend(self.purge(p));
        }
        for p in plan.adopt {
            self.members.insert(p.member.clone());
            out.push(Action::StartMember(p));
        }
        out.extend(plan.ensure.into_iter().filter(|m| self.members.contains(m)).map(Action::EnsureRunning));
        for member in plan.retire {
            if self.members.remove(&member) {
                out.push(Action::RetireMember(member));
            }
        }
        out.extend(plan.orphans.into_iter().map(Action::RemoveOrphan));
        out.extend(self.follow_clusters());
        out
    }

    fn purge(&mut self, p: Placement) -> Vec<Action> {
        if !self.purging.insert(p.member.clone()) {
            return vec![];
        }
        self.members.remove(&p.member);
        self.restarting.remove(&Child::Container(p.member.clone()));
        vec![Action::Purge(p)]
    }

    /// Follows every cluster with a member placed here, and no other.
    fn follow_clusters(&mut self) -> Vec<Action> {
        let scopes: BTreeSet<String> = self.desired.members().values().map(|p| p.scope.clone()).collect();
        let mut out: Vec<Action> =
            self.clusters.iter().filter(|s| !scopes.contains(*s)).cloned().map(Action::StopFollowing).collect();
        self.clusters.retain(|s| scopes.contains(s));
        for scope in scopes {
            if !self.clusters.contains(&scope) && !self.restarting.contains(&Child::Cluster(scope.clone())) {
                self.clusters.insert(scope.clone());
                out.push(Action::FollowCluster(scope));
            }
        }
        out
    }

    /// For the status line: members with an actor, clusters followed.
    pub fn counts(&self) -> (usize, usize) {
        (self.members.len(), self.clusters.len())
    }
}

#[cfg(test)]
#[path = "machine_tests.rs"]
mod tests;
