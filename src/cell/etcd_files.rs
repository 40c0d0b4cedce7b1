//! A member's way to a locked-down etcd: the cell's etcd CA, client
//! certificate and key copied into the member's directory (the container sees
//! only that), readable by the container's postgres, and the `etcd3` section
//! of its Patroni configuration pointing at them.

use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::Path;

use anyhow::Context;
use serde_json::Value;

use crate::config::EtcdAccess;
use crate::patroni::config::MOUNT;
use crate::patroni::etcd3::Etcd3Access;

/// The directory, below the member's, holding its etcd files.
pub const DIR: &str = "etcd";

/// Copies the files `access` names into `member_dir/etcd/` and returns
/// `rendered` with its `etcd3` section using them (and the cell's user).
/// Without TLS or user, `rendered` comes back unchanged and nothing is written.
pub fn with_etcd_access(access: &EtcdAccess, member_dir: &Path, mut rendered: Value) -> anyhow::Result<Value> {
    if *access == EtcdAccess::default() {
        return Ok(rendered);
    }
    let dir = member_dir.join(DIR);
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .with_context(|| format!("cannot create {}", dir.display()))?;
    // The uid postgres has in the image: whoever owns the data directory (the
    // agent's `files::prepare_member_dir` hands it to that uid before this runs).
    let owner = std::fs::metadata(member_dir.join("pgdata")).ok().map(|m| (m.uid(), m.gid()));
    let copy = |src: &Option<std::path::PathBuf>, name: &str| -> anyhow::Result<Option<String>> {
        let Some(src) = src else { return Ok(None) };
        let data = std::fs::read(src).with_context(|| format!("cannot read {}", src.display()))?;
        let dst = dir.join(name);
        write_private(&dst, &data)?;
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(&dst, Some(uid), Some(gid))
                .with_context(|| format!("cannot hand {} to uid {uid}", dst.display()))?;
        }
        Ok(Some(format!("{MOUNT}/{DIR}/{name}")))
    };
    let etcd3 = Etcd3Access {
        cacert: copy(&access.ca_file, "ca.pem")?,
        cert: copy(&access.cert_file, "cert.pem")?,
        key: copy(&access.key_file, "key.pem")?,
        username: access.username.clone(),
        password: access.password.clone(),
    };
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(&dir, Some(uid), Some(gid))
            .with_context(|| format!("cannot hand {} to uid {uid}", dir.display()))?;
    }
    etcd3.apply(&mut rendered);
    Ok(rendered)
}

/// Mode 0600 from the start, replaced atomically (Patroni may be reading the old one).
fn write_private(path: &Path, data: &[u8]) -> anyhow::Result<()> {
    let tmp = path.with_extension("new");
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
    std::io::Write::write_all(&mut f, data)?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn files_are_copied_private_and_named_in_the_etcd3_section() {
        let src = tempfile::tempdir().unwrap();
        for f in ["ca", "cert", "key"] {
            std::fs::write(src.path().join(f), format!("{f} pem")).unwrap();
        }
        let member = tempfile::tempdir().unwrap();
        let access = EtcdAccess {
            ca_file: Some(src.path().join("ca")),
            cert_file: Some(src.path().join("cert")),
            key_file: Some(src.path().join("key")),
            username: Some("pgcell-cell-a".into()),
            password: Some("pw".into()),
        };
        let v = with_etcd_access(&access, member.path(), serde_json::json!({"etcd3": {"hosts": []}})).unwrap();
        assert_eq!(v["etcd3"]["key"], "/var/lib/pgcell/etcd/key.pem");
        assert_eq!(v["etcd3"]["protocol"], "https");
        let key = member.path().join("etcd/key.pem");
        assert_eq!(std::fs::read_to_string(&key).unwrap(), "key pem");
        assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
        let open = tempfile::tempdir().unwrap();
        let same = with_etcd_access(&EtcdAccess::default(), open.path(), serde_json::json!({"etcd3": {}})).unwrap();
        assert_eq!(same, serde_json::json!({"etcd3": {}}));
        assert!(!open.path().join("etcd").exists());
    }
}
