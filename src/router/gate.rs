//! The promotion gate: a router port sends new connections to a new lock
//! holder only once it is writable. Patroni takes the lock *before* it
//! promotes, so for a few hundred milliseconds the lock holder is still in
//! recovery and a session opened then fails its writes ("read-only
//! transaction"). Meanwhile new connections are held, not refused, for at
//! most `wait`; then they are routed to the lock holder anyway (a promotion
//! that hangs must not hang every client with it). Plain logic with the time
//! passed in; the table actor does the probing and the publishing.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde::Serialize;

/// The lock holder of an instance, as the routing table sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Leader {
    pub member: String,
    /// `host:port` of its PostgreSQL.
    pub addr: String,
    /// Its Patroni REST API (`api_url` of its member key).
    pub api_url: String,
    /// Its member key says `master`/`primary`: Patroni writes that only after
    /// PostgreSQL left recovery.
    pub key_says_primary: bool,
}

/// What a router port does with a new connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// No running lock holder: close at once rather than leave the client hanging.
    Refuse,
    /// The lock holder is promoting: wait for `Ready`, but not past `until`
    /// (then connect to `addr` anyway).
    Hold {
        addr: String,
        until: Instant,
    },
    Ready {
        addr: String,
    },
}

impl Target {
    /// Where connections go (now or once released); connections to any other
    /// address are cut.
    pub fn addr(&self) -> Option<&str> {
        match self {
            Target::Refuse => None,
            Target::Hold { addr, .. } | Target::Ready { addr } => Some(addr),
        }
    }
}

/// Probing the lock holder's Patroni for "writable" (started and stopped by the gate).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Probe {
    Start { instance: String, member: String, api_url: String },
    Stop { instance: String },
}

#[derive(Debug)]
enum Phase {
    /// Waiting for the member to be writable since `since`; `probing`: its
    /// Patroni is being asked.
    Promoting { since: Instant, probing: bool },
    /// Writable (or waited for long enough). `key_said_primary`: its member key
    /// has said so since; if the key then says otherwise, the member went back
    /// into recovery (a demotion, a restart) and is waited for again.
    Open { key_said_primary: bool },
}

#[derive(Debug)]
struct Gate {
    member: String,
    phase: Phase,
}

#[derive(Debug)]
pub struct PromoteGate {
    wait: Duration,
    /// Instance → its lock holder's gate.
    gates: HashMap<String, Gate>,
}

impl PromoteGate {
    /// `wait` zero turns the gate off: the lock holder is routed to at once.
    pub fn new(wait: Duration) -> Self {
        Self { wait, gates: HashMap::new() }
    }

    pub fn wait(&self) -> Duration {
        self.wait
    }

    /// Where an instance's new connections go now, given its lock holder, and
    /// whether to start or stop probing it.
    pub fn target(&mut self, instance: &str, leader: Option<&Leader>, now: Instant) -> (Target, Option<Probe>) {
        let Some(l) = leader else {
            return (Target::Refuse, self.forget(instance));
        };
        let ready = Target::Ready { addr: l.addr.clone() };
        if self.wait.is_zero() {
            return (ready, None);
        }
        let mut probe = None;
        if self.gates.get(instance).is_none_or(|g| g.member != l.member) {
            // A new lock holder: a probe of the previous one is stale.
            probe = self.forget(instance);
            let gate = Gate { member: l.member.clone(), phase: Phase::Promoting { since: now, probing: false } };
            self.gates.insert(instance.to_string(), gate);
        }
        let Some(gate) = self.gates.get_mut(instance) else { return (ready, probe) };
        if let Phase::Open { key_said_primary } = &mut gate.phase {
            let back_in_recovery = *key_said_primary && !l.key_says_primary;
            if !back_in_recovery {
                *key_said_primary |= l.key_says_primary;
                return (ready, probe);
            }
            gate.phase = Phase::Promoting { since: now, probing: false };
        }
        let Phase::Promoting { since, probing } = &mut gate.phase else { return (ready, probe) };
        let until = *since + self.wait;
        if l.key_says_primary || now >= until {
            let stop = std::mem::replace(probing, false).then(|| Probe::Stop { instance: instance.into() });
            gate.phase = Phase::Open { key_said_primary: l.key_says_primary };
            return (ready, stop.or(probe));
        }
        if !std::mem::replace(probing, true) {
            probe =
                Some(Probe::Start { instance: instance.into(), member: l.member.clone(), api_url: l.api_url.clone() });
        }
        (Target::Hold { addr: l.addr.clone(), until }, probe)
    }

    /// The member's Patroni says it holds the lock and is out of recovery.
    /// True when that opens the gate (the route is to be published again).
    pub fn confirmed(&mut self, instance: &str, member: &str) -> bool {
        match self.gates.get_mut(instance) {
            Some(g) if g.member == member && matches!(g.phase, Phase::Promoting { .. }) => {
                g.phase = Phase::Open { key_said_primary: false };
                true
            }
            _ => false,
        }
    }

    /// The hold of this instance has run out without a confirmation.
    pub fn overdue(&self, instance: &str, now: Instant) -> bool {
        self.gates
            .get(instance)
            .is_some_and(|g| matches!(g.phase, Phase::Promoting { since, .. } if now >= since + self.wait))
    }

    fn forget(&mut self, instance: &str) -> Option<Probe> {
        let gate = self.gates.remove(instance)?;
        matches!(gate.phase, Phase::Promoting { probing: true, .. }).then(|| Probe::Stop { instance: instance.into() })
    }
}

#[cfg(test)]
mod tests;
