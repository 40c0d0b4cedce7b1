//! HTTPS for the broker and the per-cell API: the configured PEM files as a
//! rustls server configuration, which the daemons hand to actix-web on their
//! already-bound listener. No certificate configured: no TLS (plain HTTP).

use std::path::Path;

use anyhow::Context;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::Https;

/// The rustls configuration for `https`, `None` when no certificate is set.
/// Fails, naming the file, when a file is missing or holds no usable PEM, or
/// when the key does not match the certificate.
pub fn server_config(https: &Https) -> anyhow::Result<Option<rustls::ServerConfig>> {
    if !https.enabled() {
        return Ok(None);
    }
    https.validate()?;
    crate::tls::install_crypto_provider();
    let certs = certificates(&https.cert_file)?;
    let key = private_key(&https.key_file)?;
    let cfg =
        rustls::ServerConfig::builder().with_no_client_auth().with_single_cert(certs, key).with_context(|| {
            format!(
                "https: the key in {} does not fit the certificate in {}",
                https.key_file.display(),
                https.cert_file.display()
            )
        })?;
    Ok(Some(cfg))
}

fn read(path: &Path, what: &str) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("https: cannot read the {what} file {}", path.display()))
}

/// Every certificate of the file, leaf first (the chain the server presents).
fn certificates(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let pem = read(path, "certificate")?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("https: {} is not valid PEM", path.display()))?;
    anyhow::ensure!(!certs.is_empty(), "https: no CERTIFICATE in {}", path.display());
    Ok(certs)
}

/// The first private key of the file (PKCS#8, PKCS#1 or SEC1).
fn private_key(path: &Path) -> anyhow::Result<PrivateKeyDer<'static>> {
    let pem = read(path, "private key")?;
    PrivateKeyDer::from_pem_slice(&pem).with_context(|| format!("https: no PEM private key in {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(h: &Https) -> String {
        format!("{:#}", server_config(h).unwrap_err())
    }

    #[test]
    fn no_certificate_is_plain_http() {
        assert!(server_config(&Https::default()).unwrap().is_none());
    }

    /// Each bad input names the file at fault, and none panics.
    #[test]
    fn bad_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not a certificate\n").unwrap();
        let missing = dir.path().join("missing.pem");
        let h = Https { cert_file: missing.clone(), key_file: junk.clone() };
        assert!(err(&h).contains("cannot read the certificate file") && err(&h).contains("missing.pem"), "{}", err(&h));
        let h = Https { cert_file: junk.clone(), key_file: junk.clone() };
        assert!(err(&h).contains("no CERTIFICATE in") && err(&h).contains("junk.pem"), "{}", err(&h));
        let cert = dir.path().join("cert.pem");
        std::fs::write(&cert, SELF_SIGNED).unwrap();
        let h = Https { cert_file: cert.clone(), key_file: missing };
        assert!(err(&h).contains("cannot read the private key file"), "{}", err(&h));
        let h = Https { cert_file: cert, key_file: junk };
        assert!(err(&h).contains("no PEM private key in") && err(&h).contains("junk.pem"), "{}", err(&h));
    }

    /// A throw-away self-signed certificate (its key is not kept): parses as a
    /// certificate, so the key file is the one found at fault.
    const SELF_SIGNED: &str = "-----BEGIN CERTIFICATE-----
MIIBfjCCASOgAwIBAgIUOsltPXiCkmTrK1Ba1JYfosF6e+EwCgYIKoZIzj0EAwIw
FDESMBAGA1UEAwwJbG9jYWxob3N0MB4XDTI2MTIwMTE3MTMwMVoXDTM2MTEyODE3
MTMwMVowFDESMBAGA1UEAwwJbG9jYWxob3N0MFkwEwYHKoZIzj0CAQYIKoZIzj0D
AQcDQgAEkyRD9NI+pcW7fomeeqBuFCrl1zDbTvmHxZUcEqaL2q4x5CKC3aA/ADv7
QkZ2HkQbQTlxAu2+LeLk7gYQV6WUqaNTMFEwHQYDVR0OBBYEFJL2av1jjCFQiDNN
e72Hy/69ZHuFMB8GA1UdIwQYMBaAFJL2av1jjCFQiDNNe72Hy/69ZHuFMA8GA1Ud
EwEB/wQFMAMBAf8wCgYIKoZIzj0EAwIDSQAwRgIhAO0FDJJG72pF/2JVvx3H3dCy
1DysNN6/P5aJ7Ye4GRqFAiEA1XNM+6ve0VNuhcovBmfHUUlO4rH2XG9TlE2KP/oY
H0c=
-----END CERTIFICATE-----
";
}
