//! Operator tools, in the seed scripts' exact formats.

pub mod backups;

use std::collections::BTreeMap;

use crate::etcd::{Client, keys, store};
use crate::patroni::ClusterView;
use crate::patroni::view::views_from_kvs;

/// Every cluster pgcell knows (an instance with placements or secrets) or
/// Patroni knows (keys under `/service/`), by scope.
pub async fn read_clusters(client: &mut Client) -> anyhow::Result<BTreeMap<String, ClusterView>> {
    let (kvs, _) = store::get_prefix(client, keys::PATRONI_NAMESPACE).await?;
    let mut views = views_from_kvs(kvs.iter().map(|(k, v)| (k.as_str(), v.as_slice())));
    let (ours, _) = store::get_prefix(client, &keys::placements()).await?;
    for (k, _) in &ours {
        if let Some((_, id)) = keys::placement_instance(k) {
            let scope = crate::names::scope(id);
            views.entry(scope.clone()).or_insert_with(|| ClusterView::new(&scope));
        }
    }
    Ok(views)
}

/// `cf-1 postgres:// <host> <port> postgres`, or the seed's not-found line.
pub fn leaders(clusters: &BTreeMap<String, ClusterView>) -> Vec<String> {
    clusters
        .values()
        .map(|v| match v.leader_member().filter(|m| !m.host.is_empty()) {
            Some(m) => format!("{} postgres:// {} {} postgres", v.scope, m.host, m.port),
            None => format!("Cluster {} not found or leader not available yet", v.scope),
        })
        .collect()
}

/// `cf-1 master/running/<host> replica/running/<host> `: the leader first.
pub fn states(clusters: &BTreeMap<String, ClusterView>) -> Vec<String> {
    clusters
        .values()
        .map(|v| {
            let mut members: Vec<_> = v.members.values().collect();
            members.sort_by_key(|m| (Some(&m.name) != v.leader.as_ref(), m.name.clone()));
            let mut line = format!("{} ", v.scope);
            for m in members {
                line.push_str(&format!("{}/{}/{} ", m.role, m.state, m.host));
            }
            line
        })
        .collect()
}

/// One row of `pgcell cells`.
#[derive(Debug, PartialEq)]
pub struct CellRow {
    pub name: String,
    /// `up` while the cell's lease lives, `lost` when it has placements but no lease.
    pub state: &'static str,
    pub zone: String,
    pub members: usize,
    pub leaders: Vec<String>,
}

pub async fn read_cells(client: &mut Client) -> anyhow::Result<Vec<CellRow>> {
    let records: Vec<store::CellRecord> = store::list_json(client, &keys::cells()).await?;
    let placements: Vec<store::Placement> = store::list_json(client, &keys::placements()).await?;
    let clusters = read_clusters(client).await?;
    let mut rows: BTreeMap<String, CellRow> = records
        .into_iter()
        .map(|r| (r.name.clone(), CellRow { name: r.name, state: "up", zone: r.zone, members: 0, leaders: vec![] }))
        .collect();
    for p in placements {
        let row = rows.entry(p.cell.clone()).or_insert_with(|| CellRow {
            name: p.cell.clone(),
            state: "lost",
            zone: String::new(),
            members: 0,
            leaders: vec![],
        });
        row.members += 1;
        if clusters.get(&p.scope).and_then(|v| v.leader.as_deref()) == Some(p.member.as_str()) {
            row.leaders.push(p.scope.clone());
        }
    }
    Ok(rows.into_values().collect())
}

pub fn cells_table(rows: &[CellRow]) -> Vec<String> {
    let mut out = vec![format!("{:<24} {:<6} {:<10} {:>7}  LEADERS", "CELL", "STATE", "ZONE", "MEMBERS")];
    for r in rows {
        let zone = if r.zone.is_empty() { "-" } else { &r.zone };
        out.push(format!("{:<24} {:<6} {:<10} {:>7}  {}", r.name, r.state, zone, r.members, r.leaders.join(" ")));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clusters() -> BTreeMap<String, ClusterView> {
        let a = br#"{"conn_url":"postgres://10.0.0.1:30000/postgres","state":"running","role":"replica"}"#;
        let b = br#"{"conn_url":"postgres://10.0.0.2:31000/postgres","state":"running","role":"master"}"#;
        let mut v = views_from_kvs([
            ("/service/cf-1/leader", b"cf-1-b".as_slice()),
            ("/service/cf-1/members/cf-1-a", a.as_slice()),
            ("/service/cf-1/members/cf-1-b", b.as_slice()),
        ]);
        v.insert("cf-2".into(), ClusterView::new("cf-2"));
        v
    }

    #[test]
    fn cells_table_reads() {
        let rows = [
            CellRow { name: "a".into(), state: "up", zone: "z1".into(), members: 2, leaders: vec!["cf-1".into()] },
            CellRow { name: "b".into(), state: "lost", zone: String::new(), members: 1, leaders: vec![] },
        ];
        let t = cells_table(&rows);
        assert!(t[0].starts_with("CELL"));
        assert!(t[1].contains("up") && t[1].contains("z1") && t[1].ends_with("cf-1"));
        assert!(t[2].contains("lost") && t[2].contains(" - "));
    }

    #[test]
    fn seed_formats() {
        let c = clusters();
        assert_eq!(
            leaders(&c),
            ["cf-1 postgres:// 10.0.0.2 31000 postgres", "Cluster cf-2 not found or leader not available yet"]
        );
        assert_eq!(states(&c), ["cf-1 master/running/10.0.0.2 replica/running/10.0.0.1 ", "cf-2 "]);
    }
}
