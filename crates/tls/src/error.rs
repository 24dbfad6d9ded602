//! Errors of the TLS/PKI layer.
//!
//! Rules for this crate:
//! - One enum, [`TlsError`], for everything the crate does; small parse errors of typed values
//!   ([`PeerNameError`], [`InvalidFingerprint`]) are their own types and convert into it.
//! - Every variant that touches a file names the path, so a binary can print the error as is.
//! - Errors from the dependencies (rustls, rcgen, I/O) are kept as `source`, never flattened to
//!   strings, except for x509 parse errors whose types borrow the input.
//! - A message never repeats its source: a variant that wraps a cause says what was being done
//!   ("cannot read ca.pem") and exposes the cause as `source()`; print chains with
//!   `zrep_chain::one_line` ("cannot read ca.pem: No such file or directory (os error 2)").
//! - A handshake failure is [`TlsError::Handshake`]; [`TlsError::rustls_error`] digs out the
//!   rustls reason (unknown issuer, no certificate, ...) for logs and tests.

use std::io;
use std::path::PathBuf;

use crate::fingerprint::{Fingerprint, InvalidFingerprint};
use crate::name::{PeerName, PeerNameError};

/// Everything that can go wrong in the TLS/PKI layer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },

    /// A file could not be written (or its temporary sibling created, synced or renamed).
    #[error("cannot write {}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },

    /// A private key file already exists and the caller did not allow replacing it.
    #[error("refusing to overwrite existing key file {}", path.display())]
    KeyFileExists {
        /// The existing key file.
        path: PathBuf,
    },

    /// A PEM file is malformed.
    #[error("malformed PEM in {}", path.display())]
    Pem {
        /// The file.
        path: PathBuf,
        /// What the PEM decoder said.
        #[source]
        source: rustls_pki_types::pem::Error,
    },

    /// A PEM file holds no `CERTIFICATE` block.
    #[error("no certificate found in {}", path.display())]
    NoCertificate {
        /// The file.
        path: PathBuf,
    },

    /// A PEM file holds no private key (PKCS#8, SEC1 or PKCS#1).
    #[error("no private key (PKCS#8, SEC1 or PKCS#1) found in {}", path.display())]
    NoPrivateKey {
        /// The file.
        path: PathBuf,
    },

    /// A certificate could not be decoded or lacks something this crate needs.
    #[error("invalid certificate: {reason}")]
    Certificate {
        /// Why it was rejected.
        reason: String,
    },

    /// A private key could not be decoded or used.
    #[error("invalid private key: {reason}")]
    PrivateKey {
        /// Why it was rejected.
        reason: String,
    },

    /// A certificate given as a CA is not a CA certificate (basicConstraints CA:TRUE missing).
    #[error("certificate {subject:?} is not a CA certificate")]
    NotCa {
        /// The certificate's subject, for the message.
        subject: String,
    },

    /// The CA private key does not belong to the CA certificate.
    #[error("the CA private key does not match the CA certificate's public key")]
    CaKeyMismatch,

    /// A peer name failed validation.
    #[error(transparent)]
    InvalidPeerName(#[from] PeerNameError),

    /// A fingerprint failed to parse.
    #[error(transparent)]
    InvalidFingerprint(#[from] InvalidFingerprint),

    /// A server name is neither an IP address nor a valid DNS name.
    #[error("invalid server name {name:?}: not an IP address nor a DNS name")]
    InvalidServerName {
        /// The rejected name.
        name: String,
    },

    /// A server certificate was requested without any name.
    #[error("a server certificate needs at least one name")]
    NoServerNames,

    /// The requested validity cannot be represented (zero, or past year 9999).
    #[error("invalid certificate validity: {reason}")]
    Validity {
        /// Why it was rejected.
        reason: &'static str,
    },

    /// rcgen failed to build or sign a certificate or key.
    #[error("certificate generation failed")]
    Generate(#[from] rcgen::Error),

    /// A certificate signing request is malformed, badly signed or uses an unsupported
    /// extension.
    #[error("invalid certificate signing request")]
    Csr(#[source] rcgen::Error),

    /// rustls refused the configuration (e.g. key and certificate do not match).
    #[error("TLS configuration rejected")]
    Config(#[from] rustls::Error),

    /// The client-certificate verifier could not be built (e.g. no usable CA certificate).
    #[error("client certificate verifier rejected")]
    ClientVerifier(#[from] rustls::server::VerifierBuilderError),

    /// The TLS handshake failed (I/O error, or the peer or its certificate was refused).
    #[error("TLS handshake failed")]
    Handshake(#[source] io::Error),

    /// The handshake finished but the peer presented no certificate.
    #[error("peer presented no certificate")]
    NoPeerCertificate,

    /// The peer's certificate subject has no usable common name.
    #[error("peer certificate subject: {reason}")]
    PeerCommonName {
        /// Why the CN could not be used as a peer name.
        reason: String,
    },

    /// The peer's certificate was valid but is revoked by the server's revocation check.
    #[error("certificate {fingerprint} of peer {peer} is revoked")]
    Revoked {
        /// The peer name from the certificate.
        peer: PeerName,
        /// The revoked certificate.
        fingerprint: Fingerprint,
    },
}

impl TlsError {
    /// The rustls error behind a failed handshake (e.g. `InvalidCertificate(UnknownIssuer)` or
    /// `NoCertificatesPresented`) or a rejected configuration, if there is one.
    pub fn rustls_error(&self) -> Option<&rustls::Error> {
        match self {
            TlsError::Handshake(io) => io.get_ref()?.downcast_ref::<rustls::Error>(),
            TlsError::Config(e) => Some(e),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_file_is_said_once() {
        let path = PathBuf::from("/nonexistent/zrep/ca.pem");
        let source = std::fs::read(&path).unwrap_err();
        let err = TlsError::Read { path, source };
        assert_eq!(err.to_string(), "cannot read /nonexistent/zrep/ca.pem");
        // zrep-cli re-exports zrep-chain's printer (a dev-dependency already).
        let text = zrep_cli::one_line(&err);
        assert_eq!(
            text,
            "cannot read /nonexistent/zrep/ca.pem: No such file or directory (os error 2)"
        );
        assert_eq!(text.matches("os error 2").count(), 1, "{text}");
    }
}
