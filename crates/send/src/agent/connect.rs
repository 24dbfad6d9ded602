//! How the agent reaches the receiver: a [`Connect`] gives a byte stream (TLS over TCP in
//! production, an in-memory pipe in tests), and [`open`] makes a negotiated session of it.

use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tracing::{info, warn};
use zrep_proto::{SenderEvent, SenderSession, SenderSide, SessionConfig};
use zrep_repl::transport::{Connection, Liveness};
use zrep_tls::Connector;
use zrep_tls::tokio_rustls::client::TlsStream;

use super::error::ConnectError;
use crate::config::SendConfig;

/// A way to reach the receiver.
pub trait Connect {
    /// The connected byte stream.
    type Stream: AsyncRead + AsyncWrite + Unpin;

    /// Opens a new stream to the receiver.
    fn connect(&self) -> impl Future<Output = Result<Self::Stream, ConnectError>>;
}

/// A negotiated session over a [`Connect`]'s stream.
pub type SenderConn<S> = Connection<SenderSide, ReadHalf<S>, WriteHalf<S>>;

/// Mutual TLS over TCP to the configured receiver. The certificate, key and CA are read afresh
/// for every connection, so a renewal (maybe with a new key) takes effect on the next session.
#[derive(Debug, Clone)]
pub struct TlsConnect {
    receiver: String,
    server_name: String,
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

impl TlsConnect {
    /// Connects to `config`'s receiver with its certificate files.
    pub fn new(config: &SendConfig) -> Self {
        Self {
            receiver: config.receiver.clone(),
            server_name: config.server_name.clone(),
            ca: config.ca.clone(),
            cert: config.cert.clone(),
            key: config.key.clone(),
        }
    }

    /// Reads the certificate, key and CA once, to fail before any work when they are unusable.
    pub fn check(&self) -> Result<(), ConnectError> {
        self.client_config().map(drop)
    }

    fn client_config(
        &self,
    ) -> Result<std::sync::Arc<zrep_tls::rustls::ClientConfig>, ConnectError> {
        zrep_tls::client_config_from_files(&self.ca, &self.cert, &self.key)
            .map_err(ConnectError::Credentials)
    }
}

impl Connect for TlsConnect {
    type Stream = TlsStream<TcpStream>;

    async fn connect(&self) -> Result<Self::Stream, ConnectError> {
        let connector = Connector::new(self.client_config()?);
        let tcp = TcpStream::connect(&self.receiver)
            .await
            .map_err(|source| ConnectError::Tcp {
                receiver: self.receiver.clone(),
                source,
            })?;
        let _ = tcp.set_nodelay(true);
        connector
            .connect(&self.server_name, tcp)
            .await
            .map_err(|source| ConnectError::Handshake {
                server_name: self.server_name.clone(),
                source,
            })
    }
}

/// Connects and negotiates a session offering `features`, all within `connect_timeout`, with
/// the configured heartbeat, silence and write-stall limits.
pub(crate) async fn open<C: Connect>(
    connector: &C,
    receiver: &str,
    connect_timeout: Duration,
    liveness: Liveness,
    features: zrep_proto::Features,
) -> Result<SenderConn<C::Stream>, ConnectError> {
    let limit = connect_timeout;
    let work = async {
        let stream = connector.connect().await?;
        let (reader, writer) = tokio::io::split(stream);
        let mut session_config = liveness.apply(SessionConfig::default());
        session_config.software = concat!("zrep-send ", env!("CARGO_PKG_VERSION")).to_owned();
        session_config.features = features;
        let session = SenderSession::new(session_config, Duration::ZERO);
        let mut conn = Connection::new(
            session,
            reader,
            writer,
            Instant::now(),
            liveness.write_timeout,
        );
        match conn.next_event().await {
            Ok(SenderEvent::Negotiated(n)) => {
                info!(version = n.version, peer = %n.peer.software, "session established");
                Ok(conn)
            }
            Ok(SenderEvent::PeerError { code, message }) => {
                Err(ConnectError::Refused { code, message })
            }
            Ok(other) => Err(ConnectError::Unexpected(format!("{other:?}"))),
            Err(err) => Err(ConnectError::Closed(err)),
        }
    };
    tokio::time::timeout(limit, work).await.unwrap_or_else(|_| {
        warn!(after = ?limit, "connecting timed out");
        Err(ConnectError::TimedOut {
            receiver: receiver.to_owned(),
            limit,
        })
    })
}
