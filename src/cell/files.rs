//! Files a member reads, owned by the member's uid: its containers run as the
//! image's postgres with no capabilities (`docker::user`), so they cannot take
//! ownership of anything themselves. The agent (root on the host) creates and
//! chowns every file and directory before the container sees it, and every file
//! it writes later (Patroni's and pgBackRest's configuration, TLS keys) goes
//! through [`write_member_file`].

use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use anyhow::Context;

use super::member::CellDeps;
use crate::docker::Owner;

/// The directories below a member's host directory that PostgreSQL, Patroni and
/// pgBackRest write into (the old entrypoint created them as root).
const SUBDIRS: [&str; 3] = ["pgdata", "spool", "pgbackrest-log"];

impl CellDeps {
    /// The uid:gid the member image's postgres has: the owner of every member file.
    pub async fn member_owner(&self) -> anyhow::Result<Owner> {
        crate::docker::member_owner(&self.docker, &self.cfg.image).await
    }
}

/// Hands `path` to the member's user. The agent must be root for this (or
/// already the owner): a clear error says so instead of a container that
/// cannot read its own configuration.
pub fn chown_to_member(path: &Path, owner: Owner) -> anyhow::Result<()> {
    std::os::unix::fs::chown(path, Some(owner.uid), Some(owner.gid)).with_context(|| {
        format!(
            "cannot chown {} to {} (the member's user; the cell agent must run as root)",
            path.display(),
            owner.user_spec()
        )
    })
}

/// Writes a member's file atomically, mode 0600 (it may hold secrets), owned
/// by the member's user from before it appears under its name.
pub fn write_member_file(path: &Path, data: &[u8], owner: Owner) -> anyhow::Result<()> {
    let name = path.file_name().and_then(|n| n.to_str()).context("a member file needs a name")?;
    let tmp = path.with_file_name(format!(".{name}.new"));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    std::io::Write::write_all(&mut f, data).with_context(|| format!("cannot write {}", tmp.display()))?;
    // An old file's mode survives truncate: set it again.
    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    chown_to_member(&tmp, owner)?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))
}

/// Creates the member's host directory and the directories below it that its
/// processes write to, mode 0700 (PostgreSQL refuses a wider data directory),
/// all owned by the member's user. Idempotent: runs before every start.
pub fn prepare_member_dir(dir: &Path, owner: Owner) -> anyhow::Result<()> {
    for d in std::iter::once(dir.to_path_buf()).chain(SUBDIRS.iter().map(|s| dir.join(s))) {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&d)
            .with_context(|| format!("cannot create {}", d.display()))?;
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("cannot chmod {}", d.display()))?;
        chown_to_member(&d, owner)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;

    /// As root (the cell agent's case) files end up with the member's numbers.
    #[test]
    fn member_files_and_dirs_belong_to_the_member() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("m1");
        let me = Owner { uid: 4242, gid: 4343 };
        if nix_is_root() {
            prepare_member_dir(&dir, me).unwrap();
            write_member_file(&dir.join("patroni.yml"), b"x", me).unwrap();
            for p in ["", "pgdata", "spool", "pgbackrest-log", "patroni.yml"] {
                let m = std::fs::metadata(dir.join(p)).unwrap();
                assert_eq!((m.uid(), m.gid()), (4242, 4343), "{p}");
            }
            assert_eq!(std::fs::metadata(dir.join("pgdata")).unwrap().mode() & 0o777, 0o700);
            assert_eq!(std::fs::metadata(dir.join("patroni.yml")).unwrap().mode() & 0o777, 0o600);
            assert!(!dir.join(".patroni.yml.new").exists());
        } else {
            let err = prepare_member_dir(&dir, me).unwrap_err();
            assert!(format!("{err:#}").contains("must run as root"), "{err:#}");
        }
    }

    fn nix_is_root() -> bool {
        std::fs::metadata("/proc/self").map(|m| m.uid() == 0).unwrap_or(false)
    }
}
