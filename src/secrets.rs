//! Connection secrets and bearer tokens: generation, digests, comparison.
//!
//! Both are 256-bit random values, so a fast SHA-256 digest is the right storage form: a
//! slow password hash would add latency and no protection (it only helps low-entropy,
//! human-chosen secrets). Only digests reach the database, caches, jobs and logs.
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::TryRng;
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

/// Bytes of entropy in every generated secret.
const SECRET_BYTES: usize = 32;

/// A plaintext secret or token. It has no `Debug` or `Display`, so it cannot be logged
/// by accident, and its memory is zeroized when it is dropped.
pub struct Plaintext(Zeroizing<String>);

impl Plaintext {
    /// 32 bytes from the operating system's generator, base64url without padding.
    pub fn generate() -> anyhow::Result<Self> {
        let mut bytes = Zeroizing::new([0u8; SECRET_BYTES]);
        rand::rngs::SysRng
            .try_fill_bytes(bytes.as_mut())
            .map_err(|e| anyhow::anyhow!("the OS random generator failed: {e}"))?;
        Ok(Self(Zeroizing::new(URL_SAFE_NO_PAD.encode(bytes.as_ref()))))
    }

    /// Wraps a value received from a caller or a seed file.
    pub fn from_received(value: String) -> Self {
        Self(Zeroizing::new(value))
    }

    pub fn digest(&self) -> SecretDigest {
        SecretDigest::of(self.expose())
    }

    /// The plaintext itself: for the one response that returns it, never for logs.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// The hex SHA-256 digest of `parts`, one after the other.
pub fn hex_sha256(parts: &[&[u8]]) -> String {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update(part);
    }
    let digest = hasher.finalize();
    let mut hex = String::with_capacity(64);
    for byte in digest.iter() {
        hex.push(char::from(HEX[usize::from(byte >> 4)]));
        hex.push(char::from(HEX[usize::from(byte & 0x0f)]));
    }
    hex
}

/// `N` bytes from the operating system's generator.
pub fn random_bytes<const N: usize>() -> anyhow::Result<[u8; N]> {
    let mut bytes = [0u8; N];
    rand::rngs::SysRng
        .try_fill_bytes(&mut bytes)
        .map_err(|e| anyhow::anyhow!("the OS random generator failed: {e}"))?;
    Ok(bytes)
}

/// Hex SHA-256 digest of a secret or token: what the database and caches hold.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct SecretDigest(String);

impl SecretDigest {
    pub fn of(plaintext: &str) -> Self {
        Self(hex_sha256(&[plaintext.as_bytes()]))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }

    /// Constant-time comparison, so response timing says nothing about how much of a
    /// presented secret matched a stored one.
    pub fn matches(&self, stored: &str) -> bool {
        self.0.as_bytes().ct_eq(stored.as_bytes()).into()
    }
}

impl std::fmt::Debug for SecretDigest {
    // A digest is not secret, but a short prefix is all a log ever needs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretDigest({}…)", self.0.get(..8).unwrap_or_default())
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_secret_is_256_bit_url_safe_and_unique() {
        let a = Plaintext::generate().unwrap();
        let b = Plaintext::generate().unwrap();
        assert_eq!(a.expose().len(), 43);
        assert!(
            a.expose()
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
        );
        assert_ne!(a.expose(), b.expose());
    }

    #[test]
    fn digest_is_hex_sha256_and_matches_itself_only() {
        let d = SecretDigest::of("abc");
        assert_eq!(
            d.as_str(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(d.matches(d.as_str()));
        assert!(!d.matches(SecretDigest::of("abd").as_str()));
    }
}
