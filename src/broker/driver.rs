//! The background driver: every broker daemon moves every operation in progress
//! forward by itself, so an operation finishes whether or not anyone polls it,
//! and after a broker restart. Which instance is due when is a plain
//! [`Schedule`]; [`run`] only performs it. Two brokers may both try an
//! instance: the drive lock lets one step run at a time.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::engine::{Broker, Driven};
use super::model;

/// Between two steps of an operation that is moving.
pub const STEP_INTERVAL: Duration = Duration::from_millis(500);
/// The longest wait before a failed step is tried again.
pub const MAX_BACKOFF: Duration = Duration::from_secs(15);
/// How often etcd is read for operations started by other brokers.
const SCAN_INTERVAL: Duration = Duration::from_secs(1);
/// At most this many steps at once (each may wait on a SQL connect).
const MAX_CONCURRENT: usize = 16;

/// What a step came to, as far as scheduling is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Moved on, or another broker holds the lock: come back soon.
    Continue,
    /// The step failed (or etcd did): come back after a growing backoff.
    Failed,
    /// Nothing left to do for this instance.
    Done,
}

impl From<&Driven> for Outcome {
    fn from(d: &Driven) -> Self {
        match d {
            Driven::Gone | Driven::Settled(_) => Outcome::Done,
            Driven::Busy | Driven::Advanced(_) => Outcome::Continue,
            Driven::Retry(_) => Outcome::Failed,
        }
    }
}

#[derive(Debug)]
struct Entry {
    due: Instant,
    failures: u32,
    running: bool,
}

/// Which instances to drive when: plain state, no I/O, time passed in.
#[derive(Debug, Default)]
pub struct Schedule {
    entries: HashMap<String, Entry>,
}

impl Schedule {
    /// Adds instances found in progress (due at once); forgets those no longer
    /// in progress unless a step of theirs is running.
    pub fn sync(&mut self, in_progress: &[String], now: Instant) {
        self.entries.retain(|id, e| e.running || in_progress.contains(id));
        for id in in_progress {
            self.entries.entry(id.clone()).or_insert(Entry { due: now, failures: 0, running: false });
        }
    }

    /// The instances whose next step is due, now marked running.
    pub fn take_due(&mut self, now: Instant, limit: usize) -> Vec<String> {
        let running = self.entries.values().filter(|e| e.running).count();
        let mut due: Vec<(&String, &mut Entry)> =
            self.entries.iter_mut().filter(|(_, e)| !e.running && e.due <= now).collect();
        due.sort_by_key(|(_, e)| e.due);
        due.into_iter()
            .take(limit.saturating_sub(running))
            .map(|(id, e)| {
                e.running = true;
                id.clone()
            })
            .collect()
    }

    /// Records how a step ended and when the next one is due.
    pub fn finished(&mut self, id: &str, outcome: Outcome, now: Instant) {
        let Some(e) = self.entries.get_mut(id) else { return };
        e.running = false;
        match outcome {
            Outcome::Done => {
                self.entries.remove(id);
            }
            Outcome::Continue => {
                e.failures = 0;
                e.due = now + STEP_INTERVAL;
            }
            Outcome::Failed => {
                e.failures += 1;
                e.due = now + backoff(e.failures);
            }
        }
    }

    /// How long until the earliest step not running is due (`None`: none waits).
    pub fn next_due(&self, now: Instant) -> Option<Duration> {
        self.entries.values().filter(|e| !e.running).map(|e| e.due.saturating_duration_since(now)).min()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// After `failures` failed steps in a row: 0.5 s doubling, at most [`MAX_BACKOFF`].
pub fn backoff(failures: u32) -> Duration {
    STEP_INTERVAL.saturating_mul(1 << failures.saturating_sub(1).min(8)).min(MAX_BACKOFF)
}

/// Drives every operation in progress until the daemon stops.
pub async fn run(broker: Broker) {
    let mut schedule = Schedule::default();
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<(String, Outcome)>();
    let mut last_scan: Option<Instant> = None;
    loop {
        let now = Instant::now();
        if last_scan.is_none_or(|t| now.duration_since(t) >= SCAN_INTERVAL) {
            match model::in_progress(&mut broker.etcd.clone()).await {
                Ok(ids) => {
                    schedule.sync(&ids, now);
                    last_scan = Some(now);
                }
                Err(e) => tracing::warn!(error = %format!("{e:#}"), "cannot list operations in progress; retrying"),
            }
        }
        for id in schedule.take_due(Instant::now(), MAX_CONCURRENT) {
            let (b, tx) = (broker.clone(), done_tx.clone());
            tokio::spawn(async move {
                let outcome = match b.drive(&id).await {
                    Ok(d) => Outcome::from(&d),
                    Err(e) => {
                        tracing::warn!(instance = %id, error = %format!("{e:#}"), "cannot drive the operation; retrying");
                        Outcome::Failed
                    }
                };
                let _ = tx.send((id, outcome));
            });
        }
        let wait = schedule.next_due(Instant::now()).unwrap_or(SCAN_INTERVAL).min(SCAN_INTERVAL);
        tokio::select! {
            Some((id, outcome)) = done_rx.recv() => schedule.finished(&id, outcome, Instant::now()),
            _ = broker.wake.notified() => last_scan = None,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn new_operations_are_due_at_once_and_steps_follow_each_other() {
        let t0 = Instant::now();
        let mut s = Schedule::default();
        s.sync(&ids(&["a", "b"]), t0);
        let mut due = s.take_due(t0, 16);
        due.sort();
        assert_eq!(due, ["a", "b"]);
        assert!(s.take_due(t0, 16).is_empty(), "a running step is not started twice");
        assert_eq!(s.next_due(t0), None);
        s.finished("a", Outcome::Continue, t0);
        assert_eq!(s.next_due(t0), Some(STEP_INTERVAL));
        assert!(s.take_due(t0 + Duration::from_millis(499), 16).is_empty());
        assert_eq!(s.take_due(t0 + STEP_INTERVAL, 16), ["a"]);
    }

    #[test]
    fn failed_steps_back_off_and_a_success_resets() {
        let t0 = Instant::now();
        let mut s = Schedule::default();
        s.sync(&ids(&["a"]), t0);
        let mut t = t0;
        let mut waits = vec![];
        for _ in 0..7 {
            assert_eq!(s.take_due(t, 16), ["a"]);
            s.finished("a", Outcome::Failed, t);
            let w = s.next_due(t).unwrap();
            waits.push(w.as_millis());
            t += w;
        }
        assert_eq!(waits, [500, 1000, 2000, 4000, 8000, 15000, 15000]);
        assert_eq!(s.take_due(t, 16), ["a"]);
        s.finished("a", Outcome::Continue, t);
        assert_eq!(s.next_due(t), Some(STEP_INTERVAL));
    }

    #[test]
    fn finished_or_vanished_operations_are_forgotten_but_not_while_running() {
        let t0 = Instant::now();
        let mut s = Schedule::default();
        s.sync(&ids(&["a", "b"]), t0);
        assert_eq!(s.take_due(t0, 1).len(), 1, "the limit holds");
        let running = if s.take_due(t0, 2) == ["a"] { "b" } else { "a" };
        // Another broker finished both meanwhile: the running one stays until its step ends.
        s.sync(&[], t0);
        assert_eq!(s.len(), 2);
        s.finished(running, Outcome::Done, t0);
        assert_eq!(s.len(), 1);
        let other = if running == "a" { "b" } else { "a" };
        s.finished(other, Outcome::Continue, t0);
        s.sync(&[], t0);
        assert!(s.is_empty());
        // A step of an instance already forgotten changes nothing.
        s.finished("zz", Outcome::Failed, t0);
        assert!(s.is_empty());
    }
}
