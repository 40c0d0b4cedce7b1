//! The `[backup]` section of a cell's configuration: the repository
//! (posix or S3), encryption, schedule and bounds.

use std::path::PathBuf;

use anyhow::bail;
use serde::{Deserialize, Serialize};

/// Where and how members back up (docs/backups.md). Every cell of a fleet
/// must agree: a member's replicas and clones read what another cell wrote.
#[derive(Clone, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct BackupConfig {
    /// Off: no archiving, no backups (members render no archive_command).
    pub enabled: bool,
    /// The posix repository: a host directory mounted into every member
    /// container. Several hosts need it on a shared filesystem (NFS, ...).
    pub repo_path: PathBuf,
    /// Full backups are kept this many days (pgBackRest time retention; the
    /// WAL they need is kept with them).
    pub retention_days: u32,
    /// A WAL segment is archived at least this often, even when writes are
    /// few: the RPO bound (PostgreSQL switches a margin earlier, see
    /// [`BackupConfig::wal_switch_secs`]).
    pub archive_timeout_secs: u32,
    /// pgBackRest's `archive-push-queue-max`: past it WAL is dropped (and a
    /// new full backup needed) rather than the disk filled.
    pub archive_push_queue_max: String,
    /// A full backup when the last full is older than this.
    pub full_every_hours: u64,
    /// A differential backup when the last backup is older than this.
    pub diff_every_hours: u64,
    /// How often each leader's cell refreshes the instance's backup state in etcd.
    pub refresh_secs: u64,
    /// How often each instance's latest backup is restored into a scratch
    /// container and checked (PostgreSQL starts, a query runs, `pgbackrest verify`).
    pub check_every_secs: u64,
    /// `posix` (`repo_path` on the host, shared between hosts) or `s3`.
    pub repo_type: String,
    pub s3: S3Config,
    /// A deprovisioned instance's backups are deleted (pgBackRest
    /// `stanza-delete`) this long after the deprovision; 0: `retention_days`.
    pub deleted_keep_secs: u64,
    /// Non-empty: the repository is encrypted (aes-256-cbc) with this passphrase.
    /// Cannot be changed once a stanza exists.
    pub cipher_pass: String,
}

/// An S3-compatible repository (pgBackRest `repo1-type=s3`; HTTPS only).
#[derive(Clone, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct S3Config {
    /// Host name of the S3 endpoint (no scheme), e.g. `s3.eu-central-1.amazonaws.com`.
    pub endpoint: String,
    /// 0: 443.
    pub port: u16,
    /// The bucket must exist (pgBackRest never creates it).
    pub bucket: String,
    pub region: String,
    /// `path` for most S3-compatible servers, `host` (virtual-host style) for AWS.
    pub uri_style: String,
    /// Path of the repository inside the bucket.
    pub path: String,
    /// CA bundle to verify the endpoint with (mounted into the member containers); empty: the system's.
    pub ca_file: String,
    pub key: String,
    pub key_secret: String,
}

impl Default for S3Config {
    fn default() -> Self {
        Self {
            endpoint: String::new(),
            port: 0,
            bucket: String::new(),
            region: "us-east-1".into(),
            uri_style: "path".into(),
            path: "/pgcell".into(),
            ca_file: String::new(),
            key: String::new(),
            key_secret: String::new(),
        }
    }
}

impl std::fmt::Debug for S3Config {
    // The keys never reach a log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "S3Config({}:{} bucket {} region {} <keys redacted>)",
            self.endpoint, self.port, self.bucket, self.region
        )
    }
}

impl std::fmt::Debug for BackupConfig {
    // The encryption passphrase (and, in `S3Config`, the keys) never reach a log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackupConfig")
            .field("enabled", &self.enabled)
            .field("repo_type", &self.repo_type)
            .field("repo_path", &self.repo_path)
            .field("s3", &self.s3)
            .field("encrypted", &!self.cipher_pass.is_empty())
            .field("retention_days", &self.retention_days)
            .field("archive_timeout_secs", &self.archive_timeout_secs)
            .finish_non_exhaustive()
    }
}

impl BackupConfig {
    /// How long a deprovisioned instance's backups are kept.
    pub fn deleted_keep(&self) -> u64 {
        if self.deleted_keep_secs > 0 { self.deleted_keep_secs } else { u64::from(self.retention_days.max(1)) * 86_400 }
    }

    /// PostgreSQL's `archive_timeout`: the switch comes a margin before the
    /// bound (a fifth of it, at most 5 s) so that the checkpointer's wake-up
    /// (up to 1 s late) and the asynchronous push (about a second, more to S3)
    /// still land within `archive_timeout_secs`, the RPO the user was promised.
    pub fn wal_switch_secs(&self) -> u32 {
        let bound = self.archive_timeout_secs.max(2);
        bound - (bound / 5).clamp(1, 5)
    }

    pub fn is_s3(&self) -> bool {
        self.repo_type == "s3"
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        match self.repo_type.as_str() {
            "posix" => {}
            "s3" => {
                let s = &self.s3;
                if s.endpoint.is_empty() || s.bucket.is_empty() || s.key.is_empty() || s.key_secret.is_empty() {
                    bail!("backup.repo_type = \"s3\" needs backup.s3.endpoint, bucket, key and key_secret");
                }
                if s.uri_style != "path" && s.uri_style != "host" {
                    bail!("backup.s3.uri_style must be \"path\" or \"host\"");
                }
            }
            other => bail!("backup.repo_type {other:?} is not \"posix\" or \"s3\""),
        }
        Ok(())
    }
}

impl Default for BackupConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            repo_path: "/var/lib/pgcell-backups".into(),
            retention_days: 7,
            archive_timeout_secs: 60,
            archive_push_queue_max: "4GiB".into(),
            full_every_hours: 7 * 24,
            diff_every_hours: 24,
            refresh_secs: 10,
            check_every_secs: 24 * 3600,
            deleted_keep_secs: 0,
            repo_type: "posix".into(),
            s3: S3Config::default(),
            cipher_pass: String::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::BackupConfig;

    #[test]
    fn postgres_switches_a_margin_before_the_rpo_bound() {
        let at = |secs| BackupConfig { archive_timeout_secs: secs, ..BackupConfig::default() }.wal_switch_secs();
        // 60 s (default) and 10 s (the shortest a plan may ask): 5 s and 2 s early.
        assert_eq!((at(60), at(30), at(10)), (55, 25, 8));
        // Never 0 (PostgreSQL's "off"), whatever an operator configures.
        assert_eq!((at(1), at(0)), (1, 1));
    }
}
