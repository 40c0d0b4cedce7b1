//! PostgreSQL's TLS settings in a member's rendered Patroni configuration:
//! the server certificate files the cell writes into the member directory,
//! and, for instances that require TLS, `hostssl`-only access. Applied to the
//! output of [`MemberConfig::render`](super::config::MemberConfig::render), so
//! the rest of the configuration stays as it is.

use serde_json::Value;

use super::config::MOUNT;

/// The member directory's certificate files (host side: the cell writes them).
pub const SERVER_CERT: &str = "server.crt";
pub const SERVER_KEY: &str = "server.key";
pub const CA_CERT: &str = "ca.crt";

/// Turns TLS on with the member's certificate; with `require`, remote logins
/// (replication included: Patroni's and libpq's default `sslmode=prefer` uses
/// TLS) are accepted over TLS only. Local socket access is unchanged.
pub fn add_tls(v: &mut Value, require: bool) {
    let params = &mut v["postgresql"]["parameters"];
    params["ssl"] = "on".into();
    params["ssl_cert_file"] = format!("{MOUNT}/{SERVER_CERT}").into();
    params["ssl_key_file"] = format!("{MOUNT}/{SERVER_KEY}").into();
    params["ssl_ca_file"] = format!("{MOUNT}/{CA_CERT}").into();
    params["ssl_min_protocol_version"] = "TLSv1.2".into();
    if require && let Some(hba) = v["postgresql"]["pg_hba"].as_array_mut() {
        for line in hba.iter_mut() {
            if let Some(rest) = line.as_str().and_then(|l| l.strip_prefix("host ")) {
                *line = format!("hostssl {rest}").into();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rendered() -> Value {
        crate::patroni::config::render_sample(&crate::etcd::store::Secrets::generate())
    }

    fn hba(v: &Value) -> Vec<String> {
        v["postgresql"]["pg_hba"].as_array().unwrap().iter().map(|l| l.as_str().unwrap().to_string()).collect()
    }

    #[test]
    fn tls_on_with_the_member_files_and_plaintext_still_allowed() {
        let mut v = rendered();
        let before = hba(&v);
        add_tls(&mut v, false);
        let params = &v["postgresql"]["parameters"];
        assert_eq!(params["ssl"], "on");
        assert_eq!(params["ssl_cert_file"], "/var/lib/pgcell/server.crt");
        assert_eq!(params["ssl_key_file"], "/var/lib/pgcell/server.key");
        assert_eq!(params["ssl_ca_file"], "/var/lib/pgcell/ca.crt");
        assert_eq!(hba(&v), before, "TLS not required: the same access rules");
    }

    #[test]
    fn required_tls_leaves_only_hostssl_remote_lines() {
        let mut v = rendered();
        add_tls(&mut v, true);
        let lines = hba(&v);
        assert!(lines.iter().any(|l| l == "hostssl replication replicator 0.0.0.0/0 scram-sha-256"), "{lines:?}");
        assert!(lines.iter().any(|l| l == "hostssl all all ::/0 scram-sha-256"), "{lines:?}");
        assert!(!lines.iter().any(|l| l.starts_with("host ")), "no plaintext remote line: {lines:?}");
        assert!(lines.iter().any(|l| l == "local all postgres peer"), "local access unchanged");
    }
}
