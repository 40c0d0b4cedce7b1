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

/// The kinds of actor (and of daemon) that report a status.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ActorKind {
    #[default]
    Cell,
    Container,
    Cluster,
    RouterTable,
    Broker,
    Backup,
}

impl ActorKind {
    pub const ALL: [ActorKind; 6] = [
        ActorKind::Cell,
        ActorKind::Container,
        ActorKind::Cluster,
        ActorKind::RouterTable,
        ActorKind::Broker,
        ActorKind::Backup,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ActorKind::Cell => "cell",
            ActorKind::Container => "container",
            ActorKind::Cluster => "cluster",
            ActorKind::RouterTable => "router_table",
            ActorKind::Broker => "broker",
            ActorKind::Backup => "backup",
        }
    }

    /// The kind named in a URL (`/debug/actors/<kind>/...`).
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl std::fmt::Display for ActorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where an actor is in its life; what it is doing in words goes in `detail`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ActorState {
    #[default]
    Starting,
    /// A member container runs (or a cell reconciles).
    Running,
    /// A member container exited; its actor starts it again.
    Exited,
    Retiring,
    Stopping,
    /// A cluster actor follows Patroni's keys.
    Following,
    /// The router table routes.
    Routing,
    /// The router table refuses new connections (etcd unreachable past the grace).
    Fenced,
    /// A daemon with no actor of its own (the broker) serves requests.
    Serving,
    /// It did not answer in time.
    Unresponsive,
}

/// A snapshot of one actor, for `/debug/actors`.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ActorStatus {
    pub kind: ActorKind,
    pub id: String,
    pub state: ActorState,
    /// Details for people (counts, leader, members); never parsed.
    pub detail: String,
    /// Unix time (seconds) of the last event the actor handled.
    pub last_event: f64,
    pub restarts: u32,
    pub last_error: Option<String>,
}

impl ActorStatus {
    pub fn new(kind: ActorKind, id: impl Into<String>) -> Self {
        Self { kind, id: id.into(), last_event: now(), ..Self::default() }
    }

    pub fn event(&mut self, state: ActorState, detail: impl Into<String>) {
        self.state = state;
        self.detail = detail.into();
        self.last_event = now();
    }

    pub fn error(&mut self, e: &anyhow::Error) {
        self.last_error = Some(format!("{e:#}"));
        self.last_event = now();
    }

    /// The status of an actor that did not answer.
    pub fn unresponsive(kind: ActorKind, id: impl Into<String>) -> Self {
        Self { state: ActorState::Unresponsive, ..Self::new(kind, id) }
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
