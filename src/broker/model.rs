//! What the broker keeps in etcd for an instance: its spec, its last
//! operation, its bindings.

use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use etcd_client::{Client, Compare, CompareOp, Txn, TxnOp};
use serde::{Deserialize, Serialize};

use super::catalog::Parameters;
use crate::cell::env::MemberEnv;
use crate::etcd::{keys, store};

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct InstanceSpec {
    pub service_id: String,
    pub plan_id: String,
    pub parameters: Parameters,
    #[serde(default)]
    pub organization_guid: Option<String>,
    #[serde(default)]
    pub space_guid: Option<String>,
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum OpKind {
    Provision,
    Update,
    Deprovision,
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
pub enum OpState {
    #[serde(rename = "in progress")]
    InProgress,
    #[serde(rename = "succeeded")]
    Succeeded,
    #[serde(rename = "failed")]
    Failed,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct Operation {
    pub id: String,
    pub kind: OpKind,
    pub state: OpState,
    pub description: String,
    pub started: u64,
}

impl Operation {
    pub fn new(kind: OpKind, description: &str) -> Self {
        let id = format!(
            "{}-{}",
            serde_json::to_value(kind).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default(),
            crate::secret::random_password(12)
        );
        Self { id, kind, state: OpState::InProgress, description: description.into(), started: now() }
    }

    pub fn age_secs(&self) -> u64 {
        now().saturating_sub(self.started)
    }
}

pub fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default()
}

/// A binding: its own PostgreSQL role. The password is kept so that fetching
/// the binding returns the same credentials (bindings are retrievable).
#[derive(Clone, Deserialize, Serialize, PartialEq)]
pub struct Binding {
    pub id: String,
    pub username: String,
    pub password: String,
    /// What the platform asked for: a retry with other attributes is a conflict.
    #[serde(default)]
    pub request: BindRequest,
}

/// The attributes of a bind request that make two requests the same binding.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
pub struct BindRequest {
    pub service_id: String,
    pub plan_id: String,
    #[serde(default)]
    pub app_guid: Option<String>,
    #[serde(default)]
    pub bind_resource: Option<serde_json::Value>,
    #[serde(default)]
    pub parameters: Option<serde_json::Value>,
}

impl std::fmt::Debug for Binding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Binding({}, {}, <redacted>)", self.id, self.username)
    }
}

impl Binding {
    /// A role name from the binding id: safe names only (checked by the caller), at most 63 bytes.
    pub fn new(id: &str, request: BindRequest) -> Self {
        let mut username = format!("b_{}", id.to_ascii_lowercase().replace('-', "_"));
        username.truncate(63);
        Self { id: id.into(), username, password: crate::secret::random_password(32), request }
    }
}

/// How long a deprovisioned instance is remembered (polling answers 410, not 404).
pub const DELETED_MEMORY_SECS: i64 = 24 * 3600;

/// Records that the instance was deprovisioned by operation `op_id`, on a lease.
pub async fn remember_deleted(client: &mut Client, id: &str, op_id: &str) -> anyhow::Result<()> {
    let lease = client.lease_grant(DELETED_MEMORY_SECS, None).await.context("lease for the tombstone")?.id();
    client
        .put(keys::deleted(id), op_id, Some(etcd_client::PutOptions::new().with_lease(lease)))
        .await
        .context("etcd put (tombstone)")?;
    Ok(())
}

/// Whether the instance was deprovisioned lately.
pub async fn was_deleted(client: &mut Client, id: &str) -> anyhow::Result<bool> {
    Ok(client.get(keys::deleted(id), None).await.context("etcd get (tombstone)")?.count() > 0)
}

/// Ids of the instances whose last operation is in progress.
pub async fn in_progress(client: &mut Client) -> anyhow::Result<Vec<String>> {
    let (kvs, _) = store::get_prefix(client, &keys::instances()).await?;
    Ok(kvs
        .iter()
        .filter_map(|(k, v)| {
            let id = k.strip_prefix(&keys::instances())?.strip_suffix("/operation")?;
            let op: Operation = serde_json::from_slice(v).ok()?;
            (op.state == OpState::InProgress).then(|| id.to_string())
        })
        .collect())
}

/// Stores a new binding unless one with this id exists; returns whether it did.
pub async fn create_binding(client: &mut Client, instance: &str, binding: &Binding) -> anyhow::Result<bool> {
    let key = keys::binding(instance, &binding.id);
    let txn = Txn::new().when([Compare::create_revision(key.as_str(), CompareOp::Equal, 0)]).and_then([TxnOp::put(
        key.as_str(),
        serde_json::to_vec(binding)?,
        None,
    )]);
    Ok(client.txn(txn).await.context("etcd txn (create binding)")?.succeeded())
}

pub async fn load_binding(client: &mut Client, instance: &str, id: &str) -> anyhow::Result<Option<Binding>> {
    Ok(store::get_json(client, &keys::binding(instance, id)).await?.map(|(b, _)| b))
}

pub async fn delete_binding(client: &mut Client, instance: &str, id: &str) -> anyhow::Result<()> {
    client.delete(keys::binding(instance, id), None).await.context("etcd delete binding")?;
    Ok(())
}

pub async fn load(client: &mut Client, id: &str) -> anyhow::Result<(Option<InstanceSpec>, Option<Operation>)> {
    let spec = store::get_json(client, &keys::spec(id)).await?.map(|(s, _)| s);
    let op = store::get_json(client, &keys::operation(id)).await?.map(|(o, _)| o);
    Ok((spec, op))
}

/// Creates the instance (spec + its provision operation, and the restore its
/// members bootstrap from) unless it exists, or its id still names backups
/// (a deprovisioned instance's, kept for restores: the stanza is the id, and a
/// new cluster would archive into it and restore replicas from it); returns
/// whether it did.
pub async fn create(
    client: &mut Client,
    id: &str,
    spec: &InstanceSpec,
    op: &Operation,
    restore: Option<&crate::pgbackrest::RestoreSpec>,
) -> anyhow::Result<bool> {
    let key = keys::spec(id);
    let mut ops = vec![
        TxnOp::put(key.as_str(), serde_json::to_vec(spec)?, None),
        TxnOp::put(keys::operation(id), serde_json::to_vec(op)?, None),
        TxnOp::delete(keys::deleted(id), None),
    ];
    if let Some(r) = restore {
        ops.push(TxnOp::put(keys::restore(id), serde_json::to_vec(r)?, None));
    }
    let absent = |k: &str| Compare::create_revision(k, CompareOp::Equal, 0);
    let txn = Txn::new().when([absent(&key), absent(&keys::backup_state(id))]).and_then(ops);
    Ok(client.txn(txn).await.context("etcd txn (create instance)")?.succeeded())
}

/// What each member of instance `id` is given with its placement: the
/// instance's passwords (made now if they are not yet) and the settings fixed
/// at provisioning. `None`: the instance has no spec (not the broker's).
pub async fn member_env(client: &mut Client, id: &str) -> anyhow::Result<Option<MemberEnv>> {
    let Some((spec, _)) = store::get_json::<InstanceSpec>(client, &keys::spec(id)).await? else { return Ok(None) };
    let secrets = store::ensure_secrets(client, id).await?;
    let restore = store::get_json(client, &keys::restore(id)).await?.map(|(r, _)| r);
    Ok(Some(MemberEnv {
        secrets,
        archive_timeout: spec.parameters.archive_timeout,
        require_tls: spec.parameters.tls_required(),
        restore,
    }))
}

/// Starts a new operation, only if the one read (`prev`) is still the last one
/// and is not in progress: two operations on one instance never run at once.
pub async fn begin(
    client: &mut Client,
    id: &str,
    prev: &Operation,
    next: &Operation,
    spec: Option<&InstanceSpec>,
) -> anyhow::Result<bool> {
    let key = keys::operation(id);
    let mut ops = vec![TxnOp::put(key.as_str(), serde_json::to_vec(next)?, None)];
    if let Some(s) = spec {
        ops.push(TxnOp::put(keys::spec(id), serde_json::to_vec(s)?, None));
    }
    let txn =
        Txn::new().when([Compare::value(key.as_str(), CompareOp::Equal, serde_json::to_vec(prev)?)]).and_then(ops);
    Ok(client.txn(txn).await.context("etcd txn (begin operation)")?.succeeded())
}

/// Records progress of an operation, if it is still that operation.
pub async fn save_progress(client: &mut Client, id: &str, op: &Operation) -> anyhow::Result<()> {
    let key = keys::operation(id);
    let Some((cur, rev)) = store::get_json::<Operation>(client, &key).await? else { return Ok(()) };
    if cur.id != op.id || cur == *op {
        return Ok(());
    }
    let txn = Txn::new().when([Compare::mod_revision(key.as_str(), CompareOp::Equal, rev)]).and_then([TxnOp::put(
        key.as_str(),
        serde_json::to_vec(op)?,
        None,
    )]);
    client.txn(txn).await.context("etcd txn (operation progress)")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operation_states_use_osb_words() {
        let op = Operation::new(OpKind::Provision, "x");
        let v = serde_json::to_value(&op).unwrap();
        assert_eq!(v["state"], "in progress");
        assert_eq!(v["kind"], "provision");
        assert!(op.id.starts_with("provision-"));
    }

    #[test]
    fn binding_roles_are_safe_and_secret() {
        let b = Binding::new("6A1F-22", BindRequest::default());
        assert_eq!(b.username, "b_6a1f_22");
        assert!(!format!("{b:?}").contains(&b.password));
        assert_eq!(Binding::new(&"x".repeat(63), BindRequest::default()).username.len(), 63);
    }
}
