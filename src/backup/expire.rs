//! Deleting a deprovisioned instance's backups once it has been gone for
//! `deleted_keep` (by default the retention period): until then it stays
//! restorable by id. Any cell may do it: the first to claim it in etcd (a
//! compare-and-swap on the state) runs pgBackRest `stanza-delete` in a
//! scratch container, then deletes the state.

use anyhow::Context;
use etcd_client::{Compare, CompareOp, GetOptions, Txn, TxnOp};

use super::state::{self, BackupState};
use crate::cell::member::CellDeps;
use crate::etcd::keys;

pub async fn expire_deleted(deps: &CellDeps, now: i64) -> anyhow::Result<()> {
    let mut etcd = deps.etcd.clone();
    let resp = etcd.get(keys::backups(), Some(GetOptions::new().with_prefix())).await.context("etcd get backups")?;
    let keep = deps.cfg.backup.deleted_keep();
    for kv in resp.kvs() {
        let Ok(mut s) = serde_json::from_slice::<BackupState>(kv.value()) else { continue };
        if !state::expire_due(&s, keep, now) || !crate::names::is_safe(&s.instance) {
            continue;
        }
        let key = keys::backup_state(&s.instance);
        s.expiring = Some((deps.cfg.name.clone(), now));
        let claim = Txn::new()
            .when([Compare::mod_revision(key.as_str(), CompareOp::Equal, kv.mod_revision())])
            .and_then([TxnOp::put(key.as_str(), serde_json::to_vec(&s)?, None)]);
        if !etcd.txn(claim).await.context("etcd txn (claim expiry)")?.succeeded() {
            continue;
        }
        match delete_stanza(deps, &s.instance).await {
            Ok(()) => {
                etcd.delete(key, None).await.context("etcd delete backup state")?;
                tracing::info!(instance = %s.instance, "deprovisioned instance's backups deleted (kept for their time)");
            }
            Err(e) => {
                // The claim stays: another try after it goes stale.
                tracing::warn!(instance = %s.instance, error = %format!("{e:#}"), "cannot delete a deprovisioned instance's backups");
            }
        }
    }
    Ok(())
}

async fn delete_stanza(deps: &CellDeps, id: &str) -> anyhow::Result<()> {
    // No member is left to borrow a configuration from: render one.
    let conf = deps.cfg.data_root.join(format!(".expire-{id}.conf"));
    let text = crate::pgbackrest::render_conf(&deps.cfg.backup, id, 5432);
    // Read inside the scratch container by the member's user.
    let user = deps.member_owner().await?;
    crate::cell::files::write_member_file(&conf, text.as_bytes(), user)?;
    let script = format!(
        "set -e\nmkdir -p {pgdata} /var/lib/pgcell/spool /var/lib/pgcell/pgbackrest-log\n\
         cp /etc/pgcell-check/pgbackrest.conf /var/lib/pgcell/pgbackrest.conf\n\
         pgbackrest --stanza={id} stop\n\
         pgbackrest --stanza={id} --force stanza-delete\n\
         echo PGCELL-EXPIRE-OK\n",
        pgdata = crate::pgbackrest::PGDATA
    );
    let name = format!("pgcell-expire-{}-{id}", deps.cfg.name);
    let scratch = crate::docker::scratch::Scratch {
        name: &name,
        image: &deps.cfg.image,
        labels: [(crate::docker::LABEL_DEPLOYMENT.to_string(), deps.cfg.deployment.clone())].into(),
        binds: crate::pgbackrest::repo_binds(&deps.cfg.backup)
            .into_iter()
            .chain([format!("{}:/etc/pgcell-check/pgbackrest.conf:ro", conf.display())])
            .collect(),
        network: crate::pgbackrest::repo_network(&deps.cfg.backup),
        memory_mb: 256,
        script: &script,
        user,
    };
    let res = crate::docker::scratch::run(&deps.docker, &scratch).await;
    let _ = std::fs::remove_file(&conf);
    let out = res?;
    anyhow::ensure!(
        out.stdout.contains("PGCELL-EXPIRE-OK"),
        "{:#}",
        out.check("stanza-delete").err().map_or("no OK line".into(), |e| format!("{e:#}"))
    );
    Ok(())
}
