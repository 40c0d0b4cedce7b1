//! Supervision. A parent restarts a child actor that ended without being
//! asked to (it stopped on an error, or a handler panicked), after a backoff so
//! a child that keeps failing cannot spin; the new child rebuilds its state from
//! etcd and Docker. One child failing never stops its siblings: each actor is
//! its own task, and a panic ends only that task. (Actix handles the messages
//! still queued while it drops a panicked actor; if one of those panics too,
//! Rust aborts the process, and the service manager starts it again.)
//!
//! Actix's own `Supervisor` restarts an actor that *stops*, but a panic drops
//! the actor with its supervisor. So each child carries a [`Lifeline`]: it is
//! dropped with the actor however the actor ends, and tells the parent.

use std::cell::RefCell;
use std::collections::HashMap;
use std::time::{Duration, Instant};

use actix::prelude::*;

use super::ActorKind;
use crate::backoff::Backoff;

/// A child ended; sent by its [`Lifeline`].
#[derive(Message, Clone, Debug, PartialEq)]
#[rtype(result = "()")]
pub struct ChildEnded {
    pub kind: ActorKind,
    pub id: String,
    pub generation: u64,
    /// Why: the panic's message, or that it stopped.
    pub reason: String,
}

/// Held by a child actor; dropping it (with the actor) reports [`ChildEnded`].
pub struct Lifeline {
    report: Option<Box<dyn FnOnce(ChildEnded)>>,
    ended: ChildEnded,
}

impl Lifeline {
    pub fn new(
        kind: ActorKind,
        id: impl Into<String>,
        generation: u64,
        report: impl FnOnce(ChildEnded) + 'static,
    ) -> Self {
        let ended = ChildEnded { kind, id: id.into(), generation, reason: String::new() };
        Self { report: Some(Box::new(report)), ended }
    }

    /// Reports to a parent actor.
    pub fn to(parent: Recipient<ChildEnded>, kind: ActorKind, id: impl Into<String>, generation: u64) -> Self {
        Self::new(kind, id, generation, move |ev| parent.do_send(ev))
    }
}

impl Drop for Lifeline {
    fn drop(&mut self) {
        let mut ev = self.ended.clone();
        ev.reason = if std::thread::panicking() {
            let msg = LAST_PANIC.try_with(|p| p.borrow_mut().take()).ok().flatten();
            format!("panicked: {}", msg.unwrap_or_default())
        } else {
            "stopped".into()
        };
        if let Some(report) = self.report.take() {
            report(ev);
        }
    }
}

thread_local! {
    static LAST_PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Keeps the message of a panic for the [`Lifeline`] dropped while it unwinds
/// (and still prints it as the default hook does). Installed once per process.
pub fn install_panic_hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(install);
}

fn install() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let msg = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown".into());
        let at = info.location().map(|l| format!(" at {}:{}", l.file(), l.line())).unwrap_or_default();
        let _ = LAST_PANIC.try_with(|p| *p.borrow_mut() = Some(format!("{msg}{at}")));
        default(info);
    }));
}

/// A child that has run this long without failing starts its backoff afresh.
const STABLE_AFTER: Duration = Duration::from_secs(60);

/// The parent's record of its children: which generation is current, how
/// often each was restarted and why. Plain data; the parent actor drives it.
#[derive(Default)]
pub struct Children {
    next_generation: u64,
    records: HashMap<(ActorKind, String), Record>,
}

struct Record {
    generation: u64,
    /// False once its end was reported (until it is started again).
    live: bool,
    started: Instant,
    restarts: u32,
    last_error: Option<String>,
    backoff: Backoff,
}

/// What a parent does about a [`ChildEnded`].
#[derive(Debug, PartialEq)]
pub enum Verdict {
    /// Start it again after this delay.
    Restart(Duration),
    /// Ended on purpose, or an older generation: nothing to do.
    Ignore,
}

impl Children {
    /// A child is being started: its generation, restarts so far and last error.
    pub fn starting(&mut self, kind: ActorKind, id: &str) -> (u64, u32, Option<String>) {
        self.next_generation += 1;
        let generation = self.next_generation;
        let rec = self.records.entry((kind, id.to_string())).or_insert_with(|| Record {
            generation,
            live: true,
            started: Instant::now(),
            restarts: 0,
            last_error: None,
            backoff: Backoff::new(Duration::from_millis(100), Duration::from_secs(30)),
        });
        rec.generation = generation;
        rec.live = true;
        rec.started = Instant::now();
        (generation, rec.restarts, rec.last_error.clone())
    }

    /// The parent ends this child on purpose: its end is not a failure, and
    /// the record goes.
    pub fn release(&mut self, kind: ActorKind, id: &str) {
        self.records.remove(&(kind, id.to_string()));
    }

    pub fn ended(&mut self, ev: &ChildEnded) -> Verdict {
        let Some(rec) = self.records.get_mut(&(ev.kind, ev.id.clone())) else { return Verdict::Ignore };
        if rec.generation != ev.generation || !rec.live {
            return Verdict::Ignore;
        }
        rec.live = false;
        rec.restarts += 1;
        rec.last_error = Some(ev.reason.clone());
        if rec.started.elapsed() >= STABLE_AFTER {
            rec.backoff.reset();
        }
        Verdict::Restart(rec.backoff.next_delay())
    }

    /// Restarts of every child so far (for `/metrics`).
    pub fn total_restarts(&self) -> u64 {
        self.records.values().map(|r| u64::from(r.restarts)).sum()
    }
}

/// A lifeline for an actor without a parent actor: the daemon awaits its end
/// (and restarts it, or exits so that its service manager does).
pub fn root(
    kind: ActorKind,
    id: impl Into<String>,
    generation: u64,
) -> (Lifeline, tokio::sync::oneshot::Receiver<ChildEnded>) {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let lifeline = Lifeline::new(kind, id, generation, move |ev| {
        let _ = tx.send(ev);
    });
    (lifeline, rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ended(kind: ActorKind, id: &str, generation: u64) -> ChildEnded {
        ChildEnded { kind, id: id.into(), generation, reason: "panicked: boom".into() }
    }

    #[test]
    fn a_failed_child_is_restarted_with_growing_delays_and_its_count_kept() {
        let mut c = Children::default();
        let (g1, r, e) = c.starting(ActorKind::Container, "a");
        assert_eq!((r, e), (0, None));
        let Verdict::Restart(d1) = c.ended(&ended(ActorKind::Container, "a", g1)) else { panic!("not restarted") };
        let (g2, r, e) = c.starting(ActorKind::Container, "a");
        assert_eq!((r, e.as_deref()), (1, Some("panicked: boom")));
        let Verdict::Restart(d2) = c.ended(&ended(ActorKind::Container, "a", g2)) else { panic!("not restarted") };
        assert!(d1 <= Duration::from_millis(125) && d2 >= Duration::from_millis(200), "{d1:?} {d2:?}");
        assert_eq!(c.total_restarts(), 2);
    }

    #[test]
    fn released_stale_and_unknown_children_are_not_restarted() {
        let mut c = Children::default();
        let (g1, ..) = c.starting(ActorKind::Container, "a");
        let (g2, ..) = c.starting(ActorKind::Container, "a");
        assert_eq!(c.ended(&ended(ActorKind::Container, "a", g1)), Verdict::Ignore, "an older generation");
        c.release(ActorKind::Container, "a");
        assert_eq!(c.ended(&ended(ActorKind::Container, "a", g2)), Verdict::Ignore, "retired on purpose");
        assert_eq!(c.ended(&ended(ActorKind::Cluster, "b", 7)), Verdict::Ignore, "never started");
        // Once reported, the same end is not restarted twice.
        let (g3, ..) = c.starting(ActorKind::Cluster, "b");
        assert!(matches!(c.ended(&ended(ActorKind::Cluster, "b", g3)), Verdict::Restart(_)));
        assert_eq!(c.ended(&ended(ActorKind::Cluster, "b", g3)), Verdict::Ignore);
    }

    #[test]
    fn a_lifeline_reports_a_plain_drop_as_stopped() {
        let got = std::rc::Rc::new(RefCell::new(None));
        let sink = std::rc::Rc::clone(&got);
        drop(Lifeline::new(ActorKind::Cluster, "s", 3, move |ev| *sink.borrow_mut() = Some(ev)));
        let ev = got.borrow_mut().take().expect("reported");
        assert_eq!(
            (ev.kind, ev.id.as_str(), ev.generation, ev.reason.as_str()),
            (ActorKind::Cluster, "s", 3, "stopped")
        );
    }

    #[test]
    fn a_lifeline_dropped_by_a_panic_reports_its_message() {
        install_panic_hook();
        let got = std::sync::Arc::new(std::sync::Mutex::new(None));
        let sink = std::sync::Arc::clone(&got);
        let res = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
            let _l = Lifeline::new(ActorKind::Container, "m", 1, move |ev| *sink.lock().unwrap() = Some(ev));
            panic!("injected failure");
        }));
        assert!(res.is_err());
        let ev = got.lock().unwrap().take().expect("reported");
        assert!(ev.reason.starts_with("panicked: injected failure at src/actors/supervise.rs"), "{}", ev.reason);
    }
}
