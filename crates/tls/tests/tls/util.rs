//! Shared helpers: a per-test PKI and a handshake driver over `tokio::io::duplex`.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use zrep_tls::rustls::{ClientConfig, ServerConfig};
use zrep_tls::tokio_rustls::{client, server};
use zrep_tls::{
    Acceptor, CertificateAuthority, Connector, DEFAULT_CA_TTL, DEFAULT_PEER_TTL,
    DEFAULT_SERVER_TTL, IssuedCert, PeerIdentity, PeerName, TlsError, client_config, server_config,
};

/// Upper bound for any one handshake test; a hang is a failure, not a stuck CI job.
pub(crate) const TEST_TIMEOUT: Duration = Duration::from_secs(20);

/// A CA with a server certificate for `backup1`/`localhost`/`127.0.0.1`.
pub(crate) struct Pki {
    pub(crate) ca: CertificateAuthority,
    pub(crate) server: IssuedCert,
}

impl Pki {
    pub(crate) fn new(ca_name: &str) -> Self {
        let ca = CertificateAuthority::generate(ca_name, DEFAULT_CA_TTL).unwrap();
        let server = ca
            .issue_server_cert(&["backup1", "localhost", "127.0.0.1"], DEFAULT_SERVER_TTL)
            .unwrap();
        Pki { ca, server }
    }

    pub(crate) fn peer(&self, name: &str) -> IssuedCert {
        self.ca
            .issue_peer_cert(&name.parse::<PeerName>().unwrap(), DEFAULT_PEER_TTL)
            .unwrap()
    }

    pub(crate) fn server_config(&self) -> Arc<ServerConfig> {
        server_with_cert(self, &self.server)
    }

    /// A client that trusts this PKI's CA and authenticates with `cert`.
    pub(crate) fn client_config(&self, cert: &IssuedCert) -> Arc<ClientConfig> {
        client_config(
            &[self.ca.cert_der().clone()],
            vec![cert.cert_der().clone()],
            cert.key_der(),
        )
        .unwrap()
    }
}

/// A server trusting `pki`'s CA for clients but presenting `cert`.
pub(crate) fn server_with_cert(pki: &Pki, cert: &IssuedCert) -> Arc<ServerConfig> {
    server_config(
        &[pki.ca.cert_der().clone()],
        vec![cert.cert_der().clone()],
        cert.key_der(),
    )
    .unwrap()
}

pub(crate) type ServerSide = Result<(server::TlsStream<DuplexStream>, PeerIdentity), TlsError>;
pub(crate) type ClientSide = Result<client::TlsStream<DuplexStream>, TlsError>;

/// Runs both handshakes concurrently over an in-memory pipe, the server with `accept`.
pub(crate) async fn handshake(
    acceptor: &Acceptor,
    client: Arc<ClientConfig>,
    server_name: &str,
) -> (ServerSide, ClientSide) {
    handshake_with(client, server_name, |io| acceptor.accept(io)).await
}

/// Both handshakes as in [`handshake`], the server's side run by `accept` (for instance
/// `accept_any`, which takes a client without certificate as `None`).
pub(crate) async fn handshake_with<S, F>(
    client: Arc<ClientConfig>,
    server_name: &str,
    accept: impl FnOnce(DuplexStream) -> F,
) -> (S, ClientSide)
where
    F: Future<Output = S>,
{
    let (client_io, server_io) = tokio::io::duplex(64 * 1024);
    let connector = Connector::new(client);
    let run = async { tokio::join!(accept(server_io), connector.connect(server_name, client_io)) };
    tokio::time::timeout(TEST_TIMEOUT, run)
        .await
        .expect("handshake timed out")
}

/// Asserts that a [`TlsError`] comes from a rustls error that matches the pattern.
macro_rules! assert_rustls_error {
    ($err:expr, $($pattern:tt)+) => {{
        let err: &zrep_tls::TlsError = $err;
        assert!(matches!(err.rustls_error(), Some($($pattern)+)), "{err:?}");
    }};
}
pub(crate) use assert_rustls_error;

/// Client says ping, server answers pong: proves the established session carries data.
pub(crate) async fn ping_pong(
    server: &mut server::TlsStream<DuplexStream>,
    client: &mut client::TlsStream<DuplexStream>,
) {
    client.write_all(b"ping").await.unwrap();
    client.flush().await.unwrap();
    let mut buf = [0u8; 4];
    server.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ping");
    server.write_all(b"pong").await.unwrap();
    server.flush().await.unwrap();
    client.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"pong");
}

/// After the server refused it, the client must not get a usable session: its handshake
/// failed, or its first read fails or sees the end of the stream.
pub(crate) async fn assert_client_cut_off(client: ClientSide) {
    let Ok(mut stream) = client else { return };
    let mut buf = [0u8; 1];
    let read = tokio::time::timeout(TEST_TIMEOUT, stream.read(&mut buf))
        .await
        .expect("client read hung after the server refused it");
    assert!(
        matches!(read, Err(_) | Ok(0)),
        "client read data from a server that refused it: {read:?}"
    );
}
