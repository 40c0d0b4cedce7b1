//! `pgcell backups` and `pgcell backup`: what the leaders' cells published,
//! and asking one for a backup now.

use etcd_client::Client;

/// Every instance's backup state (`/pgcell/backups/`), or one instance's.
pub async fn read_backups(
    client: &mut Client,
    instance: Option<&str>,
) -> anyhow::Result<Vec<crate::backup::state::BackupState>> {
    let all: Vec<crate::backup::state::BackupState> =
        crate::etcd::store::list_json(client, &crate::etcd::keys::backups()).await?;
    Ok(all.into_iter().filter(|s| instance.is_none_or(|i| s.instance == i)).collect())
}

fn mb(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

/// `pgcell backups`: per instance its recoverable window and archive health,
/// then each backup with type, size, duration.
pub fn backups_table(states: &[crate::backup::state::BackupState], now: f64) -> Vec<String> {
    use crate::backup::target::Window;
    let mut out = vec![];
    for s in states {
        let window = Window::of(s).map_or("no backup yet".into(), |w| w.describe());
        let age = s.archive_age(now).map_or("never".into(), |a| format!("{a:.0} s ago"));
        let run = s.last_run.as_ref().map_or("none".into(), |r| {
            format!(
                "{} {} in {:.1} s{}",
                r.kind,
                if r.ok { "ok" } else { "FAILED" },
                r.secs,
                r.error.as_deref().map(|e| format!(": {e}")).unwrap_or_default()
            )
        });
        let check = s.last_check.as_ref().map_or("not yet".into(), |c| {
            let how = if c.ok { "ok".to_string() } else { format!("FAILED: {}", c.error.as_deref().unwrap_or("?")) };
            format!("{how}, {:.0} s ago, backup {}", (now - c.at as f64).max(0.0), c.label)
        });
        let name = match s.deleted_at {
            Some(t) => format!("{} (deprovisioned {:.0} h ago)", s.instance, (now - t as f64).max(0.0) / 3600.0),
            None => s.instance.clone(),
        };
        out.push(format!(
            "{}: recoverable {window}; last WAL archived {age} ({}); archive failures {}; repository {}; last run: {run}; restore check: {check}{}",
            name,
            s.last_archived_wal.as_deref().unwrap_or("-"),
            s.archive_failed_count,
            mb(s.info.repo_size()),
            match (&s.repo_error, s.needs_full()) {
                (Some(e), _) => format!("; REPOSITORY UNREACHABLE: {e}"),
                (None, true) => "; WAL DROPPED: needs a new full backup".into(),
                _ => String::new(),
            },
        ));
        for b in &s.info.backups {
            out.push(format!(
                "  {:<34} {:<4} {:>10} (repo {:>10}) {:>6.1} s  stop {}",
                b.label,
                b.kind,
                mb(b.size),
                mb(b.repo_size),
                (b.stop - b.start) as f64,
                b.stop
            ));
        }
    }
    out
}

/// Asks the cell of the instance's leader for a backup now (`pgcell backup`).
pub async fn request_backup(client: &mut Client, instance: &str, kind: &str) -> anyhow::Result<String> {
    crate::backup::request(client, instance, kind).await
}
