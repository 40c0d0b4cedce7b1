//! What Patroni says about a cluster: its leader key and its members' JSON.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::etcd::keys::PATRONI_NAMESPACE;

/// Patroni 3 writes `master`, Patroni 4 writes `primary`.
pub fn is_primary_role(role: &str) -> bool {
    role == "master" || role == "primary"
}

#[derive(Deserialize)]
struct MemberJson {
    #[serde(default)]
    conn_url: String,
    #[serde(default)]
    api_url: String,
    #[serde(default)]
    state: String,
    #[serde(default)]
    role: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct MemberStatus {
    pub name: String,
    pub role: String,
    pub state: String,
    pub host: String,
    pub port: u16,
    pub api_url: String,
}

impl MemberStatus {
    fn parse(name: &str, value: &[u8]) -> Option<Self> {
        let m: MemberJson = serde_json::from_slice(value).ok()?;
        let (host, port) = parse_conn_url(&m.conn_url).unwrap_or_default();
        Some(Self { name: name.into(), role: m.role, state: m.state, host, port, api_url: m.api_url })
    }
}

/// `postgres://host:port/db` → `(host, port)`.
pub fn parse_conn_url(url: &str) -> Option<(String, u16)> {
    let rest = url.split_once("://")?.1;
    let hostport = rest.split(['/', '?']).next()?;
    let hostport = hostport.rsplit_once('@').map_or(hostport, |(_, h)| h);
    let (host, port) = hostport.rsplit_once(':')?;
    Some((host.trim_matches(['[', ']']).to_string(), port.parse().ok()?))
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ClusterView {
    pub scope: String,
    pub leader: Option<String>,
    /// The standby Patroni's `/sync` key names: the only one it may promote in synchronous mode.
    pub sync_standby: Option<String>,
    /// The leader the `/sync` key was written by: after a promotion it names the new
    /// leader with no standby until one streams in sync, and a key left by an older
    /// leader says nothing about the current one.
    pub sync_leader: Option<String>,
    /// `synchronous_mode` in Patroni's `/config` (`None` until read).
    pub synchronous_mode: Option<bool>,
    /// How many members pgcell placed (`None` when the reader does not know): a
    /// member whose key expired (lost, hung) still counts as one that should be there.
    pub expected_members: Option<usize>,
    pub members: BTreeMap<String, MemberStatus>,
}

/// Whether a cluster can lose its primary without losing its service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    Healthy,
    /// No running member holds the leader lock.
    NoPrimary,
    /// Synchronous mode, a replica is running (or pgcell placed more than one
    /// member), but Patroni names no synchronous standby for the current leader:
    /// no member may be promoted if it fails.
    NoSyncStandby,
}

impl Health {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Healthy => "healthy",
            Self::NoPrimary => "no_primary",
            Self::NoSyncStandby => "no_sync_standby",
        }
    }
}

impl ClusterView {
    pub fn new(scope: &str) -> Self {
        Self { scope: scope.into(), ..Self::default() }
    }

    /// Applies one key below `/service/<scope>/` (`None` = deleted).
    pub fn apply(&mut self, rel_key: &str, value: Option<&[u8]>) {
        if rel_key == "leader" {
            self.leader = value.map(|v| String::from_utf8_lossy(v).into_owned());
        } else if rel_key == "sync" {
            let v = value.and_then(|v| serde_json::from_slice::<serde_json::Value>(v).ok());
            self.sync_standby = v.as_ref().and_then(|v| v["sync_standby"].as_str().map(String::from));
            self.sync_leader = v.as_ref().and_then(|v| v["leader"].as_str().map(String::from));
        } else if rel_key == "config" {
            self.synchronous_mode = value
                .and_then(|v| serde_json::from_slice::<serde_json::Value>(v).ok())
                .map(|v| v["synchronous_mode"].as_bool().unwrap_or(false));
        } else if let Some(name) = rel_key.strip_prefix("members/") {
            match value.and_then(|v| MemberStatus::parse(name, v)) {
                Some(m) => {
                    self.members.insert(name.into(), m);
                }
                None => {
                    self.members.remove(name);
                }
            }
        }
    }

    /// The leader's member, if Patroni names one and it has registered.
    pub fn leader_member(&self) -> Option<&MemberStatus> {
        self.members.get(self.leader.as_deref()?)
    }

    /// The member clients should reach: the one Patroni names leader, while it
    /// reports `running`. Its role is not looked at: a new leader's member key
    /// says `master` only at the end of the Patroni cycle after its promotion,
    /// up to a `loop_wait` later, and the lock already makes it the only
    /// possible primary. The router holds new connections until it is writable
    /// (`router::gate`).
    pub fn primary(&self) -> Option<&MemberStatus> {
        self.leader_member().filter(|m| m.state == "running")
    }

    /// The member Patroni would promote if the leader failed now: the synchronous
    /// standby named for the current leader, registered and running.
    pub fn failover_candidate(&self) -> Option<&MemberStatus> {
        if self.sync_leader.is_none() || self.sync_leader != self.leader {
            return None;
        }
        self.members.get(self.sync_standby.as_deref()?).filter(|m| m.state == "running")
    }

    pub fn health(&self) -> Health {
        let Some(primary) = self.primary() else { return Health::NoPrimary };
        let replica_running = self.members.values().any(|m| m.name != primary.name && m.state == "running");
        let replica_placed = self.expected_members.is_some_and(|n| n > 1);
        // pgcell bootstraps every cluster in synchronous mode; until `/config` is read, assume it.
        if self.synchronous_mode.unwrap_or(true)
            && (replica_running || replica_placed)
            && self.failover_candidate().is_none()
        {
            return Health::NoSyncStandby;
        }
        Health::Healthy
    }
}

/// Groups every key under Patroni's namespace into one view per scope.
pub fn views_from_kvs<'a>(kvs: impl IntoIterator<Item = (&'a str, &'a [u8])>) -> BTreeMap<String, ClusterView> {
    let mut views: BTreeMap<String, ClusterView> = BTreeMap::new();
    for (key, value) in kvs {
        let Some((scope, rel)) = key.strip_prefix(PATRONI_NAMESPACE).and_then(|k| k.split_once('/')) else {
            continue;
        };
        views.entry(scope.into()).or_insert_with(|| ClusterView::new(scope)).apply(rel, Some(value));
    }
    views
}

#[cfg(test)]
mod tests {
    use super::*;

    const M1: &[u8] = br#"{"conn_url":"postgres://127.0.0.1:30000/postgres","api_url":"http://127.0.0.1:30001/patroni","state":"running","role":"master","version":"3.0.2","xlog_location":1,"timeline":1}"#;
    const M2: &[u8] = br#"{"conn_url":"postgres://127.0.0.2:31000/postgres","api_url":"http://127.0.0.2:31001/patroni","state":"running","role":"replica"}"#;

    #[test]
    fn conn_urls() {
        assert_eq!(parse_conn_url("postgres://127.0.0.1:30000/postgres"), Some(("127.0.0.1".into(), 30000)));
        assert_eq!(parse_conn_url("postgres://u:p@h:5/d?x=1"), Some(("h".into(), 5)));
        assert_eq!(parse_conn_url("postgres://[::1]:5/d"), Some(("::1".into(), 5)));
        assert_eq!(parse_conn_url("nonsense"), None);
    }

    #[test]
    fn leader_and_roles() {
        let views = views_from_kvs([
            ("/service/cf-1/leader", b"a".as_slice()),
            ("/service/cf-1/members/a", M1),
            ("/service/cf-1/members/b", M2),
            ("/service/cf-1/config", b"{}".as_slice()),
            ("/service/cf-2/members/c", M2),
        ]);
        let v = &views["cf-1"];
        assert_eq!(v.primary().unwrap().host, "127.0.0.1");
        assert_eq!(v.members["b"].role, "replica");
        assert!(views["cf-2"].primary().is_none());
        assert_eq!(v.sync_standby, None);
        let mut v = v.clone();
        v.apply("sync", Some(br#"{"leader":"a","sync_standby":"b"}"#));
        assert_eq!(v.sync_standby.as_deref(), Some("b"));
        v.apply("sync", Some(br#"{"leader":"a","sync_standby":null}"#));
        assert_eq!(v.sync_standby, None);
    }

    #[test]
    fn a_missing_or_stale_sync_standby_is_degraded() {
        let mut v = ClusterView::new("cf-1");
        v.apply("members/a", Some(M1));
        assert_eq!(v.health(), Health::NoPrimary);
        v.apply("leader", Some(b"a"));
        assert_eq!(v.health(), Health::Healthy, "a single member has nothing to wait for");
        v.apply("members/b", Some(M2));
        assert_eq!(v.health(), Health::NoSyncStandby, "no sync key yet");
        v.apply("sync", Some(br#"{"leader":"a","sync_standby":"b"}"#));
        assert_eq!(v.health(), Health::Healthy);
        assert_eq!(v.failover_candidate().map(|m| m.name.as_str()), Some("b"));
        // Right after a promotion Patroni writes the new leader with no standby.
        v.apply("sync", Some(br#"{"leader":"a","sync_standby":null}"#));
        assert_eq!(v.health(), Health::NoSyncStandby);
        // A key written by another leader says nothing about this one.
        v.apply("sync", Some(br#"{"leader":"b","sync_standby":"b"}"#));
        assert_eq!(v.health(), Health::NoSyncStandby);
        v.apply("sync", Some(br#"{"leader":"a","sync_standby":"b"}"#));
        v.apply("members/b", Some(br#"{"state":"starting","role":"replica"}"#));
        assert_eq!(v.health(), Health::Healthy, "no running replica: nothing better to wait for");
        assert!(v.failover_candidate().is_none());
        v.expected_members = Some(2);
        assert_eq!(v.health(), Health::NoSyncStandby, "but pgcell placed two members");
        v.members.remove("b");
        assert_eq!(v.health(), Health::NoSyncStandby, "the other member's key expired (lost, hung)");
        v.expected_members = Some(1);
        assert_eq!(v.health(), Health::Healthy);
        v.apply("members/b", Some(M2));
        v.apply("config", Some(br#"{"synchronous_mode":false}"#));
        v.apply("sync", None);
        assert_eq!(v.health(), Health::Healthy, "asynchronous clusters have no sync key");
    }

    #[test]
    fn primary_is_the_running_leader() {
        let mut v = ClusterView::new("cf-1");
        v.apply("members/a", Some(M1));
        assert!(v.primary().is_none(), "no leader key");
        v.apply("leader", Some(b"a"));
        assert!(v.primary().is_some());
        let patroni4 = String::from_utf8_lossy(M1).replace("\"master\"", "\"primary\"");
        v.apply("members/a", Some(patroni4.as_bytes()));
        assert!(v.primary().is_some(), "Patroni 4 writes primary");
        v.apply("members/a", Some(br#"{"state":"starting","role":"master"}"#));
        assert!(v.primary().is_none(), "not running");
        v.apply("members/a", Some(br#"{"state":"running","role":"replica"}"#));
        assert!(v.primary().is_some(), "the lock holder, still promoting");
        v.apply("members/a", None);
        v.apply("leader", None);
        assert!(v.leader_member().is_none());
    }
}
