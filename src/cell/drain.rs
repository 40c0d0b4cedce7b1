//! Draining a cell: every leader on it is switched over to a healthy replica on
//! another cell, so a planned stop pauses writes only for the switchover.

use std::time::Duration;

use crate::etcd::{Client, keys, store};
use crate::patroni::read_view;
use crate::patroni::rest;
use crate::patroni::view::{ClusterView, is_primary_role};

#[derive(Debug, PartialEq)]
pub enum Outcome {
    SwitchedTo(String),
    NotLeader,
    /// Left running here: no replica elsewhere could take over.
    NoHealthyReplica,
    Failed(String),
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::SwitchedTo(m) => write!(f, "switched over to {m}"),
            Outcome::NotLeader => write!(f, "not the leader here; nothing to do"),
            Outcome::NoHealthyReplica => write!(f, "LEFT RUNNING: no healthy replica on another cell"),
            Outcome::Failed(e) => write!(f, "FAILED: {e}"),
        }
    }
}

/// How long a drain waits for a replica that exists to become able to take
/// over (a member that just rejoined, a sync key not yet naming it).
const CANDIDATE_WAIT: Duration = Duration::from_secs(20);

/// Whether a replica other than `leader` can take over now. In synchronous
/// mode only the synchronous standby named for this leader can: Patroni
/// refuses a switchover to anyone else ("no good candidates").
pub fn has_healthy_replica(view: &ClusterView, leader: &str) -> bool {
    if view.synchronous_mode.unwrap_or(true) {
        return view.failover_candidate().is_some_and(|m| m.name != leader && !is_primary_role(&m.role));
    }
    view.members.values().any(|m| m.name != leader && m.state == "running" && !is_primary_role(&m.role))
}

/// Switches every leader on `cell` away; one outcome per cluster with a member here.
pub async fn drain(client: &mut Client, cell: &str) -> anyhow::Result<Vec<(String, Outcome)>> {
    let placements: Vec<store::Placement> = store::list_json(client, &keys::cell_placements(cell)).await?;
    let mut out = vec![];
    for p in placements {
        let outcome = move_leader(client, &p).await.unwrap_or_else(|e| Outcome::Failed(format!("{e:#}")));
        tracing::info!(scope = %p.scope, %outcome, "drain");
        out.push((p.scope, outcome));
    }
    Ok(out)
}

/// Switches the member `p` over to a healthy replica if it leads its cluster.
pub async fn move_leader(client: &mut Client, p: &store::Placement) -> anyhow::Result<Outcome> {
    let waited = std::time::Instant::now();
    let view = loop {
        let view = read_view(client, &p.scope).await?;
        if view.leader.as_deref() != Some(&p.member) {
            return Ok(Outcome::NotLeader);
        }
        if has_healthy_replica(&view, &p.member) {
            break view;
        }
        // A cluster of one (or whose others never come) is left running; a
        // replica that is there but not yet a candidate is waited for.
        if view.members.len() < 2 || waited.elapsed() > CANDIDATE_WAIT {
            return Ok(Outcome::NoHealthyReplica);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let Some(me) = view.members.get(&p.member) else { anyhow::bail!("leader has no member key") };
    let env = super::env::MemberEnv::read(client, &p.cell, &p.instance_id).await?;
    rest::switchover(&me.api_url, &env.secrets.admin, &p.member, Duration::from_secs(15)).await?;
    for _ in 0..120 {
        let view = read_view(client, &p.scope).await?;
        if let Some(m) = view.primary().filter(|m| m.name != p.member) {
            return Ok(Outcome::SwitchedTo(m.name.clone()));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    anyhow::bail!("no new primary 30 s after the switchover")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::patroni::view::views_from_kvs;

    #[test]
    fn healthy_replica_means_running_non_primary_elsewhere() {
        let m =
            |role: &str, state: &str| format!(r#"{{"conn_url":"postgres://h:1/p","state":"{state}","role":"{role}"}}"#);
        let (a, b, c) = (m("master", "running"), m("replica", "running"), m("replica", "starting"));
        let v = views_from_kvs([
            ("/service/cf-1/leader", b"a".as_slice()),
            ("/service/cf-1/members/a", a.as_bytes()),
            ("/service/cf-1/members/c", c.as_bytes()),
        ]);
        assert!(!has_healthy_replica(&v["cf-1"], "a"));
        let v = views_from_kvs([("/service/cf-1/members/a", a.as_bytes()), ("/service/cf-1/members/b", b.as_bytes())]);
        // Synchronous mode (pgcell's default) but no sync key yet: not a candidate.
        assert!(!has_healthy_replica(&v["cf-1"], "a"));
        let sync = br#"{"leader":"a","sync_standby":"b"}"#;
        let v = views_from_kvs([
            ("/service/cf-1/leader", b"a".as_slice()),
            ("/service/cf-1/sync", sync.as_slice()),
            ("/service/cf-1/members/a", a.as_bytes()),
            ("/service/cf-1/members/b", b.as_bytes()),
        ]);
        assert!(has_healthy_replica(&v["cf-1"], "a"));
        let async_mode = br#"{"synchronous_mode":false}"#;
        let v = views_from_kvs([
            ("/service/cf-1/config", async_mode.as_slice()),
            ("/service/cf-1/members/a", a.as_bytes()),
            ("/service/cf-1/members/b", b.as_bytes()),
        ]);
        assert!(has_healthy_replica(&v["cf-1"], "a"));
    }
}
