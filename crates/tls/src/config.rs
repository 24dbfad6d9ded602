//! rustls configurations for both ends of a zrep connection.
//!
//! Both are TLS 1.3 only, use the aws-lc-rs provider (key exchange prefers the post-quantum
//! hybrid X25519MLKEM768, then X25519, P-256, P-384), and trust exactly the CA certificates the
//! caller passes: never the system roots. The provider is passed explicitly, so nothing
//! depends on rustls' process-wide default provider.

use std::path::Path;
use std::sync::Arc;

use rustls::client::Resumption;
use rustls::crypto::CryptoProvider;
use rustls::server::{NoServerSessionStorage, WebPkiClientVerifier};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::error::TlsError;
use crate::files;

/// The only protocol version zrep speaks.
static TLS13_ONLY: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];

/// The rustls configuration of zrep-recv.
///
/// Clients must present a certificate that chains to one of `ca_certs` (normally just the
/// zrep-recv CA; several allow a CA rollover) and is valid for `clientAuth`; otherwise the
/// handshake fails. `server_cert_chain` is leaf first, `server_key` its private key.
///
/// Session resumption is off, so every connection is a full handshake with a fresh certificate
/// check (see [`crate::identity`] for revocation).
pub fn server_config(
    ca_certs: &[CertificateDer<'static>],
    server_cert_chain: Vec<CertificateDer<'static>>,
    server_key: PrivateKeyDer<'static>,
) -> Result<Arc<ServerConfig>, TlsError> {
    build_server_config(ca_certs, server_cert_chain, server_key, false)
}

/// The rustls configuration of a zrep-recv that also lets unpaired senders enrol.
///
/// Like [`server_config`], but a client certificate is *optional*: a client that presents one
/// must pass the same checks (chain to `ca_certs`, `clientAuth`, validity); a client without one
/// completes the handshake and is then only allowed the pairing exchange
/// ([`crate::Acceptor::accept_any`] reports it with no identity). `server_cert_chain` should end
/// with the CA certificate, so that an enrolling sender can find the CA it pins.
pub fn server_config_allowing_pairing(
    ca_certs: &[CertificateDer<'static>],
    server_cert_chain: Vec<CertificateDer<'static>>,
    server_key: PrivateKeyDer<'static>,
) -> Result<Arc<ServerConfig>, TlsError> {
    build_server_config(ca_certs, server_cert_chain, server_key, true)
}

/// The two server configurations differ only in whether a client may omit its certificate.
fn build_server_config(
    ca_certs: &[CertificateDer<'static>],
    server_cert_chain: Vec<CertificateDer<'static>>,
    server_key: PrivateKeyDer<'static>,
    allow_unauthenticated: bool,
) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = provider();
    let roots = Arc::new(root_store(ca_certs)?);
    let mut verifier = WebPkiClientVerifier::builder_with_provider(roots, provider.clone());
    if allow_unauthenticated {
        verifier = verifier.allow_unauthenticated();
    }
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(TLS13_ONLY)?
        .with_client_cert_verifier(verifier.build()?)
        .with_single_cert(server_cert_chain, server_key)?;
    // Every connection gets the full certificate check: no resumption.
    config.session_storage = Arc::new(NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(Arc::new(config))
}

/// The rustls configuration of zrep-send.
///
/// The server must present a certificate that chains to one of `ca_certs`, is valid for
/// `serverAuth` and names the server name passed to [`crate::Connector::connect`]. The client
/// authenticates with `client_cert_chain` (leaf first) and `client_key`.
pub fn client_config(
    ca_certs: &[CertificateDer<'static>],
    client_cert_chain: Vec<CertificateDer<'static>>,
    client_key: PrivateKeyDer<'static>,
) -> Result<Arc<ClientConfig>, TlsError> {
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(TLS13_ONLY)?
        .with_root_certificates(root_store(ca_certs)?)
        .with_client_auth_cert(client_cert_chain, client_key)?;
    config.resumption = Resumption::disabled();
    Ok(Arc::new(config))
}

/// [`server_config`] from PEM files: the CA certificate(s), the server certificate chain and
/// the server key.
pub fn server_config_from_files(
    ca_path: &Path,
    cert_path: &Path,
    key_path: &Path,
) -> Result<Arc<ServerConfig>, TlsError> {
    server_config(
        &files::load_certs(ca_path)?,
        files::load_certs(cert_path)?,
        files::load_private_key(key_path)?,
    )
}

/// [`client_config`] from PEM files: the CA certificate(s), the client certificate chain and
/// the client key.
pub fn client_config_from_files(
    ca_path: &Path,
    cert_path: &Path,
    key_path: &Path,
) -> Result<Arc<ClientConfig>, TlsError> {
    client_config(
        &files::load_certs(ca_path)?,
        files::load_certs(cert_path)?,
        files::load_private_key(key_path)?,
    )
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn root_store(ca_certs: &[CertificateDer<'static>]) -> Result<RootCertStore, TlsError> {
    if ca_certs.is_empty() {
        return Err(TlsError::Certificate {
            reason: "no CA certificate given".to_owned(),
        });
    }
    let mut roots = RootCertStore::empty();
    for cert in ca_certs {
        roots.add(cert.clone()).map_err(|e| TlsError::Certificate {
            reason: format!("CA certificate unusable as trust anchor: {e}"),
        })?;
    }
    Ok(roots)
}
