//! zrep TLS and PKI.
//!
//! zrep-send talks to zrep-recv over mutual TLS 1.3. zrep-recv runs its own certificate
//! authority ([`CertificateAuthority`]); it accepts only client certificates issued by that CA,
//! and the peer's identity is the client certificate's subject CN, a [`PeerName`] such as
//! `nas1`, which zrep-recv maps to a root dataset.
//!
//! - PKI: [`CertificateAuthority`] generates/loads/saves the CA and issues server and peer
//!   certificates, or signs a peer's CSR ([`PeerCsr`]) with the CN forced to the registered name.
//! - Files: [`load_certs`], [`load_private_key`], [`write_key_file`] (0600, no silent
//!   overwrite), [`write_cert_file`].
//! - rustls: [`server_config`] (client certificate required) and [`client_config`].
//! - Pairing: [`PairingToken`] (one-time token, proof bound to the TLS session), the receiver's
//!   [`StoredKey`], [`pinned_client_config`] (trust a receiver by its CA fingerprint) and
//!   [`server_config_allowing_pairing`] (client certificate optional, for enrolment).
//! - Handshakes: [`Acceptor`] returns the stream with the [`PeerIdentity`], after the optional
//!   [`RevocationCheck`]; [`Connector`] for the sender.
//!
//! The crypto provider is aws-lc-rs, so key exchange prefers the post-quantum hybrid
//! X25519MLKEM768. This library logs with `tracing` and installs no subscriber.

#![forbid(unsafe_code)]

mod config;
pub mod error;
mod files;
mod fingerprint;
pub mod identity;
mod name;
pub mod pairing;
mod pki;
mod stream;

pub use config::{
    client_config, client_config_from_files, server_config, server_config_allowing_pairing,
    server_config_from_files,
};
pub use error::TlsError;
pub use files::{
    CERT_FILE_MODE, KEY_FILE_MODE, Overwrite, load_certs, load_private_key, write_cert_file,
    write_key_file,
};
pub use fingerprint::{Fingerprint, InvalidFingerprint};
pub use identity::{PeerIdentity, RevocationCheck, RevokedCerts, peer_identity};
pub use name::{PEER_NAME_MAX_LEN, PeerName, PeerNameError};
pub use pairing::{InvalidToken, PairingToken, StoredKey, pinned_client_config};
pub use pki::{
    CLOCK_SKEW_ALLOWANCE, CertificateAuthority, DEFAULT_CA_TTL, DEFAULT_PEER_TTL,
    DEFAULT_SERVER_TTL, IssuedCert, PeerCsr, SignedCert, cert_matches_key,
};
pub use stream::{Acceptor, Connector};

/// The rustls, pki-types and tokio-rustls versions this crate is built against, so callers
/// name the same types without adding their own dependencies.
pub use {rustls, rustls_pki_types as pki_types, tokio_rustls};
