use super::*;
use crate::patroni::view::views_from_kvs;

fn placement(id: &str, cell: &str) -> Placement {
    Placement::sample(id, cell)
}

fn live(cells: &[(&str, &str, u32)]) -> BTreeMap<String, LiveCell> {
    cells.iter().map(|(n, z, f)| (n.to_string(), LiveCell { zone: z.to_string(), free: *f })).collect()
}

/// Cluster `cf-<id>`: `leader` leads, `members` (member → state), `sync` names the sync standby.
fn cluster(id: &str, leader: &str, members: &[(&str, &str)], sync: Option<&str>) -> (String, ClusterView) {
    let scope = format!("cf-{id}");
    let mut kvs: Vec<(String, Vec<u8>)> = vec![(format!("/service/{scope}/leader"), leader.as_bytes().to_vec())];
    for (m, state) in members {
        let role = if *m == leader { "master" } else { "replica" };
        let v = format!(r#"{{"conn_url":"postgres://h:1/p","state":"{state}","role":"{role}"}}"#);
        kvs.push((format!("/service/{scope}/members/{m}"), v.into_bytes()));
    }
    if let Some(s) = sync {
        kvs.push((
            format!("/service/{scope}/sync"),
            format!(r#"{{"leader":"{leader}","sync_standby":"{s}"}}"#).into_bytes(),
        ));
    }
    let views = views_from_kvs(kvs.iter().map(|(k, v)| (k.as_str(), v.as_slice())));
    (scope.clone(), views[&scope].clone())
}

/// ha-2 instance 1 on cells a (lost) and b (now leading), spare cells c and d.
fn ha2_a_lost() -> Fleet {
    Fleet {
        live: live(&[("b", "", 3), ("c", "", 2), ("d", "", 5)]),
        placements: vec![(placement("1", "a"), 10), (placement("1", "b"), 11)],
        clusters: [cluster("1", "cf-1-b", &[("cf-1-b", "running")], None)].into(),
        ..Fleet::default()
    }
}

#[test]
fn a_lost_cell_is_noted_then_replaced_after_replace_after() {
    let mut f = ha2_a_lost();
    assert_eq!(plan(&f, 1000, 300), [Heal::NoteLost("a".into())]);
    f.lost_since.insert("a".into(), 1000);
    assert!(plan(&f, 1299, 300).is_empty(), "not before replace_after");
    // The cell with the most free capacity, among cells holding no member of the instance.
    assert_eq!(plan(&f, 1300, 300), [Heal::Replace { old: placement("1", "a"), new_cell: "d".into() }]);
    assert!(plan(&f, 99_999, 0).is_empty(), "replace_after 0 disables it");
}

#[test]
fn a_cell_back_in_time_is_forgotten_and_nothing_is_replaced() {
    let mut f = ha2_a_lost();
    f.lost_since.insert("a".into(), 1000);
    f.live.insert("a".into(), LiveCell { zone: String::new(), free: 1 });
    assert_eq!(plan(&f, 5000, 300), [Heal::Returned("a".into())]);
}

#[test]
fn one_replacement_per_member_and_purge_only_once_redundant() {
    let mut f = ha2_a_lost();
    f.lost_since.insert("a".into(), 0);
    let r = Replacement {
        instance: "1".into(),
        old_member: "cf-1-a".into(),
        old_cell: "a".into(),
        new_member: "cf-1-d".into(),
        new_cell: "d".into(),
        started: 1,
    };
    f.replacements.insert("cf-1-a".into(), r);
    f.placements.push((placement("1", "d"), 12));
    assert!(plan(&f, 1000, 300).is_empty(), "placed, not streaming yet: wait");
    f.clusters = [cluster("1", "cf-1-b", &[("cf-1-b", "running"), ("cf-1-d", "creating replica")], None)].into();
    assert!(plan(&f, 1000, 300).is_empty(), "still copying");
    f.clusters = [cluster("1", "cf-1-b", &[("cf-1-b", "running"), ("cf-1-d", "running")], None)].into();
    assert!(plan(&f, 1000, 300).is_empty(), "running, but no synchronous standby named yet");
    f.clusters = [cluster("1", "cf-1-b", &[("cf-1-b", "running"), ("cf-1-d", "running")], Some("cf-1-a"))].into();
    assert!(plan(&f, 1000, 300).is_empty(), "the lost member is still named synchronous standby");
    f.clusters = [cluster("1", "cf-1-b", &[("cf-1-b", "running"), ("cf-1-d", "running")], Some("cf-1-d"))].into();
    assert_eq!(plan(&f, 1000, 300), [Heal::Finish { old: placement("1", "a"), rev: 10 }]);
}

#[test]
fn no_capacity_or_no_source_is_stuck_and_says_why() {
    let mut f = ha2_a_lost();
    f.lost_since.insert("a".into(), 0);
    f.live = live(&[("b", "", 3), ("c", "", 0)]);
    let out = plan(&f, 1000, 300);
    assert!(matches!(&out[..], [Heal::Stuck { why, .. }] if why.contains("no cell can take a replacement")), "{out:?}");
    // A single-member instance whose only member was on the lost cell: nothing to copy from.
    f.live = live(&[("c", "", 4)]);
    f.placements = vec![(placement("2", "a"), 5)];
    f.clusters = [cluster("2", "cf-2-a", &[], None)].into();
    let out = plan(&f, 1000, 300);
    assert!(matches!(&out[..], [Heal::Stuck { why, .. }] if why.contains("no running leader")), "{out:?}");
}

#[test]
fn replacements_in_one_pass_do_not_overbook_a_cell_and_prefer_new_zones() {
    let f = Fleet {
        live: live(&[("b", "z2", 9), ("c", "z1", 1), ("d", "z3", 1)]),
        placements: vec![
            (placement("1", "a"), 1),
            (placement("1", "b"), 2),
            (placement("2", "a"), 3),
            (placement("2", "b"), 4),
        ],
        lost_since: [("a".to_string(), 0)].into(),
        clusters: [
            cluster("1", "cf-1-b", &[("cf-1-b", "running")], None),
            cluster("2", "cf-2-b", &[("cf-2-b", "running")], None),
        ]
        .into(),
        ..Fleet::default()
    };
    let cells: Vec<String> = plan(&f, 1000, 300)
        .into_iter()
        .filter_map(|h| match h {
            Heal::Replace { new_cell, .. } => Some(new_cell),
            _ => None,
        })
        .collect();
    assert_eq!(cells.len(), 2);
    assert_ne!(cells[0], cells[1], "c and d have one slot each");
}

#[test]
fn retiring_moves_the_leader_last_and_needs_no_wait() {
    let f = Fleet {
        live: live(&[("a", "", 0), ("c", "", 2)]),
        placements: vec![(placement("3", "a"), 7), (placement("3", "c"), 8)],
        retiring: ["a".to_string()].into(),
        replacements: [(
            "cf-3-a".to_string(),
            Replacement {
                instance: "3".into(),
                old_member: "cf-3-a".into(),
                old_cell: "a".into(),
                new_member: "cf-3-c".into(),
                new_cell: "c".into(),
                started: 1,
            },
        )]
        .into(),
        clusters: [cluster("3", "cf-3-a", &[("cf-3-a", "running"), ("cf-3-c", "running")], Some("cf-3-c"))].into(),
        ..Fleet::default()
    };
    assert_eq!(plan(&f, 0, 300), [Heal::MoveLeader(placement("3", "a"))]);
    // Switched over: the old member, now a running replica, may still be the
    // synchronous standby; it goes, and Patroni names the next one.
    let moved = Fleet {
        clusters: [cluster("3", "cf-3-c", &[("cf-3-a", "running"), ("cf-3-c", "running")], Some("cf-3-a"))].into(),
        placements: f.placements.clone(),
        replacements: f.replacements.clone(),
        retiring: f.retiring.clone(),
        live: f.live.clone(),
        ..Fleet::default()
    };
    assert_eq!(plan(&moved, 0, 300), [Heal::Finish { old: placement("3", "a"), rev: 7 }]);
    // Not yet replaced: a single member on a retiring cell is copied from itself.
    let f2 = Fleet { replacements: BTreeMap::new(), placements: vec![(placement("3", "a"), 7)], ..f };
    let f2 = Fleet { clusters: [cluster("3", "cf-3-a", &[("cf-3-a", "running")], None)].into(), ..f2 };
    assert_eq!(plan(&f2, 0, 300), [Heal::Replace { old: placement("3", "a"), new_cell: "c".into() }]);
}
