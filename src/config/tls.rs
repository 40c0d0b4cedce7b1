//! The `[tls]` section of the cell's and the broker's configuration: where the
//! fleet CA comes from and how long PostgreSQL server certificates live.
//!
//! TLS is on whatever this says. With `ca_cert_file` and `ca_key_file` set,
//! the operator's CA signs every member's certificate (the production path).
//! Without them, the first daemon that needs a CA generates one and keeps it
//! in etcd (`/pgcell/tls/ca`), so a demo or a test fleet has TLS with no setup.

use anyhow::bail;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// The fleet CA's certificate (PEM); empty: the CA kept in etcd (generated once).
    pub ca_cert_file: String,
    /// The CA's private key (PEM, PKCS#8 ECDSA/Ed25519/RSA); set with `ca_cert_file`.
    pub ca_key_file: String,
    /// Lifetime of a member's server certificate.
    pub cert_days: u32,
    /// A certificate is issued again this long before it expires.
    pub renew_before_days: u32,
    /// Non-zero: the lifetime in seconds instead of `cert_days` (rotation tests, game days).
    pub cert_secs: u64,
    /// Non-zero: the renewal window in seconds instead of `renew_before_days`.
    pub renew_before_secs: u64,
    /// How often the cell checks its members' certificates (expiry, names).
    pub check_every_secs: u64,
    /// More names (DNS names or IP addresses) every server certificate carries:
    /// a load balancer in front of the routers, a DNS alias.
    pub extra_names: Vec<String>,
}

impl Default for TlsConfig {
    fn default() -> Self {
        Self {
            ca_cert_file: String::new(),
            ca_key_file: String::new(),
            cert_days: 90,
            renew_before_days: 30,
            cert_secs: 0,
            renew_before_secs: 0,
            check_every_secs: 60,
            extra_names: vec![],
        }
    }
}

impl TlsConfig {
    /// A server certificate's lifetime, in seconds.
    pub fn lifetime_secs(&self) -> i64 {
        if self.cert_secs > 0 { self.cert_secs as i64 } else { i64::from(self.cert_days) * 86_400 }
    }

    /// How long before expiry a certificate is renewed, in seconds.
    pub fn renew_before(&self) -> i64 {
        if self.renew_before_secs > 0 {
            self.renew_before_secs as i64
        } else {
            i64::from(self.renew_before_days) * 86_400
        }
    }

    /// The operator configured the CA (instead of the one kept in etcd).
    pub fn operator_ca(&self) -> bool {
        !self.ca_cert_file.is_empty()
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        if self.ca_cert_file.is_empty() != self.ca_key_file.is_empty() {
            bail!("tls.ca_cert_file and tls.ca_key_file go together: set both or neither");
        }
        if self.lifetime_secs() <= 0 {
            bail!("tls.cert_days (or tls.cert_secs) must be positive");
        }
        if self.renew_before() >= self.lifetime_secs() {
            bail!(
                "tls.renew_before ({} s) must be shorter than the certificate lifetime ({} s), or certificates are renewed forever",
                self.renew_before(),
                self.lifetime_secs()
            );
        }
        if self.check_every_secs == 0 {
            bail!("tls.check_every_secs must be positive");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_by_default_seconds_when_set_and_nonsense_refused() {
        let d = TlsConfig::default();
        d.validate().unwrap();
        assert_eq!((d.lifetime_secs(), d.renew_before()), (90 * 86_400, 30 * 86_400));
        let short = TlsConfig { cert_secs: 60, renew_before_secs: 30, ..d.clone() };
        short.validate().unwrap();
        assert_eq!((short.lifetime_secs(), short.renew_before()), (60, 30));
        let err = TlsConfig { renew_before_days: 90, ..d.clone() }.validate().unwrap_err().to_string();
        assert!(err.contains("must be shorter"), "{err}");
        let err = TlsConfig { ca_cert_file: "/ca.pem".into(), ..d.clone() }.validate().unwrap_err().to_string();
        assert!(err.contains("set both or neither"), "{err}");
        assert!(TlsConfig { cert_days: 0, ..d }.validate().is_err());
    }
}
