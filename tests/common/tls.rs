//! What an app does with a binding's TLS credentials: keep `ca_cert` in a file
//! and point libpq's `sslrootcert` at it.

use std::path::Path;

/// Writes `ca_pem` to `dir/<name>` and returns its path.
pub fn write_ca(dir: &Path, name: &str, ca_pem: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, ca_pem).unwrap();
    path.display().to_string()
}

/// The binding's `uri` (which asks for `sslmode=verify-full`) with the binding's
/// CA as `sslrootcert`: what psql needs to connect as the app does.
pub fn binding_url(credentials: &serde_json::Value, dir: &Path) -> String {
    let uri = credentials["uri"].as_str().expect("credentials carry a uri");
    let ca = credentials["ca_cert"].as_str().expect("credentials carry ca_cert");
    let file = write_ca(dir, &format!("ca-{}.crt", credentials["username"].as_str().unwrap_or("x")), ca);
    let sep = if uri.contains('?') { '&' } else { '?' };
    format!("{uri}{sep}sslrootcert={file}")
}
