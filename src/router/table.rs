//! Which address each router port forwards to, from pgcell's router-port keys
//! and Patroni's keys. Plain logic, no I/O.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use crate::etcd::keys;
use crate::etcd::watch::WatchEvent;
use crate::patroni::ClusterView;

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Route {
    pub instance: String,
    /// `host:port` of the running primary; `None` refuses connections.
    pub primary: Option<String>,
}

#[derive(Debug, Default)]
pub struct RoutingTable {
    /// Instance id → router port.
    ports: BTreeMap<String, u16>,
    /// Scope → what Patroni says.
    views: HashMap<String, ClusterView>,
}

impl RoutingTable {
    /// Applies an event of the `/pgcell/instances/` watch.
    pub fn apply_instances(&mut self, ev: &WatchEvent) {
        let parse = |k: &str, v: &[u8]| -> Option<(String, u16)> {
            let id = keys::router_port_instance(k)?;
            Some((id.to_string(), std::str::from_utf8(v).ok()?.trim().parse().ok()?))
        };
        match ev {
            WatchEvent::Snapshot { kvs, .. } => {
                self.ports = kvs.iter().filter_map(|(k, v)| parse(k, v)).collect();
            }
            WatchEvent::Put { key, value, .. } => {
                if let Some((id, port)) = parse(key, value) {
                    self.ports.insert(id, port);
                }
            }
            WatchEvent::Delete { key, .. } => {
                if let Some(id) = keys::router_port_instance(key) {
                    self.ports.remove(id);
                }
            }
            _ => {}
        }
    }

    /// Applies an event of the `/service/` watch (every Patroni cluster).
    pub fn apply_patroni(&mut self, ev: &WatchEvent) {
        let split = |k: &str| -> Option<(String, String)> {
            let (scope, rel) = k.strip_prefix(keys::PATRONI_NAMESPACE)?.split_once('/')?;
            Some((scope.to_string(), rel.to_string()))
        };
        match ev {
            WatchEvent::Snapshot { kvs, .. } => {
                self.views.clear();
                for (k, v) in kvs {
                    self.apply_patroni_key(split(k), Some(v));
                }
            }
            WatchEvent::Put { key, value, .. } => self.apply_patroni_key(split(key), Some(value)),
            WatchEvent::Delete { key, .. } => self.apply_patroni_key(split(key), None),
            _ => {}
        }
    }

    fn apply_patroni_key(&mut self, key: Option<(String, String)>, value: Option<&[u8]>) {
        let Some((scope, rel)) = key else { return };
        let view = self.views.entry(scope.clone()).or_insert_with(|| ClusterView::new(&scope));
        view.apply(&rel, value);
        if view.leader.is_none() && view.members.is_empty() {
            self.views.remove(&scope);
        }
    }

    /// Router port → route, for every instance that has a port.
    pub fn routes(&self) -> BTreeMap<u16, Route> {
        self.ports
            .iter()
            .map(|(id, port)| {
                let primary = self
                    .views
                    .get(&crate::names::scope(id))
                    .and_then(ClusterView::primary)
                    .map(|m| format!("{}:{}", m.host, m.port));
                (*port, Route { instance: id.clone(), primary })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &str, value: &str) -> WatchEvent {
        WatchEvent::Put { key: key.into(), value: value.as_bytes().to_vec(), revision: 1 }
    }

    const RUNNING_MASTER: &str =
        r#"{"conn_url":"postgres://127.0.0.1:30000/postgres","state":"running","role":"master"}"#;
    const RUNNING_REPLICA: &str =
        r#"{"conn_url":"postgres://127.0.0.1:30002/postgres","state":"running","role":"replica"}"#;

    #[test]
    fn routes_follow_leader_and_need_a_running_primary() {
        let mut t = RoutingTable::default();
        t.apply_instances(&WatchEvent::Snapshot {
            kvs: vec![(keys::router_port("1"), b"40000".to_vec()), (keys::secrets("1"), b"{}".to_vec())],
            revision: 1,
        });
        assert_eq!(t.routes()[&40000].primary, None, "no leader yet");
        t.apply_patroni(&put("/service/cf-1/members/a", RUNNING_MASTER));
        t.apply_patroni(&put("/service/cf-1/members/b", RUNNING_REPLICA));
        assert_eq!(t.routes()[&40000].primary, None, "a running master without the leader key is no target");
        t.apply_patroni(&put("/service/cf-1/leader", "a"));
        assert_eq!(t.routes()[&40000].primary.as_deref(), Some("127.0.0.1:30000"));
        // Switchover: b holds the lock while it promotes: the target at once.
        t.apply_patroni(&put("/service/cf-1/leader", "b"));
        assert_eq!(t.routes()[&40000].primary.as_deref(), Some("127.0.0.1:30002"));
        // A leader that is not running (stopping, crashed) is no target.
        t.apply_patroni(&put("/service/cf-1/members/b", &RUNNING_REPLICA.replace("running", "stopped")));
        assert_eq!(t.routes()[&40000].primary, None);
        t.apply_patroni(&WatchEvent::Delete { key: "/service/cf-1/leader".into(), revision: 9 });
        assert_eq!(t.routes()[&40000].primary, None);
        t.apply_instances(&WatchEvent::Delete { key: keys::router_port("1"), revision: 10 });
        assert!(t.routes().is_empty());
    }

    #[test]
    fn scopes_do_not_leak_into_each_other() {
        let mut t = RoutingTable::default();
        t.apply_instances(&put(&keys::router_port("1"), "40000"));
        t.apply_instances(&put(&keys::router_port("10"), "40001"));
        t.apply_patroni(&put("/service/cf-10/members/a", RUNNING_MASTER));
        t.apply_patroni(&put("/service/cf-10/leader", "a"));
        assert_eq!(t.routes()[&40000].primary, None);
        assert!(t.routes()[&40001].primary.is_some());
    }
}
