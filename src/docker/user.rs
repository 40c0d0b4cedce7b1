//! Who member and scratch containers run as: the image's `postgres`, by number.
//! The image records its uid:gid as a label at build time (debootstrap picks the
//! numbers), so the cell agent, root on the host, can hand a member's files to
//! that owner before the container starts, and the container needs neither root
//! nor any capability (docs/decisions.md, "Containers without root").

use anyhow::Context;
use bollard::Docker;

/// The image label holding `uid:gid` of `postgres` inside the image.
pub const LABEL_USER: &str = "org.pgcell.postgres-user";

/// The numeric owner of everything a member reads or writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
}

impl Owner {
    /// Parses the label's `uid:gid`; root is refused, since the point is not to be root.
    pub fn parse(s: &str) -> anyhow::Result<Self> {
        let (uid, gid) = s.trim().split_once(':').with_context(|| format!("{LABEL_USER} {s:?} is not uid:gid"))?;
        let uid: u32 = uid.parse().with_context(|| format!("{LABEL_USER} {s:?}: bad uid"))?;
        let gid: u32 = gid.parse().with_context(|| format!("{LABEL_USER} {s:?}: bad gid"))?;
        anyhow::ensure!(uid != 0 && gid != 0, "{LABEL_USER} {s:?} is root: members must not run as root");
        Ok(Self { uid, gid })
    }

    /// Docker's `User` field: numbers, so nothing depends on the image's passwd.
    pub fn user_spec(&self) -> String {
        format!("{}:{}", self.uid, self.gid)
    }
}

/// The owner recorded on `image`; an image built before members ran without
/// root has no such label and is refused with what to do.
pub async fn member_owner(docker: &Docker, image: &str) -> anyhow::Result<Owner> {
    match super::image_label(docker, image, LABEL_USER).await? {
        Some(v) => Owner::parse(&v),
        None => anyhow::bail!(
            "image {image} has no {LABEL_USER} label (built by an older deploy/image/build.sh): \
             rebuild it so members can run without root"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::Owner;

    #[test]
    fn parses_numbers_and_refuses_root_or_junk() {
        assert_eq!(Owner::parse("100:102").unwrap(), Owner { uid: 100, gid: 102 });
        assert_eq!(Owner::parse("100:102").unwrap().user_spec(), "100:102");
        for bad in ["0:0", "100:0", "postgres", "a:b", "", "100:"] {
            assert!(Owner::parse(bad).is_err(), "{bad:?} accepted");
        }
    }
}
