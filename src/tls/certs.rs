//! The fleet's certificates: a CA (the operator's, or one pgcell generates),
//! server certificates it signs for PostgreSQL members, and what an existing
//! certificate says (names, validity, issuer), so the cell can decide when to
//! renew. ECDSA P-256 throughout: small keys, fast handshakes, what libpq and
//! every JDBC driver accept.

use std::collections::BTreeSet;
use std::net::IpAddr;

use anyhow::Context;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    SerialNumber,
};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// A CA certificate and its private key, both PEM. The key signs every
/// server certificate of the fleet: as secret as the superuser passwords.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct CaPair {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for CaPair {
    // The key never reaches a log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CaPair(<key redacted>)")
    }
}

/// A server certificate (PEM) and its private key (PEM).
#[derive(Clone, PartialEq)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Issued(<key redacted>)")
    }
}

/// A random positive serial (RFC 5280: at most 20 octets, positive).
fn serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01;
    SerialNumber::from_slice(&bytes)
}

/// A new self-signed CA valid for `days` from now.
pub fn generate_ca(common_name: &str, days: i64) -> anyhow::Result<CaPair> {
    let key = KeyPair::generate().context("generate the CA key")?;
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, common_name);
    params.distinguished_name.push(DnType::OrganizationName, "pgcell");
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let now = OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(days);
    params.serial_number = Some(serial());
    let cert = params.self_signed(&key).context("self-sign the CA")?;
    Ok(CaPair { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
}

impl CaPair {
    /// Checks that the pair is usable: the certificate parses, is a CA, and
    /// the key is its key.
    pub fn check(&self) -> anyhow::Result<()> {
        let key = KeyPair::from_pem(&self.key_pem).context("the CA key is not a PEM private key")?;
        let der = pem_der(&self.cert_pem).context("the CA certificate is not PEM")?;
        let (_, cert) = x509_parser::parse_x509_certificate(&der).context("the CA certificate does not parse")?;
        anyhow::ensure!(cert.is_ca(), "the CA certificate is not a CA (basicConstraints CA:FALSE)");
        anyhow::ensure!(
            cert.public_key().subject_public_key.data.as_ref() == key.public_key_raw(),
            "the CA key does not belong to the CA certificate"
        );
        Ok(())
    }

    /// Signs a server certificate for `names` (DNS names or IP addresses),
    /// valid from a little before now (clocks of clients differ) for `lifetime_secs`.
    pub fn issue_server(&self, names: &BTreeSet<String>, lifetime_secs: i64) -> anyhow::Result<Issued> {
        anyhow::ensure!(!names.is_empty(), "a server certificate needs at least one name");
        let ca_key = KeyPair::from_pem(&self.key_pem).context("the CA key is not a PEM private key")?;
        let issuer = Issuer::from_ca_cert_pem(&self.cert_pem, ca_key).context("cannot read the CA certificate")?;
        let key = KeyPair::generate().context("generate a server key")?;
        let mut params = CertificateParams::new(names.iter().cloned().collect::<Vec<_>>())
            .with_context(|| format!("bad certificate names {names:?}"))?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, names.iter().next().cloned().unwrap_or_default());
        params.distinguished_name.push(DnType::OrganizationName, "pgcell");
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let now = OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::minutes(5);
        params.not_after = now + time::Duration::seconds(lifetime_secs.max(1));
        params.serial_number = Some(serial());
        let cert = params.signed_by(&key, &issuer).context("sign the server certificate")?;
        Ok(Issued { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
    }
}

/// What a certificate says, as far as renewal cares.
#[derive(Clone, Debug, PartialEq)]
pub struct CertInfo {
    /// Subject alternative names: DNS names and IP addresses, as text.
    pub names: BTreeSet<String>,
    /// Unix seconds.
    pub not_before: i64,
    pub not_after: i64,
    /// Hexadecimal, as `openssl x509 -serial` prints it (upper case).
    pub serial: String,
    /// Its signature checks against the CA given to [`inspect`].
    pub signed_by_ca: bool,
}

fn pem_der(pem: &str) -> anyhow::Result<Vec<u8>> {
    let (_, p) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(p.contents)
}

/// Reads a PEM certificate and checks it against the CA certificate `ca_pem`.
pub fn inspect(cert_pem: &str, ca_pem: &str) -> anyhow::Result<CertInfo> {
    use x509_parser::extensions::GeneralName;
    let der = pem_der(cert_pem).context("not a PEM certificate")?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der).context("the certificate does not parse")?;
    let mut names = BTreeSet::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            match n {
                GeneralName::DNSName(d) => {
                    names.insert(d.to_string());
                }
                GeneralName::IPAddress(b) => {
                    let ip = match b.len() {
                        4 => <[u8; 4]>::try_from(*b).ok().map(IpAddr::from),
                        16 => <[u8; 16]>::try_from(*b).ok().map(IpAddr::from),
                        _ => None,
                    };
                    names.extend(ip.map(|ip| ip.to_string()));
                }
                _ => {}
            }
        }
    }
    let ca_der = pem_der(ca_pem).context("the CA certificate is not PEM")?;
    let (_, ca) = x509_parser::parse_x509_certificate(&ca_der).context("the CA certificate does not parse")?;
    let signed_by_ca = cert.issuer() == ca.subject() && cert.verify_signature(Some(ca.public_key())).is_ok();
    Ok(CertInfo {
        names,
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
        serial: cert.raw_serial().iter().map(|b| format!("{b:02X}")).collect(),
        signed_by_ca,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> BTreeSet<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_generated_ca_signs_server_certificates_with_ip_and_dns_names() {
        let ca = generate_ca("pgcell test CA", 3650).unwrap();
        ca.check().unwrap();
        let wanted = names(&["127.0.0.1", "db.example", "localhost", "::1"]);
        let issued = ca.issue_server(&wanted, 3600).unwrap();
        let info = inspect(&issued.cert_pem, &ca.cert_pem).unwrap();
        assert_eq!(info.names, wanted);
        assert!(info.signed_by_ca);
        let now = OffsetDateTime::now_utc().unix_timestamp();
        assert!(info.not_before <= now && (info.not_after - now - 3600).abs() <= 5, "{info:?}");
        let again = ca.issue_server(&wanted, 3600).unwrap();
        assert_ne!(inspect(&again.cert_pem, &ca.cert_pem).unwrap().serial, info.serial, "serials are random");
        assert_ne!(again.key_pem, issued.key_pem, "each certificate has its own key");
    }

    #[test]
    fn another_ca_is_seen_and_mismatched_pairs_refused() {
        let (a, b) = (generate_ca("a", 10).unwrap(), generate_ca("b", 10).unwrap());
        let issued = a.issue_server(&names(&["x"]), 60).unwrap();
        assert!(!inspect(&issued.cert_pem, &b.cert_pem).unwrap().signed_by_ca);
        let mixed = CaPair { cert_pem: a.cert_pem.clone(), key_pem: b.key_pem.clone() };
        assert!(format!("{:#}", mixed.check().unwrap_err()).contains("does not belong"));
        let not_ca = CaPair { cert_pem: issued.cert_pem.clone(), key_pem: issued.key_pem.clone() };
        assert!(format!("{:#}", not_ca.check().unwrap_err()).contains("not a CA"));
        assert!(inspect("garbage", &a.cert_pem).is_err());
        assert!(!format!("{a:?}").contains("PRIVATE"), "the key never shows in Debug");
    }
}
