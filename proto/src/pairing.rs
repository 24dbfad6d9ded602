//! Pairing messages: the bodies of PAIRING frames (kind `0x06`).
//!
//! Two exchanges use them, each allowed only when both hellos announced its feature key:
//!
//! - **Enrolment** (`enroll`): on a connection *without* a client certificate, the sender proves
//!   a one-time pairing token and sends a certificate signing request; the receiver answers with
//!   the signed certificate and its CA certificate. Nothing else is allowed on such a connection.
//! - **Renewal** (`renew`): on an authenticated connection, the sender sends a new CSR (same or
//!   new key) and gets a new certificate for the same peer name.
//!
//! The proof and the certificates are opaque bytes here: checking them is the runtime's job
//! (`zrep-tls`). A separate enum (not new [`Message`](crate::Message) variants) keeps pairing out
//! of the replication state machine's message space; variant indices are frozen like
//! `Message`'s.

use serde::{Deserialize, Serialize};

/// Longest CSR (DER) a receiver accepts; checked before parsing it.
pub const MAX_CSR_LEN: usize = 8 * 1024;

/// A pairing message. The comment on each variant gives its bincode variant index and who
/// sends it (S = sender, R = receiver).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum PairMessage {
    /// 0, S→R: enrol with a pairing token (only on a connection without client certificate).
    Enroll(EnrollRequest),
    /// 1, R→S: the token was accepted; here is the certificate.
    Enrolled(Enrolment),
    /// 2, S→R: renew this (authenticated) peer's certificate.
    Renew {
        /// PKCS#10 certificate signing request, DER, for the key the sender will use.
        csr: Vec<u8>,
    },
    /// 3, R→S: the renewed certificate.
    Renewed {
        /// The new certificate, DER, issued by the same CA, for the same peer name.
        certificate: Vec<u8>,
    },
    /// 4, R→S: the renewal was refused; the session goes on (the old certificate stays valid).
    RenewRefused {
        /// Human explanation.
        message: String,
    },
}

impl PairMessage {
    /// The variant name, for errors and logs.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Enroll(_) => "Enroll",
            Self::Enrolled(_) => "Enrolled",
            Self::Renew { .. } => "Renew",
            Self::Renewed { .. } => "Renewed",
            Self::RenewRefused { .. } => "RenewRefused",
        }
    }
}

/// What a sender presents to enrol.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrollRequest {
    /// The token's public identifier, which names the pending pairing on the receiver.
    pub token_id: u64,
    /// Proof of the token's secret, bound to this TLS session (see `PROTOCOL.md`, section 13).
    pub proof: Vec<u8>,
    /// PKCS#10 certificate signing request, DER, for the key the sender generated.
    pub csr: Vec<u8>,
}

/// What the receiver hands a newly enrolled sender.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Enrolment {
    /// The peer name the certificate carries (subject CN).
    pub peer: String,
    /// The root dataset on the receiver under which this peer's targets land (informational).
    pub root: String,
    /// The sender's new certificate, DER.
    pub certificate: Vec<u8>,
    /// The receiver's CA certificate, DER: the sender trusts it from now on.
    pub ca_certificate: Vec<u8>,
}

impl std::fmt::Debug for EnrollRequest {
    // The proof is a credential for this session only, but it has no place in logs either.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnrollRequest")
            .field("token_id", &format_args!("{:016x}", self.token_id))
            .field("csr_len", &self.csr.len())
            .finish_non_exhaustive()
    }
}
