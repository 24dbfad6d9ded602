//! [`Fingerprint`]: SHA-256 over a certificate's DER encoding.

use std::fmt;
use std::str::FromStr;

use aws_lc_rs::digest;
use rustls_pki_types::CertificateDer;
use serde::{Deserialize, Serialize};

/// The SHA-256 digest of a certificate's DER encoding, the same value as
/// `openssl x509 -noout -fingerprint -sha256`.
///
/// Displays as 64 lowercase hex digits without separators; parses from that or from OpenSSL's
/// colon-separated uppercase form. Used to pin a CA during pairing and to name (and revoke) one
/// particular peer certificate.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Fingerprint([u8; 32]);

/// A string is not a SHA-256 fingerprint.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
#[error("invalid SHA-256 fingerprint: expected 64 hex digits, optionally separated by ':'")]
pub struct InvalidFingerprint;

impl Fingerprint {
    /// The fingerprint of a DER-encoded certificate.
    pub fn of_cert(cert: &CertificateDer<'_>) -> Self {
        Self::of_der(cert.as_ref())
    }

    /// SHA-256 over arbitrary DER bytes.
    pub fn of_der(der: &[u8]) -> Self {
        let hash = digest::digest(&digest::SHA256, der);
        let mut out = [0u8; 32];
        out.copy_from_slice(hash.as_ref());
        Fingerprint(out)
    }

    /// The raw digest.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// OpenSSL's form: uppercase hex bytes separated by `:`.
    pub fn to_colon_hex(&self) -> String {
        let hex: Vec<String> = self.0.iter().map(|b| format!("{b:02X}")).collect();
        hex.join(":")
    }
}

impl From<[u8; 32]> for Fingerprint {
    fn from(bytes: [u8; 32]) -> Self {
        Fingerprint(bytes)
    }
}

impl FromStr for Fingerprint {
    type Err = InvalidFingerprint;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let digits: Vec<u8> = s.bytes().filter(|b| *b != b':').collect();
        if digits.len() != 64 {
            return Err(InvalidFingerprint);
        }
        let mut out = [0u8; 32];
        for (byte, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
            let hi = hex_value(pair[0]).ok_or(InvalidFingerprint)?;
            let lo = hex_value(pair[1]).ok_or(InvalidFingerprint)?;
            *byte = (hi << 4) | lo;
        }
        Ok(Fingerprint(out))
    }
}

fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

impl TryFrom<String> for Fingerprint {
    type Error = InvalidFingerprint;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<Fingerprint> for String {
    fn from(fp: Fingerprint) -> Self {
        fp.to_string()
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in &self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_of_empty_input() {
        assert_eq!(
            Fingerprint::of_der(b"").to_string(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn parses_plain_and_colon_forms() {
        let fp = Fingerprint::of_der(b"zrep");
        assert_eq!(fp.to_string().parse::<Fingerprint>(), Ok(fp));
        assert_eq!(fp.to_colon_hex().parse::<Fingerprint>(), Ok(fp));
        assert_eq!(fp.to_string().to_uppercase().parse::<Fingerprint>(), Ok(fp));
    }

    #[test]
    fn rejects_garbage() {
        for bad in [
            "",
            "abcd",
            &"g".repeat(64),
            &"a".repeat(63),
            &"a".repeat(66),
        ] {
            assert_eq!(
                bad.parse::<Fingerprint>(),
                Err(InvalidFingerprint),
                "{bad:?}"
            );
        }
    }
}
