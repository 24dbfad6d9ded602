//! The listener: TLS with required client certificates, one task per connection under a
//! connection cap, each peer confined to its configured root.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tracing::{Instrument, info, info_span, warn};
use zrep_proto::{ErrorCode, ReceiverSession, SessionConfig};
use zrep_repl::receiver::{ReceiverPolicy, TargetLocks, serve};
use zrep_repl::transport::Connection;
use zrep_tls::Acceptor;
use zrep_zfs::{SystemZfs, SystemZfsConfig, Zfs};

use crate::config::RecvConfig;

/// How long running sessions may finish after a shutdown signal.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// Test hook (see `ReceiverPolicy::drop_next_commit_answer`): set to `1` to drop the first
/// commit answer after a verified receive.
pub const DROP_COMMIT_ANSWER_ENV: &str = "ZREP_TEST_DROP_COMMIT_ANSWER";

/// Serves until SIGINT or SIGTERM.
pub async fn run(config: RecvConfig) -> anyhow::Result<()> {
    let zfs = SystemZfs::probe(SystemZfsConfig {
        finish_timeout: config.receive_timeout,
        ..SystemZfsConfig::default()
    })
    .await
    .context("probing the local ZFS")?;
    info!(dialect = %zfs.capabilities().dialect, "ZFS probed");
    let tls = zrep_tls::server_config_from_files(&config.ca, &config.cert, &config.key)
        .context("loading the TLS certificate, key and CA")?;
    let acceptor = Acceptor::new(tls);
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("listening on {}", config.listen))?;
    info!(listen = %listener.local_addr()?, peers = config.peers.len(), "zrep-recv ready");

    let shared = Arc::new(Shared {
        zfs,
        acceptor,
        locks: TargetLocks::default(),
        drop_commit: Arc::new(AtomicBool::new(
            std::env::var(DROP_COMMIT_ANSWER_ENV).is_ok_and(|v| v == "1"),
        )),
        config,
    });
    let slots = Arc::new(Semaphore::new(shared.config.max_connections));
    let mut tasks = JoinSet::new();
    let mut shutdown = std::pin::pin!(shutdown_signal());
    loop {
        // Wait for a free slot first, so excess connections wait in the kernel's backlog.
        let permit = tokio::select! {
            permit = slots.clone().acquire_owned() => permit.context("connection slots closed")?,
            () = &mut shutdown => break,
        };
        let (stream, addr) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Typically EMFILE: back off instead of spinning.
                    warn!(cause = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let shared = shared.clone();
        let span = info_span!("conn", %addr);
        tasks.spawn(
            async move {
                shared.handle(stream).await;
                drop(permit);
            }
            .instrument(span),
        );
        while tasks.try_join_next().is_some() {}
    }
    info!(running = tasks.len(), "shutting down");
    let drain = async { while tasks.join_next().await.is_some() {} };
    if tokio::time::timeout(SHUTDOWN_GRACE, drain).await.is_err() {
        warn!("sessions still running after {SHUTDOWN_GRACE:?}; ending them");
    }
    Ok(())
}

struct Shared {
    zfs: SystemZfs,
    acceptor: Acceptor,
    locks: TargetLocks,
    drop_commit: Arc<AtomicBool>,
    config: RecvConfig,
}

impl Shared {
    async fn handle(&self, stream: TcpStream) {
        let config = &self.config;
        let _ = stream.set_nodelay(true);
        let accepted =
            tokio::time::timeout(config.handshake_timeout, self.acceptor.accept(stream)).await;
        let (tls, identity) = match accepted {
            Ok(Ok(accepted)) => accepted,
            Ok(Err(err)) => {
                warn!(cause = %err, "TLS handshake refused");
                return;
            }
            Err(_) => {
                warn!(after = ?config.handshake_timeout, "TLS handshake timed out");
                return;
            }
        };
        let peer = identity.name.clone();
        let span = info_span!("peer", peer = %peer);
        async {
            let (reader, writer) = tokio::io::split(tls);
            let epoch = Instant::now();
            let session = ReceiverSession::new(self.session_config(), Duration::ZERO);
            let mut conn = Connection::new(session, reader, writer, epoch, config.idle_timeout);
            let Some(root) = config.peers.get(&peer) else {
                warn!("certificate is valid but the peer is not configured here");
                // Let the hellos cross first, so the peer reads our reason as a protocol error.
                let _ = tokio::time::timeout(config.handshake_timeout, conn.next_event()).await;
                conn.session.error(
                    ErrorCode::NotAuthorized,
                    format!("peer {peer} is not configured on this receiver"),
                );
                conn.shutdown().await;
                return;
            };
            info!(root = %root, "peer connected");
            let policy = ReceiverPolicy {
                peer: peer.to_string(),
                root: root.clone(),
                write_timeout: config.receive_timeout,
                locks: self.locks.clone(),
                drop_next_commit_answer: self.drop_commit.clone(),
            };
            match serve(&self.zfs, &mut conn, &policy).await {
                Ok(()) => info!("session ended"),
                Err(err) => warn!(cause = %err, "session ended with an error"),
            }
        }
        .instrument(span)
        .await;
    }

    fn session_config(&self) -> SessionConfig {
        let mut session = SessionConfig::default();
        session.idle_timeout = self.config.idle_timeout;
        session.software = concat!("zrep-recv ", env!("CARGO_PKG_VERSION")).to_owned();
        session
    }
}

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(err) => {
            warn!(cause = %err, "cannot watch SIGTERM; only SIGINT stops the service");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => info!("SIGINT"),
        _ = term.recv() => info!("SIGTERM"),
    }
}
