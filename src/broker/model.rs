//! What the broker keeps in etcd for an instance: its spec, its last
//! operation, its bindings.

use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use etcd_client::{Client, Compare, CompareOp, Txn, TxnOp};
use serde::{Deserialize, Serialize};

use super::catalog::Parameters;
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
}

impl std::fmt::Debug for Binding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Binding({}, {}, <redacted>)", self.id, self.username)
    }
}

impl Binding {
    /// A role name from the binding id: safe names only (checked by the caller), at most 63 bytes.
    pub fn new(id: &str) -> Self {
        let mut username = format!("b_{}", id.to_ascii_lowercase().replace('-', "_"));
        username.truncate(63);
        Self { id: id.into(), username, password: crate::secret::random_password(32) }
    }
}

pub async fn load(client: &mut Client, id: &str) -> anyhow::Result<(Option<InstanceSpec>, Option<Operation>)> {
    let spec = store::get_json(client, &keys::spec(id)).await?.map(|(s, _)| s);
    let op = store::get_json(client, &keys::operation(id)).await?.map(|(o, _)| o);
    Ok((spec, op))
}

/// Creates the instance (spec + its provision operation) unless it exists; returns whether it did.
pub async fn create(client: &mut Client, id: &str, spec: &InstanceSpec, op: &Operation) -> anyhow::Result<bool> {
    let key = keys::spec(id);
    let txn = Txn::new().when([Compare::create_revision(key.as_str(), CompareOp::Equal, 0)]).and_then([
        TxnOp::put(key.as_str(), serde_json::to_vec(spec)?, None),
        TxnOp::put(keys::operation(id), serde_json::to_vec(op)?, None),
    ]);
    Ok(client.txn(txn).await.context("etcd txn (create instance)")?.succeeded())
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
        let b = Binding::new("6A1F-22");
        assert_eq!(b.username, "b_6a1f_22");
        assert!(!format!("{b:?}").contains(&b.password));
        assert_eq!(Binding::new(&"x".repeat(63)).username.len(), 63);
    }
}
