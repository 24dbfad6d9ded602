//! The zrep-recv certificate authority: generating, loading and saving it, and issuing server
//! and peer (client) certificates with rcgen.
//!
//! Every key is ECDSA P-256. Leaf certificates get a random 128-bit serial, are backdated by
//! [`CLOCK_SKEW_ALLOWANCE`] so a sender whose clock lags a little can still connect, and carry
//! exactly one extended key usage: `serverAuth` for the server, `clientAuth` for peers. A peer
//! certificate therefore cannot be used to impersonate the server, nor the server certificate to
//! log in as a peer.

use std::fmt;
use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    PKCS_ECDSA_P256_SHA256, SanType, SerialNumber,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use time::OffsetDateTime;
use tracing::debug;

use crate::error::TlsError;
use crate::files::{self, Overwrite};
use crate::fingerprint::Fingerprint;
use crate::name::PeerName;

const DAY: u64 = 24 * 60 * 60;

/// Default lifetime of a CA certificate: 20 years. Rotating the CA means re-pairing every peer,
/// so it should outlive the machines.
pub const DEFAULT_CA_TTL: Duration = Duration::from_secs(20 * 365 * DAY);
/// Default lifetime of a server certificate: 2 years.
pub const DEFAULT_SERVER_TTL: Duration = Duration::from_secs(2 * 365 * DAY);
/// Default lifetime of a peer (client) certificate: 365 days.
pub const DEFAULT_PEER_TTL: Duration = Duration::from_secs(365 * DAY);
/// How far `notBefore` of an issued certificate lies in the past.
pub const CLOCK_SKEW_ALLOWANCE: Duration = Duration::from_secs(10 * 60);

/// A certificate authority: its certificate and its private key.
///
/// zrep-recv owns one; every peer certificate it accepts must chain to it. `Debug` shows the
/// common name and fingerprint, never the key.
pub struct CertificateAuthority {
    cert_der: CertificateDer<'static>,
    cert_pem: String,
    common_name: String,
    issuer: Issuer<'static, KeyPair>,
}

/// A freshly issued certificate together with its newly generated private key.
///
/// `Debug` omits the key.
pub struct IssuedCert {
    cert: SignedCert,
    key_pem: String,
    key_der: PrivatePkcs8KeyDer<'static>,
}

/// A certificate signed by the CA for a key it never saw (from a CSR).
#[derive(Clone, Debug)]
pub struct SignedCert {
    cert_der: CertificateDer<'static>,
    cert_pem: String,
}

/// A private key generated locally by a sender and the CSR that asks the CA to certify it.
///
/// Only the CSR leaves the machine; the key stays in [`PeerCsr::key_pem`]. `Debug` omits the
/// key.
pub struct PeerCsr {
    csr_pem: String,
    csr_der: Vec<u8>,
    key_pem: String,
}

impl CertificateAuthority {
    /// Generates a new CA with a fresh P-256 key, e.g. `generate("zrep CA backup1",
    /// DEFAULT_CA_TTL)`.
    ///
    /// The CA may only issue end-entity certificates (path length 0).
    pub fn generate(common_name: &str, ttl: Duration) -> Result<Self, TlsError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = common_name_dn(common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        (params.not_before, params.not_after) = validity(ttl)?;
        params.serial_number = Some(random_serial()?);
        let cert = params.self_signed(&key)?;
        let ca = CertificateAuthority {
            cert_der: cert.der().clone(),
            cert_pem: cert.pem(),
            common_name: common_name.to_owned(),
            issuer: Issuer::new(params, key),
        };
        debug!(ca = %ca.common_name, fingerprint = %ca.fingerprint(), "generated CA");
        Ok(ca)
    }

    /// Loads a CA from a PEM certificate file and a PEM private key file (PKCS#8, SEC1 or
    /// PKCS#1). The first certificate of the file is the CA.
    ///
    /// Fails if the certificate is not a CA or the key does not belong to it.
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<Self, TlsError> {
        let cert = files::load_certs(cert_path)?.swap_remove(0);
        let key = files::load_private_key(key_path)?;
        Self::from_der(cert, &key)
    }

    /// Builds a CA from PEM text (certificate and private key).
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, TlsError> {
        let cert = CertificateDer::from_pem_slice(cert_pem.as_bytes()).map_err(|e| {
            TlsError::Certificate {
                reason: format!("CA certificate PEM: {e}"),
            }
        })?;
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| {
            TlsError::PrivateKey {
                reason: format!("CA key PEM: {e}"),
            }
        })?;
        Self::from_der(cert, &key)
    }

    /// Builds a CA from a DER certificate and its private key.
    ///
    /// Fails if the certificate is not a CA or the key does not belong to it.
    pub fn from_der(
        cert_der: CertificateDer<'static>,
        key: &PrivateKeyDer<'_>,
    ) -> Result<Self, TlsError> {
        let (_, x509) =
            x509_parser::parse_x509_certificate(&cert_der).map_err(|e| TlsError::Certificate {
                reason: format!("CA certificate: {e}"),
            })?;
        let is_ca = matches!(x509.basic_constraints(), Ok(Some(bc)) if bc.value.ca);
        if !is_ca {
            return Err(TlsError::NotCa {
                subject: x509.subject().to_string(),
            });
        }
        let key = KeyPair::try_from(key).map_err(|e| TlsError::PrivateKey {
            reason: e.to_string(),
        })?;
        if key.public_key_raw() != x509.public_key().subject_public_key.data.as_ref() {
            return Err(TlsError::CaKeyMismatch);
        }
        let common_name = x509
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .unwrap_or_default()
            .to_owned();
        let issuer = Issuer::from_ca_cert_der(&cert_der, key)?;
        Ok(CertificateAuthority {
            cert_pem: pem_encode("CERTIFICATE", &cert_der),
            cert_der,
            common_name,
            issuer,
        })
    }

    /// Writes the certificate (0644, replaced if present) and the key (0600; an existing key
    /// file is only replaced with [`Overwrite::Replace`]).
    ///
    /// The key is written first, so a refused key leaves the certificate file untouched.
    pub fn save(
        &self,
        cert_path: &Path,
        key_path: &Path,
        overwrite: Overwrite,
    ) -> Result<(), TlsError> {
        files::write_key_file(key_path, &self.key_pem(), overwrite)?;
        files::write_cert_file(cert_path, &self.cert_pem)
    }

    /// The CA certificate, DER.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA private key, PKCS#8 PEM. Handle with care.
    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// The subject common name of the CA certificate (empty if it has none).
    pub fn common_name(&self) -> &str {
        &self.common_name
    }

    /// SHA-256 fingerprint of the CA certificate, for pinning during pairing.
    pub fn fingerprint(&self) -> Fingerprint {
        Fingerprint::of_cert(&self.cert_der)
    }

    /// Issues a server certificate with a new key.
    ///
    /// Each name becomes a subjectAltName: an IP address (`127.0.0.1`, `::1`) as an IP SAN,
    /// anything else must be a valid DNS name. The first name is also the subject CN. The
    /// certificate is valid for `serverAuth` only.
    pub fn issue_server_cert<S: AsRef<str>>(
        &self,
        names: &[S],
        ttl: Duration,
    ) -> Result<IssuedCert, TlsError> {
        let first = names.first().ok_or(TlsError::NoServerNames)?;
        let mut params = leaf_params(first.as_ref(), ttl)?;
        params.subject_alt_names = names
            .iter()
            .map(|name| san(name.as_ref()))
            .collect::<Result<_, _>>()?;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.issue_with_new_key(&params)
    }

    /// Issues a peer (client) certificate with a new key: subject CN = `peer`, `clientAuth`
    /// only, valid for `ttl` (usually [`DEFAULT_PEER_TTL`]).
    pub fn issue_peer_cert(&self, peer: &PeerName, ttl: Duration) -> Result<IssuedCert, TlsError> {
        self.issue_with_new_key(&peer_params(peer, ttl)?)
    }

    /// Signs a PEM certificate signing request for the registered peer `peer`.
    ///
    /// Only the CSR's public key is used (its self-signature, the proof that the requester holds
    /// the key, is verified). Its subject, SANs and requested extensions are ignored: the
    /// certificate gets subject CN = `peer` and `clientAuth` only, exactly like
    /// [`issue_peer_cert`](Self::issue_peer_cert).
    pub fn sign_peer_csr(
        &self,
        csr_pem: &str,
        peer: &PeerName,
        ttl: Duration,
    ) -> Result<SignedCert, TlsError> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem).map_err(TlsError::Csr)?;
        self.sign_peer(&csr, peer, ttl)
    }

    /// Like [`sign_peer_csr`](Self::sign_peer_csr), for a DER CSR (as it travels in a pairing
    /// frame). Callers cap its size first (`zrep_proto::MAX_CSR_LEN`).
    pub fn sign_peer_csr_der(
        &self,
        csr_der: &[u8],
        peer: &PeerName,
        ttl: Duration,
    ) -> Result<SignedCert, TlsError> {
        let der = rustls_pki_types::CertificateSigningRequestDer::from(csr_der);
        let csr = CertificateSigningRequestParams::from_der(&der).map_err(TlsError::Csr)?;
        self.sign_peer(&csr, peer, ttl)
    }

    /// A peer certificate (CN = `peer`, `clientAuth` only) for the key of `csr`.
    fn sign_peer(
        &self,
        csr: &CertificateSigningRequestParams,
        peer: &PeerName,
        ttl: Duration,
    ) -> Result<SignedCert, TlsError> {
        let cert = peer_params(peer, ttl)?.signed_by(&csr.public_key, &self.issuer)?;
        let signed = SignedCert {
            cert_der: cert.der().clone(),
            cert_pem: cert.pem(),
        };
        debug!(%peer, fingerprint = %signed.fingerprint(), "signed peer CSR");
        Ok(signed)
    }

    fn issue_with_new_key(&self, params: &CertificateParams) -> Result<IssuedCert, TlsError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let cert = params.signed_by(&key, &self.issuer)?;
        let issued = IssuedCert {
            cert: SignedCert {
                cert_der: cert.der().clone(),
                cert_pem: cert.pem(),
            },
            key_pem: key.serialize_pem(),
            key_der: PrivatePkcs8KeyDer::from(key.serialize_der()),
        };
        debug!(ca = %self.common_name, fingerprint = %issued.fingerprint(), "issued certificate");
        Ok(issued)
    }
}

impl fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("common_name", &self.common_name)
            .field("fingerprint", &self.fingerprint())
            .finish_non_exhaustive()
    }
}

impl IssuedCert {
    /// The certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        self.cert.cert_pem()
    }

    /// The certificate, DER.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        self.cert.cert_der()
    }

    /// The private key, PKCS#8 PEM.
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// The private key, DER, ready for [`crate::server_config`] / [`crate::client_config`].
    pub fn key_der(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(self.key_der.clone_key())
    }

    /// SHA-256 fingerprint of the certificate.
    pub fn fingerprint(&self) -> Fingerprint {
        self.cert.fingerprint()
    }

    /// Writes the certificate (0644) and the key (0600, see [`Overwrite`]); key first.
    pub fn save(
        &self,
        cert_path: &Path,
        key_path: &Path,
        overwrite: Overwrite,
    ) -> Result<(), TlsError> {
        files::write_key_file(key_path, &self.key_pem, overwrite)?;
        files::write_cert_file(cert_path, self.cert.cert_pem())
    }
}

impl fmt::Debug for IssuedCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuedCert")
            .field("fingerprint", &self.fingerprint())
            .finish_non_exhaustive()
    }
}

impl SignedCert {
    /// A certificate received as DER (e.g. in a pairing answer), for saving as PEM.
    pub fn from_der(cert_der: CertificateDer<'static>) -> Self {
        SignedCert {
            cert_pem: pem_encode("CERTIFICATE", &cert_der),
            cert_der,
        }
    }

    /// The certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The certificate, DER.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// SHA-256 fingerprint of the certificate.
    pub fn fingerprint(&self) -> Fingerprint {
        Fingerprint::of_cert(&self.cert_der)
    }

    /// Writes the certificate file (0644), replacing any existing one.
    pub fn save(&self, cert_path: &Path) -> Result<(), TlsError> {
        files::write_cert_file(cert_path, &self.cert_pem)
    }
}

impl PeerCsr {
    /// Generates a new P-256 key and a CSR for it with subject CN = `peer`.
    ///
    /// The CA decides the final subject anyway (see
    /// [`CertificateAuthority::sign_peer_csr`]); the CN here is informational.
    pub fn generate(peer: &PeerName) -> Result<Self, TlsError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        Self::for_key(peer, key)
    }

    /// A CSR for an existing private key (PEM), e.g. to renew a certificate keeping the key.
    pub fn for_existing_key(peer: &PeerName, key_pem: &str) -> Result<Self, TlsError> {
        let key = KeyPair::from_pem(key_pem).map_err(|e| TlsError::PrivateKey {
            reason: e.to_string(),
        })?;
        Self::for_key(peer, key)
    }

    fn for_key(peer: &PeerName, key: KeyPair) -> Result<Self, TlsError> {
        let mut params = CertificateParams::default();
        params.distinguished_name = common_name_dn(peer.as_str());
        let csr = params.serialize_request(&key)?;
        Ok(PeerCsr {
            csr_pem: csr.pem()?,
            csr_der: csr.der().to_vec(),
            key_pem: key.serialize_pem(),
        })
    }

    /// The CSR, DER: what travels in a pairing frame.
    pub fn csr_der(&self) -> &[u8] {
        &self.csr_der
    }

    /// The CSR, PEM: send this to the CA.
    pub fn csr_pem(&self) -> &str {
        &self.csr_pem
    }

    /// The private key, PKCS#8 PEM: keep this local (write it with
    /// [`crate::write_key_file`]).
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }
}

impl fmt::Debug for PeerCsr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeerCsr").finish_non_exhaustive()
    }
}

/// Whether the certificate (DER) certifies the public key of `key_pem` (a PEM private key):
/// a sender checks this before it stores a certificate it was sent.
pub fn cert_matches_key(cert: &CertificateDer<'_>, key_pem: &str) -> Result<bool, TlsError> {
    let (_, x509) =
        x509_parser::parse_x509_certificate(cert).map_err(|e| TlsError::Certificate {
            reason: e.to_string(),
        })?;
    let key = KeyPair::from_pem(key_pem).map_err(|e| TlsError::PrivateKey {
        reason: e.to_string(),
    })?;
    Ok(x509.public_key().subject_public_key.data.as_ref() == key.public_key_raw())
}

fn peer_params(peer: &PeerName, ttl: Duration) -> Result<CertificateParams, TlsError> {
    let mut params = leaf_params(peer.as_str(), ttl)?;
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    Ok(params)
}

/// Parameters shared by all end-entity certificates; the caller adds SANs and the EKU.
fn leaf_params(common_name: &str, ttl: Duration) -> Result<CertificateParams, TlsError> {
    let mut params = CertificateParams::default();
    params.distinguished_name = common_name_dn(common_name);
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.use_authority_key_identifier_extension = true;
    (params.not_before, params.not_after) = validity(ttl)?;
    params.serial_number = Some(random_serial()?);
    Ok(params)
}

fn common_name_dn(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn
}

fn san(name: &str) -> Result<SanType, TlsError> {
    if let Ok(ip) = name.parse::<IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    let invalid = || TlsError::InvalidServerName {
        name: name.to_owned(),
    };
    // Check with the same rules the client will apply when it verifies the name.
    rustls_pki_types::DnsName::try_from(name).map_err(|_| invalid())?;
    Ok(SanType::DnsName(name.try_into().map_err(|_| invalid())?))
}

/// `(notBefore, notAfter)` for a certificate issued now with lifetime `ttl`.
fn validity(ttl: Duration) -> Result<(OffsetDateTime, OffsetDateTime), TlsError> {
    const TOO_LONG: TlsError = TlsError::Validity {
        reason: "lifetime reaches past year 9999",
    };
    if ttl.is_zero() {
        return Err(TlsError::Validity {
            reason: "lifetime is zero",
        });
    }
    // Whole seconds: X.509 times have no fractions.
    let now = OffsetDateTime::from_unix_timestamp(OffsetDateTime::now_utc().unix_timestamp())
        .map_err(|_| TlsError::Validity {
            reason: "system clock out of range",
        })?;
    let ttl = time::Duration::try_from(ttl).map_err(|_| TOO_LONG)?;
    let not_after = now
        .checked_add(ttl)
        .filter(|t| t.year() <= 9999)
        .ok_or(TOO_LONG)?;
    // Invariant: CLOCK_SKEW_ALLOWANCE is ten minutes, far inside time::Duration's range.
    let skew = time::Duration::try_from(CLOCK_SKEW_ALLOWANCE).unwrap_or(time::Duration::ZERO);
    Ok((now - skew, not_after))
}

/// A random positive 128-bit serial number, so that a CRL or a revocation list can name one
/// certificate even when the same key is certified twice.
fn random_serial() -> Result<SerialNumber, TlsError> {
    let mut bytes = [0u8; 16];
    aws_lc_rs::rand::fill(&mut bytes)
        .map_err(|_| TlsError::Generate(rcgen::Error::RingUnspecified))?;
    // Top bit clear keeps the DER INTEGER positive; the next bit set keeps it 16 bytes long.
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    Ok(SerialNumber::from_slice(&bytes))
}

fn pem_encode(tag: &str, der: &[u8]) -> String {
    let config = pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF);
    pem::encode_config(&pem::Pem::new(tag, der.to_vec()), config)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;
    use std::time::SystemTime;

    use x509_parser::extensions::GeneralName;

    use super::*;
    use crate::identity::PeerIdentity;

    fn peer(name: &str) -> PeerName {
        name.parse().unwrap()
    }

    #[test]
    fn ca_is_a_constrained_ca() {
        let ca = CertificateAuthority::generate("zrep CA backup1", DEFAULT_CA_TTL).unwrap();
        let (_, x509) = x509_parser::parse_x509_certificate(ca.cert_der()).unwrap();
        let bc = x509.basic_constraints().unwrap().unwrap().value;
        assert!(bc.ca);
        assert_eq!(bc.path_len_constraint, Some(0));
        assert_eq!(ca.common_name(), "zrep CA backup1");
        assert_eq!(x509.subject().to_string(), "CN=zrep CA backup1");
        // About 20 years.
        let years = (x509.validity().not_after.timestamp()
            - x509.validity().not_before.timestamp())
            / (365 * DAY as i64);
        assert_eq!(years, 20);
    }

    #[test]
    fn ca_round_trips_through_pem_and_files() {
        let ca = CertificateAuthority::generate("zrep CA test", DEFAULT_CA_TTL).unwrap();
        let again = CertificateAuthority::from_pem(ca.cert_pem(), &ca.key_pem()).unwrap();
        assert_eq!(again.fingerprint(), ca.fingerprint());
        assert_eq!(again.common_name(), "zrep CA test");
        assert_eq!(again.cert_pem(), ca.cert_pem());

        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("ca.pem"), dir.path().join("ca.key"));
        ca.save(&cert, &key, Overwrite::Refuse).unwrap();
        let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let loaded = CertificateAuthority::load(&cert, &key).unwrap();
        assert_eq!(loaded.fingerprint(), ca.fingerprint());

        // A second CA must not clobber the first one's key.
        let other = CertificateAuthority::generate("zrep CA other", DEFAULT_CA_TTL).unwrap();
        let err = other.save(&cert, &key, Overwrite::Refuse).unwrap_err();
        assert!(matches!(err, TlsError::KeyFileExists { .. }), "{err:?}");
        assert_eq!(
            CertificateAuthority::load(&cert, &key)
                .unwrap()
                .fingerprint(),
            ca.fingerprint(),
            "refused save must leave the CA certificate alone too"
        );
        other.save(&cert, &key, Overwrite::Replace).unwrap();
        assert_eq!(
            CertificateAuthority::load(&cert, &key)
                .unwrap()
                .fingerprint(),
            other.fingerprint()
        );

        // A certificate issued by the reloaded CA chains to the original certificate.
        let issued = loaded
            .issue_peer_cert(&peer("nas1"), DEFAULT_PEER_TTL)
            .unwrap();
        let (_, leaf) = x509_parser::parse_x509_certificate(issued.cert_der()).unwrap();
        let (_, root) = x509_parser::parse_x509_certificate(ca.cert_der()).unwrap();
        assert_eq!(leaf.issuer(), root.subject());
        leaf.verify_signature(Some(root.public_key())).unwrap();
    }

    #[test]
    fn ca_load_rejects_mismatched_key_and_non_ca() {
        let ca = CertificateAuthority::generate("zrep CA a", DEFAULT_CA_TTL).unwrap();
        let other = CertificateAuthority::generate("zrep CA b", DEFAULT_CA_TTL).unwrap();
        let err = CertificateAuthority::from_pem(ca.cert_pem(), &other.key_pem()).unwrap_err();
        assert!(matches!(err, TlsError::CaKeyMismatch), "{err:?}");

        let leaf = ca.issue_peer_cert(&peer("nas1"), DEFAULT_PEER_TTL).unwrap();
        let err = CertificateAuthority::from_pem(leaf.cert_pem(), leaf.key_pem()).unwrap_err();
        assert!(matches!(err, TlsError::NotCa { .. }), "{err:?}");
    }

    #[test]
    fn server_cert_has_sans_cn_and_server_eku() {
        let ca = CertificateAuthority::generate("zrep CA backup1", DEFAULT_CA_TTL).unwrap();
        let names = ["backup1", "localhost", "127.0.0.1", "::1"];
        let issued = ca.issue_server_cert(&names, DEFAULT_SERVER_TTL).unwrap();
        let (_, x509) = x509_parser::parse_x509_certificate(issued.cert_der()).unwrap();
        assert_eq!(x509.subject().to_string(), "CN=backup1");
        let sans = x509.subject_alternative_name().unwrap().unwrap().value;
        let sans: Vec<String> = sans
            .general_names
            .iter()
            .map(|n| match n {
                GeneralName::DNSName(d) => d.to_string(),
                GeneralName::IPAddress(b) => match b.len() {
                    4 => IpAddr::from(<[u8; 4]>::try_from(*b).unwrap()).to_string(),
                    _ => IpAddr::from(<[u8; 16]>::try_from(*b).unwrap()).to_string(),
                },
                other => panic!("unexpected SAN {other:?}"),
            })
            .collect();
        assert_eq!(sans, names);
        let eku = x509.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && !eku.client_auth);
        assert!(!x509.is_ca());
    }

    #[test]
    fn server_cert_rejects_bad_names() {
        let ca = CertificateAuthority::generate("zrep CA", DEFAULT_CA_TTL).unwrap();
        let none: [&str; 0] = [];
        assert!(matches!(
            ca.issue_server_cert(&none, DEFAULT_SERVER_TTL),
            Err(TlsError::NoServerNames)
        ));
        for bad in ["bad name", "", "a..b", "x/y"] {
            let err = ca
                .issue_server_cert(&[bad], DEFAULT_SERVER_TTL)
                .unwrap_err();
            assert!(
                matches!(err, TlsError::InvalidServerName { .. }),
                "{bad:?}: {err:?}"
            );
        }
    }

    #[test]
    fn peer_cert_has_cn_client_eku_and_ttl() {
        let ca = CertificateAuthority::generate("zrep CA", DEFAULT_CA_TTL).unwrap();
        let issued = ca.issue_peer_cert(&peer("nas1"), DEFAULT_PEER_TTL).unwrap();
        let (_, x509) = x509_parser::parse_x509_certificate(issued.cert_der()).unwrap();
        let eku = x509.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.client_auth && !eku.server_auth);

        let id = PeerIdentity::from_cert(issued.cert_der()).unwrap();
        assert_eq!(id.name.as_str(), "nas1");
        assert_eq!(id.fingerprint, issued.fingerprint());
        let left = id.not_after.duration_since(SystemTime::now()).unwrap();
        assert!(left > DEFAULT_PEER_TTL - Duration::from_secs(60) && left <= DEFAULT_PEER_TTL);

        // Fresh serials, so two certificates for the same peer can be told apart.
        let again = ca.issue_peer_cert(&peer("nas1"), DEFAULT_PEER_TTL).unwrap();
        let (_, x509b) = x509_parser::parse_x509_certificate(again.cert_der()).unwrap();
        assert_ne!(x509.raw_serial(), x509b.raw_serial());
        assert_eq!(x509.raw_serial().len(), 16);
    }

    #[test]
    fn validity_rejects_zero_and_absurd_lifetimes() {
        let ca = CertificateAuthority::generate("zrep CA", DEFAULT_CA_TTL).unwrap();
        for ttl in [
            Duration::ZERO,
            Duration::from_secs(10_000 * 365 * DAY),
            Duration::MAX,
        ] {
            let err = ca.issue_peer_cert(&peer("nas1"), ttl).unwrap_err();
            assert!(matches!(err, TlsError::Validity { .. }), "{ttl:?}: {err:?}");
        }
    }

    #[test]
    fn csr_signing_forces_the_registered_cn() {
        let ca = CertificateAuthority::generate("zrep CA", DEFAULT_CA_TTL).unwrap();

        // A CSR that asks for another name, a server SAN and serverAuth.
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(vec!["backup1".to_owned(), "127.0.0.1".to_owned()]).unwrap();
        params.distinguished_name = common_name_dn("admin");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let csr = params.serialize_request(&key).unwrap().pem().unwrap();

        let signed = ca
            .sign_peer_csr(&csr, &peer("nas1"), DEFAULT_PEER_TTL)
            .unwrap();
        let (_, x509) = x509_parser::parse_x509_certificate(signed.cert_der()).unwrap();
        assert_eq!(x509.subject().to_string(), "CN=nas1");
        assert!(x509.subject_alternative_name().unwrap().is_none());
        let eku = x509.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.client_auth && !eku.server_auth);
        // The certificate certifies the CSR's key.
        assert_eq!(
            x509.public_key().subject_public_key.data.as_ref(),
            key.public_key_raw()
        );
        assert_eq!(
            PeerIdentity::from_cert(signed.cert_der())
                .unwrap()
                .name
                .as_str(),
            "nas1"
        );
    }

    #[test]
    fn csr_helper_round_trip_and_garbage() {
        let ca = CertificateAuthority::generate("zrep CA", DEFAULT_CA_TTL).unwrap();
        let request = PeerCsr::generate(&peer("nas2")).unwrap();
        assert!(request.csr_pem().contains("BEGIN CERTIFICATE REQUEST"));
        let signed = ca
            .sign_peer_csr(request.csr_pem(), &peer("nas2"), DEFAULT_PEER_TTL)
            .unwrap();
        let key = KeyPair::from_pem(request.key_pem()).unwrap();
        let (_, x509) = x509_parser::parse_x509_certificate(signed.cert_der()).unwrap();
        assert_eq!(
            x509.public_key().subject_public_key.data.as_ref(),
            key.public_key_raw()
        );

        let err = ca
            .sign_peer_csr("not a csr", &peer("nas2"), DEFAULT_PEER_TTL)
            .unwrap_err();
        assert!(matches!(err, TlsError::Csr(_)), "{err:?}");
    }

    #[test]
    fn csr_with_bad_signature_is_refused() {
        let ca = CertificateAuthority::generate("zrep CA", DEFAULT_CA_TTL).unwrap();
        let request = PeerCsr::generate(&peer("nas1")).unwrap();
        let mut der = pem::parse(request.csr_pem()).unwrap().into_contents();
        // Flip a bit in the last byte: inside the signature.
        let last = der.len() - 1;
        der[last] ^= 1;
        let tampered = pem_encode("CERTIFICATE REQUEST", &der);
        let err = ca
            .sign_peer_csr(&tampered, &peer("nas1"), DEFAULT_PEER_TTL)
            .unwrap_err();
        assert!(
            matches!(
                err,
                TlsError::Csr(rcgen::Error::InvalidCertificationRequestSignature)
            ),
            "{err:?}"
        );
    }

    #[test]
    fn debug_never_shows_keys() {
        let ca = CertificateAuthority::generate("zrep CA", DEFAULT_CA_TTL).unwrap();
        let issued = ca.issue_peer_cert(&peer("nas1"), DEFAULT_PEER_TTL).unwrap();
        let csr = PeerCsr::generate(&peer("nas1")).unwrap();
        for text in [format!("{ca:?}"), format!("{issued:?}"), format!("{csr:?}")] {
            assert!(!text.contains("PRIVATE"), "{text}");
        }
        assert!(format!("{ca:?}").contains(&ca.fingerprint().to_string()));
    }
}
