//! Typed reads and transactions on pgcell's keys. Every write that two daemons
//! could race on is a compare-and-swap transaction.

use anyhow::Context;
use etcd_client::{Client, Compare, CompareOp, GetOptions, Txn, TxnOp};
use serde::{Deserialize, Serialize, de::DeserializeOwned};

use super::keys;
use crate::secret::random_password;

/// The passwords of one cluster, generated once (by the broker before it
/// places members; by the first cell for a seed instance) so that every cell
/// renders the same ones.
#[derive(Clone, Deserialize, Serialize, PartialEq)]
pub struct Secrets {
    pub superuser: String,
    pub replication: String,
    pub rewind: String,
    pub admin: String,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secrets(<redacted>)")
    }
}

impl Secrets {
    pub fn generate() -> Self {
        Self {
            superuser: random_password(32),
            replication: random_password(32),
            rewind: random_password(32),
            admin: random_password(32),
        }
    }
}

/// A cell as it registers itself, on its lease.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct CellRecord {
    pub name: String,
    pub deployment: String,
    pub advertise_host: String,
    pub api_url: String,
    pub port_range: String,
    pub capacity: u32,
    pub zone: String,
}

/// A router as it registers itself, on its lease.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct RouterRecord {
    pub name: String,
    pub advertise_host: String,
    pub debug_url: String,
}

/// A member of an instance that should run on a cell: the desired state a cell reconciles to.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct Placement {
    pub instance_id: String,
    pub scope: String,
    pub member: String,
    pub cell: String,
    pub slot: u32,
    pub pg_port: u16,
    pub api_port: u16,
    pub service_id: String,
    pub plan_id: String,
    pub memory_mb: u64,
    /// Set when the member is to be removed with its data (deprovision, scale down):
    /// the cell removes the container, deletes the data, then the placement.
    #[serde(default)]
    pub purge: bool,
}

#[cfg(test)]
impl Placement {
    /// Instance `id`'s member on cell `cell`, slot 0 (ports 30000-30001), 512 MB: for tests.
    pub fn sample(id: &str, cell: &str) -> Self {
        Self {
            instance_id: id.into(),
            scope: crate::names::scope(id),
            member: crate::names::member(id, cell),
            cell: cell.into(),
            slot: 0,
            pg_port: 30000,
            api_port: 30001,
            service_id: "s".into(),
            plan_id: "p".into(),
            memory_mb: 512,
            purge: false,
        }
    }
}

/// What a cell offers to a new placement.
#[derive(Clone, Debug)]
pub struct CellPorts {
    pub cell: String,
    pub first_port: u16,
    pub slots: u32,
}

impl CellPorts {
    pub fn new(cell: &str, (first, last): (u16, u16), capacity: u32) -> Self {
        let ports = u32::from(last) - u32::from(first) + 1;
        let by_range = ports / 2;
        Self { cell: cell.into(), first_port: first, slots: by_range.min(capacity) }
    }

    /// PostgreSQL and Patroni REST ports of a slot: fixed by the slot, so a
    /// member keeps its ports across container re-creation and agent restarts.
    pub fn ports(&self, slot: u32) -> (u16, u16) {
        let pg = u32::from(self.first_port) + 2 * slot;
        (pg as u16, (pg + 1) as u16)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PlaceError {
    #[error("cell {0} has no free member slot (capacity or port range exhausted)")]
    NoCapacity(String),
    #[error(transparent)]
    Etcd(#[from] anyhow::Error),
}

pub enum Placed {
    Created(Placement),
    Exists(Placement),
}

pub async fn get_json<T: DeserializeOwned>(client: &mut Client, key: &str) -> anyhow::Result<Option<(T, i64)>> {
    let resp = client.get(key, None).await.with_context(|| format!("etcd get {key}"))?;
    match resp.kvs().first() {
        None => Ok(None),
        Some(kv) => {
            let v = serde_json::from_slice(kv.value()).with_context(|| format!("bad JSON at {key}"))?;
            Ok(Some((v, kv.mod_revision())))
        }
    }
}

/// Every `(key, value)` under a prefix, with the revision of the read.
pub async fn get_prefix(client: &mut Client, prefix: &str) -> anyhow::Result<(Vec<(String, Vec<u8>)>, i64)> {
    let resp = client
        .get(prefix, Some(GetOptions::new().with_prefix()))
        .await
        .with_context(|| format!("etcd get prefix {prefix}"))?;
    let rev = resp.header().map(|h| h.revision()).unwrap_or_default();
    let kvs =
        resp.kvs().iter().map(|kv| (String::from_utf8_lossy(kv.key()).into_owned(), kv.value().to_vec())).collect();
    Ok((kvs, rev))
}

/// Parses every value under a prefix, skipping (and logging) the ones that are not `T`.
pub async fn list_json<T: DeserializeOwned>(client: &mut Client, prefix: &str) -> anyhow::Result<Vec<T>> {
    let (kvs, _) = get_prefix(client, prefix).await?;
    Ok(kvs
        .into_iter()
        .filter_map(|(k, v)| match serde_json::from_slice(&v) {
            Ok(t) => Some(t),
            Err(e) => {
                tracing::warn!(key = %k, error = %e, "skipping a value that does not parse");
                None
            }
        })
        .collect())
}

/// Returns the cluster's secrets, creating them if they do not exist yet.
pub async fn ensure_secrets(client: &mut Client, instance: &str) -> anyhow::Result<Secrets> {
    ensure_secrets_at(client, &keys::secrets(instance)).await
}

/// Like [`ensure_secrets`], kept at `key` (a seed instance keeps them under `seed/`).
pub async fn ensure_secrets_at(client: &mut Client, key: &str) -> anyhow::Result<Secrets> {
    let fresh = Secrets::generate();
    let txn = Txn::new()
        .when([Compare::create_revision(key, CompareOp::Equal, 0)])
        .and_then([TxnOp::put(key, serde_json::to_vec(&fresh)?, None)])
        .or_else([TxnOp::get(key, None)]);
    let resp = client.txn(txn).await.context("etcd txn (secrets)")?;
    if resp.succeeded() {
        return Ok(fresh);
    }
    get_json(client, key).await?.map(|(s, _)| s).context("secrets vanished while being read")
}

/// Places a member on a cell, taking the lowest free port slot; two callers can
/// never take the same slot or place the same instance twice on one cell.
/// `env` (the member's passwords and settings) is written in the same
/// transaction, at `keys::member_env`: the cell never sees one without the other.
pub async fn place_member(
    client: &mut Client,
    cell: &CellPorts,
    want: Placement,
    env: &[u8],
) -> Result<Placed, PlaceError> {
    place_with(client, cell, want, env, None).await
}

/// Like [`place_member`], and writes `record` (key, value) in the same
/// transaction, only if that key does not exist yet: e.g. a replacement record,
/// so that one member never gets two replacements.
pub async fn place_with(
    client: &mut Client,
    cell: &CellPorts,
    mut want: Placement,
    env: &[u8],
    record: Option<(&str, Vec<u8>)>,
) -> Result<Placed, PlaceError> {
    let key = keys::placement(&cell.cell, &want.instance_id);
    for _ in 0..16 {
        if let Some((existing, _)) = get_json::<Placement>(client, &key).await? {
            return Ok(Placed::Exists(existing));
        }
        let (used, _) = get_prefix(client, &keys::cell_ports(&cell.cell)).await?;
        let used: std::collections::HashSet<u32> =
            used.iter().filter_map(|(k, _)| k.rsplit('/').next()?.parse().ok()).collect();
        let slot =
            (0..cell.slots).find(|s| !used.contains(s)).ok_or_else(|| PlaceError::NoCapacity(cell.cell.clone()))?;
        let slot_key = keys::port_slot(&cell.cell, slot);
        (want.pg_port, want.api_port) = cell.ports(slot);
        want.slot = slot;
        let mut when = vec![
            Compare::create_revision(key.as_str(), CompareOp::Equal, 0),
            Compare::create_revision(slot_key.as_str(), CompareOp::Equal, 0),
        ];
        let mut ops = vec![
            TxnOp::put(key.as_str(), serde_json::to_vec(&want).map_err(anyhow::Error::from)?, None),
            TxnOp::put(slot_key.as_str(), want.member.as_str(), None),
            TxnOp::put(keys::member_env(&cell.cell, &want.instance_id), env, None),
        ];
        if let Some((k, v)) = &record {
            if client.get(*k, None).await.context("etcd get (placement record)")?.count() > 0 {
                return Err(PlaceError::Etcd(anyhow::anyhow!("{k} exists already")));
            }
            when.push(Compare::create_revision(*k, CompareOp::Equal, 0));
            ops.push(TxnOp::put(*k, v.clone(), None));
        }
        if client.txn(Txn::new().when(when).and_then(ops)).await.context("etcd txn (placement)")?.succeeded() {
            return Ok(Placed::Created(want));
        }
    }
    Err(PlaceError::Etcd(anyhow::anyhow!("placement on {} kept racing; try again", cell.cell)))
}

/// What a compare-and-swap came to. Losing one is normal (someone else
/// changed the key first), so every caller must say what it does then.
#[must_use = "a compare-and-swap can lose: handle `Swap::Lost`"]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Swap {
    Done,
    Lost,
}

impl Swap {
    pub fn from_txn(succeeded: bool) -> Self {
        if succeeded { Swap::Done } else { Swap::Lost }
    }

    pub fn done(self) -> bool {
        self == Swap::Done
    }
}

/// Removes a placement, its member's env and its port slot, if the placement
/// is still the one read.
pub async fn remove_placement(client: &mut Client, p: &Placement, mod_rev: i64) -> anyhow::Result<Swap> {
    let key = keys::placement(&p.cell, &p.instance_id);
    let txn = Txn::new().when([Compare::mod_revision(key.as_str(), CompareOp::Equal, mod_rev)]).and_then([
        TxnOp::delete(key.as_str(), None),
        TxnOp::delete(keys::member_env(&p.cell, &p.instance_id), None),
        TxnOp::delete(keys::port_slot(&p.cell, p.slot), None),
    ]);
    Ok(Swap::from_txn(client.txn(txn).await.context("etcd txn (remove placement)")?.succeeded()))
}

/// Ends a dead leader's lock: deletes `/service/<scope>/leader` only if it still
/// names `member`, so a leader elected meanwhile is never touched.
pub async fn end_leader_lock(client: &mut Client, scope: &str, member: &str) -> anyhow::Result<Swap> {
    let key = keys::patroni_leader(scope);
    let txn = Txn::new()
        .when([Compare::value(key.as_str(), CompareOp::Equal, member)])
        .and_then([TxnOp::delete(key.as_str(), None)]);
    Ok(Swap::from_txn(client.txn(txn).await.context("etcd txn (end leader lock)")?.succeeded()))
}

/// Every placement of an instance, with its mod revision.
pub async fn instance_placements(client: &mut Client, instance: &str) -> anyhow::Result<Vec<(Placement, i64)>> {
    let resp =
        client.get(keys::placements(), Some(GetOptions::new().with_prefix())).await.context("etcd get placements")?;
    Ok(resp
        .kvs()
        .iter()
        .filter(|kv| {
            std::str::from_utf8(kv.key()).ok().and_then(keys::placement_instance).is_some_and(|(_, id)| id == instance)
        })
        .filter_map(|kv| Some((serde_json::from_slice(kv.value()).ok()?, kv.mod_revision())))
        .collect())
}

/// Rewrites a placement if it did not change since it was read.
pub async fn update_placement(client: &mut Client, p: &Placement, mod_rev: i64) -> anyhow::Result<Swap> {
    let key = keys::placement(&p.cell, &p.instance_id);
    let txn = Txn::new().when([Compare::mod_revision(key.as_str(), CompareOp::Equal, mod_rev)]).and_then([TxnOp::put(
        key.as_str(),
        serde_json::to_vec(p)?,
        None,
    )]);
    Ok(Swap::from_txn(client.txn(txn).await.context("etcd txn (update placement)")?.succeeded()))
}

/// Cells holding a placement of the instance.
pub async fn instance_cells(client: &mut Client, instance: &str) -> anyhow::Result<Vec<String>> {
    let resp = client
        .get(keys::placements(), Some(GetOptions::new().with_prefix().with_keys_only()))
        .await
        .context("etcd get placements")?;
    Ok(resp
        .kvs()
        .iter()
        .filter_map(|kv| {
            let k = std::str::from_utf8(kv.key()).ok()?;
            let (cell, id) = keys::placement_instance(k)?;
            (id == instance).then(|| cell.to_string())
        })
        .collect())
}

/// The instance's router port: the one it holds, or the lowest free one of
/// `range`, claimed with a transaction so two allocators never hand out the same.
pub async fn ensure_router_port(client: &mut Client, instance: &str, range: (u16, u16)) -> anyhow::Result<u16> {
    ensure_router_port_at(client, &keys::router_port(instance), instance, range).await
}

/// Like [`ensure_router_port`], the instance's port kept at `key` (a seed
/// instance keeps it under `seed/`).
pub async fn ensure_router_port_at(
    client: &mut Client,
    key: &str,
    instance: &str,
    (first, last): (u16, u16),
) -> anyhow::Result<u16> {
    for _ in 0..16 {
        if let Some(port) = router_port_at(client, key).await? {
            return Ok(port);
        }
        let (claimed, _) = get_prefix(client, &keys::router_ports()).await?;
        let claimed: std::collections::HashSet<u16> =
            claimed.iter().filter_map(|(k, _)| k.rsplit('/').next()?.parse().ok()).collect();
        let port = (first..=last)
            .find(|p| !claimed.contains(p))
            .with_context(|| format!("no free router port left in {first}-{last}"))?;
        let claim = keys::router_port_claim(port);
        let txn = Txn::new()
            .when([
                Compare::create_revision(key, CompareOp::Equal, 0),
                Compare::create_revision(claim.as_str(), CompareOp::Equal, 0),
            ])
            .and_then([TxnOp::put(key, port.to_string(), None), TxnOp::put(claim.as_str(), instance, None)]);
        if client.txn(txn).await.context("etcd txn (router port)")?.succeeded() {
            return Ok(port);
        }
    }
    anyhow::bail!("router port allocation for {instance} kept racing; try again")
}

pub async fn router_port_of(client: &mut Client, instance: &str) -> anyhow::Result<Option<u16>> {
    router_port_at(client, &keys::router_port(instance)).await
}

async fn router_port_at(client: &mut Client, key: &str) -> anyhow::Result<Option<u16>> {
    let resp = client.get(key, None).await.context("etcd get router port")?;
    Ok(resp.kvs().first().and_then(|kv| std::str::from_utf8(kv.value()).ok()?.parse().ok()))
}

/// A seed instance (made through the per-cell API, so no broker spec) whose
/// last member is `last` being purged: its keys go with it. Broker instances
/// are left to the broker, which deletes their keys when no placement is left.
pub async fn forget_seed_instance_if_last(client: &mut Client, last: &Placement) -> anyhow::Result<()> {
    let id = &last.instance_id;
    let others = instance_cells(client, id).await?.into_iter().any(|c| c != last.cell);
    let seed = client.get(keys::seed_secrets(id), None).await.context("etcd get seed secrets")?.count() > 0;
    if !others && seed {
        mark_backups_deleted(client, id).await?;
        delete_keys(client, id, &keys::seed_instance(id)).await?;
        tracing::info!(instance = %id, "last member removed; cluster keys deleted");
    }
    Ok(())
}

/// Marks an instance's backup state (`/pgcell/backups/<id>`) deprovisioned
/// now: the backups outlive the instance for a while, restorable by id. A
/// JSON field set in place (the state's type lives in the backup logic).
pub async fn mark_backups_deleted(client: &mut Client, instance: &str) -> anyhow::Result<()> {
    let key = keys::backup_state(instance);
    let Some((mut v, rev)) = get_json::<serde_json::Value>(client, &key).await? else { return Ok(()) };
    if !v["deleted_at"].is_null() {
        return Ok(());
    }
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    v["deleted_at"] = now.into();
    let txn = Txn::new().when([Compare::mod_revision(key.as_str(), CompareOp::Equal, rev)]).and_then([TxnOp::put(
        key.as_str(),
        serde_json::to_vec(&v)?,
        None,
    )]);
    client.txn(txn).await.context("etcd txn (backup state deleted)")?;
    Ok(())
}

/// Deletes an instance's own keys (its router port claim and backup request
/// included) and its Patroni cluster's keys: nothing else.
pub async fn delete_instance_keys(client: &mut Client, instance: &str) -> anyhow::Result<()> {
    delete_keys(client, instance, &keys::instance(instance)).await
}

/// [`delete_instance_keys`] for an instance whose own keys (its router port
/// at `<prefix>router_port` among them) are under `prefix`.
async fn delete_keys(client: &mut Client, instance: &str, prefix: &str) -> anyhow::Result<()> {
    let opts = || Some(etcd_client::DeleteOptions::new().with_prefix());
    if let Some(port) = router_port_at(client, &format!("{prefix}router_port")).await? {
        let claim = keys::router_port_claim(port);
        // Only our own claim: compare its value before deleting it.
        let txn = Txn::new()
            .when([Compare::value(claim.as_str(), CompareOp::Equal, instance)])
            .and_then([TxnOp::delete(claim.as_str(), None)]);
        client.txn(txn).await.context("etcd txn (release router port)")?;
    }
    client.delete(keys::backup_request(instance), None).await.context("etcd delete backup request")?;
    client.delete(prefix, opts()).await.context("etcd delete instance keys")?;
    client
        .delete(keys::patroni_scope(&crate::names::scope(instance)), opts())
        .await
        .context("etcd delete Patroni keys")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_fit_range_and_capacity() {
        let c = CellPorts::new("a", (30000, 30009), 32);
        assert_eq!(c.slots, 5);
        assert_eq!(c.ports(0), (30000, 30001));
        assert_eq!(c.ports(4), (30008, 30009));
        assert_eq!(CellPorts::new("a", (30000, 30999), 3).slots, 3);
        assert_eq!(CellPorts::new("a", (30000, 30000), 3).slots, 0);
    }

    #[test]
    fn secrets_never_print() {
        let s = Secrets::generate();
        assert!(!format!("{s:?}").contains(&s.superuser));
    }
}
