//! The gate in synthetic time: no runtime, no Patroni.

use super::*;

const WAIT: Duration = Duration::from_millis(3000);

fn leader(member: &str, key_says_primary: bool) -> Leader {
    Leader {
        member: member.into(),
        addr: format!("127.0.0.1:{}", if member == "a" { 30000 } else { 30002 }),
        api_url: format!("http://127.0.0.1:{}/patroni", if member == "a" { 30001 } else { 30003 }),
        key_says_primary,
    }
}

fn ms(t0: Instant, n: u64) -> Instant {
    t0 + Duration::from_millis(n)
}

fn start(member: &str) -> Option<Probe> {
    let l = leader(member, false);
    Some(Probe::Start { instance: "1".into(), member: l.member, api_url: l.api_url })
}

fn stop() -> Option<Probe> {
    Some(Probe::Stop { instance: "1".into() })
}

#[test]
fn a_leader_whose_key_says_primary_is_routed_to_at_once() {
    let mut g = PromoteGate::new(WAIT);
    let t0 = Instant::now();
    let (t, p) = g.target("1", Some(&leader("a", true)), t0);
    assert_eq!(t, Target::Ready { addr: "127.0.0.1:30000".into() });
    assert_eq!(p, None, "nothing to probe");
}

#[test]
fn a_promoting_lock_holder_is_held_until_its_patroni_confirms() {
    let mut g = PromoteGate::new(WAIT);
    let t0 = Instant::now();
    g.target("1", Some(&leader("a", true)), t0);
    // Failover: b takes the lock while its key still says replica.
    let b = leader("b", false);
    let (t, p) = g.target("1", Some(&b), ms(t0, 100));
    assert_eq!(t, Target::Hold { addr: b.addr.clone(), until: ms(t0, 3100) });
    assert_eq!(p, start("b"));
    assert_eq!(t.addr(), Some("127.0.0.1:30002"), "connections to a are cut at once");
    // Another event meanwhile: still held, same deadline, the probe is not restarted.
    let (t, p) = g.target("1", Some(&b), ms(t0, 200));
    assert_eq!(t, Target::Hold { addr: b.addr.clone(), until: ms(t0, 3100) });
    assert_eq!(p, None);
    assert!(!g.confirmed("1", "a"), "a stale answer about the old leader");
    assert!(g.confirmed("1", "b"));
    assert!(!g.confirmed("1", "b"), "once is enough");
    let (t, p) = g.target("1", Some(&b), ms(t0, 300));
    assert_eq!(t, Target::Ready { addr: b.addr.clone() });
    assert_eq!(p, None, "the probe ended with its answer");
    // The key catches up a loop later: nothing changes.
    assert_eq!(g.target("1", Some(&leader("b", true)), ms(t0, 1200)).0, Target::Ready { addr: b.addr });
}

#[test]
fn the_member_key_saying_primary_opens_the_gate_too() {
    let mut g = PromoteGate::new(WAIT);
    let t0 = Instant::now();
    assert_eq!(g.target("1", Some(&leader("b", false)), t0).1, start("b"));
    let (t, p) = g.target("1", Some(&leader("b", true)), ms(t0, 900));
    assert_eq!(t, Target::Ready { addr: "127.0.0.1:30002".into() });
    assert_eq!(p, stop());
}

#[test]
fn the_hold_is_bounded_then_the_lock_holder_is_routed_to_anyway() {
    let mut g = PromoteGate::new(WAIT);
    let t0 = Instant::now();
    let b = leader("b", false);
    g.target("1", Some(&b), t0);
    assert!(matches!(g.target("1", Some(&b), ms(t0, 2999)).0, Target::Hold { .. }));
    let (t, p) = g.target("1", Some(&b), ms(t0, 3000));
    assert_eq!(t, Target::Ready { addr: b.addr.clone() });
    assert_eq!(p, stop());
    assert_eq!(g.target("1", Some(&b), ms(t0, 3100)), (Target::Ready { addr: b.addr }, None), "not held again");
}

#[test]
fn no_lock_holder_is_refused_and_forgets_the_gate() {
    let mut g = PromoteGate::new(WAIT);
    let t0 = Instant::now();
    g.target("1", Some(&leader("b", false)), t0);
    assert_eq!(g.target("1", None, ms(t0, 10)), (Target::Refuse, stop()));
    assert_eq!(g.target("1", None, ms(t0, 20)), (Target::Refuse, None));
    // The same member takes the lock again: held again, it may be in recovery.
    let (t, p) = g.target("1", Some(&leader("b", false)), ms(t0, 30));
    assert!(matches!(t, Target::Hold { .. }));
    assert_eq!(p, start("b"));
}

#[test]
fn a_lock_holder_back_in_recovery_is_held_again() {
    let mut g = PromoteGate::new(WAIT);
    let t0 = Instant::now();
    g.target("1", Some(&leader("a", true)), t0);
    // Its key now says replica while it still holds the lock (PostgreSQL restarted in recovery).
    let (t, p) = g.target("1", Some(&leader("a", false)), ms(t0, 10));
    assert_eq!(t, Target::Hold { addr: "127.0.0.1:30000".into(), until: ms(t0, 3010) });
    assert_eq!(p, start("a"));
}

#[test]
fn a_new_lock_holder_mid_hold_restarts_the_wait_and_the_probe() {
    let mut g = PromoteGate::new(WAIT);
    let t0 = Instant::now();
    g.target("1", Some(&leader("b", false)), t0);
    let (t, p) = g.target("1", Some(&leader("a", false)), ms(t0, 2000));
    assert_eq!(t, Target::Hold { addr: "127.0.0.1:30000".into(), until: ms(t0, 5000) });
    assert_eq!(p, start("a"), "replaces b's probe");
    assert!(!g.confirmed("1", "b"));
    // Another instance is independent.
    assert_eq!(
        g.target("2", Some(&leader("a", true)), ms(t0, 2000)).0,
        Target::Ready { addr: "127.0.0.1:30000".into() }
    );
}

#[test]
fn wait_zero_is_the_old_behaviour() {
    let mut g = PromoteGate::new(Duration::ZERO);
    let t0 = Instant::now();
    assert_eq!(g.target("1", Some(&leader("b", false)), t0), (Target::Ready { addr: "127.0.0.1:30002".into() }, None));
    assert_eq!(g.target("1", None, t0), (Target::Refuse, None));
}
