//! Which names a member's server certificate carries and when it must be
//! issued again: plain decisions, so they are tested without a fleet.

use std::collections::BTreeSet;
use std::net::IpAddr;

use super::certs::CertInfo;

/// One address as a certificate name: IPv6 brackets and a trailing dot go,
/// DNS names are lower case (they compare case-insensitively); empty is none.
fn normalize(host: &str) -> Option<String> {
    let h = host.trim().trim_start_matches('[').trim_end_matches(']').trim_end_matches('.');
    if h.is_empty() {
        return None;
    }
    Some(match h.parse::<IpAddr>() {
        Ok(ip) => ip.to_string(),
        Err(_) => h.to_ascii_lowercase(),
    })
}

/// The names a member's certificate must cover: every address a client may
/// use for it. The cell's advertise host (direct connections), every router's
/// advertise host (the router is a TCP pass-through, so the client checks the
/// member's certificate against the router's address), the loopback names
/// (tools on the cell itself) and the operator's extra names (load balancers,
/// DNS aliases).
pub fn server_names<'a>(
    cell_host: &str,
    router_hosts: impl IntoIterator<Item = &'a str>,
    extra: &[String],
) -> BTreeSet<String> {
    let mut names: BTreeSet<String> = ["localhost", "127.0.0.1"].into_iter().map(String::from).collect();
    names.extend(normalize(cell_host));
    names.extend(router_hosts.into_iter().filter_map(normalize));
    names.extend(extra.iter().filter_map(|e| normalize(e)));
    names
}

/// Why a certificate must be issued (again), or not.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Renewal {
    Keep,
    /// No certificate yet, or one that does not parse.
    Missing,
    /// It expires within the renewal window (or has expired).
    Expiring,
    /// A name was added or removed (a router came or went, the cell moved).
    NamesChanged,
    /// Not signed by the fleet's CA (the operator replaced the CA).
    OtherCa,
}

/// Decides, at unix time `now`, whether `current` must be replaced.
pub fn decide(current: Option<&CertInfo>, wanted: &BTreeSet<String>, now: i64, renew_before_secs: i64) -> Renewal {
    let Some(c) = current else { return Renewal::Missing };
    if !c.signed_by_ca {
        Renewal::OtherCa
    } else if c.names != *wanted {
        Renewal::NamesChanged
    } else if c.not_after - now <= renew_before_secs {
        Renewal::Expiring
    } else {
        Renewal::Keep
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(v: &[&str]) -> BTreeSet<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn names_cover_cell_routers_loopback_and_extras() {
        let n = server_names("10.0.0.5", ["10.0.0.9", "Router.Example.", "", "[::1]"], &["db.example".into()]);
        assert_eq!(n, set(&["10.0.0.5", "10.0.0.9", "router.example", "::1", "db.example", "localhost", "127.0.0.1"]));
        let local = server_names("127.0.0.1", ["127.0.0.1"], &[]);
        assert_eq!(local, set(&["127.0.0.1", "localhost"]), "duplicates collapse");
    }

    #[test]
    fn renews_when_missing_expiring_renamed_or_from_another_ca() {
        let wanted = set(&["a", "127.0.0.1"]);
        let info =
            CertInfo { names: wanted.clone(), not_before: 0, not_after: 1000, serial: "01".into(), signed_by_ca: true };
        assert_eq!(decide(None, &wanted, 0, 100), Renewal::Missing);
        assert_eq!(decide(Some(&info), &wanted, 899, 100), Renewal::Keep);
        assert_eq!(decide(Some(&info), &wanted, 900, 100), Renewal::Expiring);
        assert_eq!(decide(Some(&info), &wanted, 2000, 100), Renewal::Expiring, "expired");
        assert_eq!(decide(Some(&info), &set(&["a"]), 0, 100), Renewal::NamesChanged);
        let foreign = CertInfo { signed_by_ca: false, ..info };
        assert_eq!(decide(Some(&foreign), &wanted, 0, 100), Renewal::OtherCa);
    }
}
