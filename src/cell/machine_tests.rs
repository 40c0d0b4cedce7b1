use std::time::Duration;

use super::*;
use crate::etcd::keys;

fn placement(id: &str) -> Placement {
    Placement::sample(id, "a")
}

fn container(id: &str, running: bool) -> MemberContainer {
    MemberContainer::sample(id, "a", running)
}

fn snapshot(ps: &[Placement]) -> Event {
    let kvs = ps.iter().map(|p| (keys::placement("a", &p.instance_id), serde_json::to_vec(p).unwrap())).collect();
    Event::Placements(WatchEvent::Snapshot { kvs, revision: 1 })
}

fn delete(id: &str) -> Event {
    Event::Placements(WatchEvent::Delete { key: keys::placement("a", id), revision: 2 })
}

fn member(id: &str) -> String {
    crate::names::member(id, "a")
}

/// A machine that has read its placements and runs member `1` in cluster `cf-1`.
fn running_one() -> CellMachine {
    let mut m = CellMachine::default();
    m.on_event(snapshot(&[placement("1")]));
    let out = m.on_event(Event::Listed(vec![container("1", true)]));
    assert_eq!(out, [Action::StartMember(placement("1"))]);
    m
}

#[test]
fn nothing_is_done_before_placements_are_read() {
    let mut m = CellMachine::default();
    assert_eq!(m.on_event(Event::Resync), [Action::ListContainers]);
    assert!(m.on_event(Event::Listed(vec![container("1", true)])).is_empty(), "no orphan removal before a read");
}

#[test]
fn first_read_follows_the_cluster_and_lists_then_starts_members() {
    let mut m = CellMachine::default();
    assert_eq!(m.on_event(snapshot(&[placement("1")])), [Action::FollowCluster("cf-1".into()), Action::ListContainers]);
    assert_eq!(m.on_event(Event::Listed(vec![])), [Action::StartMember(placement("1"))]);
    assert_eq!(m.counts(), (1, 1));
}

#[test]
fn lists_are_never_run_twice_at_once_and_a_change_meanwhile_lists_again() {
    let mut m = running_one();
    assert_eq!(m.on_event(Event::Resync), [Action::ListContainers]);
    assert!(m.on_event(Event::Resync).is_empty());
    assert!(m.on_event(Event::Resync).is_empty());
    let out = m.on_event(Event::Listed(vec![container("1", true)]));
    assert_eq!(out, [Action::ListContainers], "one more list for the changes seen meanwhile, not two");
    assert!(m.on_event(Event::ListFailed).is_empty());
    assert_eq!(m.on_event(Event::Resync), [Action::ListContainers]);
}

#[test]
fn a_failed_container_actor_waits_out_its_backoff_even_if_a_list_comes_first() {
    let mut m = running_one();
    let child = Child::Container(member("1"));
    let delay = Duration::from_millis(400);
    assert_eq!(
        m.on_event(Event::ChildFailed { child: child.clone(), delay }),
        [Action::WakeAfter(child.clone(), delay)]
    );
    // A resync during the backoff: the container is neither adopted early nor an orphan.
    assert_eq!(m.on_event(Event::Resync), [Action::ListContainers]);
    assert!(m.on_event(Event::Listed(vec![container("1", true)])).is_empty());
    assert_eq!(m.on_event(Event::BackoffOver(child)), [Action::ListContainers]);
    assert_eq!(m.on_event(Event::Listed(vec![container("1", true)])), [Action::StartMember(placement("1"))]);
}

#[test]
fn an_explicit_ensure_during_a_backoff_starts_at_once_and_the_late_wake_is_ignored() {
    let mut m = running_one();
    let child = Child::Container(member("1"));
    m.on_event(Event::ChildFailed { child: child.clone(), delay: Duration::from_secs(1) });
    let out = m.on_event(Event::EnsureAsked(placement("1")));
    assert_eq!(out, [Action::StartMember(placement("1")), Action::EnsureRunning(member("1"))]);
    assert!(m.on_event(Event::BackoffOver(child)).is_empty());
    // Asking again does not start a second actor.
    assert_eq!(m.on_event(Event::EnsureAsked(placement("1"))), [Action::EnsureRunning(member("1"))]);
}

#[test]
fn a_purge_runs_once_and_its_container_is_not_an_orphan_meanwhile() {
    let mut m = running_one();
    let p = Placement { purge: true, ..placement("1") };
    assert_eq!(m.on_event(Event::PurgeAsked(p.clone())), [Action::Purge(p.clone())]);
    assert!(m.on_event(Event::PurgeAsked(p.clone())).is_empty(), "already purging");
    // Its watch event arrives while the purge runs.
    let out = m.on_event(snapshot(std::slice::from_ref(&p)));
    assert_eq!(out, [Action::StopFollowing("cf-1".into()), Action::ListContainers]);
    assert!(m.on_event(Event::Listed(vec![container("1", false)])).is_empty(), "not purged twice, not an orphan");
    // A purge that failed is tried again from the next list (the intent is still in etcd).
    assert_eq!(m.on_event(Event::PurgeEnded { member: member("1"), ok: false }), [Action::ListContainers]);
    assert_eq!(m.on_event(Event::Listed(vec![container("1", false)])), [Action::Purge(p)]);
    assert!(m.on_event(Event::PurgeEnded { member: member("1"), ok: true }).is_empty());
}

#[test]
fn a_placement_deleted_retires_the_member_and_stops_following() {
    let mut m = running_one();
    assert_eq!(m.on_event(delete("1")), [Action::StopFollowing("cf-1".into()), Action::ListContainers]);
    assert_eq!(m.on_event(Event::Listed(vec![container("1", true)])), [Action::RetireMember(member("1"))]);
    assert_eq!(m.counts(), (0, 0));
    // Once retired, its leftover container (if any) is an orphan.
    m.on_event(Event::Resync);
    assert_eq!(
        m.on_event(Event::Listed(vec![container("1", false)])),
        [Action::RemoveOrphan(container("1", false).name)]
    );
}

#[test]
fn a_failed_cluster_actor_is_followed_again_only_after_its_backoff() {
    let mut m = running_one();
    let child = Child::Cluster("cf-1".into());
    m.on_event(Event::ChildFailed { child: child.clone(), delay: Duration::from_millis(100) });
    // A second member placed meanwhile: its cluster is followed, the failed one waits.
    let out = m.on_event(snapshot(&[placement("1"), placement("2")]));
    assert_eq!(out, [Action::FollowCluster("cf-2".into()), Action::ListContainers]);
    assert_eq!(m.on_event(Event::BackoffOver(child)), [Action::FollowCluster("cf-1".into())]);
    assert_eq!(m.counts().1, 2);
}
