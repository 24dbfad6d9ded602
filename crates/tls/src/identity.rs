//! Who is on the other end: [`PeerIdentity`] from a verified client certificate, and the
//! [`RevocationCheck`] hook applied after the handshake.
//!
//! # Revocation design
//!
//! rustls verifies the chain, validity period and `clientAuth` usage during the handshake.
//! Revocation is checked right after it, by [`crate::Acceptor::accept`], against a
//! [`RevocationCheck`] that zrep-recv supplies: typically [`RevokedCerts`], a set of certificate
//! fingerprints loaded from its state (and swapped on reload), or a closure. Revoking by
//! fingerprint refuses one stolen or retired certificate while a re-issued certificate for the
//! same peer name keeps working; refusing a whole peer is zrep-recv's authorization (its
//! peer → dataset map), not revocation.
//!
//! A CRL-based check inside the handshake (rustls' `WebPkiClientVerifier::with_crls`, CRLs
//! signed with rcgen) can be added to [`crate::server_config`] later without changing this hook.
//! TLS session resumption is disabled on the server so that every connection runs the full
//! certificate check and this hook.

use std::collections::HashSet;
use std::time::{Duration, SystemTime};

use rustls::ServerConnection;
use rustls_pki_types::CertificateDer;

use crate::error::TlsError;
use crate::fingerprint::Fingerprint;
use crate::name::PeerName;

/// The authenticated identity of a connected peer, from its client certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PeerIdentity {
    /// The subject CN, validated as a [`PeerName`]; zrep-recv maps it to a root dataset.
    pub name: PeerName,
    /// End of the certificate's validity (`notAfter`), e.g. to warn before it expires.
    pub not_after: SystemTime,
    /// SHA-256 fingerprint of the leaf certificate, for logs and revocation.
    pub fingerprint: Fingerprint,
}

/// The identity of the client on an established server connection.
///
/// Only meaningful on a connection built from [`crate::server_config`], whose verifier already
/// checked the certificate against the CA: this function reads the certificate, it does not
/// verify it. Fails when the client sent no certificate or its subject has no single CN that is
/// a valid [`PeerName`].
pub fn peer_identity(conn: &ServerConnection) -> Result<PeerIdentity, TlsError> {
    let leaf = conn
        .peer_certificates()
        .and_then(|certs| certs.first())
        .ok_or(TlsError::NoPeerCertificate)?;
    PeerIdentity::from_cert(leaf)
}

impl PeerIdentity {
    /// Builds an identity from its parts, e.g. for a fake transport in tests. Real connections
    /// get theirs from [`peer_identity`] or [`crate::Acceptor::accept`].
    pub fn new(name: PeerName, not_after: SystemTime, fingerprint: Fingerprint) -> Self {
        PeerIdentity {
            name,
            not_after,
            fingerprint,
        }
    }

    /// Reads the identity out of a leaf certificate **without verifying it**; use it on
    /// certificates rustls has verified, or that the local CA just issued.
    pub fn from_cert(cert: &CertificateDer<'_>) -> Result<Self, TlsError> {
        let (_, x509) =
            x509_parser::parse_x509_certificate(cert).map_err(|e| TlsError::Certificate {
                reason: e.to_string(),
            })?;
        let subject_error = |reason: String| TlsError::PeerCommonName { reason };
        let mut cns = x509.subject().iter_common_name();
        let cn = cns
            .next()
            .ok_or_else(|| subject_error("no common name (CN)".to_owned()))?;
        if cns.next().is_some() {
            return Err(subject_error("more than one common name (CN)".to_owned()));
        }
        let cn = cn
            .as_str()
            .map_err(|_| subject_error("common name is not a string".to_owned()))?;
        let name = PeerName::new(cn).map_err(|e| subject_error(format!("CN {cn:?}: {e}")))?;
        let not_after = x509.validity().not_after.timestamp();
        let not_after =
            SystemTime::UNIX_EPOCH + Duration::from_secs(not_after.max(0).unsigned_abs());
        Ok(PeerIdentity {
            name,
            not_after,
            fingerprint: Fingerprint::of_cert(cert),
        })
    }

    /// Start of a certificate's validity (`notBefore`), read without verifying it.
    pub fn not_before_of(cert: &CertificateDer<'_>) -> Result<SystemTime, TlsError> {
        let (_, x509) =
            x509_parser::parse_x509_certificate(cert).map_err(|e| TlsError::Certificate {
                reason: e.to_string(),
            })?;
        let secs = x509.validity().not_before.timestamp();
        Ok(SystemTime::UNIX_EPOCH + Duration::from_secs(secs.max(0).unsigned_abs()))
    }

    /// Time left until the certificate expires, `None` if it already has.
    pub fn expires_in(&self) -> Option<Duration> {
        self.not_after.duration_since(SystemTime::now()).ok()
    }
}

/// Decides, after a successful handshake, whether a peer's certificate has been revoked.
///
/// Implemented by [`RevokedCerts`] and by any `Fn(&PeerIdentity) -> bool + Send + Sync`
/// closure (returning `true` for revoked).
pub trait RevocationCheck: Send + Sync {
    /// `true` if the connection must be refused.
    fn is_revoked(&self, peer: &PeerIdentity) -> bool;
}

impl<F> RevocationCheck for F
where
    F: Fn(&PeerIdentity) -> bool + Send + Sync,
{
    fn is_revoked(&self, peer: &PeerIdentity) -> bool {
        self(peer)
    }
}

/// A set of revoked certificate fingerprints.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RevokedCerts {
    fingerprints: HashSet<Fingerprint>,
}

impl RevokedCerts {
    /// An empty set: nothing revoked.
    pub fn new() -> Self {
        Self::default()
    }

    /// Revokes one certificate; `false` if it already was.
    pub fn insert(&mut self, fingerprint: Fingerprint) -> bool {
        self.fingerprints.insert(fingerprint)
    }

    /// Whether this certificate is revoked.
    pub fn contains(&self, fingerprint: &Fingerprint) -> bool {
        self.fingerprints.contains(fingerprint)
    }

    /// Number of revoked certificates.
    pub fn len(&self) -> usize {
        self.fingerprints.len()
    }

    /// `true` when nothing is revoked.
    pub fn is_empty(&self) -> bool {
        self.fingerprints.is_empty()
    }
}

impl FromIterator<Fingerprint> for RevokedCerts {
    fn from_iter<I: IntoIterator<Item = Fingerprint>>(iter: I) -> Self {
        RevokedCerts {
            fingerprints: iter.into_iter().collect(),
        }
    }
}

impl RevocationCheck for RevokedCerts {
    fn is_revoked(&self, peer: &PeerIdentity) -> bool {
        self.contains(&peer.fingerprint)
    }
}

#[cfg(test)]
mod tests {
    use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair};

    use super::*;

    fn self_signed(dn: DistinguishedName) -> CertificateDer<'static> {
        let mut params = CertificateParams::default();
        params.distinguished_name = dn;
        let key = KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().clone()
    }

    #[test]
    fn cn_must_be_single_and_a_valid_peer_name() {
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "zrep");
        let err = PeerIdentity::from_cert(&self_signed(dn)).unwrap_err();
        assert!(err.to_string().contains("no common name"), "{err}");

        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "nas 1/../x");
        let err = PeerIdentity::from_cert(&self_signed(dn)).unwrap_err();
        assert!(matches!(err, TlsError::PeerCommonName { .. }), "{err:?}");

        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "nas1");
        let cert = self_signed(dn);
        let id = PeerIdentity::from_cert(&cert).unwrap();
        assert_eq!(id.name.as_str(), "nas1");
        assert_eq!(id.fingerprint, Fingerprint::of_cert(&cert));
        // rcgen's default validity ends in 4096.
        assert!(id.expires_in().unwrap() > Duration::from_secs(1000 * 365 * 86400));
    }

    #[test]
    fn revocation_by_fingerprint_and_closure() {
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "nas1");
        let id = PeerIdentity::from_cert(&self_signed(dn)).unwrap();

        let mut revoked = RevokedCerts::new();
        assert!(!revoked.is_revoked(&id));
        assert!(revoked.insert(id.fingerprint));
        assert!(revoked.is_revoked(&id));
        assert_eq!(revoked.len(), 1);

        let by_name = |p: &PeerIdentity| p.name.as_str() == "nas1";
        assert!(by_name.is_revoked(&id));
    }
}
