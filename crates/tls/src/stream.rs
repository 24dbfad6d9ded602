//! Async handshakes over tokio-rustls.
//!
//! Neither side applies a timeout: wrap [`Acceptor::accept`] and [`Connector::connect`] in
//! `tokio::time::timeout` so a peer that stalls mid-handshake cannot hold a connection slot.

use std::fmt;
use std::sync::Arc;

use rustls::{ClientConfig, ServerConfig, ServerConnection};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::{client, server};
use tracing::debug;

use crate::error::TlsError;
use crate::identity::{PeerIdentity, RevocationCheck, peer_identity};

/// Server side: accepts TLS connections and authenticates the peer.
#[derive(Clone)]
pub struct Acceptor {
    inner: tokio_rustls::TlsAcceptor,
    revocation: Option<Arc<dyn RevocationCheck>>,
}

impl Acceptor {
    /// An acceptor for a configuration from [`crate::server_config`].
    pub fn new(config: Arc<ServerConfig>) -> Self {
        Acceptor {
            inner: tokio_rustls::TlsAcceptor::from(config),
            revocation: None,
        }
    }

    /// Also refuse peers whose certificate `check` reports as revoked.
    pub fn with_revocation(mut self, check: Arc<dyn RevocationCheck>) -> Self {
        self.revocation = Some(check);
        self
    }

    /// Runs the handshake on `stream` and returns the TLS stream with the peer's identity.
    ///
    /// Fails with [`TlsError::Handshake`] if the handshake fails (for instance the client
    /// certificate is missing or not issued by the CA; [`TlsError::rustls_error`] tells which),
    /// [`TlsError::PeerCommonName`] if its CN is not a valid peer name and
    /// [`TlsError::Revoked`] if the revocation check refuses it. On error the stream is dropped.
    pub async fn accept<IO>(
        &self,
        stream: IO,
    ) -> Result<(server::TlsStream<IO>, PeerIdentity), TlsError>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let tls = self
            .inner
            .accept(stream)
            .await
            .map_err(TlsError::Handshake)?;
        let identity = self.authenticate(tls.get_ref().1)?;
        Ok((tls, identity))
    }
}

impl Acceptor {
    /// Like [`accept`](Self::accept), for a configuration from
    /// [`crate::server_config_allowing_pairing`]: a client without a certificate is accepted
    /// with identity `None` (allow it the pairing exchange only). A client *with* a certificate
    /// gets the same checks as in [`accept`](Self::accept), revocation included.
    pub async fn accept_any<IO>(
        &self,
        stream: IO,
    ) -> Result<(server::TlsStream<IO>, Option<PeerIdentity>), TlsError>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let tls = self
            .inner
            .accept(stream)
            .await
            .map_err(TlsError::Handshake)?;
        if tls
            .get_ref()
            .1
            .peer_certificates()
            .is_none_or(<[_]>::is_empty)
        {
            debug!("client presented no certificate: pairing only");
            return Ok((tls, None));
        }
        let identity = self.authenticate(tls.get_ref().1)?;
        Ok((tls, Some(identity)))
    }

    /// The verified client certificate's identity, unless it is revoked.
    fn authenticate(&self, connection: &ServerConnection) -> Result<PeerIdentity, TlsError> {
        let identity = peer_identity(connection)?;
        if let Some(check) = &self.revocation
            && check.is_revoked(&identity)
        {
            return Err(TlsError::Revoked {
                peer: identity.name,
                fingerprint: identity.fingerprint,
            });
        }
        debug!(
            peer = %identity.name,
            fingerprint = %identity.fingerprint,
            "peer authenticated"
        );
        Ok(identity)
    }
}

impl fmt::Debug for Acceptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Acceptor")
            .field("revocation_check", &self.revocation.is_some())
            .finish_non_exhaustive()
    }
}

/// Client side: connects to zrep-recv.
#[derive(Clone)]
pub struct Connector {
    inner: tokio_rustls::TlsConnector,
}

impl Connector {
    /// A connector for a configuration from [`crate::client_config`].
    pub fn new(config: Arc<ClientConfig>) -> Self {
        Connector {
            inner: tokio_rustls::TlsConnector::from(config),
        }
    }

    /// Runs the handshake on `stream`; the server certificate must be valid for `server_name`
    /// (a DNS name such as `backup1`, or an IP address such as `127.0.0.1`).
    ///
    /// In TLS 1.3 the server checks the client certificate after the client has finished its
    /// part of the handshake, so a refused client certificate may surface only on the first
    /// read, as an error carrying the server's alert.
    pub async fn connect<IO>(
        &self,
        server_name: &str,
        stream: IO,
    ) -> Result<client::TlsStream<IO>, TlsError>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let name = ServerName::try_from(server_name.to_owned()).map_err(|_| {
            TlsError::InvalidServerName {
                name: server_name.to_owned(),
            }
        })?;
        self.inner
            .connect(name, stream)
            .await
            .map_err(TlsError::Handshake)
    }
}

impl fmt::Debug for Connector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connector").finish_non_exhaustive()
    }
}
