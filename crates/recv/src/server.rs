//! The listener: TLS 1.3 with optional client certificates, one task per connection.
//!
//! - From TCP accept until the protocol hellos crossed (TLS handshake included), a connection
//!   has `handshake-timeout`, whatever it sends meanwhile; then the session's `idle-timeout`
//!   applies.
//! - Connections that have not authenticated (before their hello, and pairing sessions) are
//!   admitted under their own limits, in all and per address (see [`admission`]); they never
//!   take one of the `max-connections` slots, which count authenticated sessions only. Accept
//!   never waits for a slot: excess connections are closed at once, and an authenticated peer
//!   over capacity is told `busy` in an error frame.
//! - Refusals are logged one line each up to a rate, then as a summary every 10 s.
//! - A client **with** a certificate of this receiver's CA is authorized by the peers registry
//!   (a certificate recorded as issued to its name, not revoked) or, for static `[[peer]]`
//!   entries of recv.toml, by its name; it is confined to its root and may renew its
//!   certificate. When the registry changes so that it is no longer authorized (revocation),
//!   its running sessions are ended.
//! - A client **without** a certificate may only enrol with a pairing token; anything else is
//!   answered with `not-authorized`.
//!
//! The registry file is re-read when it changes: checked on every new connection and every
//! second, so `zrep-recv pair`/`revoke` take effect without a restart.

use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tracing::{Instrument, debug, info, info_span, warn};
use zrep_proto::{
    EnrollRequest, Enrolment, ErrorCode, Features, MAX_CSR_LEN, ProtoError, ReceiverEvent,
    ReceiverSession, ReceiverSide, SessionConfig,
};
use zrep_repl::receiver::{
    ReceiverMetrics, ReceiverPolicy, Renewal, ServeError, TargetLocks, serve_with_renewal,
};
use zrep_repl::transport::{Connection, TransportError};
use zrep_tls::pairing::server_exporter;
use zrep_tls::{
    Acceptor, CertificateAuthority, PeerIdentity, PeerName, StoredKey, load_certs,
    load_private_key, server_config_allowing_pairing,
};
use zrep_zfs::{DatasetName, SystemZfs, SystemZfsConfig, Zfs};

use crate::config::RecvConfig;
use crate::registry::{IssuedCert, Registry, RegistryFile, Stamp, Verdict};

mod admission;

use admission::{Admission, Limits, Refusal, RefusalLog, Refused, Ticket};

/// After the grace period, how long cut sessions may take to undo their transfers.
const UNDO_LIMIT: Duration = Duration::from_secs(60);

/// Where a shutdown stands; sessions watch it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stop {
    Running,
    /// SIGTERM: no new transfer; idle sessions end, running transfers finish.
    Draining,
    /// The grace period is over: every session ends now.
    Now,
}

async fn drain(tasks: &mut JoinSet<()>) {
    while tasks.join_next().await.is_some() {}
}
/// How often the registry file is checked for changes (besides on every new connection).
const REGISTRY_POLL: Duration = Duration::from_secs(1);
/// Refusals beyond a few per window are logged as one summary per window.
const REFUSAL_WINDOW: Duration = Duration::from_secs(10);
/// A pairing session (no client certificate) may last this many handshake timeouts from accept.
const PAIRING_TIMEOUTS: u32 = 3;
/// Limit for telling a connection why it is closed (error frame, then linger): a peer that does
/// not read cannot hold it open longer.
const CLOSE_LIMIT: Duration = Duration::from_secs(3);
/// Open files an authenticated session may use besides its socket (`zfs receive` and its pipes),
/// and those of the process itself, for the check of the open-files limit at start.
const FILES_PER_SESSION: usize = 4;
const FILES_BASE: usize = 64;

/// Test hook (see `ReceiverPolicy::drop_next_commit_answer`): set to `1` to drop the first
/// commit answer after a verified receive. Ignored in release builds.
pub const DROP_COMMIT_ANSWER_ENV: &str = "ZREP_TEST_DROP_COMMIT_ANSWER";

/// Test builds only: set to `1` to let streams reach `zfs receive` uninspected (the tests
/// show that the receive options alone keep forged properties out). Ignored in release builds.
pub const DANGER_SKIP_STREAM_INSPECTION_ENV: &str = "ZREP_DANGER_SKIP_STREAM_CHECK";

fn danger_skip_stream_inspection() -> bool {
    cfg!(debug_assertions)
        && std::env::var(DANGER_SKIP_STREAM_INSPECTION_ENV).is_ok_and(|v| v == "1")
}

/// Serves until SIGINT or SIGTERM.
pub async fn run(config: RecvConfig) -> anyhow::Result<()> {
    let zfs = SystemZfs::probe(SystemZfsConfig {
        finish_timeout: config.receive_timeout,
        ..SystemZfsConfig::default()
    })
    .await
    .context("probing the local ZFS")?;
    info!(dialect = %zfs.capabilities().dialect, "ZFS probed");
    let ca_certs = load_certs(&config.ca).context("loading the CA certificate")?;
    let mut chain = load_certs(&config.cert).context("loading the server certificate")?;
    // Enrolling senders find the CA they pin in the chain.
    if !chain.iter().any(|c| ca_certs.contains(c)) {
        chain.push(ca_certs[0].clone());
    }
    let key = load_private_key(&config.key).context("loading the server key")?;
    let tls = server_config_allowing_pairing(&ca_certs, chain, key)
        .context("loading the TLS certificate, key and CA")?;
    let ca = match &config.ca_key {
        Some(ca_key) => Some(
            CertificateAuthority::load(&config.ca, ca_key).context("loading the CA and its key")?,
        ),
        None => None,
    };
    let registry = Arc::new(LiveRegistry::open(RegistryFile::new(&config.state_dir))?);
    let registered = registry.current();
    let roots: Vec<(String, DatasetName)> = config
        .peers
        .iter()
        .map(|(name, root)| (name.to_string(), root.clone()))
        .chain(registered.peers.iter().filter_map(|peer| {
            let root = DatasetName::parse(&peer.root).ok()?;
            Some((peer.name.to_string(), root))
        }))
        .collect();
    zrep_repl::receiver::seal_roots(&zfs, roots)
        .await
        .context("sealing the peer roots (read-only, unmounted)")?;
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("listening on {}", config.listen))?;
    info!(
        listen = %listener.local_addr()?,
        static_peers = config.peers.len(),
        registered_peers = registry.current().peers.len(),
        pairing = ca.is_some(),
        "zrep-recv ready"
    );

    let poller = {
        let registry = registry.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(REGISTRY_POLL).await;
                registry.refresh();
            }
        })
    };
    let shared = Arc::new(Shared {
        zfs,
        acceptor: Acceptor::new(tls),
        locks: TargetLocks::default(),
        drop_commit: Arc::new(AtomicBool::new(
            cfg!(debug_assertions) && std::env::var(DROP_COMMIT_ANSWER_ENV).is_ok_and(|v| v == "1"),
        )),
        ca,
        registry,
        metrics: ReceiverMetrics::default(),
        admission: Admission::new(Limits {
            total: config.max_unauthenticated,
            per_source: config.max_unauthenticated_per_ip,
        }),
        refusals: RefusalLog::default(),
        slots: Arc::new(Semaphore::new(config.max_connections)),
        stopping: watch::Sender::new(Stop::Running),
        config,
    });
    check_open_files(&shared.config);
    if let Some(addr) = shared.config.metrics_listen {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("metrics-listen {addr}"))?;
        info!(addr = %listener.local_addr()?, "metrics listening");
        let metrics = shared.metrics.clone();
        tokio::spawn(zrep_cli::metrics::serve_metrics(listener, move || {
            crate::metrics::render(&metrics)
        }));
    }
    let summaries = {
        let shared = shared.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(REFUSAL_WINDOW);
            tick.tick().await;
            loop {
                tick.tick().await;
                if let Some(summary) = shared.refusals.take_summary() {
                    warn!(window = ?REFUSAL_WINDOW, "{summary}");
                }
            }
        })
    };
    let mut tasks = JoinSet::new();
    let mut shutdown = std::pin::pin!(shutdown_signal());
    loop {
        let (stream, addr) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Typically EMFILE: back off instead of spinning.
                    warn!(cause = %zrep_cli::one_line(&err), "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let accepted = Instant::now();
        // Never wait here: admitted or closed at once, so the loop keeps up with any flood.
        let ticket = match shared.admission.admit(addr.ip()) {
            Ok(ticket) => ticket,
            Err(refused) => {
                drop(stream);
                shared.refused_at_accept(refused, addr);
                continue;
            }
        };
        let shared = shared.clone();
        let span = info_span!("conn", %addr);
        tasks.spawn(async move { shared.handle(stream, ticket, accepted).await }.instrument(span));
        while tasks.try_join_next().is_some() {}
    }
    poller.abort();
    summaries.abort();
    // Connections that have not authenticated end now; idle sessions are told at once, and a
    // running transfer gets the grace period to finish.
    shared.admission.close_all();
    shared.stopping.send_replace(Stop::Draining);
    let grace = shared.config.shutdown_grace;
    info!(running = tasks.len(), ?grace, "shutting down");
    if tokio::time::timeout(grace, drain(&mut tasks))
        .await
        .is_err()
    {
        warn!(
            running = tasks.len(),
            ?grace,
            "transfers still running after the grace period: cutting them"
        );
        shared.stopping.send_replace(Stop::Now);
        // A cut transfer is undone (its ZFS commands have their own time limits) before the
        // session ends; past this bound the process exits regardless.
        if tokio::time::timeout(UNDO_LIMIT, drain(&mut tasks))
            .await
            .is_err()
        {
            warn!(
                running = tasks.len(),
                "sessions did not end; exiting anyway"
            );
        }
    }
    Ok(())
}

/// The peers registry as last read, re-read when the file changes; sessions watch it.
struct LiveRegistry {
    file: RegistryFile,
    stamp: Mutex<Option<Stamp>>,
    tx: watch::Sender<Arc<Registry>>,
}

impl LiveRegistry {
    fn open(file: RegistryFile) -> anyhow::Result<Self> {
        let stamp = file.stamp();
        let registry = file.load().context("loading the peers registry")?;
        Ok(Self {
            file,
            stamp: Mutex::new(stamp),
            tx: watch::Sender::new(Arc::new(registry)),
        })
    }

    /// Re-reads the file if it changed. A broken file keeps the last good state.
    fn refresh(&self) {
        let mut stamp = self.stamp.lock().unwrap_or_else(|p| p.into_inner());
        let now = self.file.stamp();
        if now == *stamp {
            return;
        }
        match self.file.load() {
            Ok(registry) => {
                *stamp = now;
                debug!(peers = registry.peers.len(), "peers registry reloaded");
                self.tx.send_replace(Arc::new(registry));
            }
            Err(err) => {
                warn!(cause = %zrep_cli::one_line(&err), "cannot reload the peers registry; keeping the last one")
            }
        }
    }

    fn current(&self) -> Arc<Registry> {
        self.refresh();
        self.tx.borrow().clone()
    }
}

struct Shared {
    zfs: SystemZfs,
    acceptor: Acceptor,
    locks: TargetLocks,
    drop_commit: Arc<AtomicBool>,
    ca: Option<CertificateAuthority>,
    registry: Arc<LiveRegistry>,
    metrics: ReceiverMetrics,
    /// Connections that have not authenticated.
    admission: Admission,
    refusals: RefusalLog,
    /// One per authenticated session (`max-connections`).
    slots: Arc<Semaphore>,
    /// Set at shutdown: every session is told and ends at its next frame boundary.
    stopping: watch::Sender<Stop>,
    config: RecvConfig,
}

/// A connection whose hellos crossed.
enum Opened {
    /// With a verified client certificate (not yet authorized).
    Peer(RecvConn, PeerIdentity),
    /// Without a client certificate: pairing only; the TLS exporter binds the enrolment.
    Pairing(RecvConn, [u8; 32]),
}

type Tls = zrep_tls::tokio_rustls::server::TlsStream<TcpStream>;
type RecvConn = Connection<ReceiverSide, tokio::io::ReadHalf<Tls>, tokio::io::WriteHalf<Tls>>;

impl Shared {
    /// One admitted connection, from accept to the end; `ticket` holds its place among the
    /// unauthenticated ones until it authenticates.
    async fn handle(&self, stream: TcpStream, mut ticket: Ticket, accepted: Instant) {
        let _ = stream.set_nodelay(true);
        let limit = self.config.handshake_timeout;
        let deadline = tokio::time::Instant::from_std(accepted + limit);
        let opened = tokio::select! {
            opened = self.open(stream, deadline) => opened,
            () = ticket.displaced() => return self.displaced(),
        };
        match opened {
            Some(Opened::Peer(conn, identity)) => self.peer_session(conn, identity, ticket).await,
            Some(Opened::Pairing(conn, exporter)) => {
                let limit = limit * PAIRING_TIMEOUTS;
                let deadline = tokio::time::Instant::from_std(accepted + limit);
                let pairing =
                    tokio::time::timeout_at(deadline, self.pairing_session(conn, &exporter));
                async {
                    tokio::select! {
                        finished = pairing => {
                            if finished.is_err() {
                                self.note_timed_out(limit, "pairing session timed out");
                            }
                        }
                        () = ticket.displaced() => self.displaced(),
                    }
                }
                .instrument(info_span!("pairing"))
                .await;
            }
            None => {}
        }
    }

    /// The TLS handshake and the hellos, by `deadline`; `None` if the connection is done (the
    /// reason is logged).
    async fn open(&self, stream: TcpStream, deadline: tokio::time::Instant) -> Option<Opened> {
        let limit = self.config.handshake_timeout;
        let accepted = tokio::time::timeout_at(deadline, self.acceptor.accept_any(stream)).await;
        let (tls, identity) = self.by_deadline(
            accepted,
            "TLS handshake refused",
            "TLS handshake timed out (handshake-timeout): connection closed",
        )?;
        let mut session_config = self.session_config();
        let (session, exporter) = match &identity {
            Some(_) => {
                session_config.features = session_config.features.with_renew(self.ca.is_some());
                (ReceiverSession::new(session_config, Duration::ZERO), None)
            }
            None => {
                let exporter = match server_exporter(tls.get_ref().1) {
                    Ok(exporter) => exporter,
                    Err(err) => {
                        warn!(cause = %zrep_cli::one_line(&err), "no TLS exporter");
                        return None;
                    }
                };
                session_config.features = Features::new().with_enroll(true);
                let session = ReceiverSession::new_pairing_only(session_config, Duration::ZERO);
                (session, Some(exporter))
            }
        };
        let mut conn = self.connection(tls, session);
        let hello = tokio::time::timeout_at(deadline, conn.next_event()).await;
        let timed_out = hello.is_err();
        match self.by_deadline(
            hello,
            "hello failed",
            "no hello within handshake-timeout: connection closed",
        ) {
            Some(ReceiverEvent::Negotiated(n)) => {
                debug!(version = n.version, software = %n.peer.software, "negotiated");
            }
            Some(event) => {
                debug!(?event, "connection ended before the hello");
                return None;
            }
            None => {
                if timed_out {
                    conn.session.error(
                        ErrorCode::Timeout,
                        format!("no hello within {limit:?} of connecting (handshake-timeout)"),
                    );
                    let _ = tokio::time::timeout(CLOSE_LIMIT, conn.flush()).await;
                }
                return None;
            }
        }
        Some(match (identity, exporter) {
            (Some(identity), _) => Opened::Peer(conn, identity),
            (None, Some(exporter)) => Opened::Pairing(conn, exporter),
            // The exporter is made exactly for connections without identity.
            (None, None) => return None,
        })
    }

    /// What a step of opening a connection gave by the deadline, or `None` once its failure or
    /// its timeout is logged as `failed` or `timed_out`.
    fn by_deadline<T, E>(
        &self,
        outcome: Result<Result<T, E>, tokio::time::error::Elapsed>,
        failed: &str,
        timed_out: &str,
    ) -> Option<T>
    where
        E: std::error::Error + 'static,
    {
        match outcome {
            Ok(Ok(value)) => Some(value),
            Ok(Err(err)) => {
                self.note_failed(&err, failed);
                None
            }
            Err(_) => {
                self.note_timed_out(self.config.handshake_timeout, timed_out);
                None
            }
        }
    }

    /// Logs a connection that failed before its session began, as `what` (unless such logs are
    /// being held back).
    fn note_failed(&self, err: &(dyn std::error::Error + 'static), what: &str) {
        if self.refusals.note(Refusal::Failed) {
            warn!(cause = %zrep_cli::one_line(err), "{what}");
        }
    }

    /// Logs a connection closed after `limit` without getting on, as `what` (unless such logs
    /// are being held back).
    fn note_timed_out(&self, limit: Duration, what: &str) {
        if self.refusals.note(Refusal::TimedOut) {
            warn!(after = ?limit, "{what}");
        }
    }

    fn displaced(&self) {
        if self.admission.is_closed() {
            debug!("unauthenticated connection closed: shutting down");
        } else if self.refusals.note(Refusal::Displaced) {
            warn!(
                limit = self.config.max_unauthenticated,
                "unauthenticated connection closed: max-unauthenticated reached, its place went to a newer one from a less represented address"
            );
        }
    }

    fn refused_at_accept(&self, refused: Refused, addr: SocketAddr) {
        let config = &self.config;
        let (refusal, limit, why) = match refused {
            Refused::PerSource => (
                Refusal::PerSource,
                config.max_unauthenticated_per_ip,
                "connection refused: too many unauthenticated connections from this address (max-unauthenticated-per-ip)",
            ),
            Refused::Total => (
                Refusal::Total,
                config.max_unauthenticated,
                "connection refused: too many unauthenticated connections (max-unauthenticated), and this address holds its share",
            ),
        };
        if self.refusals.note(refusal) {
            warn!(%addr, limit, "{why}");
        }
    }

    fn connection(&self, tls: Tls, session: ReceiverSession) -> RecvConn {
        let (reader, writer) = tokio::io::split(tls);
        Connection::new(
            session,
            reader,
            writer,
            Instant::now(),
            self.config.liveness.write_timeout,
        )
    }

    /// A client with a verified certificate: authorize, then serve until it is done or loses
    /// its authorization.
    async fn peer_session(&self, mut conn: RecvConn, identity: PeerIdentity, ticket: Ticket) {
        let config = &self.config;
        let peer = identity.name.clone();
        let span = info_span!("peer", peer = %peer);
        async {
            let static_root = config.peers.get(&peer);
            // Subscribe before deciding, so a change right after the decision is not missed.
            self.registry.refresh();
            let mut watch = self.registry.tx.subscribe();
            let registry = watch.borrow_and_update().clone();
            let root = match registry.authorize(&identity, static_root) {
                Verdict::Allowed(root) => root,
                Verdict::Refused(reason) => {
                    warn!(fingerprint = %identity.fingerprint, %reason, "peer refused");
                    // The hellos crossed, so the peer reads our reason as a protocol error.
                    close_with(&mut conn, ErrorCode::NotAuthorized, reason).await;
                    return;
                }
            };
            let Ok(_slot) = self.slots.clone().try_acquire_owned() else {
                let max = config.max_connections;
                warn!(max_connections = max, "peer refused: busy");
                let message = format!(
                    "all {max} session slots of this receiver (max-connections) are in use; try again later"
                );
                close_with(&mut conn, ErrorCode::Busy, message).await;
                return;
            };
            // Authenticated: from now on it counts against max-connections only.
            drop(ticket);
            info!(root = %root, "peer connected");
            let policy = ReceiverPolicy {
                peer: peer.to_string(),
                root,
                write_timeout: config.receive_timeout,
                locks: self.locks.clone(),
                drop_next_commit_answer: self.drop_commit.clone(),
                retention: config.retention.get(&peer).cloned(),
                metrics: self.metrics.clone(),
                danger_skip_stream_inspection: danger_skip_stream_inspection(),
            };
            let renewal = PeerRenewal {
                shared: self,
                identity: &identity,
            };
            // A revocation or the shutdown ends the session at a frame boundary: the peer reads
            // why, and a transfer in flight is undone as any cut one.
            let (holder, static_root) = (identity.clone(), static_root.cloned());
            let withdrawn = async move {
                loop {
                    if watch.changed().await.is_err() {
                        std::future::pending::<()>().await;
                    }
                    let registry = watch.borrow_and_update().clone();
                    if let Verdict::Refused(reason) =
                        registry.authorize(&holder, static_root.as_ref())
                    {
                        warn!(%reason, "authorization withdrawn: ending the session");
                        return (ErrorCode::NotAuthorized, reason);
                    }
                }
            };
            // At shutdown an idle session ends at once and a transfer in flight first gets its
            // answer; once the grace period is over, it is cut too.
            let mut draining = self.stopping.subscribe();
            let mut cut = self.stopping.subscribe();
            conn.stop_when_idle(async move {
                let _ = draining.wait_for(|stop| *stop != Stop::Running).await;
                (
                    ErrorCode::ShuttingDown,
                    "zrep-recv is shutting down; try again later".to_owned(),
                )
            });
            conn.stop_on(async move {
                tokio::select! {
                    withdrawn = withdrawn => withdrawn,
                    _ = cut.wait_for(|stop| *stop == Stop::Now) => (
                        ErrorCode::ShuttingDown,
                        "zrep-recv is shutting down and its grace period is over; the transfer was cut".to_owned(),
                    ),
                }
            });
            match serve_with_renewal(&self.zfs, &mut conn, &policy, Some(&renewal)).await {
                Ok(()) => info!("session ended"),
                Err(ServeError::Transport(TransportError::Stopped { message, .. })) => {
                    info!(%message, "session ended");
                }
                Err(err) => warn!(cause = %zrep_cli::one_line(&err), "session ended with an error"),
            }
        }
        .instrument(span)
        .await;
    }

    /// A client without certificate, after the hellos: the enrolment exchange and nothing else.
    async fn pairing_session(&self, mut conn: RecvConn, exporter: &[u8; 32]) {
        loop {
            match conn.next_event().await {
                Ok(ReceiverEvent::EnrollRequested(request)) => {
                    match self.enroll(&request, exporter) {
                        Ok(enrolment) => {
                            info!(peer = %enrolment.peer, root = %enrolment.root, "peer paired");
                            if conn.session.enrolled(enrolment).is_err() {
                                return;
                            }
                        }
                        Err(reason) => {
                            warn!(token = format_args!("{:016x}", request.token_id), %reason, "pairing refused");
                            let _ = conn.session.refuse_enrollment(reason);
                            conn.shutdown().await;
                            return;
                        }
                    }
                }
                Ok(ReceiverEvent::Bye) => {
                    conn.shutdown().await;
                    return;
                }
                Ok(other) => {
                    debug!(event = ?other, "pairing session ended");
                    return;
                }
                Err(TransportError::Protocol(ProtoError::PairingOnly { frame })) => {
                    warn!(
                        frame,
                        "refused: a connection without client certificate may only pair"
                    );
                    conn.shutdown().await;
                    return;
                }
                Err(err) => {
                    debug!(cause = %zrep_cli::one_line(&err), "pairing session ended");
                    return;
                }
            }
        }
    }

    /// Checks an enrolment against the registry and, if it is good, signs the CSR and records
    /// the peer, all under the registry lock: a token is used at most once.
    fn enroll(&self, request: &EnrollRequest, exporter: &[u8; 32]) -> Result<Enrolment, String> {
        let Some(ca) = &self.ca else {
            return Err(
                "pairing is not enabled on this receiver (recv.toml has no ca-key)".to_owned(),
            );
        };
        if request.csr.len() > MAX_CSR_LEN {
            return Err(format!("CSR larger than {MAX_CSR_LEN} bytes"));
        }
        let token = format!("{:016x}", request.token_id);
        let now = SystemTime::now();
        let outcome = self.registry.file.update(|reg| {
            let Some(index) = reg.pairings.iter().position(|p| p.token == token) else {
                return Err(
                    "unknown pairing token: this receiver did not issue it (or it was cleaned up); run `zrep-recv pair` for a new one"
                        .to_owned(),
                );
            };
            let pairing = reg.pairings[index].clone();
            if let Some(used) = pairing.used {
                return Err(format!(
                    "pairing token already used at {}; tokens are single-use: run `zrep-recv pair` for a new one",
                    rfc3339(used)
                ));
            }
            if pairing.expires <= now {
                return Err(format!(
                    "pairing token expired at {}; run `zrep-recv pair` for a new one",
                    rfc3339(pairing.expires)
                ));
            }
            let stored: StoredKey = pairing
                .stored_key
                .parse()
                .map_err(|e| format!("registry: {e}"))?;
            if !stored.verify(request.token_id, exporter, &request.csr, &request.proof) {
                return Err(
                    "wrong pairing token: the proof does not match (mistyped token, or something in between)"
                        .to_owned(),
                );
            }
            if reg.peer(&pairing.name).is_some_and(|p| !p.revoked) {
                return Err(format!("peer {} was paired meanwhile", pairing.name));
            }
            // recv.toml may have gained a static peer over this root since `pair` checked.
            if let Some(overlap) = self
                .config
                .registry_overlaps(reg, now)
                .into_iter()
                .find(|o| o.involves(&pairing.name))
            {
                return Err(overlap.to_string());
            }
            let root = DatasetName::parse(&pairing.root).map_err(|e| e.to_string())?;
            let signed = ca
                .sign_peer_csr_der(&request.csr, &pairing.name, self.config.peer_cert_ttl)
                .map_err(|e| format!("unusable certificate request: {}", zrep_cli::one_line(&e)))?;
            let identity = PeerIdentity::from_cert(signed.cert_der()).map_err(|e| zrep_cli::one_line(&e))?;
            reg.pairings[index].used = Some(now);
            reg.record_issued(
                &pairing.name,
                &root,
                IssuedCert {
                    fingerprint: identity.fingerprint,
                    not_after: identity.not_after,
                },
            );
            Ok(Enrolment {
                peer: pairing.name.to_string(),
                root: pairing.root.clone(),
                certificate: signed.cert_der().to_vec(),
                ca_certificate: ca.cert_der().to_vec(),
            })
        });
        let enrolment = outcome.map_err(|e| format!("internal error: {e}"))??;
        self.registry.refresh();
        Ok(enrolment)
    }

    fn renew(&self, identity: &PeerIdentity, csr: &[u8]) -> Result<Vec<u8>, String> {
        let Some(ca) = &self.ca else {
            return Err("this receiver has no ca-key: it cannot renew certificates".to_owned());
        };
        if csr.len() > MAX_CSR_LEN {
            return Err(format!("CSR larger than {MAX_CSR_LEN} bytes"));
        }
        let name: &PeerName = &identity.name;
        let outcome = self.registry.file.update(|reg| {
            let Some(peer) = reg.peer(name) else {
                return Err(format!(
                    "peer {name} is a static peer of recv.toml; renew its certificate by hand"
                ));
            };
            if peer.revoked || !peer.certs.iter().any(|c| c.fingerprint == identity.fingerprint) {
                return Err(format!("peer {name} may not renew this certificate"));
            }
            let root = DatasetName::parse(&peer.root).map_err(|e| e.to_string())?;
            let signed = ca
                .sign_peer_csr_der(csr, name, self.config.peer_cert_ttl)
                .map_err(|e| format!("unusable certificate request: {}", zrep_cli::one_line(&e)))?;
            let renewed = PeerIdentity::from_cert(signed.cert_der()).map_err(|e| zrep_cli::one_line(&e))?;
            reg.record_issued(
                name,
                &root,
                IssuedCert {
                    fingerprint: renewed.fingerprint,
                    not_after: renewed.not_after,
                },
            );
            info!(fingerprint = %renewed.fingerprint, not_after = %rfc3339(renewed.not_after), "issued renewed certificate");
            Ok(signed.cert_der().to_vec())
        });
        let certificate = outcome.map_err(|e| format!("internal error: {e}"))??;
        self.registry.refresh();
        Ok(certificate)
    }

    fn session_config(&self) -> SessionConfig {
        let mut session = self.config.liveness.apply(SessionConfig::default());
        session.software = concat!("zrep-recv ", env!("CARGO_PKG_VERSION")).to_owned();
        // Resume, bookmarks and raw streams are offered only where the local ZFS has them.
        session.features = zrep_repl::session_features(self.zfs.capabilities());
        session
    }
}

/// Renewal for the authenticated peer of one session.
struct PeerRenewal<'a> {
    shared: &'a Shared,
    identity: &'a PeerIdentity,
}

impl Renewal for PeerRenewal<'_> {
    fn renew(&self, csr: &[u8]) -> Result<Vec<u8>, String> {
        self.shared.renew(self.identity, csr)
    }
}

/// Sends an error frame and closes, within [`CLOSE_LIMIT`].
async fn close_with(conn: &mut RecvConn, code: ErrorCode, message: String) {
    conn.session.error(code, message);
    let _ = tokio::time::timeout(CLOSE_LIMIT, conn.shutdown()).await;
}

/// Warns at start if the open-files limit is below what the configured limits may use, so the
/// operator learns it now, not as accept failures under load.
fn check_open_files(config: &RecvConfig) {
    let Some(limit) = open_files_limit() else {
        return;
    };
    let need = config.max_unauthenticated + config.max_connections * FILES_PER_SESSION + FILES_BASE;
    if limit < need as u64 {
        warn!(
            limit,
            need,
            "the open-files limit is below what max-unauthenticated and max-connections may use; raise it (LimitNOFILE, ulimit -n) or lower them"
        );
    } else {
        debug!(limit, need, "open-files limit");
    }
}

/// The soft limit of open files, from /proc (Linux; `None` elsewhere or when unlimited).
fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.trim_start_matches("Max open files")
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn rfc3339(t: SystemTime) -> String {
    humantime_serde::re::humantime::format_rfc3339_seconds(t).to_string()
}

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(err) => {
            warn!(cause = %zrep_cli::one_line(&err), "cannot watch SIGTERM; only SIGINT stops the service");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => info!("SIGINT"),
        _ = term.recv() => info!("SIGTERM"),
    }
}
