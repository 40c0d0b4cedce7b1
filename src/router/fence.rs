//! The router's etcd-outage fence as a plain state machine: while either
//! watch (router ports, Patroni's keys) is broken for longer than the grace
//! period, new connections are refused rather than routed on a table that
//! may be stale; routing resumes when both watches are live again. Until both
//! prefixes have been read in full once, the table is not trusted at all.

use std::time::{Duration, Instant};

/// The two watches the router's table comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    Instances,
    Patroni,
}

#[derive(Debug, PartialEq)]
pub enum Event {
    /// A watch broke (etcd unreachable, or the watch was cancelled).
    Interrupted(Source),
    /// A watch is live again (read, then watching).
    Live(Source),
    /// A watch delivered its full read.
    Snapshot(Source),
    /// Time passes (the actor ticks every 250 ms).
    Tick,
}

/// What the router does about an event.
#[derive(Debug, PartialEq)]
pub enum Action {
    /// Recompute every route from the table (fenced or not).
    SyncAll,
    /// Past the grace with too little read to know the routes: refuse on every port.
    RefuseAll,
}

#[derive(Debug)]
pub struct OutageFence {
    grace: Duration,
    down_since: Option<Instant>,
    interrupted: [bool; 2],
    read: [bool; 2],
    fenced: bool,
}

impl OutageFence {
    pub fn new(grace: Duration) -> Self {
        Self { grace, down_since: None, interrupted: [false; 2], read: [false; 2], fenced: false }
    }

    /// New connections must be refused.
    pub fn fenced(&self) -> bool {
        self.fenced
    }

    /// Both prefixes were read in full at least once: the table can be used.
    pub fn ready(&self) -> bool {
        self.read.iter().all(|r| *r)
    }

    pub fn on_event(&mut self, ev: Event, now: Instant) -> Vec<Action> {
        match ev {
            Event::Interrupted(src) => {
                self.interrupted[src as usize] = true;
                self.down_since.get_or_insert(now);
                vec![]
            }
            Event::Live(src) => {
                self.interrupted[src as usize] = false;
                if self.interrupted.iter().any(|i| *i) {
                    return vec![];
                }
                self.down_since = None;
                if !self.fenced {
                    return vec![];
                }
                tracing::info!("etcd reachable again: routing resumes");
                self.fenced = false;
                if self.ready() { vec![Action::SyncAll] } else { vec![] }
            }
            Event::Snapshot(src) => {
                let first = !self.read[src as usize];
                self.read[src as usize] = true;
                if first && self.ready() { vec![Action::SyncAll] } else { vec![] }
            }
            Event::Tick => {
                let over = self.down_since.is_some_and(|t| now.duration_since(t) >= self.grace);
                if !over || self.fenced {
                    return vec![];
                }
                tracing::error!(grace = ?self.grace, "etcd unreachable past the grace period: refusing new connections until it returns");
                self.fenced = true;
                if self.ready() { vec![Action::SyncAll] } else { vec![Action::RefuseAll] }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Source::*;

    const GRACE: Duration = Duration::from_secs(8);

    fn read_fence(t0: Instant) -> OutageFence {
        let mut f = OutageFence::new(GRACE);
        assert!(f.on_event(Event::Snapshot(Instances), t0).is_empty(), "half a read is not enough");
        assert_eq!(f.on_event(Event::Snapshot(Patroni), t0), [Action::SyncAll]);
        assert!(f.ready());
        f
    }

    #[test]
    fn an_outage_shorter_than_the_grace_changes_nothing() {
        let t0 = Instant::now();
        let mut f = read_fence(t0);
        f.on_event(Event::Interrupted(Patroni), t0);
        assert!(f.on_event(Event::Tick, t0 + GRACE - Duration::from_millis(1)).is_empty());
        assert!(f.on_event(Event::Live(Patroni), t0 + GRACE - Duration::from_millis(1)).is_empty());
        assert!(!f.fenced());
        assert!(f.on_event(Event::Tick, t0 + GRACE * 2).is_empty(), "the clock restarted with the recovery");
    }

    #[test]
    fn past_the_grace_it_fences_and_resumes_only_when_both_watches_are_live() {
        let t0 = Instant::now();
        let mut f = read_fence(t0);
        f.on_event(Event::Interrupted(Instances), t0);
        f.on_event(Event::Interrupted(Patroni), t0 + Duration::from_secs(1));
        assert_eq!(f.on_event(Event::Tick, t0 + GRACE), [Action::SyncAll], "measured from the first break");
        assert!(f.fenced());
        assert!(f.on_event(Event::Tick, t0 + GRACE * 2).is_empty(), "fenced once");
        assert!(f.on_event(Event::Live(Instances), t0 + GRACE * 2).is_empty(), "one watch is not enough");
        assert!(f.fenced());
        assert_eq!(f.on_event(Event::Live(Patroni), t0 + GRACE * 2), [Action::SyncAll]);
        assert!(!f.fenced());
    }

    #[test]
    fn an_outage_before_the_first_full_read_refuses_everything() {
        let t0 = Instant::now();
        let mut f = OutageFence::new(GRACE);
        f.on_event(Event::Snapshot(Instances), t0);
        f.on_event(Event::Interrupted(Patroni), t0);
        assert_eq!(f.on_event(Event::Tick, t0 + GRACE), [Action::RefuseAll]);
        // Back, but the Patroni prefix was never read: nothing to route on yet.
        assert!(f.on_event(Event::Live(Patroni), t0 + GRACE).is_empty());
        assert!(!f.fenced() && !f.ready());
        assert_eq!(f.on_event(Event::Snapshot(Patroni), t0 + GRACE), [Action::SyncAll]);
        // A second snapshot (a re-read after a compaction) changes nothing by itself.
        assert!(f.on_event(Event::Snapshot(Patroni), t0 + GRACE).is_empty());
    }
}
