//! Names of things, derived from an instance id and a cell name so that every
//! daemon computes the same ones without asking anybody.

/// The Patroni scope (cluster name) of an instance, as the seed named it.
pub fn scope(instance_id: &str) -> String {
    format!("cf-{instance_id}")
}

/// The Patroni member name of an instance's member on a cell: unique within
/// the scope because a cluster has at most one member per cell.
pub fn member(instance_id: &str, cell: &str) -> String {
    format!("{}-{cell}", scope(instance_id))
}

/// The Docker container name of a member.
pub fn container(member: &str) -> String {
    format!("pgcell-{member}")
}

/// Ids and cell names end up in etcd keys, Docker names, paths and Patroni
/// names, so only a conservative alphabet is accepted: a letter or digit, then
/// letters, digits, `-` or `_`, at most 63 characters.
pub fn is_safe(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes[0].is_ascii_alphanumeric()
        && bytes.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_seed() {
        assert_eq!(scope("1"), "cf-1");
        assert_eq!(member("1", "cell-a"), "cf-1-cell-a");
        assert_eq!(container("cf-1-cell-a"), "pgcell-cf-1-cell-a");
    }

    #[test]
    fn safe_names() {
        for ok in ["1", "a", "cell-a", "8f2c_x", &"a".repeat(63)] {
            assert!(is_safe(ok), "{ok}");
        }
        for bad in ["", "-a", "_a", "a/b", "a b", "..", "a.b", "é", &"a".repeat(64), "a\n"] {
            assert!(!is_safe(bad), "{bad:?}");
        }
    }
}
