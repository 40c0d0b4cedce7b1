//! Backups of every instance: what the cell of an instance's leader does when
//! ([`state`], plain), how it does it ([`run`]: `docker exec` of pgBackRest in
//! the leader's container, the result published to etcd), and which restore
//! targets a stanza can honour ([`target`], plain). See docs/backups.md.

pub mod expire;
pub mod run;
pub mod state;
pub mod target;

use anyhow::Context;
use etcd_client::Client;

use crate::etcd::{keys, store};
use crate::pgbackrest::RestoreSpec;

/// The restore a provision of `id` asks for, checked against the source's
/// published state: `Ok(Err(why))` is the user's mistake (a 400), with the
/// recoverable window in it.
pub async fn resolve_restore(
    etcd: &mut Client,
    id: &str,
    req: &target::RestoreRequest,
) -> anyhow::Result<Result<RestoreSpec, String>> {
    if req.from == id {
        // Its own stanza would be the source's: the new instance would archive into it.
        return Ok(Err(format!("an instance cannot be restored from its own id {id:?}; choose a new id")));
    }
    let source: Option<state::BackupState> =
        store::get_json(etcd, &keys::backup_state(&req.from)).await?.map(|(s, _)| s);
    Ok(target::resolve(req, source.as_ref()))
}

/// Asks the cell of the instance's leader for a backup now; returns the request's id.
pub async fn request(etcd: &mut Client, instance: &str, kind: &str) -> anyhow::Result<String> {
    anyhow::ensure!(crate::names::is_safe(instance), "{instance:?} is not an instance id");
    anyhow::ensure!(["full", "diff", "incr"].contains(&kind), "backup type must be full, diff or incr");
    let at =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
    let req = state::Request { id: crate::secret::random_password(12), kind: kind.into(), at };
    etcd.put(keys::backup_request(instance), serde_json::to_vec(&req)?, None)
        .await
        .context("etcd put backup request")?;
    Ok(req.id)
}

/// Records in the instance's backup state that it was deprovisioned: its
/// backups stay, restorable by id, and `pgcell backups` says so.
pub async fn mark_deleted(etcd: &mut Client, instance: &str) -> anyhow::Result<()> {
    store::mark_backups_deleted(etcd, instance).await
}
