//! The actix actors of the daemons. Each is a thin shell: the logic lives in
//! plain structs (`cell::reconcile`, `patroni::view`, ...) tested without a runtime.

pub mod backup;
pub mod cell;
pub mod cluster;
pub mod container;
pub mod router_table;
pub mod supervise;

use std::time::{SystemTime, UNIX_EPOCH};

use actix::Message;
use serde::Serialize;

/// A snapshot of one actor, for `/debug/actors`.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ActorStatus {
    pub kind: &'static str,
    pub id: String,
    pub state: String,
    /// Unix time (seconds) of the last event the actor handled.
    pub last_event: f64,
    pub restarts: u32,
    pub last_error: Option<String>,
}

impl ActorStatus {
    pub fn new(kind: &'static str, id: impl Into<String>) -> Self {
        Self { kind, id: id.into(), state: "starting".into(), last_event: now(), ..Self::default() }
    }

    pub fn event(&mut self, state: impl Into<String>) {
        self.state = state.into();
        self.last_event = now();
    }

    pub fn error(&mut self, e: &anyhow::Error) {
        self.last_error = Some(format!("{e:#}"));
        self.last_event = now();
    }
}

fn now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or_default()
}

/// Asks an actor for its [`ActorStatus`].
#[derive(Message)]
#[rtype(result = "ActorStatus")]
pub struct GetState;

/// Fault injection (`/debug/actors/.../fail`, only with `failpoints` on): the
/// actor panics, as a bug would make it. It panics from a scheduled item, not
/// in the handler: actix handles the messages still queued while the actor is
/// dropped, and a second injected panic during that unwinding would abort the
/// process.
#[derive(Message)]
#[rtype(result = "()")]
pub struct InjectFailure;

impl ActorStatus {
    /// Carries restarts and the last error over from the actor this one replaces.
    pub fn restarted(mut self, restarts: u32, last_error: Option<String>) -> Self {
        self.restarts = restarts;
        self.last_error = last_error;
        self
    }
}
