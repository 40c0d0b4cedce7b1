//! Operator tools, in the seed scripts' exact formats.

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

/// Every instance's backup state (`/pgcell/backups/`), or one instance's.
pub async fn read_backups(
    client: &mut Client,
    instance: Option<&str>,
) -> anyhow::Result<Vec<crate::backup::state::BackupState>> {
    let all: Vec<crate::backup::state::BackupState> =
        crate::etcd::store::list_json(client, &crate::etcd::keys::backups()).await?;
    Ok(all.into_iter().filter(|s| instance.is_none_or(|i| s.instance == i)).collect())
}

fn mb(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

/// `pgcell backups`: per instance its recoverable window and archive health,
/// then each backup with type, size, duration.
pub fn backups_table(states: &[crate::backup::state::BackupState], now: f64) -> Vec<String> {
    use crate::backup::target::Window;
    let mut out = vec![];
    for s in states {
        let window = Window::of(s).map_or("no backup yet".into(), |w| w.describe());
        let age = s.archive_age(now).map_or("never".into(), |a| format!("{a:.0} s ago"));
        let run = s.last_run.as_ref().map_or("none".into(), |r| {
            format!(
                "{} {} in {:.1} s{}",
                r.kind,
                if r.ok { "ok" } else { "FAILED" },
                r.secs,
                r.error.as_deref().map(|e| format!(": {e}")).unwrap_or_default()
            )
        });
        out.push(format!(
            "{}: recoverable {window}; last WAL archived {age} ({}); archive failures {}; repository {}; last run: {run}{}",
            s.instance,
            s.last_archived_wal.as_deref().unwrap_or("-"),
            s.archive_failed_count,
            mb(s.info.repo_size()),
            if s.needs_full() { "; WAL DROPPED: needs a new full backup" } else { "" },
        ));
        for b in &s.info.backups {
            out.push(format!(
                "  {:<34} {:<4} {:>10} (repo {:>10}) {:>6.1} s  stop {}",
                b.label,
                b.kind,
                mb(b.size),
                mb(b.repo_size),
                (b.stop - b.start) as f64,
                b.stop
            ));
        }
    }
    out
}

/// Asks the cell of the instance's leader for a backup now (`pgcell backup`).
pub async fn request_backup(client: &mut Client, instance: &str, kind: &str) -> anyhow::Result<String> {
    crate::backup::request(client, instance, kind).await
}
