//! pgcell's keys in etcd. Patroni owns `/service/<scope>/`; pgcell owns `/pgcell/`.
//!
//! | key | value | written by |
//! |---|---|---|
//! | `/pgcell/cells/<cell>` | [`CellRecord`](super::store::CellRecord) JSON, on the cell's lease | cell agent |
//! | `/pgcell/placements/<cell>/<id>` | [`Placement`](super::store::Placement) JSON | per-cell API / broker |
//! | `/pgcell/ports/<cell>/<slot>` | member name holding the slot | same txn as the placement |
//! | `/pgcell/instances/<id>/secrets` | [`Secrets`](super::store::Secrets) JSON | broker, before placing |
//! | `/pgcell/instances/<id>/router_port` | the instance's router port (decimal) | same txn as the port claim |
//! | `/pgcell/instances/<id>/spec` | broker's instance spec (service, plan, parameters) | broker txn |
//! | `/pgcell/instances/<id>/operation` | the instance's last operation and its progress | broker |
//! | `/pgcell/instances/<id>/bindings/<bid>` | a binding (role name, password) | broker txn |
//! | `/pgcell/router_ports/<port>` | instance id holding the router port (what routers read: their role never reaches `instances/`) | allocator txn |
//! | `/pgcell/instances/<id>/restore` | the restore a clone bootstraps from (`pgbackrest::RestoreSpec` JSON) | broker txn (provision) |
//! | `/pgcell/backup_requests/<id>` | a backup asked for now | broker, `pgcell backup`; cleared by the leader's cell |
//! | `/pgcell/member_env/<cell>/<id>` | `cell::env::MemberEnv` JSON: the member's passwords and fixed settings | placement txn (broker, per-cell API); deleted with the placement |
//! | `/pgcell/seed/<id>/secrets`, `.../router_port` | a seed instance's (per-cell API) secrets and router port | its cells |
//! | `/pgcell/backups/<id>` | the instance's backup state; outlives the instance | the cell of its leader |
//! | `/pgcell/routers/<name>` | [`RouterRecord`](super::store::RouterRecord) JSON, on the router's lease | router |
//! | `/pgcell/tls/ca` | the generated fleet CA: certificate and **private key** (`tls::certs::CaPair` JSON); secret, never for routers | first cell or broker, put-if-absent (only without `tls.ca_cert_file`) |

pub const ROOT: &str = "/pgcell/";
pub const PATRONI_NAMESPACE: &str = "/service/";

pub fn cells() -> String {
    format!("{ROOT}cells/")
}

pub fn cell(cell: &str) -> String {
    format!("{ROOT}cells/{cell}")
}

pub fn placements() -> String {
    format!("{ROOT}placements/")
}

pub fn cell_placements(cell: &str) -> String {
    format!("{ROOT}placements/{cell}/")
}

pub fn placement(cell: &str, instance: &str) -> String {
    format!("{ROOT}placements/{cell}/{instance}")
}

pub fn port_slots() -> String {
    format!("{ROOT}ports/")
}

/// The cell and slot of a `/pgcell/ports/<cell>/<slot>` key.
pub fn port_slot_of(key: &str) -> Option<(&str, u32)> {
    let (cell, slot) = key.strip_prefix(ROOT)?.strip_prefix("ports/")?.split_once('/')?;
    Some((cell, slot.parse().ok()?))
}

pub fn cell_ports(cell: &str) -> String {
    format!("{ROOT}ports/{cell}/")
}

pub fn port_slot(cell: &str, slot: u32) -> String {
    format!("{ROOT}ports/{cell}/{slot}")
}

pub fn instances() -> String {
    format!("{ROOT}instances/")
}

pub fn instance(instance: &str) -> String {
    format!("{ROOT}instances/{instance}/")
}

pub fn secrets(instance: &str) -> String {
    format!("{ROOT}instances/{instance}/secrets")
}

pub fn spec(instance: &str) -> String {
    format!("{ROOT}instances/{instance}/spec")
}

pub fn operation(instance: &str) -> String {
    format!("{ROOT}instances/{instance}/operation")
}

/// A deprovisioned instance, on a lease: polling it answers 410 Gone, not 404.
pub fn deleted(instance: &str) -> String {
    format!("{ROOT}deleted/{instance}")
}

pub fn restore(instance: &str) -> String {
    format!("{ROOT}instances/{instance}/restore")
}

/// Outside `instances/`: the cell that leads the instance reads and clears it.
pub fn backup_request(instance: &str) -> String {
    format!("{ROOT}backup_requests/{instance}")
}

pub fn backup_requests() -> String {
    format!("{ROOT}backup_requests/")
}

/// What one member needs from its instance (passwords, settings fixed at
/// provisioning): written with its placement, readable by its cell alone.
pub fn member_env(cell: &str, instance: &str) -> String {
    format!("{ROOT}member_env/{cell}/{instance}")
}

pub fn member_envs() -> String {
    format!("{ROOT}member_env/")
}

pub fn cell_member_envs(cell: &str) -> String {
    format!("{ROOT}member_env/{cell}/")
}

/// A seed instance's own keys (made through the per-cell API, which has no
/// broker): shared by its cells, never under `instances/`.
pub fn seed_instance(instance: &str) -> String {
    format!("{ROOT}seed/{instance}/")
}

pub fn seed_instances() -> String {
    format!("{ROOT}seed/")
}

pub fn seed_secrets(instance: &str) -> String {
    format!("{ROOT}seed/{instance}/secrets")
}

pub fn seed_router_port(instance: &str) -> String {
    format!("{ROOT}seed/{instance}/router_port")
}

/// Backup states: outside `instances/` so that deprovisioning keeps them
/// (a deleted instance stays restorable for the retention period).
pub fn backups() -> String {
    format!("{ROOT}backups/")
}

pub fn backup_state(instance: &str) -> String {
    format!("{ROOT}backups/{instance}")
}

pub fn binding(instance: &str, binding: &str) -> String {
    format!("{ROOT}instances/{instance}/bindings/{binding}")
}

pub fn router_port(instance: &str) -> String {
    format!("{ROOT}instances/{instance}/router_port")
}

pub fn router_ports() -> String {
    format!("{ROOT}router_ports/")
}

pub fn router_port_claim(port: u16) -> String {
    format!("{ROOT}router_ports/{port}")
}

/// When the healer first saw a cell lost (unix seconds).
pub fn lost(cell: &str) -> String {
    format!("{ROOT}lost/{cell}")
}

pub fn losts() -> String {
    format!("{ROOT}lost/")
}

/// A cell an operator asked to empty (`pgcell cells retire`).
pub fn retiring(cell: &str) -> String {
    format!("{ROOT}retiring/{cell}")
}

pub fn retirings() -> String {
    format!("{ROOT}retiring/")
}

/// A member being replaced elsewhere, by its name.
pub fn replacement(old_member: &str) -> String {
    format!("{ROOT}replacements/{old_member}")
}

pub fn replacements() -> String {
    format!("{ROOT}replacements/")
}

/// Held by the one broker that runs the healer.
pub fn healer_lock() -> String {
    format!("{ROOT}healer")
}

pub fn routers() -> String {
    format!("{ROOT}routers/")
}

pub fn router(name: &str) -> String {
    format!("{ROOT}routers/{name}")
}

/// The instance of a `/pgcell/instances/<id>/router_port` key.
pub fn router_port_instance(key: &str) -> Option<&str> {
    key.strip_prefix(ROOT)?.strip_prefix("instances/")?.strip_suffix("/router_port")
}

/// Patroni's keys of one cluster, with the trailing slash so `cf-1` does not match `cf-10`.
pub fn patroni_scope(scope: &str) -> String {
    format!("{PATRONI_NAMESPACE}{scope}/")
}

/// Patroni's leader lock of a cluster (on its leader's lease).
pub fn patroni_leader(scope: &str) -> String {
    format!("{PATRONI_NAMESPACE}{scope}/leader")
}

pub fn patroni_member(scope: &str, member: &str) -> String {
    format!("{PATRONI_NAMESPACE}{scope}/members/{member}")
}

/// The fleet CA pgcell generated (certificate and key): as secret as `secrets`.
pub fn tls_ca() -> String {
    format!("{ROOT}tls/ca")
}

/// The instance id of a placement key (`/pgcell/placements/<cell>/<id>`).
pub fn placement_instance(key: &str) -> Option<(&str, &str)> {
    key.strip_prefix(ROOT)?.strip_prefix("placements/")?.split_once('/')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placement_keys_round_trip() {
        let k = placement("cell-a", "1");
        assert_eq!(placement_instance(&k), Some(("cell-a", "1")));
        assert!(k.starts_with(&cell_placements("cell-a")));
        assert!(!patroni_scope("cf-10").starts_with(&patroni_scope("cf-1")));
        assert_eq!(port_slot_of(&port_slot("cell-a", 7)), Some(("cell-a", 7)));
        assert!(port_slot(&"c".repeat(3), 1).starts_with(&cell_ports("ccc")));
        assert!(
            !cell_ports("c1").starts_with(&cell_ports("c10")) && !port_slot("c10", 0).starts_with(&cell_ports("c1"))
        );
    }
}
