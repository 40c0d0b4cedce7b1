//! An instance's backup state, as the cell of its leader publishes it in etcd
//! (`/pgcell/backups/<id>`, kept after deprovision so a deleted instance stays
//! restorable), and the decision of what to do next. Plain data, no I/O.

use serde::{Deserialize, Serialize};

use crate::config::BackupConfig;
use crate::pgbackrest::info::StanzaInfo;

/// A transaction the leader's cell committed on purpose, with the wall-clock
/// time read just before it and the WAL file holding it. Once that file is
/// archived, any target time before `at` has a commit after it in the archive
/// (a time target with none fails: "recovery ended before configured
/// recovery target was reached").
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
pub struct Heartbeat {
    pub at: f64,
    pub lsn: String,
    pub walfile: String,
}

/// How many heartbeats are kept (enough to span a slow archive).
pub const HEARTBEATS_KEPT: usize = 64;

/// One backup run by pgcell.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
pub struct Run {
    pub kind: String,
    pub started: i64,
    pub secs: f64,
    pub ok: bool,
    pub error: Option<String>,
}

/// A restore check: the latest backup restored into a scratch container.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
pub struct Check {
    pub at: i64,
    pub label: String,
    pub ok: bool,
    pub secs: f64,
    pub error: Option<String>,
}

/// Asked for a backup now (broker update parameter `{"backup": "full"}`, `pgcell backup`).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct Request {
    pub id: String,
    pub kind: String,
    pub at: i64,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
pub struct BackupState {
    pub instance: String,
    /// The member whose cell published this.
    pub member: String,
    pub updated_at: i64,
    pub info: StanzaInfo,
    /// `pg_stat_archiver` on the leader.
    pub last_archived_wal: Option<String>,
    pub last_archived_at: Option<f64>,
    pub archive_failed_count: u64,
    pub last_failed_at: Option<f64>,
    /// WAL segments pgBackRest dropped (queue over `archive-push-queue-max`)
    /// since the member's log began, and that count at the last full backup:
    /// more now means a gap in the archive, so a new full backup is due.
    pub wal_dropped: u64,
    pub wal_dropped_at_full: u64,
    pub heartbeats: Vec<Heartbeat>,
    pub last_run: Option<Run>,
    /// The last request handled.
    pub done_request: Option<String>,
    /// Why the repository could not be read on the last pass (`None`: it could).
    #[serde(default)]
    pub repo_error: Option<String>,
    #[serde(default)]
    pub last_check: Option<Check>,
    /// When the instance was deprovisioned (its backups stay restorable).
    #[serde(default)]
    pub deleted_at: Option<i64>,
    /// The cell deleting the stanza of a deprovisioned instance, and since when.
    #[serde(default)]
    pub expiring: Option<(String, i64)>,
}

/// Whether a deprovisioned instance's backups are due for deletion: kept
/// `keep` seconds after the deprovision; a claim older than an hour is stale
/// (its cell died mid-way) and may be taken over.
pub fn expire_due(s: &BackupState, keep: u64, now: i64) -> bool {
    let Some(deleted) = s.deleted_at else { return false };
    let due = now - deleted >= i64::try_from(keep).unwrap_or(i64::MAX);
    due && s.expiring.as_ref().is_none_or(|(_, since)| now - since > 3600)
}

impl BackupState {
    /// The newest heartbeat already archived: the recoverable window ends there.
    pub fn archived_heartbeat(&self) -> Option<&Heartbeat> {
        let archived = self.last_archived_wal.as_deref()?;
        // WAL file names order like their positions (same timeline; a newer
        // timeline sorts after).
        self.heartbeats.iter().filter(|h| h.walfile.as_str() <= archived).max_by(|a, b| a.at.total_cmp(&b.at))
    }

    /// The gap since the archive last moved, in seconds (the RPO right now).
    pub fn archive_age(&self, now: f64) -> Option<f64> {
        self.last_archived_at.map(|t| (now - t).max(0.0))
    }

    pub fn needs_full(&self) -> bool {
        self.wal_dropped > self.wal_dropped_at_full
    }
}

/// What the leader's cell does next for an instance.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// The stanza does not exist yet: create it, then a full backup.
    CreateStanza,
    /// Restore this backup into a scratch container and check it.
    Check {
        label: String,
    },
    Backup {
        kind: &'static str,
        request: Option<String>,
        why: &'static str,
    },
}

/// Decides from the state just read (stanza info, archiver, request) and the
/// policy; `now` in Unix seconds.
pub fn decide(s: &BackupState, request: Option<&Request>, cfg: &BackupConfig, now: i64) -> Option<Action> {
    if !s.info.exists() {
        return Some(Action::CreateStanza);
    }
    let Some(last) = s.info.backups.last() else {
        return Some(Action::Backup { kind: "full", request: None, why: "no backup yet" });
    };
    if let Some(r) = request.filter(|r| s.done_request.as_deref() != Some(r.id.as_str())) {
        let kind = match r.kind.as_str() {
            "diff" => "diff",
            "incr" => "incr",
            _ => "full",
        };
        return Some(Action::Backup { kind, request: Some(r.id.clone()), why: "requested" });
    }
    if s.needs_full() {
        return Some(Action::Backup { kind: "full", request: None, why: "WAL was dropped: the archive has a gap" });
    }
    // A failed run is retried, but not in a tight loop.
    if let Some(run) = &s.last_run
        && !run.ok
        && now - run.started < 300
    {
        return None;
    }
    let last_full = s.info.last_full().map_or(0, |b| b.stop);
    if now - last_full >= hours(cfg.full_every_hours) {
        return Some(Action::Backup { kind: "full", request: None, why: "scheduled full" });
    }
    if now - last.stop >= hours(cfg.diff_every_hours) {
        return Some(Action::Backup { kind: "diff", request: None, why: "scheduled differential" });
    }
    // The first check comes one interval after the first backup, then one per interval.
    let since = s.last_check.as_ref().map_or_else(|| s.info.backups.first().map_or(now, |b| b.stop), |c| c.at);
    if now - since >= i64::try_from(cfg.check_every_secs).unwrap_or(i64::MAX) {
        return Some(Action::Check { label: last.label.clone() });
    }
    None
}

fn hours(h: u64) -> i64 {
    i64::try_from(h.saturating_mul(3600)).unwrap_or(i64::MAX)
}

/// Keeps the newest heartbeats.
pub fn push_heartbeat(list: &mut Vec<Heartbeat>, h: Heartbeat) {
    list.push(h);
    let extra = list.len().saturating_sub(HEARTBEATS_KEPT);
    list.drain(..extra);
}

/// Gauges of the instances whose backup state `states` holds, for `/metrics`.
pub fn metric_samples(
    states: &[BackupState],
    now: f64,
) -> (Vec<crate::metrics::Sample>, Vec<(&'static str, &'static str)>) {
    let mut out: Vec<crate::metrics::Sample> = vec![];
    for s in states {
        let l = || vec![("instance", s.instance.clone())];
        if let Some(age) = s.archive_age(now) {
            out.push(("pgcell_backup_last_archived_wal_age_seconds", l(), age as u64));
        }
        out.push(("pgcell_backup_archive_failures_total", l(), s.archive_failed_count));
        out.push(("pgcell_backup_wal_dropped_total", l(), s.wal_dropped));
        out.push(("pgcell_backup_needs_full", l(), u64::from(s.needs_full())));
        out.push(("pgcell_backup_repository_ok", l(), u64::from(s.repo_error.is_none())));
        out.push(("pgcell_backup_repository_bytes", l(), s.info.repo_size()));
        out.push(("pgcell_backup_count", l(), s.info.backups.len() as u64));
        if let Some(b) = s.info.backups.last() {
            out.push(("pgcell_backup_last_age_seconds", l(), (now as i64 - b.stop).max(0) as u64));
            out.push(("pgcell_backup_last_size_bytes", l(), b.size));
            out.push(("pgcell_backup_last_repo_bytes", l(), b.repo_size));
            out.push(("pgcell_backup_last_duration_seconds", l(), (b.stop - b.start).max(0) as u64));
        }
        if let Some(r) = &s.last_run {
            out.push(("pgcell_backup_last_run_ok", l(), u64::from(r.ok)));
        }
        if let Some(c) = &s.last_check {
            out.push(("pgcell_backup_check_ok", l(), u64::from(c.ok)));
            out.push(("pgcell_backup_check_age_seconds", l(), (now as i64 - c.at).max(0) as u64));
        }
    }
    let kinds = vec![
        ("pgcell_backup_last_archived_wal_age_seconds", "gauge"),
        ("pgcell_backup_archive_failures_total", "counter"),
        ("pgcell_backup_wal_dropped_total", "counter"),
        ("pgcell_backup_needs_full", "gauge"),
        ("pgcell_backup_repository_ok", "gauge"),
        ("pgcell_backup_repository_bytes", "gauge"),
        ("pgcell_backup_count", "gauge"),
        ("pgcell_backup_last_age_seconds", "gauge"),
        ("pgcell_backup_last_size_bytes", "gauge"),
        ("pgcell_backup_last_repo_bytes", "gauge"),
        ("pgcell_backup_last_duration_seconds", "gauge"),
        ("pgcell_backup_last_run_ok", "gauge"),
        ("pgcell_backup_check_ok", "gauge"),
        ("pgcell_backup_check_age_seconds", "gauge"),
    ];
    (out, kinds)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pgbackrest::info::Backup;

    fn with_backups(b: &[(&str, i64)]) -> BackupState {
        let backups =
            b.iter().map(|(k, stop)| Backup { kind: (*k).into(), stop: *stop, ..Default::default() }).collect();
        BackupState { info: StanzaInfo { status_code: 0, backups, ..Default::default() }, ..Default::default() }
    }

    #[test]
    fn a_new_instance_gets_its_stanza_then_a_full_backup() {
        let cfg = BackupConfig::default();
        let missing = BackupState { info: StanzaInfo { status_code: 1, ..Default::default() }, ..Default::default() };
        assert_eq!(decide(&missing, None, &cfg, 100), Some(Action::CreateStanza));
        let empty = with_backups(&[]);
        assert!(matches!(decide(&empty, None, &cfg, 100), Some(Action::Backup { kind: "full", .. })));
    }

    #[test]
    fn schedule_requests_and_gaps() {
        // Restore checks out of the way here (they have their own asserts below).
        let cfg = BackupConfig { check_every_secs: 30 * 86400, ..Default::default() };
        let day = 24 * 3600;
        let s = with_backups(&[("full", 0), ("diff", 3 * day)]);
        assert_eq!(decide(&s, None, &cfg, 3 * day + 10), None);
        assert!(matches!(decide(&s, None, &cfg, 4 * day), Some(Action::Backup { kind: "diff", .. })));
        assert!(matches!(decide(&s, None, &cfg, 7 * day), Some(Action::Backup { kind: "full", .. })));
        let r = Request { id: "r1".into(), kind: "full".into(), at: 1 };
        assert!(matches!(
            decide(&s, Some(&r), &cfg, 3 * day + 10),
            Some(Action::Backup { kind: "full", request: Some(_), .. })
        ));
        let done = BackupState { done_request: Some("r1".into()), ..s.clone() };
        assert_eq!(decide(&done, Some(&r), &cfg, 3 * day + 10), None, "a request is done once");
        let gap = BackupState { wal_dropped: 2, wal_dropped_at_full: 1, ..s.clone() };
        assert!(matches!(decide(&gap, None, &cfg, 3 * day + 10), Some(Action::Backup { kind: "full", .. })));
        let failed =
            BackupState { last_run: Some(Run { ok: false, started: 4 * day - 10, ..Default::default() }), ..s };
        assert_eq!(decide(&failed, None, &cfg, 4 * day), None, "no tight retry loop");
    }

    #[test]
    fn deleted_instances_expire_after_keep_once() {
        let mut s = BackupState::default();
        assert!(!expire_due(&s, 10, 1000), "a live instance never expires");
        s.deleted_at = Some(1000);
        assert!(!expire_due(&s, 10, 1005));
        assert!(expire_due(&s, 10, 1010));
        s.expiring = Some(("a".into(), 1010));
        assert!(!expire_due(&s, 10, 1020), "claimed by a cell");
        assert!(expire_due(&s, 10, 1010 + 3601), "a stale claim is taken over");
    }

    #[test]
    fn the_window_ends_at_the_newest_archived_heartbeat() {
        let mut s = BackupState::default();
        for (at, f) in
            [(10.0, "000000010000000000000003"), (20.0, "000000010000000000000004"), (30.0, "000000010000000000000005")]
        {
            push_heartbeat(&mut s.heartbeats, Heartbeat { at, lsn: String::new(), walfile: f.into() });
        }
        assert_eq!(s.archived_heartbeat(), None);
        s.last_archived_wal = Some("000000010000000000000004".into());
        assert_eq!(s.archived_heartbeat().map(|h| h.at), Some(20.0));
        for i in 0..100 {
            push_heartbeat(&mut s.heartbeats, Heartbeat { at: f64::from(i), ..Default::default() });
        }
        assert_eq!(s.heartbeats.len(), HEARTBEATS_KEPT);
    }
}
