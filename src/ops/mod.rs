//! Operator tools, in the seed scripts' exact formats.

pub mod backups;
pub mod etcd_roles;
pub mod retire;

use std::collections::BTreeMap;
use std::io::Write;

use crate::etcd::{Client, keys, store};
use crate::patroni::ClusterView;
use crate::patroni::view::{Health, views_from_kvs};

/// Prints a line of a tool's output. A reader that stopped reading
/// (`pgcell backups | head -n 1`) ends the tool quietly, as for any Unix tool,
/// instead of a panic in `println!`.
pub fn say(line: impl std::fmt::Display) {
    if let Err(e) = writeln!(std::io::stdout().lock(), "{line}") {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("pgcell: cannot write the output: {e}");
        std::process::exit(1);
    }
}

/// Every cluster pgcell knows (an instance with placements or secrets) or
/// Patroni knows (keys under `/service/`), by scope.
pub async fn read_clusters(client: &mut Client) -> anyhow::Result<BTreeMap<String, ClusterView>> {
    let (kvs, _) = store::get_prefix(client, keys::PATRONI_NAMESPACE).await?;
    let mut views = views_from_kvs(kvs.iter().map(|(k, v)| (k.as_str(), v.as_slice())));
    let (ours, _) = store::get_prefix(client, &keys::placements()).await?;
    for (k, _) in &ours {
        if let Some((_, id)) = keys::placement_instance(k) {
            let scope = crate::names::scope(id);
            let view = views.entry(scope.clone()).or_insert_with(|| ClusterView::new(&scope));
            // Counted from placements: a member whose Patroni key expired still should be there.
            view.expected_members = Some(view.expected_members.unwrap_or(0) + 1);
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
            // The seed's format for a healthy cluster; a cluster that could not fail over
            // now says so (no primary is already visible: no master/running entry).
            if v.health() == Health::NoSyncStandby {
                line.push_str("degraded:no-sync-standby ");
            }
            line
        })
        .collect()
}

/// One row of `pgcell cells`.
#[derive(Debug, PartialEq)]
pub struct CellRow {
    pub name: String,
    /// `up` while the cell's lease lives (`retiring` once asked to empty), `lost`
    /// when it has placements but no lease.
    pub state: &'static str,
    pub zone: String,
    pub members: usize,
    /// Member slots held (members being removed included) and the cell's
    /// capacity (`None` for a lost cell: its record went with its lease).
    pub used: usize,
    pub total: Option<u32>,
    pub leaders: Vec<String>,
}

/// The cells, and a `degraded:` line per degraded cluster, from one read of etcd.
pub async fn read_cells(client: &mut Client) -> anyhow::Result<(Vec<CellRow>, Vec<String>)> {
    let fleet = crate::etcd::fleet::read(client).await?;
    let placements: Vec<store::Placement> = store::list_json(client, &keys::placements()).await?;
    let clusters = read_clusters(client).await?;
    let (retiring, _) = store::get_prefix(client, &keys::retirings()).await?;
    let state = |name: &str| if retiring.iter().any(|(k, _)| *k == keys::retiring(name)) { "retiring" } else { "up" };
    let row = |name: &str, state, zone: &str, used, total| CellRow {
        name: name.into(),
        state,
        zone: zone.into(),
        members: 0,
        used,
        total,
        leaders: vec![],
    };
    let mut rows: BTreeMap<String, CellRow> = fleet
        .cells
        .iter()
        .map(|c| {
            let name = &c.record.name;
            (name.clone(), row(name, state(name), &c.record.zone, c.used.len(), Some(c.total())))
        })
        .collect();
    for (cell, used) in &fleet.unregistered {
        rows.entry(cell.clone()).or_insert_with(|| row(cell, "lost", "", *used, None));
    }
    for p in &placements {
        let r = rows.entry(p.cell.clone()).or_insert_with(|| row(&p.cell, "lost", "", 0, None));
        r.members += 1;
        if clusters.get(&p.scope).and_then(|v| v.leader.as_deref()) == Some(p.member.as_str()) {
            r.leaders.push(p.scope.clone());
        }
    }
    let degraded = degraded(&placements, &clusters);
    Ok((rows.into_values().collect(), degraded))
}

/// Clusters with fewer running members than placed (active placements), or
/// no synchronous standby while they should have one: one line each.
pub fn degraded(placements: &[store::Placement], clusters: &BTreeMap<String, ClusterView>) -> Vec<String> {
    let mut placed: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for p in placements.iter().filter(|p| !p.purge) {
        placed.entry(p.scope.as_str()).or_default().push(p.member.as_str());
    }
    placed
        .into_iter()
        .filter_map(|(scope, members)| {
            let view = clusters.get(scope);
            let running = members
                .iter()
                .filter(|m| view.and_then(|v| v.members.get(**m)).is_some_and(|s| s.state == "running"))
                .count();
            let mut why = vec![];
            if running < members.len() {
                why.push(format!("{running} of {} members running", members.len()));
            }
            if view.is_some_and(|v| v.health() == crate::patroni::Health::NoSyncStandby) {
                why.push("no synchronous standby".to_string());
            }
            (!why.is_empty()).then(|| format!("degraded: {scope}: {}", why.join(", ")))
        })
        .collect()
}

pub fn cells_table(rows: &[CellRow]) -> Vec<String> {
    let head = format!("{:<24} {:<8} {:<10} {:>7} {:>10}  LEADERS", "CELL", "STATE", "ZONE", "MEMBERS", "USED/TOTAL");
    let mut out = vec![head];
    for r in rows {
        let zone = if r.zone.is_empty() { "-" } else { &r.zone };
        let slots = format!("{}/{}", r.used, r.total.map_or("-".to_string(), |t| t.to_string()));
        out.push(format!(
            "{:<24} {:<8} {:<10} {:>7} {:>10}  {}",
            r.name,
            r.state,
            zone,
            r.members,
            slots,
            r.leaders.join(" ")
        ));
    }
    let (used, total) =
        rows.iter().filter_map(|r| Some((r.used, r.total?))).fold((0, 0), |(u, t), (a, b)| (u + a, t + b));
    out.push(format!("fleet: {used}/{total} slots used, {} free", (total as usize).saturating_sub(used)));
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
            CellRow {
                name: "a".into(),
                state: "up",
                zone: "z1".into(),
                members: 2,
                used: 2,
                total: Some(7),
                leaders: vec!["cf-1".into()],
            },
            CellRow {
                name: "b".into(),
                state: "lost",
                zone: String::new(),
                members: 1,
                used: 1,
                total: None,
                leaders: vec![],
            },
        ];
        let t = cells_table(&rows);
        assert!(t[0].starts_with("CELL") && t[0].contains("USED/TOTAL"));
        assert!(t[1].contains("up") && t[1].contains("z1") && t[1].contains(" 2/7 ") && t[1].ends_with("cf-1"));
        assert!(t[2].contains("lost") && t[2].contains(" - ") && t[2].contains(" 1/- "));
        assert_eq!(t[3], "fleet: 2/7 slots used, 5 free", "a lost cell's capacity is not the fleet's");
    }

    #[test]
    fn degraded_clusters_say_why() {
        let c = clusters();
        let p = |id: &str, cell: &str| store::Placement::sample(id, cell);
        // cf-1: members a and b run (b leads, a replica, no sync key): no sync standby.
        let lines = degraded(&[p("1", "a"), p("1", "b")], &c);
        assert_eq!(lines, ["degraded: cf-1: no synchronous standby"]);
        // cf-2 placed on two cells, nothing running.
        let lines = degraded(&[p("2", "a"), p("2", "c")], &c);
        assert_eq!(lines, ["degraded: cf-2: 0 of 2 members running"]);
        let purged = store::Placement { purge: true, ..p("2", "c") };
        assert!(degraded(&[purged], &c).is_empty(), "a member being purged is not expected to run");
    }

    #[test]
    fn seed_formats() {
        let c = clusters();
        assert_eq!(
            leaders(&c),
            ["cf-1 postgres:// 10.0.0.2 31000 postgres", "Cluster cf-2 not found or leader not available yet"]
        );
        assert_eq!(
            states(&c),
            ["cf-1 master/running/10.0.0.2 replica/running/10.0.0.1 degraded:no-sync-standby ", "cf-2 "]
        );
        let mut c = c;
        c.get_mut("cf-1").unwrap().apply("sync", Some(br#"{"leader":"cf-1-b","sync_standby":"cf-1-a"}"#));
        assert_eq!(states(&c)[0], "cf-1 master/running/10.0.0.2 replica/running/10.0.0.1 ");
    }
}
