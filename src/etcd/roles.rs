//! etcd roles, one per kind of daemon: which key ranges each reaches, as
//! plain data ([`Grant`]s), and applying them with etcd's auth API. The
//! audit behind each grant is its `why` (docs/security.md prints the table).
//!
//! etcd permissions are key ranges, so a grant is an exact key or a prefix;
//! what a role is not granted it cannot read or write (no deny rules exist).

use anyhow::Context;
use etcd_client::{Client, Permission, PermissionType};

use super::keys;

pub const BROKER_USER: &str = "pgcell-broker";
pub const ROUTER_USER: &str = "pgcell-router";

/// The user (and role) of one cell: a cell writes only its own records.
pub fn cell_user(cell: &str) -> String {
    format!("pgcell-cell-{cell}")
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    Read,
    ReadWrite,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Range {
    Key(String),
    /// Every key starting with this (ends with `/`, so `cells/a` does not cover `cells/ab`).
    Prefix(String),
}

impl Range {
    pub fn covers(&self, key: &str) -> bool {
        match self {
            Range::Key(k) => k == key,
            Range::Prefix(p) => key.starts_with(p.as_str()),
        }
    }

    fn text(&self) -> String {
        match self {
            Range::Key(k) => k.clone(),
            Range::Prefix(p) => format!("{p}*"),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    pub range: Range,
    pub access: Access,
    pub why: &'static str,
}

fn rw(range: Range, why: &'static str) -> Grant {
    Grant { range, access: Access::ReadWrite, why }
}

fn read(range: Range, why: &'static str) -> Grant {
    Grant { range, access: Access::Read, why }
}

use Range::{Key, Prefix};

/// A router: reads where each router port goes, never an instance's keys
/// (secrets and bindings live there) nor anything TLS; writes only its registration.
pub fn router() -> Vec<Grant> {
    vec![
        read(Prefix(keys::router_ports()), "router port -> instance (the routing table)"),
        read(Prefix(keys::PATRONI_NAMESPACE.into()), "each cluster's leader and members (Patroni)"),
        rw(Prefix(keys::routers()), "its registration, on its lease"),
    ]
}

/// A cell: its own record, placements, port slots and members' envs (the only
/// passwords it reads: its own members'); Patroni's tree (its members' Patroni
/// runs as this user). Never another instance's keys under `instances/`.
pub fn cell(cell: &str) -> Vec<Grant> {
    vec![
        rw(Key(keys::cell(cell)), "its record, on its lease"),
        rw(Prefix(keys::cell_placements(cell)), "its placements (per-cell API, member removal)"),
        rw(Prefix(keys::cell_ports(cell)), "its port slots, in the placement's transaction"),
        rw(Prefix(keys::cell_member_envs(cell)), "its members' passwords and settings, removed with the placement"),
        rw(Prefix(keys::PATRONI_NAMESPACE.into()), "Patroni of its members; ending a dead leader's lock; drain"),
        rw(Prefix(keys::seed_instances()), "seed instances (per-cell API): secrets and router port"),
        rw(Prefix(keys::router_ports()), "router ports of instances made through the per-cell API"),
        rw(Prefix(keys::backups()), "backup state of the instances it leads, expiry"),
        rw(Prefix(keys::backup_requests()), "backups asked for the instances it leads; a gone seed instance's"),
        read(Prefix(keys::cells()), "the fleet (drain, placement checks)"),
        read(Prefix(keys::placements()), "the other members of its instances (drain, last-member check)"),
        read(Prefix(keys::routers()), "router hosts: names in its members' server certificates"),
        rw(Key(keys::tls_ca()), "the generated fleet CA: signs its members' certificates (none with tls.ca_cert_file)"),
        rw(Key(keys::retiring(cell)), "its retirement (BOSH drain when its VM is deleted: `pgcell cells retire`)"),
        read(Prefix(keys::retirings()), "the healer's plan, checked before retiring"),
        read(Prefix(keys::losts()), "the healer's plan, checked before retiring"),
        read(Prefix(keys::replacements()), "the healer's plan; progress of its retirement"),
    ]
}

/// The broker: instances, placements and ports on every cell, the healer's
/// records; reads cells and routers. Never a cell's or router's registration.
pub fn broker() -> Vec<Grant> {
    vec![
        rw(Prefix(keys::instances()), "specs, operations, secrets, bindings, restores, backup requests"),
        rw(Prefix(keys::placements()), "places and moves members"),
        rw(Prefix(keys::member_envs()), "each member's passwords and settings, with its placement"),
        rw(Prefix(keys::backup_requests()), "backups asked for (`pgcell backup`, update parameter)"),
        rw(Prefix(keys::port_slots()), "port slots, in the placement's transaction"),
        rw(Prefix(keys::router_ports()), "router port allocation"),
        rw(Prefix(format!("{}deleted/", keys::ROOT)), "deprovisioned instances (410 Gone)"),
        rw(Prefix(keys::losts()), "healer: when a cell was first seen lost"),
        rw(Prefix(keys::retirings()), "healer: cells being retired"),
        rw(Prefix(keys::replacements()), "healer: members being replaced"),
        rw(Key(keys::healer_lock()), "the healer's lock"),
        rw(Prefix(keys::backups()), "marks a deprovisioned instance's backups deleted"),
        rw(Prefix(keys::PATRONI_NAMESPACE.into()), "reads leaders; deletes a deprovisioned cluster's keys"),
        read(Prefix(keys::cells()), "the fleet"),
        read(Prefix(keys::routers()), "router hosts for credentials"),
        rw(Key(keys::tls_ca()), "the generated fleet CA: verifies instances, handed out in bindings"),
    ]
}

/// The role's grants as lines, `rw  /pgcell/cells/a` (for `pgcell etcd-roles show`).
pub fn table(grants: &[Grant]) -> Vec<String> {
    grants
        .iter()
        .map(|g| {
            let access = if g.access == Access::Read { "read" } else { "readwrite" };
            format!("{access:<9} {:<34} {}", g.range.text(), g.why)
        })
        .collect()
}

/// Whether any grant lets the role read `key`.
pub fn can_read(grants: &[Grant], key: &str) -> bool {
    grants.iter().any(|g| g.range.covers(key))
}

/// Whether any grant lets the role write `key`.
pub fn can_write(grants: &[Grant], key: &str) -> bool {
    grants.iter().any(|g| g.access == Access::ReadWrite && g.range.covers(key))
}

fn permission(g: &Grant) -> Permission {
    let kind = if g.access == Access::Read { PermissionType::Read } else { PermissionType::Readwrite };
    match &g.range {
        Range::Key(k) => Permission::new(kind, k.as_str()),
        // The range end spelled out (not `with_prefix`), so a granted permission compares equal to it.
        Range::Prefix(p) => Permission::new(kind, p.as_str()).with_range_end(prefix_end(p)),
    }
}

/// The first key after every key starting with `prefix` (etcd's range end).
fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// Makes role `name` hold exactly `grants` (creating it, revoking what it had
/// beyond them) and user `name` exist with `password` and that role.
pub async fn apply(client: &mut Client, name: &str, password: &str, grants: &[Grant]) -> anyhow::Result<()> {
    let roles = client.role_list().await.context("etcd role list")?;
    if !roles.roles().iter().any(|r| r == name) {
        client.role_add(name).await.with_context(|| format!("etcd role add {name}"))?;
    }
    let wanted: Vec<Permission> = grants.iter().map(permission).collect();
    let had = client.role_get(name).await.with_context(|| format!("etcd role get {name}"))?;
    for p in had.permissions() {
        let same =
            |w: &Permission| w.key() == p.key() && w.range_end() == p.range_end() && w.get_type() == p.get_type();
        if !wanted.iter().any(same) {
            let opts = etcd_client::RoleRevokePermissionOptions::new().with_range_end(p.range_end());
            client.role_revoke_permission(name, p.key(), Some(opts)).await.context("etcd role revoke")?;
        }
    }
    for p in wanted {
        client.role_grant_permission(name, p).await.with_context(|| format!("etcd role grant {name}"))?;
    }
    let users = client.user_list().await.context("etcd user list")?;
    if users.users().iter().any(|u| u == name) {
        client.user_change_password(name, password).await.with_context(|| format!("etcd user passwd {name}"))?;
    } else {
        client.user_add(name, password, None).await.with_context(|| format!("etcd user add {name}"))?;
    }
    client.user_grant_role(name, name).await.with_context(|| format!("etcd user grant-role {name}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "5f0c";

    #[test]
    fn a_router_reads_routes_only_never_secrets_bindings_or_tls() {
        let r = router();
        assert!(can_read(&r, &keys::router_port_claim(40000)));
        assert!(can_read(&r, "/service/cf-5f0c/leader"));
        for secret in [keys::secrets(ID), keys::binding(ID, "b1"), keys::spec(ID), "/pgcell/tls/ca".into()] {
            assert!(!can_read(&r, &secret), "router reads {secret}");
        }
        assert!(!can_write(&r, "/service/cf-5f0c/leader"), "a router must not move a leader");
        assert!(!can_write(&r, &keys::placement("a", ID)));
        assert!(can_write(&r, &keys::router("router-1")));
    }

    #[test]
    fn a_cell_writes_only_its_own_cell_records() {
        let a = cell("a");
        assert!(can_write(&a, &keys::placement("a", ID)) && can_write(&a, &keys::port_slot("a", 3)));
        assert!(can_write(&a, &keys::cell("a")));
        for other in [keys::placement("b", ID), keys::placement("ab", ID), keys::port_slot("b", 3), keys::cell("ab")] {
            assert!(!can_write(&a, &other), "cell a writes {other}");
        }
        assert!(can_write(&a, "/service/cf-5f0c/leader"), "its members' Patroni writes the leader key");
        assert!(can_write(&a, &keys::member_env("a", ID)), "a cell reads its members' passwords");
        for secret in [keys::secrets(ID), keys::binding(ID, "b1"), keys::spec(ID), keys::member_env("b", ID)] {
            assert!(!can_read(&a, &secret), "cell a reads {secret}");
        }
        assert!(!can_write(&a, &keys::router("r")));
        assert!(can_write(&a, &keys::retiring("a")) && !can_write(&a, &keys::retiring("b")), "its drain retires it");
        assert!(can_read(&a, &keys::tls_ca()), "without tls.ca_cert_file, a cell signs with the CA kept in etcd");
    }

    #[test]
    fn the_broker_places_everywhere_but_registers_nothing() {
        let b = broker();
        let envs = keys::member_env("a", ID);
        for k in [keys::placement("a", ID), keys::port_slot("b", 1), keys::binding(ID, "x"), keys::healer_lock(), envs]
        {
            assert!(can_write(&b, &k), "broker cannot write {k}");
        }
        assert!(can_read(&b, &keys::cell("a")) && !can_write(&b, &keys::cell("a")));
        assert!(can_read(&b, &keys::router("r")) && !can_write(&b, &keys::router("r")));
        assert!(can_read(&b, &keys::tls_ca()), "the broker verifies instances with the fleet CA");
    }

    #[test]
    fn every_prefix_ends_with_a_slash_and_the_table_prints_each_grant() {
        for g in router().iter().chain(&cell("a")).chain(&broker()) {
            if let Range::Prefix(p) = &g.range {
                assert!(p.ends_with('/'), "{p} would cover its siblings");
            }
        }
        let lines = table(&router());
        assert_eq!(lines.len(), router().len());
        assert!(lines[0].starts_with("read      /pgcell/router_ports/*"), "{lines:?}");
        assert_eq!(prefix_end("/pgcell/cells/"), b"/pgcell/cells0");
    }
}
