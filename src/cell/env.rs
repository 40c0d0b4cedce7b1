//! What a member needs from its instance, kept where only its cell reads it.
//!
//! A cell's etcd role reaches `/pgcell/member_env/<cell>/` and not
//! `/pgcell/instances/`: whoever places a member (the broker, or the per-cell
//! API for a seed instance) writes its env in the placement's transaction, so a
//! cell holds the passwords of its own members and of no other cluster.

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::etcd::{Client, keys, store};
use crate::pgbackrest::RestoreSpec;

/// The cluster's passwords and the settings fixed when the instance was made.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct MemberEnv {
    pub secrets: store::Secrets,
    /// The instance's RPO bound in seconds, when it asked for one (else the cell's).
    #[serde(default)]
    pub archive_timeout: Option<u32>,
    /// `hostssl` only: a plaintext login is refused.
    #[serde(default)]
    pub require_tls: bool,
    /// The backup a clone bootstraps from.
    #[serde(default)]
    pub restore: Option<RestoreSpec>,
}

impl MemberEnv {
    /// A member of a seed instance: its passwords, nothing else set.
    pub fn seed(secrets: store::Secrets) -> Self {
        Self { secrets, archive_timeout: None, require_tls: false, restore: None }
    }

    pub fn to_bytes(&self) -> anyhow::Result<Vec<u8>> {
        Ok(serde_json::to_vec(self)?)
    }

    /// The env of `instance`'s member on `cell`. Missing means the member was
    /// placed without one (before pgcell wrote them): say who can fix it.
    pub async fn read(etcd: &mut Client, cell: &str, instance: &str) -> anyhow::Result<Self> {
        let key = keys::member_env(cell, instance);
        store::get_json(etcd, &key).await?.map(|(e, _)| e).with_context(|| {
            format!("{key} is missing: the member's passwords are written with its placement; a broker's healer writes it for members placed before")
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_prints_passwords_and_reads_older_records() {
        let env = MemberEnv::seed(store::Secrets::generate());
        assert!(!format!("{env:?}").contains(&env.secrets.superuser));
        let bytes = env.to_bytes().unwrap();
        let back: MemberEnv = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(back, env);
        // Only the passwords are required.
        let secrets = serde_json::to_value(&env.secrets).unwrap();
        let minimal: MemberEnv = serde_json::from_value(serde_json::json!({ "secrets": secrets })).unwrap();
        assert_eq!(minimal, env);
    }
}
