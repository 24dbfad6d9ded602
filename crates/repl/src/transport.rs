//! Drives a sans-IO protocol session over an async byte stream (TLS in production, an in-memory
//! pipe in tests): writes what the session wants sent, feeds it what arrives, keeps its clock.
//!
//! Every wait is bounded: reads wait at most until the session's next deadline (heartbeat due or
//! peer overdue), and writes are bounded by `write_timeout`. Local work that makes the peer wait
//! (ZFS, mostly) runs under [`Connection::drive_while`], so heartbeats go on however long it
//! takes. The clock is tokio's, so tests with paused time see the session's timers fire.

use std::future::Future;
use std::time::Duration;

use bytes::BytesMut;
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use zrep_proto::{ErrorCode, ProtoError};

/// How much is read from the connection at once; frames larger than this arrive in pieces.
const READ_CHUNK: usize = 64 * 1024;

/// A failure of the connection or of the peer's protocol conduct.
///
/// A message never repeats its source: a variant that wraps a cause says what was being done,
/// and exposes the cause as `source()`; print chains with `zrep_chain::one_line`.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum TransportError {
    /// Reading or writing the connection failed.
    #[error("connection failed")]
    Io(#[from] std::io::Error),
    /// The peer closed the connection.
    #[error("the peer closed the connection")]
    Closed,
    /// Writing did not progress within the limit.
    #[error("writing to the peer stalled for {0:?}")]
    WriteStalled(Duration),
    /// The peer ended the session with an error frame, found after our write failed (an error
    /// frame read in the ordinary way is the session's event instead).
    #[error("the peer ended the session ({code}): {message}")]
    PeerClosed {
        /// The peer's error code.
        code: ErrorCode,
        /// The peer's reason.
        message: String,
    },
    /// The peer broke the protocol or went silent; an error frame was sent if possible.
    #[error(transparent)]
    Protocol(#[from] ProtoError),
    /// This side ended the session (see [`Connection::stop_on`]); the peer was told why.
    #[error("session ended ({code}): {message}")]
    Stopped {
        /// The code sent to the peer.
        code: ErrorCode,
        /// The reason sent to the peer.
        message: String,
    },
}

/// Ends a session from outside at a frame boundary: resolves to the code and reason the peer is
/// told.
pub struct StopSignal(std::pin::Pin<Box<dyn Future<Output = (ErrorCode, String)> + Send>>);

impl std::fmt::Debug for StopSignal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StopSignal")
    }
}

/// The session the connection drives (either side), and what a side is.
pub use zrep_proto::{Session, Side};

/// The liveness settings of one side's sessions, as its config file gives them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Liveness {
    /// A heartbeat goes out when nothing else was sent for this long (announced in the hello).
    pub heartbeat_interval: Duration,
    /// A peer silent this long (not even a heartbeat) is given up on; never less than three of
    /// the heartbeat intervals the peer announced, so a healthy peer is never dropped.
    pub idle_timeout: Duration,
    /// A write to the peer that makes no progress for this long ends the session.
    pub write_timeout: Duration,
}

impl Liveness {
    /// The rule for configured values, the same for both programs: none shorter than the
    /// protocol's shortest heartbeat interval. The error is one line for the config file's
    /// report.
    pub fn check(&self) -> Result<(), String> {
        let min = zrep_proto::MIN_HEARTBEAT_INTERVAL;
        for (key, value) in [
            ("heartbeat-interval", self.heartbeat_interval),
            ("idle-timeout", self.idle_timeout),
            ("write-timeout", self.write_timeout),
        ] {
            if value < min {
                return Err(format!("{key} must be at least {min:?}"));
            }
        }
        Ok(())
    }

    /// `config` with these heartbeat and silence settings.
    pub fn apply(&self, mut config: zrep_proto::SessionConfig) -> zrep_proto::SessionConfig {
        config.heartbeat_interval = self.heartbeat_interval;
        config.idle_timeout = self.idle_timeout;
        config
    }
}

/// What [`Connection::next_event_or`] produced first.
#[derive(Debug)]
pub enum Either<E, T> {
    /// The session reported an event.
    Event(E),
    /// The other future finished.
    Other(T),
}

/// A session bound to a connection.
#[derive(Debug)]
pub struct Connection<S: Side, R, W> {
    /// The protocol state machine; call its methods, then [`Connection::flush`].
    pub session: Session<S>,
    reader: R,
    writer: W,
    inbuf: BytesMut,
    epoch: tokio::time::Instant,
    write_timeout: Duration,
    /// What the connection produced while [`Connection::drive_while`] ran local work: handed out
    /// by the next [`Connection::next_event_or`].
    stashed: Option<Result<S::Event, TransportError>>,
    stop: Option<StopSignal>,
    /// Like `stop`, but waits while the connection is [busy](Connection::set_busy).
    stop_when_idle: Option<StopSignal>,
    busy: bool,
}

impl<S, R, W> Connection<S, R, W>
where
    S: Side,
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    /// Binds `session`, whose clock started at `epoch`, to a connection.
    pub fn new(
        session: Session<S>,
        reader: R,
        writer: W,
        epoch: std::time::Instant,
        write_timeout: Duration,
    ) -> Self {
        Self {
            session,
            reader,
            writer,
            inbuf: BytesMut::new(),
            epoch: tokio::time::Instant::now() - epoch.elapsed(),
            write_timeout,
            stashed: None,
            stop: None,
            stop_when_idle: None,
            busy: false,
        }
    }

    /// Ends the session when `signal` resolves (a revocation, a shutdown): at the next point
    /// where the connection is driven, never in the middle of a frame, the peer is sent an error
    /// frame with the signal's code and reason, and the waiting call returns
    /// [`TransportError::Stopped`]. Local work under [`Connection::drive_while`] still runs to
    /// its end first.
    pub fn stop_on(&mut self, signal: impl Future<Output = (ErrorCode, String)> + Send + 'static) {
        self.stop = Some(StopSignal(Box::pin(signal)));
    }

    /// Like [`Connection::stop_on`], but the signal takes effect only while the connection is
    /// not [busy](Connection::set_busy): a graceful shutdown lets a transfer in flight finish
    /// and ends the session right after it (or at once if it is idle).
    pub fn stop_when_idle(
        &mut self,
        signal: impl Future<Output = (ErrorCode, String)> + Send + 'static,
    ) {
        self.stop_when_idle = Some(StopSignal(Box::pin(signal)));
    }

    /// Marks a stretch of the conversation (a transfer, from accept to its answer) that a
    /// [`stop_when_idle`](Connection::stop_when_idle) signal must not cut.
    pub fn set_busy(&mut self, busy: bool) {
        self.busy = busy;
    }

    /// The session clock.
    pub fn now(&self) -> Duration {
        self.epoch.elapsed()
    }

    /// Writes everything the session has queued (including a due heartbeat).
    pub async fn flush(&mut self) -> Result<(), TransportError> {
        while let Some(bytes) = self.session.poll_transmit(self.now()) {
            self.write_raw(&bytes).await?;
        }
        let limit = self.write_timeout;
        match tokio::time::timeout(limit, self.writer.flush()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(err)) => Err(self.salvage(err.into()).await),
            Err(_) => Err(TransportError::WriteStalled(limit)),
        }
    }

    /// Writes bytes the session produced outside its queue (data frames).
    pub async fn write_raw(&mut self, bytes: &[u8]) -> Result<(), TransportError> {
        let limit = self.write_timeout;
        match tokio::time::timeout(limit, self.writer.write_all(bytes)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(err)) => Err(self.salvage(err.into()).await),
            Err(_) => Err(TransportError::WriteStalled(limit)),
        }
    }

    /// After a failed write: the peer may have closed with an error frame that is still unread.
    /// Its reason beats "broken pipe". Another event found on the way (its `Bye`) is kept for
    /// the caller. The look ends at the connection's end, which follows at once after a close;
    /// `write_timeout` only bounds a peer that keeps it open without a word.
    async fn salvage(&mut self, err: TransportError) -> TransportError {
        let look = async {
            loop {
                match self
                    .session
                    .handle_bytes(&mut self.inbuf, self.epoch.elapsed())
                {
                    Ok(Some(event)) => {
                        if let Some((code, message)) = S::peer_error(&event) {
                            return Some((code, message.to_owned()));
                        }
                        if self.stashed.is_none() {
                            self.stashed = Some(Ok(event));
                        }
                    }
                    Ok(None) => {
                        self.inbuf.reserve(READ_CHUNK);
                        match self.reader.read_buf(&mut self.inbuf).await {
                            Ok(n) if n > 0 => {}
                            _ => return None,
                        }
                    }
                    Err(_) => return None,
                }
            }
        };
        match tokio::time::timeout(self.write_timeout, look).await {
            Ok(Some((code, message))) => TransportError::PeerClosed { code, message },
            _ => err,
        }
    }

    /// Waits for the session's next event, answering heartbeats and enforcing the peer's
    /// deadline meanwhile.
    pub async fn next_event(&mut self) -> Result<S::Event, TransportError> {
        match self.next_event_or(std::future::pending::<()>()).await? {
            Either::Event(event) => Ok(event),
            Either::Other(()) => unreachable!("a pending future never finishes"),
        }
    }

    /// Runs local work the peer waits for (a ZFS command, say) to its end while the connection
    /// goes on: heartbeats are sent, the peer's are read, its deadline is enforced. Work is never
    /// abandoned half-way: an event that arrives meanwhile (the peer's error frame), or a failure
    /// of the connection, is kept and returned by the next [`Connection::next_event`] once the
    /// work is done.
    pub async fn drive_while<T>(&mut self, work: impl Future<Output = T>) -> T {
        let mut work = std::pin::pin!(work);
        while self.stashed.is_none() {
            match self.drive(&mut work).await {
                Ok(Either::Other(out)) => return out,
                Ok(Either::Event(event)) => self.stashed = Some(Ok(event)),
                Err(err) => self.stashed = Some(Err(err)),
            }
        }
        work.await
    }

    /// Ends the session because the peer's stream is invalid (its stream half said why): the
    /// peer is sent the error frame, and the error is returned for the caller to report.
    pub async fn reject_stream(&mut self, err: ProtoError) -> TransportError {
        let err = self.session.reject_stream(err);
        // Telling the peer is a courtesy; the session ends either way.
        let _ = self.flush().await;
        err.into()
    }

    /// What the connection produced while [`Connection::drive_while`] ran local work, if
    /// anything: a side about to make a request checks here first, since after the peer's error
    /// frame the session takes none.
    pub fn take_stashed(&mut self) -> Option<Result<S::Event, TransportError>> {
        self.stashed.take()
    }

    /// Waits for the session's next event or for `other`, whichever comes first. Reading is
    /// cancel-safe, so nothing the peer sent is lost when `other` wins.
    pub async fn next_event_or<T>(
        &mut self,
        other: impl Future<Output = T>,
    ) -> Result<Either<S::Event, T>, TransportError> {
        if let Some(stashed) = self.stashed.take() {
            return stashed.map(Either::Event);
        }
        self.drive(other).await
    }

    async fn drive<T>(
        &mut self,
        other: impl Future<Output = T>,
    ) -> Result<Either<S::Event, T>, TransportError> {
        let mut other = std::pin::pin!(other);
        loop {
            if let Err(err) = self.flush().await {
                // What the peer said before it closed (its `Bye`) beats our failed write.
                if let Some(Ok(event)) = self.stashed.take() {
                    return Ok(Either::Event(event));
                }
                return Err(err);
            }
            // A stop that has come takes effect before buffered input is handled: a stopping
            // receiver must not start on an offer that was already in its buffer.
            if let Some((code, message)) = self.stop_due().await {
                return Err(self.stopped(code, message).await);
            }
            let now = self.now();
            match self.session.handle_bytes(&mut self.inbuf, now) {
                Ok(Some(event)) => {
                    self.flush().await?;
                    return Ok(Either::Event(event));
                }
                Ok(None) => {}
                Err(err) => {
                    // The session queued an error frame saying why; send it if we still can.
                    let _ = self.flush().await;
                    return Err(err.into());
                }
            }
            if self.session.is_closed() {
                self.flush().await?;
                return Err(TransportError::Closed);
            }
            let deadline = self
                .session
                .poll_timeout()
                .map_or(Duration::from_secs(3600), |t| t.saturating_sub(now));
            self.inbuf.reserve(READ_CHUNK);
            tokio::select! {
                biased;
                read = self.reader.read_buf(&mut self.inbuf) => {
                    if read? == 0 {
                        return Err(TransportError::Closed);
                    }
                }
                out = &mut other => return Ok(Either::Other(out)),
                (code, message) = signalled(self.stop.as_mut()) => {
                    self.stop = None;
                    return Err(self.stopped(code, message).await);
                }
                (code, message) = signalled(self.stop_when_idle.as_mut()), if !self.busy => {
                    self.stop_when_idle = None;
                    return Err(self.stopped(code, message).await);
                }
                () = tokio::time::sleep(deadline) => {
                    let now = self.now();
                    if let Err(err) = self.session.handle_timeout(now) {
                        // Tell the peer why before giving up; a failure to do so changes nothing.
                        let _ = self.flush().await;
                        return Err(err.into());
                    }
                }
            }
        }
    }

    /// The code and reason of a stop signal that has already resolved (and may take effect
    /// now), without waiting.
    async fn stop_due(&mut self) -> Option<(ErrorCode, String)> {
        let busy = self.busy;
        let (stop, idle) = (&mut self.stop, &mut self.stop_when_idle);
        std::future::poll_fn(|cx| {
            for (slot, allowed) in [(&mut *stop, true), (&mut *idle, !busy)] {
                if allowed
                    && let Some(signal) = slot.as_mut()
                    && let std::task::Poll::Ready(said) = signal.0.as_mut().poll(cx)
                {
                    *slot = None;
                    return std::task::Poll::Ready(Some(said));
                }
            }
            std::task::Poll::Ready(None)
        })
        .await
    }

    async fn stopped(&mut self, code: ErrorCode, message: String) -> TransportError {
        self.session.error(code, message.clone());
        // Telling the peer is a courtesy; the session ends either way. A peer in the middle of
        // a transfer is still writing: closing on its unread bytes would reset the connection,
        // and the reset could reach it before our reason does. An idle peer sends nothing that
        // could be left unread, and is not waited for.
        if self.busy {
            self.shutdown().await;
        } else {
            self.close_write().await;
        }
        TransportError::Stopped { code, message }
    }

    /// Sends what is queued (e.g. an error frame or `Bye`), shuts the write side down, then reads
    /// and discards until the peer closes too. Closing with unread input would make the kernel
    /// reset the connection, and the peer could lose our last frame to the reset. A peer that
    /// keeps the connection open gets `write_timeout`, as long as it may take to accept a write.
    pub async fn shutdown(&mut self) {
        self.close_write().await;
        let drain = async {
            let mut sink = vec![0u8; READ_CHUNK];
            while matches!(self.reader.read(&mut sink).await, Ok(n) if n > 0) {}
        };
        let _ = tokio::time::timeout(self.write_timeout, drain).await;
    }

    /// Sends what is queued and shuts the write side down, each bounded by `write_timeout`.
    async fn close_write(&mut self) {
        let _ = self.flush().await;
        let _ = tokio::time::timeout(self.write_timeout, self.writer.shutdown()).await;
    }
}

/// Resolves when `signal` does; never without one.
async fn signalled(signal: Option<&mut StopSignal>) -> (ErrorCode, String) {
    match signal {
        Some(signal) => signal.0.as_mut().await,
        None => std::future::pending().await,
    }
}
