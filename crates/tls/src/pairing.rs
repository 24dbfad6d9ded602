//! Pairing: one-time tokens, the proof of a token bound to the TLS session, and the sender's
//! TLS configuration that trusts a receiver by its CA fingerprint alone.
//!
//! # Token
//!
//! `zrep-recv pair` makes a [`PairingToken`]: the receiver CA's SHA-256 fingerprint (so the
//! sender can recognise the receiver on first contact), a random 64-bit token id (which names
//! the pending pairing) and a random 256-bit secret. Its text form is
//! `zrep1:` + base64url (no padding) of `fingerprint (32 B) | id (8 B, big-endian) | secret
//! (32 B)`, 102 characters in all.
//!
//! # What the receiver stores
//!
//! Never the secret: only the token id and the [`StoredKey`]
//! `SHA-256("zrep pairing stored key v1" | id | client_key)`, where `client_key =
//! HMAC-SHA256(secret, "zrep pairing client key v1")`. The token id is the salt: random and
//! unique per pairing. Reading the receiver's state does not let anyone pair.
//!
//! # Proof (SCRAM-like, bound to the TLS session)
//!
//! Both ends derive 32 bytes from the TLS session with the exporter (RFC 8446 section 7.5,
//! label [`EXPORTER_LABEL`], no context). The transcript is
//! `"zrep pairing proof v1" | id | exporter | SHA-256(CSR DER)`. The sender sends
//! `proof = client_key XOR HMAC-SHA256(stored_key, transcript)`. The receiver recomputes the
//! HMAC, recovers `client_key` and checks that it hashes to its stored key. A proof is good for
//! one TLS session and one CSR only: a relay that forwards it into another session, or swaps
//! the CSR, fails.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use aws_lc_rs::{constant_time, digest, hmac, rand};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{Resumption, verify_server_cert_signed_by_trust_anchor};
use rustls::crypto::{CryptoProvider, verify_tls13_signature};
use rustls::server::ParsedCertificate;
use rustls::{
    ClientConfig, ClientConnection, DigitallySignedStruct, RootCertStore, ServerConnection,
    SignatureScheme,
};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use crate::error::TlsError;
use crate::fingerprint::Fingerprint;

/// Prefix of a token's text form; the digit is the token format version.
pub const TOKEN_PREFIX: &str = "zrep1:";
/// TLS exporter label for the pairing proof.
pub const EXPORTER_LABEL: &[u8] = b"EXPORTER-zrep-pairing-v1";
/// Length of a proof in bytes.
pub const PROOF_LEN: usize = 32;

const TOKEN_LEN: usize = 32 + 8 + 32;
const CLIENT_KEY_LABEL: &[u8] = b"zrep pairing client key v1";
const STORED_KEY_LABEL: &[u8] = b"zrep pairing stored key v1";
const PROOF_LABEL: &[u8] = b"zrep pairing proof v1";

/// A one-time pairing token. `Debug` hides the secret; `Display` shows the whole token (it is
/// meant to be pasted on the sender, nowhere else).
#[derive(Clone, PartialEq, Eq)]
pub struct PairingToken {
    ca_fingerprint: Fingerprint,
    id: u64,
    secret: [u8; 32],
}

/// What the receiver keeps of a token: a one-way value that checks proofs but cannot make one.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct StoredKey([u8; 32]);

/// A string is not a pairing token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
#[error(
    "invalid pairing token: {reason} (expected `zrep1:` and 96 base64url characters, as printed by `zrep-recv pair`)"
)]
pub struct InvalidToken {
    reason: &'static str,
}

impl PairingToken {
    /// A fresh token for the receiver whose CA has `ca_fingerprint`.
    pub fn generate(ca_fingerprint: Fingerprint) -> Result<Self, TlsError> {
        let mut id = [0u8; 8];
        let mut secret = [0u8; 32];
        rand::fill(&mut id).map_err(|_| random_error())?;
        rand::fill(&mut secret).map_err(|_| random_error())?;
        Ok(PairingToken {
            ca_fingerprint,
            id: u64::from_be_bytes(id),
            secret,
        })
    }

    /// The fingerprint of the receiver's CA certificate, to pin on first contact.
    pub fn ca_fingerprint(&self) -> Fingerprint {
        self.ca_fingerprint
    }

    /// The token id (public: it names the pending pairing).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The value the receiver stores in place of the secret.
    pub fn stored_key(&self) -> StoredKey {
        StoredKey::derive(self.id, &self.client_key())
    }

    /// The proof for this TLS session (its exporter value) and this CSR (DER).
    pub fn proof(&self, exporter: &[u8; 32], csr_der: &[u8]) -> Vec<u8> {
        let signature = self.stored_key().signature(self.id, exporter, csr_der);
        let client_key = self.client_key();
        client_key
            .iter()
            .zip(signature.iter())
            .map(|(k, s)| k ^ s)
            .collect()
    }

    fn client_key(&self) -> [u8; 32] {
        let key = hmac::Key::new(hmac::HMAC_SHA256, &self.secret);
        to_array(hmac::sign(&key, CLIENT_KEY_LABEL).as_ref())
    }
}

impl StoredKey {
    fn derive(id: u64, client_key: &[u8; 32]) -> Self {
        let mut ctx = digest::Context::new(&digest::SHA256);
        ctx.update(STORED_KEY_LABEL);
        ctx.update(&id.to_be_bytes());
        ctx.update(client_key);
        StoredKey(to_array(ctx.finish().as_ref()))
    }

    /// Whether `proof` proves the token with this stored key and `id`, for this TLS session's
    /// exporter value and this CSR. Constant-time in the proof's content.
    pub fn verify(&self, id: u64, exporter: &[u8; 32], csr_der: &[u8], proof: &[u8]) -> bool {
        if proof.len() != PROOF_LEN {
            return false;
        }
        let signature = self.signature(id, exporter, csr_der);
        let mut client_key = [0u8; 32];
        for (out, (p, s)) in client_key
            .iter_mut()
            .zip(proof.iter().zip(signature.iter()))
        {
            *out = p ^ s;
        }
        let derived = StoredKey::derive(id, &client_key);
        constant_time::verify_slices_are_equal(&derived.0, &self.0).is_ok()
    }

    /// The raw bytes, for storing.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    fn signature(&self, id: u64, exporter: &[u8; 32], csr_der: &[u8]) -> [u8; 32] {
        let key = hmac::Key::new(hmac::HMAC_SHA256, &self.0);
        let mut ctx = hmac::Context::with_key(&key);
        ctx.update(PROOF_LABEL);
        ctx.update(&id.to_be_bytes());
        ctx.update(exporter);
        ctx.update(digest::digest(&digest::SHA256, csr_der).as_ref());
        to_array(ctx.sign().as_ref())
    }
}

impl From<[u8; 32]> for StoredKey {
    fn from(bytes: [u8; 32]) -> Self {
        StoredKey(bytes)
    }
}

/// Same text form as a fingerprint: 64 lowercase hex digits.
impl fmt::Display for StoredKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&Fingerprint::from(self.0), f)
    }
}

impl fmt::Debug for StoredKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StoredKey({self})")
    }
}

impl FromStr for StoredKey {
    type Err = InvalidToken;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // Same text form as a fingerprint: 64 hex digits.
        let fp: Fingerprint = s.parse().map_err(|_| InvalidToken {
            reason: "stored key is not 64 hex digits",
        })?;
        Ok(StoredKey(*fp.as_bytes()))
    }
}

impl fmt::Display for PairingToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut raw = Vec::with_capacity(TOKEN_LEN);
        raw.extend_from_slice(self.ca_fingerprint.as_bytes());
        raw.extend_from_slice(&self.id.to_be_bytes());
        raw.extend_from_slice(&self.secret);
        write!(f, "{TOKEN_PREFIX}{}", URL_SAFE_NO_PAD.encode(raw))
    }
}

impl fmt::Debug for PairingToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PairingToken")
            .field("ca_fingerprint", &self.ca_fingerprint)
            .field("id", &format_args!("{:016x}", self.id))
            .finish_non_exhaustive()
    }
}

impl FromStr for PairingToken {
    type Err = InvalidToken;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let body = s.trim().strip_prefix(TOKEN_PREFIX).ok_or(InvalidToken {
            reason: "it does not start with `zrep1:`",
        })?;
        let raw = URL_SAFE_NO_PAD.decode(body).map_err(|_| InvalidToken {
            reason: "not base64url",
        })?;
        if raw.len() != TOKEN_LEN {
            return Err(InvalidToken {
                reason: "wrong length",
            });
        }
        Ok(PairingToken {
            ca_fingerprint: Fingerprint::from(to_array(&raw[..32])),
            id: u64::from_be_bytes(raw[32..40].try_into().unwrap_or_default()),
            secret: to_array(&raw[40..]),
        })
    }
}

/// The 32-byte pairing exporter value of a server connection.
pub fn server_exporter(conn: &ServerConnection) -> Result<[u8; 32], TlsError> {
    let mut out = [0u8; 32];
    conn.export_keying_material(&mut out, EXPORTER_LABEL, None)?;
    Ok(out)
}

/// The 32-byte pairing exporter value of a client connection.
pub fn client_exporter(conn: &ClientConnection) -> Result<[u8; 32], TlsError> {
    let mut out = [0u8; 32];
    conn.export_keying_material(&mut out, EXPORTER_LABEL, None)?;
    Ok(out)
}

/// The sender's configuration for enrolment: no client certificate, TLS 1.3 only, and the
/// server is trusted only if its chain contains the CA certificate with `ca_fingerprint` and
/// its leaf is a valid `serverAuth` certificate issued by that CA. The name the sender dialled
/// is not checked: the pin replaces it (the receiver may be reached by any address).
pub fn pinned_client_config(ca_fingerprint: Fingerprint) -> Result<Arc<ClientConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let verifier = Arc::new(PinnedCaVerifier {
        pin: ca_fingerprint,
        provider: provider.clone(),
    });
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.resumption = Resumption::disabled();
    Ok(Arc::new(config))
}

/// The subjectAltNames (DNS names and IP addresses) of a certificate, in order.
pub fn certificate_names(cert: &CertificateDer<'_>) -> Result<Vec<String>, TlsError> {
    let (_, x509) =
        x509_parser::parse_x509_certificate(cert).map_err(|e| TlsError::Certificate {
            reason: e.to_string(),
        })?;
    let mut names = Vec::new();
    if let Ok(Some(sans)) = x509.subject_alternative_name() {
        for name in &sans.value.general_names {
            match name {
                x509_parser::extensions::GeneralName::DNSName(d) => names.push((*d).to_owned()),
                x509_parser::extensions::GeneralName::IPAddress(b) => match b.len() {
                    4 => names.push(std::net::IpAddr::from(to_array::<4>(b)).to_string()),
                    16 => names.push(std::net::IpAddr::from(to_array::<16>(b)).to_string()),
                    _ => {}
                },
                _ => {}
            }
        }
    }
    Ok(names)
}

#[derive(Debug)]
struct PinnedCaVerifier {
    pin: Fingerprint,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedCaVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let ca = intermediates
            .iter()
            .find(|c| Fingerprint::of_cert(c) == self.pin)
            .ok_or_else(|| {
                rustls::Error::General(format!(
                    "the receiver's CA is not the one the pairing token names (fingerprint {}): wrong receiver, or someone in between",
                    self.pin
                ))
            })?;
        let mut roots = RootCertStore::empty();
        roots.add(ca.clone().into_owned())?;
        let leaf = ParsedCertificate::try_from(end_entity)?;
        verify_server_cert_signed_by_trust_anchor(
            &leaf,
            &roots,
            &[],
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        // The configuration is TLS 1.3 only.
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls13RequiredForQuic,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

fn to_array<const N: usize>(bytes: &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(&bytes[..N]);
    out
}

fn random_error() -> TlsError {
    TlsError::Generate(rcgen::Error::RingUnspecified)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token() -> PairingToken {
        PairingToken::generate(Fingerprint::of_der(b"ca")).unwrap()
    }

    #[test]
    fn token_text_round_trips_and_hides_the_secret_in_debug() {
        let t = token();
        let text = t.to_string();
        assert!(text.starts_with("zrep1:"));
        assert_eq!(text.len(), 6 + 96);
        assert_eq!(text.parse::<PairingToken>().unwrap(), t);
        assert_eq!(format!(" {text}\n").parse::<PairingToken>().unwrap(), t);
        let debug = format!("{t:?}");
        assert!(!debug.contains(&text[6..]), "{debug}");
        for bad in [
            "",
            "zrep1:",
            "zrep2:AAAA",
            &text[..text.len() - 2],
            "zrep1:!!!!",
        ] {
            assert!(bad.parse::<PairingToken>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn proof_verifies_only_for_its_session_csr_and_token() {
        let t = token();
        let stored = t.stored_key();
        let exporter = [7u8; 32];
        let proof = t.proof(&exporter, b"csr");
        assert!(stored.verify(t.id(), &exporter, b"csr", &proof));
        // Another TLS session, another CSR, another token id, a truncated proof.
        assert!(!stored.verify(t.id(), &[8u8; 32], b"csr", &proof));
        assert!(!stored.verify(t.id(), &exporter, b"other csr", &proof));
        assert!(!stored.verify(t.id() ^ 1, &exporter, b"csr", &proof));
        assert!(!stored.verify(t.id(), &exporter, b"csr", &proof[..31]));
        // Another secret with the same id.
        let mut wrong = t.clone();
        wrong.secret[0] ^= 1;
        assert!(!stored.verify(t.id(), &exporter, b"csr", &wrong.proof(&exporter, b"csr")));
        // The stored key round-trips through text and is not the secret.
        assert_eq!(stored.to_string().parse::<StoredKey>().unwrap(), stored);
        assert_ne!(stored.as_bytes(), &t.secret);
    }
}
