//! The `[https]` section of the broker's and the cell agent's configuration:
//! a certificate turns their HTTP API into HTTPS (docs/security.md).

use std::path::PathBuf;

use anyhow::bail;
use serde::{Deserialize, Serialize};

/// PEM files of the server certificate (chain, leaf first) and its private
/// key. Both empty (the default): plain HTTP, as the local demo runs.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Https {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

impl Https {
    pub fn enabled(&self) -> bool {
        !self.cert_file.as_os_str().is_empty()
    }

    /// Both files or neither: half a configuration must not fall back to HTTP.
    pub fn validate(&self) -> anyhow::Result<()> {
        match (self.cert_file.as_os_str().is_empty(), self.key_file.as_os_str().is_empty()) {
            (true, false) => bail!("https.key_file is set but https.cert_file is not: set both, or neither for HTTP"),
            (false, true) => bail!("https.cert_file is set but https.key_file is not: set both, or neither for HTTP"),
            _ => Ok(()),
        }
    }

    /// `https` or `http`, for URLs this daemon advertises.
    pub fn scheme(&self) -> &'static str {
        if self.enabled() { "https" } else { "http" }
    }
}

#[cfg(test)]
mod tests {
    use super::Https;

    #[test]
    fn both_files_or_neither() {
        assert!(!Https::default().enabled());
        assert!(Https::default().validate().is_ok());
        let both = Https { cert_file: "/c.pem".into(), key_file: "/k.pem".into() };
        assert!(both.enabled() && both.validate().is_ok());
        assert_eq!(both.scheme(), "https");
        let half = Https { cert_file: "/c.pem".into(), ..Https::default() };
        assert!(format!("{:#}", half.validate().unwrap_err()).contains("https.key_file"));
        let half = Https { key_file: "/k.pem".into(), ..Https::default() };
        assert!(format!("{:#}", half.validate().unwrap_err()).contains("https.cert_file"));
    }
}
