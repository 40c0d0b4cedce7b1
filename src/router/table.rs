//! Which address each router port forwards to, from pgcell's router-port keys
//! and Patroni's keys. Plain logic, no I/O.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use super::gate::Leader;
use crate::etcd::keys;
use crate::etcd::watch::WatchEvent;
use crate::patroni::ClusterView;

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Route {
    pub instance: String,
    /// The running lock holder; `None` refuses connections. Whether it is
    /// writable yet is the promotion gate's business (`router::gate`).
    pub leader: Option<Leader>,
}

/// Which routes an event may have changed.
#[derive(Debug, PartialEq)]
pub enum Affected {
    All,
    Instance(String),
    Nothing,
}

#[derive(Debug, Default)]
pub struct RoutingTable {
    /// Instance id → router port.
    ports: BTreeMap<String, u16>,
    /// Scope → what Patroni says.
    views: HashMap<String, ClusterView>,
}

impl RoutingTable {
    /// Applies an event of the `/pgcell/router_ports/` watch (port -> instance):
    /// the router reads this index, never `/pgcell/instances/`, where the
    /// instances' secrets live (its etcd role does not reach them).
    pub fn apply_instances(&mut self, ev: &WatchEvent) -> Affected {
        let port_of = |k: &str| k.strip_prefix(keys::router_ports().as_str())?.parse::<u16>().ok();
        let parse = |k: &str, v: &[u8]| -> Option<(String, u16)> {
            let id = std::str::from_utf8(v).ok()?.trim();
            Some((id.to_string(), port_of(k)?)).filter(|_| !id.is_empty())
        };
        match ev {
            WatchEvent::Snapshot { kvs, .. } => {
                self.ports = kvs.iter().filter_map(|(k, v)| parse(k, v)).collect();
                Affected::All
            }
            WatchEvent::Put { key, value, .. } => match parse(key, value) {
                Some((id, port)) => {
                    self.ports.insert(id.clone(), port);
                    Affected::Instance(id)
                }
                None => Affected::Nothing,
            },
            WatchEvent::Delete { key, .. } => {
                let id = port_of(key).and_then(|port| self.ports.iter().find(|(_, p)| **p == port));
                match id.map(|(id, _)| id.clone()) {
                    Some(id) => {
                        self.ports.remove(&id);
                        Affected::Instance(id)
                    }
                    None => Affected::Nothing,
                }
            }
            _ => Affected::Nothing,
        }
    }

    /// Applies an event of the `/service/` watch (every Patroni cluster).
    pub fn apply_patroni(&mut self, ev: &WatchEvent) -> Affected {
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
                Affected::All
            }
            WatchEvent::Put { key, value, .. } => self.apply_patroni_key(split(key), Some(value)),
            WatchEvent::Delete { key, .. } => self.apply_patroni_key(split(key), None),
            _ => Affected::Nothing,
        }
    }

    fn apply_patroni_key(&mut self, key: Option<(String, String)>, value: Option<&[u8]>) -> Affected {
        let Some((scope, rel)) = key else { return Affected::Nothing };
        let affected = match scope.strip_prefix("cf-") {
            Some(id) => Affected::Instance(id.to_string()),
            None => Affected::Nothing,
        };
        let view = self.views.entry(scope.clone()).or_insert_with(|| ClusterView::new(&scope));
        view.apply(&rel, value);
        if view.leader.is_none() && view.members.is_empty() {
            self.views.remove(&scope);
        }
        affected
    }

    /// The route of one instance: its port and where it forwards (`None`: no port).
    pub fn route(&self, id: &str) -> Option<(u16, Route)> {
        let port = *self.ports.get(id)?;
        Some((port, Route { instance: id.to_string(), leader: self.leader_of(id) }))
    }

    fn leader_of(&self, id: &str) -> Option<Leader> {
        let view = self.views.get(&crate::names::scope(id))?;
        view.primary().map(|m| Leader {
            member: m.name.clone(),
            addr: format!("{}:{}", m.host, m.port),
            api_url: m.api_url.clone(),
            key_says_primary: crate::patroni::view::is_primary_role(&m.role),
        })
    }

    /// Router port → route, for every instance that has a port.
    pub fn routes(&self) -> BTreeMap<u16, Route> {
        self.ports
            .iter()
            .map(|(id, port)| (*port, Route { instance: id.clone(), leader: self.leader_of(id) }))
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

    fn addr(t: &RoutingTable, port: u16) -> Option<String> {
        t.routes()[&port].leader.as_ref().map(|l| l.addr.clone())
    }

    #[test]
    fn routes_follow_leader_and_need_a_running_primary() {
        let mut t = RoutingTable::default();
        t.apply_instances(&WatchEvent::Snapshot {
            kvs: vec![
                (keys::router_port_claim(40000), b"1".to_vec()),
                ("/pgcell/router_ports/x".into(), b"2".to_vec()),
            ],
            revision: 1,
        });
        assert_eq!(addr(&t, 40000), None, "no leader yet");
        t.apply_patroni(&put("/service/cf-1/members/a", RUNNING_MASTER));
        t.apply_patroni(&put("/service/cf-1/members/b", RUNNING_REPLICA));
        assert_eq!(addr(&t, 40000), None, "a running master without the leader key is no target");
        t.apply_patroni(&put("/service/cf-1/leader", "a"));
        assert_eq!(addr(&t, 40000).as_deref(), Some("127.0.0.1:30000"));
        assert!(t.routes()[&40000].leader.as_ref().unwrap().key_says_primary);
        // Switchover: b holds the lock while it promotes: the lock holder at
        // once (the gate decides when it takes connections).
        t.apply_patroni(&put("/service/cf-1/leader", "b"));
        let b = t.routes()[&40000].leader.clone().unwrap();
        assert_eq!((b.member.as_str(), b.addr.as_str()), ("b", "127.0.0.1:30002"));
        assert!(!b.key_says_primary, "its key still says replica");
        // A leader that is not running (stopping, crashed) is no target.
        t.apply_patroni(&put("/service/cf-1/members/b", &RUNNING_REPLICA.replace("running", "stopped")));
        assert_eq!(addr(&t, 40000), None);
        t.apply_patroni(&WatchEvent::Delete { key: "/service/cf-1/leader".into(), revision: 9 });
        assert_eq!(addr(&t, 40000), None);
        assert_eq!(
            t.apply_instances(&WatchEvent::Delete { key: keys::router_port_claim(40000), revision: 10 }),
            Affected::Instance("1".into())
        );
        assert!(t.routes().is_empty());
        assert_eq!(t.route("1"), None);
    }

    #[test]
    fn scopes_do_not_leak_into_each_other() {
        let mut t = RoutingTable::default();
        t.apply_instances(&put(&keys::router_port_claim(40000), "1"));
        t.apply_instances(&put(&keys::router_port_claim(40001), "10"));
        assert_eq!(
            t.apply_instances(&WatchEvent::Delete { key: keys::router_port_claim(40002), revision: 3 }),
            Affected::Nothing
        );
        t.apply_patroni(&put("/service/cf-10/members/a", RUNNING_MASTER));
        t.apply_patroni(&put("/service/cf-10/leader", "a"));
        assert_eq!(addr(&t, 40000), None);
        assert!(addr(&t, 40001).is_some());
        assert_eq!(t.route("10"), Some((40001, t.routes()[&40001].clone())));
        assert_eq!(t.apply_patroni(&put("/service/other/leader", "x")), Affected::Nothing, "not a pgcell scope");
    }
}
