//! Random secrets and constant-time comparison.

use rand::RngExt;
use subtle::ConstantTimeEq;

const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

/// A random password of `len` alphanumeric characters (safe in URLs and YAML).
pub fn random_password(len: usize) -> String {
    let mut rng = rand::rng();
    (0..len).map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char).collect()
}

/// Compares two secrets in time that depends only on their lengths.
pub fn constant_time_eq(a: &str, b: &str) -> bool {
    a.as_bytes().ct_eq(b.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_random_and_alphanumeric() {
        let a = random_password(32);
        let b = random_password(32);
        assert_eq!(a.len(), 32);
        assert_ne!(a, b);
        assert!(a.bytes().all(|c| c.is_ascii_alphanumeric()));
    }

    #[test]
    fn equality() {
        assert!(constant_time_eq("containers", "containers"));
        assert!(!constant_time_eq("containers", "container"));
        assert!(!constant_time_eq("a", "b"));
    }
}
