//! TLS: the one place that picks rustls' cryptography (ring, no C toolchain
//! beyond `cc`), so every TLS user in the crate (PostgreSQL clients, etcd,
//! HTTPS servers) agrees on it; and the fleet's certificates ([`certs`]) with
//! the decisions of when to renew them ([`renew`]).

pub mod certs;
pub mod renew;

/// Installs ring as rustls' process-wide provider; idempotent. Call before
/// building any rustls configuration (daemons do it at start, tests may call it
/// again: a second call is a no-op).
pub fn install_crypto_provider() {
    // Err means a provider is installed already: fine, it is this one or the caller's choice.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

#[cfg(test)]
mod tests {
    #[test]
    fn installing_twice_is_harmless() {
        super::install_crypto_provider();
        super::install_crypto_provider();
        assert!(rustls::crypto::CryptoProvider::get_default().is_some());
    }
}
