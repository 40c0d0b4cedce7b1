//! pgBackRest inside member containers: its configuration file, the command
//! lines Patroni and PostgreSQL run, and what `pgbackrest info --output=json`
//! says. One stanza per instance (stanza = instance id), so many clusters
//! share one repository.

pub mod info;

use crate::config::BackupConfig;

/// Where the repository is mounted in every member container.
pub const REPO_MOUNT: &str = "/var/lib/pgbackrest";
/// The member's data directory inside its container (see `patroni::config`).
pub const PGDATA: &str = "/var/lib/pgcell/pgdata";
/// The configuration file the image's `PGBACKREST_CONFIG` points at.
pub const CONF_FILE: &str = "pgbackrest.conf";

/// `pgbackrest.conf` of a member: global repository options, and the member's
/// own stanza. Other stanzas (a clone's source) are named on the command line.
pub fn render_conf(cfg: &BackupConfig, stanza: &str, pg_port: u16) -> String {
    format!(
        "[global]\n\
         {repo}\
         repo1-retention-full-type=time\n\
         repo1-retention-full={retention}\n\
         compress-type=zst\n\
         compress-level=3\n\
         archive-async=y\n\
         archive-push-queue-max={queue}\n\
         spool-path={SPOOL}\n\
         log-path=/var/lib/pgcell/pgbackrest-log\n\
         log-level-console=warn\n\
         log-level-file=info\n\
         lock-path=/tmp/pgbackrest\n\
         start-fast=y\n\
         process-max=2\n\
         \n\
         [global:archive-push]\n\
         process-max=2\n\
         \n\
         [{stanza}]\n\
         pg1-path={PGDATA}\n\
         pg1-port={pg_port}\n\
         pg1-socket-path=/var/run/postgresql\n\
         pg1-user=postgres\n",
        repo = repo_options(cfg),
        retention = cfg.retention_days.max(1),
        queue = cfg.archive_push_queue_max,
    )
}

/// Where a member's S3 CA file is mounted.
pub const S3_CA_MOUNT: &str = "/etc/pgcell/s3-ca.pem";

/// The repository lines: a path on the mounted host directory, or S3.
fn repo_options(cfg: &BackupConfig) -> String {
    let mut out = String::new();
    if cfg.is_s3() {
        let s = &cfg.s3;
        out.push_str(&format!(
            "repo1-type=s3\nrepo1-path={}\nrepo1-s3-endpoint={}\nrepo1-s3-bucket={}\nrepo1-s3-region={}\n\
             repo1-s3-uri-style={}\nrepo1-s3-key={}\nrepo1-s3-key-secret={}\n",
            s.path, s.endpoint, s.bucket, s.region, s.uri_style, s.key, s.key_secret
        ));
        if s.port != 0 {
            out.push_str(&format!("repo1-storage-port={}\n", s.port));
        }
        if !s.ca_file.is_empty() {
            out.push_str(&format!("repo1-storage-ca-file={S3_CA_MOUNT}\n"));
        }
    } else {
        out.push_str(&format!("repo1-path={REPO_MOUNT}\n"));
    }
    if !cfg.cipher_pass.is_empty() {
        out.push_str(&format!("repo1-cipher-type=aes-256-cbc\nrepo1-cipher-pass={}\n", cfg.cipher_pass));
    }
    out
}

/// Host paths mounted into member (and scratch) containers for the repository.
pub fn repo_binds(cfg: &BackupConfig) -> Vec<String> {
    if cfg.is_s3() {
        let ca = &cfg.s3.ca_file;
        return if ca.is_empty() { vec![] } else { vec![format!("{ca}:{S3_CA_MOUNT}:ro")] };
    }
    vec![format!("{}:{REPO_MOUNT}", cfg.repo_path.display())]
}

/// The network of a scratch container (restore check, stanza deletion) that
/// reads the repository: none for a mounted posix one; for S3 the host's, as
/// the members (host network) reach the object store.
pub fn repo_network(cfg: &BackupConfig) -> &'static str {
    if cfg.is_s3() { "host" } else { "none" }
}

/// PostgreSQL's `archive_command`: asynchronous push into the member's own stanza.
pub fn archive_command(stanza: &str) -> String {
    format!("pgbackrest --stanza={stanza} archive-push %p")
}

/// pgBackRest's spool (the archive-get queue is `archive/<stanza>/in/` in it).
pub const SPOOL: &str = "/var/lib/pgcell/spool";

/// PostgreSQL's `restore_command` for WAL of `stanza` (a clone's source names
/// its data directory: the file's stanza section is the member's own).
///
/// With a posix repository (mounted in the container) a file that is in
/// neither the repository nor the archive-get queue is answered "not found"
/// (exit 1) by the shell, without starting pgBackRest. A promotion makes up to
/// five such requests (the segment being read, twice, the next timeline's
/// history, twice if it was streaming, and the current timeline's, which is
/// absent on timeline 1): each pgBackRest `archive-get` costs 0.1-0.3 s, and
/// up to 1.3 s on a loaded host (the async queue is polled with growing sleeps),
/// all of it between the promote request and the first write (docs/decisions.md,
/// issue #15). The check is one-sided: any file of that name in any archive id
/// of the stanza (pgBackRest's layout: `archive/<stanza>/<id>/<name>` for a
/// history file, `archive/<stanza>/<id>/<first 16 chars>/<name>-<sha1>[.ext]`
/// for a segment), or in the queue, goes to pgBackRest as before, and so does
/// everything when the stanza's `archive.info` cannot be read. S3: pgBackRest
/// always.
pub fn restore_command(stanza: &str, cfg: &BackupConfig) -> String {
    let get = format!("pgbackrest --stanza={stanza} --pg1-path={PGDATA} archive-get %f \"%p\"");
    if cfg.is_s3() {
        return get;
    }
    posix_restore_command(stanza, REPO_MOUNT, SPOOL, &get)
}

fn posix_restore_command(stanza: &str, repo: &str, spool: &str, get: &str) -> String {
    format!(
        "f=%f; a={repo}/archive/{stanza}; \
         for x in $a/*/$f $a/*/$f-* $a/*/*/$f $a/*/*/$f-* {spool}/archive/{stanza}/in/$f; do [ -e $x ] && break; done; \
         [ -e $x ] || [ ! -r $a/archive.info ] || exit 1; exec {get}"
    )
}

/// Patroni's replica method: the latest backup plus WAL from the repository.
/// Fails (and Patroni falls back to `basebackup`) while no backup exists.
pub fn replica_restore_command(stanza: &str) -> String {
    format!("pgbackrest --stanza={stanza} --delta --type=standby restore")
}

/// Where a restore stops.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "type", content = "target", rename_all = "lowercase")]
pub enum Target {
    /// Everything archived.
    Latest,
    /// A PostgreSQL timestamptz literal (`2026-12-01 14:00:00.123+00`).
    Time(String),
    /// An LSN (`0/3000060`).
    Lsn(String),
}

/// A restore of `source`'s backup `set` to `target`: how a clone bootstraps.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RestoreSpec {
    pub source: String,
    pub set: String,
    #[serde(flatten)]
    pub target: Target,
}

impl RestoreSpec {
    /// The command of Patroni's custom bootstrap method. Patroni splits it
    /// with `shlex`, so the time (it has a space) is quoted.
    pub fn command(&self) -> String {
        let target = match &self.target {
            Target::Latest => String::new(),
            Target::Time(t) => format!(" --type=time '--target={t}' --target-action=promote"),
            Target::Lsn(l) => format!(" --type=lsn --target={l} --target-action=promote"),
        };
        format!("pgbackrest --stanza={} --pg1-path={PGDATA} --set={}{target} restore", self.source, self.set)
    }

    /// The recovery settings Patroni writes (it strips the ones pgBackRest put
    /// in postgresql.auto.conf, which replicas would otherwise inherit).
    pub fn recovery_conf(&self, cfg: &BackupConfig) -> serde_json::Value {
        let mut v = serde_json::json!({
            "restore_command": restore_command(&self.source, cfg),
            "recovery_target_timeline": "latest",
        });
        match &self.target {
            Target::Latest => {}
            Target::Time(t) => {
                v["recovery_target_time"] = t.clone().into();
                v["recovery_target_action"] = "promote".into();
            }
            Target::Lsn(l) => {
                v["recovery_target_lsn"] = l.clone().into();
                v["recovery_target_action"] = "promote".into();
            }
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conf_names_the_member_stanza_and_bounds_the_queue() {
        let c = render_conf(&BackupConfig::default(), "i1", 30000);
        assert!(c.contains("[i1]\npg1-path=/var/lib/pgcell/pgdata\npg1-port=30000\n"), "{c}");
        assert!(c.contains("archive-push-queue-max=4GiB"));
        assert!(c.contains("compress-type=zst"));
        assert!(c.contains("repo1-retention-full=7"));
        assert_eq!(archive_command("i1"), "pgbackrest --stanza=i1 archive-push %p");
    }

    #[test]
    fn s3_repositories_and_encryption() {
        let mut cfg = BackupConfig { repo_type: "s3".into(), cipher_pass: "pw".into(), ..Default::default() };
        cfg.s3.endpoint = "localhost".into();
        cfg.s3.bucket = "b".into();
        cfg.s3.port = 9443;
        cfg.s3.ca_file = "/etc/ca.pem".into();
        let c = render_conf(&cfg, "i1", 30000);
        for line in [
            "repo1-type=s3",
            "repo1-path=/pgcell",
            "repo1-s3-endpoint=localhost",
            "repo1-s3-uri-style=path",
            "repo1-storage-port=9443",
            "repo1-storage-ca-file=/etc/pgcell/s3-ca.pem",
            "repo1-cipher-type=aes-256-cbc",
        ] {
            assert!(c.lines().any(|l| l == line), "{line} missing:\n{c}");
        }
        assert_eq!(repo_binds(&cfg), ["/etc/ca.pem:/etc/pgcell/s3-ca.pem:ro"]);
        assert_eq!(repo_binds(&BackupConfig::default()), ["/var/lib/pgcell-backups:/var/lib/pgbackrest"]);
        assert_eq!((repo_network(&cfg), repo_network(&BackupConfig::default())), ("host", "none"));
        assert!(!render_conf(&BackupConfig::default(), "i1", 1).contains("cipher"));
    }

    /// The posix fast path runs as PostgreSQL runs it (`sh -c`, `%f`/`%p`
    /// substituted) against a repository laid out as pgBackRest lays it out,
    /// with a stand-in `pgbackrest` that exits 42.
    #[test]
    fn restore_command_answers_missing_files_without_pgbackrest() {
        let dir = tempfile::tempdir().unwrap();
        let (repo, spool, bin) = (dir.path().join("repo"), dir.path().join("spool"), dir.path().join("bin"));
        let archive = repo.join("archive/1/15-1/0000000100000000");
        for d in [&archive, &spool.join("archive/1/in"), &bin] {
            std::fs::create_dir_all(d).unwrap();
        }
        std::fs::write(bin.join("pgbackrest"), "#!/bin/sh\nexit 42\n").unwrap();
        std::fs::set_permissions(bin.join("pgbackrest"), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let get = "pgbackrest --stanza=1 archive-get %f \"%p\"";
        let cmd = posix_restore_command("1", repo.to_str().unwrap(), spool.to_str().unwrap(), get);
        let run = |file: &str| {
            let line = cmd.replace("%f", file).replace("%p", "pg_wal/RECOVERYXLOG");
            let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
            std::process::Command::new("sh").arg("-c").arg(&line).env("PATH", path).status().unwrap().code()
        };
        // No archive.info (no stanza, or the repository not mounted): pgBackRest says why.
        assert_eq!(run("00000002.history"), Some(42));
        std::fs::write(repo.join("archive/1/archive.info"), "").unwrap();
        assert_eq!(run("00000002.history"), Some(1));
        assert_eq!(run("000000010000000000000003"), Some(1));
        std::fs::write(repo.join("archive/1/15-1/00000002.history"), "").unwrap();
        std::fs::write(archive.join("000000010000000000000003-0123abcd.zst"), "").unwrap();
        std::fs::write(spool.join("archive/1/in/000000010000000000000004"), "").unwrap();
        for found in ["00000002.history", "000000010000000000000003", "000000010000000000000004"] {
            assert_eq!(run(found), Some(42), "{found}");
        }
        // Another segment, a prefix of a stored one, the next history: not found.
        for missing in ["000000010000000000000005", "00000001000000000000000", "00000003.history"] {
            assert_eq!(run(missing), Some(1), "{missing}");
        }
        // S3: pgBackRest always.
        let s3 = BackupConfig { repo_type: "s3".into(), ..Default::default() };
        assert_eq!(
            restore_command("1", &s3),
            "pgbackrest --stanza=1 --pg1-path=/var/lib/pgcell/pgdata archive-get %f \"%p\""
        );
        assert!(
            restore_command("1", &BackupConfig::default())
                .starts_with("f=%f; a=/var/lib/pgbackrest/archive/1; for x in ")
        );
    }

    #[test]
    fn restore_commands_name_the_source_and_quote_the_time() {
        let r = RestoreSpec {
            source: "src".into(),
            set: "20261201-140000F".into(),
            target: Target::Time("2026-12-01 14:00:00+00".into()),
        };
        assert_eq!(
            r.command(),
            "pgbackrest --stanza=src --pg1-path=/var/lib/pgcell/pgdata --set=20261201-140000F --type=time '--target=2026-12-01 14:00:00+00' --target-action=promote restore"
        );
        let rc = r.recovery_conf(&BackupConfig::default());
        assert_eq!(rc["recovery_target_time"], "2026-12-01 14:00:00+00");
        assert!(rc["restore_command"].as_str().unwrap().contains("--stanza=src"));
        let latest = RestoreSpec { target: Target::Latest, ..r.clone() };
        assert!(!latest.command().contains("--type"));
        assert!(latest.recovery_conf(&BackupConfig::default()).get("recovery_target_action").is_none());
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!((json["type"].as_str(), json["source"].as_str()), (Some("time"), Some("src")));
        assert_eq!(serde_json::from_value::<RestoreSpec>(json).unwrap(), r);
    }
}
