//! How a daemon (or an operator command, or Patroni) reaches a locked-down
//! etcd: TLS with the fleet's etcd CA and optionally a client certificate,
//! and/or a user of etcd's authentication with its password. Every field is
//! optional: nothing set is the plaintext, open etcd of the local demo.

use std::path::PathBuf;

use anyhow::bail;
use serde::{Deserialize, Serialize};

/// The `PGCELL_ETCD_*` variables, by field of [`EtcdAccess`]; every daemon's
/// table has them too (prefixed with `etcd_access.`), the operator commands use these.
pub const ENV: &[(&str, &str)] = &[
    ("PGCELL_ETCD_CA_FILE", "ca_file"),
    ("PGCELL_ETCD_CERT_FILE", "cert_file"),
    ("PGCELL_ETCD_KEY_FILE", "key_file"),
    ("PGCELL_ETCD_USERNAME", "username"),
    ("PGCELL_ETCD_PASSWORD", "password"),
];

#[derive(Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct EtcdAccess {
    /// PEM CA that signed etcd's server certificate; set: the endpoints are `https://`.
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate (etcd's `--client-cert-auth`), with `key_file`.
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// etcd user (its role decides which keys this process reaches), with `password`.
    pub username: Option<String>,
    pub password: Option<String>,
}

impl std::fmt::Debug for EtcdAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdAccess")
            .field("ca_file", &self.ca_file)
            .field("cert_file", &self.cert_file)
            .field("key_file", &self.key_file)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<hidden>"))
            .finish()
    }
}

impl EtcdAccess {
    /// The operator commands' access: the `PGCELL_ETCD_*` environment only.
    pub fn from_env() -> anyhow::Result<Self> {
        let access: Self = super::load_layered(None, &[("", ENV)], &|k| std::env::var(k).ok())?;
        access.validate()?;
        Ok(access)
    }

    /// Half a pair is a mistake the operator should hear about, not a silent plaintext fallback.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.cert_file.is_some() != self.key_file.is_some() {
            bail!("etcd access: cert_file and key_file go together (PGCELL_ETCD_CERT_FILE, PGCELL_ETCD_KEY_FILE)");
        }
        if self.username.is_some() != self.password.is_some() {
            bail!("etcd access: username and password go together (PGCELL_ETCD_USERNAME, PGCELL_ETCD_PASSWORD)");
        }
        if self.cert_file.is_some() && self.ca_file.is_none() {
            bail!("etcd access: a client certificate needs TLS: set ca_file (PGCELL_ETCD_CA_FILE) too");
        }
        if self.username.as_deref().is_some_and(str::is_empty) {
            bail!("etcd access: username is empty");
        }
        Ok(())
    }

    pub fn tls(&self) -> bool {
        self.ca_file.is_some()
    }

    /// The endpoints as URLs: `https://` when TLS is on; an endpoint that has a scheme keeps it.
    pub fn urls(&self, endpoints: &[String]) -> Vec<String> {
        let scheme = if self.tls() { "https" } else { "http" };
        endpoints.iter().map(|e| if e.contains("://") { e.clone() } else { format!("{scheme}://{e}") }).collect()
    }

    /// The user and password, when both are set.
    pub fn user(&self) -> Option<(&str, &str)> {
        Some((self.username.as_deref()?, self.password.as_deref()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from(env: &[(&str, &str)]) -> anyhow::Result<EtcdAccess> {
        let map: std::collections::HashMap<&str, &str> = env.iter().copied().collect();
        let a: EtcdAccess = crate::config::load_layered(None, &[("", ENV)], &|k| map.get(k).map(|v| v.to_string()))?;
        a.validate()?;
        Ok(a)
    }

    #[test]
    fn unset_is_plaintext_and_tls_makes_https() {
        let open = from(&[]).unwrap();
        assert_eq!(open, EtcdAccess::default());
        assert_eq!(open.urls(&["127.0.0.1:2379".into()]), ["http://127.0.0.1:2379"]);
        let tls =
            from(&[("PGCELL_ETCD_CA_FILE", "/ca.pem"), ("PGCELL_ETCD_USERNAME", "u"), ("PGCELL_ETCD_PASSWORD", "p")])
                .unwrap();
        assert_eq!(tls.urls(&["a:1".into(), "https://b:2".into()]), ["https://a:1", "https://b:2"]);
        assert_eq!(tls.user(), Some(("u", "p")));
    }

    #[test]
    fn half_pairs_are_refused_and_the_password_is_never_shown() {
        let err = from(&[("PGCELL_ETCD_USERNAME", "u")]).unwrap_err().to_string();
        assert!(err.contains("username and password go together"), "{err}");
        let err = from(&[("PGCELL_ETCD_CERT_FILE", "/c"), ("PGCELL_ETCD_KEY_FILE", "/k")]).unwrap_err().to_string();
        assert!(err.contains("needs TLS"), "{err}");
        let err = from(&[("PGCELL_ETCD_CA_FILE", "/ca"), ("PGCELL_ETCD_KEY_FILE", "/k")]).unwrap_err().to_string();
        assert!(err.contains("cert_file and key_file"), "{err}");
        let a = from(&[("PGCELL_ETCD_USERNAME", "u"), ("PGCELL_ETCD_PASSWORD", "s3cr3t-pw")]).unwrap();
        let shown = format!("{a:?}");
        assert!(!shown.contains("s3cr3t-pw") && shown.contains("\"u\""), "{shown}");
    }

    #[test]
    fn every_daemon_reads_the_same_variables() {
        let env = |k: &str| {
            let v =
                [("PGCELL_ETCD_CA_FILE", "/ca.pem"), ("PGCELL_ETCD_USERNAME", "u"), ("PGCELL_ETCD_PASSWORD", "pw-9")];
            v.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())
        };
        let cell: crate::config::CellConfig = crate::config::load_layered(None, super::super::CELL_ENV, &env).unwrap();
        let router: crate::config::RouterConfig =
            crate::config::load_layered(None, super::super::ROUTER_ENV, &env).unwrap();
        let broker: crate::config::BrokerConfig =
            crate::config::load_layered(None, super::super::BROKER_ENV, &env).unwrap();
        for a in [&cell.etcd_access, &router.etcd_access, &broker.etcd_access] {
            assert_eq!((a.ca_file.as_deref(), a.user()), (Some(std::path::Path::new("/ca.pem")), Some(("u", "pw-9"))));
        }
        assert!(!format!("{cell:?}{router:?}").contains("pw-9"));
    }
}
