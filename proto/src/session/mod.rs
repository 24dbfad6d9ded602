//! The two session state machines and what they share: configuration, the outbound buffer,
//! the handshake step and the liveness clock.
//!
//! Sessions never read a clock: every method that depends on time takes `now`, a [`Duration`]
//! since an epoch of the caller's choosing (e.g. `Instant::now() - start` in the runtime, or
//! plain numbers in tests). `now` must not go backwards within one session.

use std::fmt;
use std::time::Duration;

use bytes::{Bytes, BytesMut};

use crate::codes::ErrorCode;
use crate::error::{EncodeError, ProtoError, UsageError};
use crate::frame::Frame;
use crate::handshake::{Features, Hello, Negotiated, SUPPORTED_VERSIONS, negotiate};
use crate::message::{ErrorFrame, Message};
use crate::types::{Compression, Role, VersionRange};

/// One side of a session: its conversation (states, requests, answers) and the events it
/// reports. Implemented by [`SenderSide`] and [`ReceiverSide`] only; what both sides share
/// (handshake, liveness, the outbound queue, error frames) lives in [`Session`] itself.
pub trait Side: sealed::Sealed + fmt::Debug + Sized {
    /// What the session reports to its runtime.
    type Event: fmt::Debug;

    /// The peer's code and reason, if `event` is its error frame.
    fn peer_error(event: &Self::Event) -> Option<(ErrorCode, &str)>;

    /// Name of the side's current state, for logs.
    fn state_name(&self) -> &'static str;

    #[doc(hidden)]
    fn role() -> Role;
    #[doc(hidden)]
    fn awaits_hello(&self) -> bool;
    #[doc(hidden)]
    fn negotiated_event(negotiated: Negotiated) -> Self::Event;
    #[doc(hidden)]
    fn error_event(code: ErrorCode, message: String) -> Self::Event;
    /// Control, pairing and data frames: the side's conversation.
    #[doc(hidden)]
    fn on_frame(
        session: &mut Session<Self>,
        frame: Frame,
    ) -> Result<Option<Self::Event>, ProtoError>;
    /// Enters the side's closed state (and, for the hello, its ready state).
    #[doc(hidden)]
    fn set_closed(&mut self);
    #[doc(hidden)]
    fn set_ready(&mut self);
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for super::SenderSide {}
    impl Sealed for super::ReceiverSide {}
}

/// A protocol session, sans-IO: one type for both sides, parametrised by the side's
/// conversation ([`SenderSession`] = `Session<SenderSide>`, [`ReceiverSession`] =
/// `Session<ReceiverSide>`).
///
/// The session owns what is shared: the hello and negotiation, heartbeats and the peer's
/// deadline, the queue of control frames, error frames. Stream bytes never pass through it:
/// they go through an [`OutgoingStream`](crate::OutgoingStream) or
/// [`IncomingStream`](crate::IncomingStream) half that the runtime owns, and the session only
/// knows whether a stream is open. See the side's request methods for the conversation.
#[derive(Debug)]
pub struct Session<S: Side> {
    core: Core,
    side: S,
}

impl<S: Side> Session<S> {
    fn with_side(config: SessionConfig, side: S, now: Duration) -> Self {
        Self {
            core: Core::new(config, S::role(), now),
            side,
        }
    }

    /// Handles one decoded frame from the peer.
    ///
    /// `Ok(None)` for frames that need no action (heartbeats, data discarded after an early
    /// failure). On `Err` the session is closed and an error frame is queued.
    pub fn handle_frame(
        &mut self,
        frame: Frame,
        now: Duration,
    ) -> Result<Option<S::Event>, ProtoError> {
        self.core.on_receive(now)?;
        match frame {
            Frame::Heartbeat => Ok(None),
            Frame::Error(e) => {
                self.core.closed = true;
                self.side.set_closed();
                Ok(Some(S::error_event(e.code, e.message)))
            }
            Frame::Hello(hello) => {
                if !self.side.awaits_hello() {
                    return Err(self.fail(ProtoError::Unexpected {
                        frame: "Hello",
                        state: self.side.state_name(),
                    }));
                }
                let negotiated = self.core.on_hello(&hello).map_err(|e| self.fail(e))?;
                self.side.set_ready();
                Ok(Some(S::negotiated_event(negotiated)))
            }
            other => S::on_frame(self, other).map_err(|e| self.fail(e)),
        }
    }

    /// Decodes and handles frames from `buf` until one yields an event (`Ok(Some)`) or more
    /// bytes are needed (`Ok(None)`). Call it again after each event: `buf` may hold more. Once
    /// the session is closed it returns `Ok(None)` and leaves `buf` alone.
    pub fn handle_bytes(
        &mut self,
        buf: &mut BytesMut,
        now: Duration,
    ) -> Result<Option<S::Event>, ProtoError> {
        loop {
            // Input after close (after `Bye` or a peer error) is ignored, so the runtime's
            // `while let Some(ev) = handle_bytes(..)?` loop ends cleanly.
            if self.core.closed {
                return Ok(None);
            }
            let frame = match crate::frame::decode(buf) {
                Ok(Some(frame)) => frame,
                Ok(None) => return Ok(None),
                Err(e) => return Err(self.fail(e.into())),
            };
            if let Some(event) = self.handle_frame(frame, now)? {
                return Ok(Some(event));
            }
        }
    }

    /// Checks the peer's liveness. `Err(PeerTimeout)` closes the session (an error frame is
    /// queued). Call it when [`poll_timeout`](Self::poll_timeout) expires.
    pub fn handle_timeout(&mut self, now: Duration) -> Result<(), ProtoError> {
        let result = self.core.handle_timeout(now);
        if result.is_err() {
            self.side.set_closed();
        }
        result
    }

    /// Encoded frames to write to the connection, in order: queued control frames, or a
    /// heartbeat when one is due. `None` when there is nothing to send.
    pub fn poll_transmit(&mut self, now: Duration) -> Option<Bytes> {
        self.core.poll_transmit(now)
    }

    /// The next time [`handle_timeout`](Self::handle_timeout) or
    /// [`poll_transmit`](Self::poll_transmit) has work (a heartbeat due or the peer's
    /// deadline). `None` once closed.
    pub fn poll_timeout(&self) -> Option<Duration> {
        self.core.poll_timeout()
    }

    /// Whether our own heartbeat is due (nothing sent for a heartbeat interval).
    pub fn heartbeat_due(&self, now: Duration) -> bool {
        self.core.heartbeat_due(now)
    }

    /// Whether the peer is overdue (nothing received within the idle timeout).
    pub fn peer_overdue(&self, now: Duration) -> bool {
        self.core.peer_overdue(now)
    }

    /// The handshake result, once the peer's hello arrived.
    pub fn negotiated(&self) -> Option<&Negotiated> {
        self.core.negotiated.as_ref()
    }

    /// Whether the session is over (after bye, an error, or a timeout). Drain
    /// `poll_transmit` first, then close the connection.
    pub fn is_closed(&self) -> bool {
        self.core.closed
    }

    /// Name of the current state, for logs.
    pub fn state_name(&self) -> &'static str {
        self.side.state_name()
    }

    /// Sends an error frame and closes the session.
    pub fn error(&mut self, code: ErrorCode, message: impl Into<String>) {
        self.core.send_error(code, message.into());
        self.side.set_closed();
    }

    /// Ends the session because the stream the peer sent is invalid, as its
    /// [`IncomingStream`](crate::IncomingStream) found: queues the error frame that says why
    /// and closes. Returns `err`.
    pub fn reject_stream(&mut self, err: ProtoError) -> ProtoError {
        self.fail(err)
    }

    /// Notes that stream data was written at `now`, so no heartbeat is due meanwhile.
    pub fn data_sent(&mut self, now: Duration) {
        self.core.last_tx = self.core.last_tx.max(now);
    }

    fn fail(&mut self, err: ProtoError) -> ProtoError {
        if matches!(err, ProtoError::Closed) {
            return err;
        }
        self.side.set_closed();
        self.core.fail(err)
    }
}
/// `impl Side` for a side: the calls differ between the sides only in their types. Both events
/// have `Negotiated` and `PeerError`; both sides have a `state` whose enum has `AwaitHello`,
/// `Ready`, `Closed` and a `name()`, and their conversation in an inherent
/// `Session<side>::on_frame`.
macro_rules! impl_side {
    ($side:ident, $event:ident, $role:expr) => {
        impl Side for $side {
            type Event = $event;

            fn peer_error(event: &$event) -> Option<(ErrorCode, &str)> {
                match event {
                    $event::PeerError { code, message } => Some((*code, message.as_str())),
                    _ => None,
                }
            }

            fn state_name(&self) -> &'static str {
                self.state.name()
            }

            fn role() -> Role {
                $role
            }

            fn awaits_hello(&self) -> bool {
                matches!(self.state, State::AwaitHello)
            }

            fn negotiated_event(negotiated: Negotiated) -> $event {
                $event::Negotiated(negotiated)
            }

            fn error_event(code: ErrorCode, message: String) -> $event {
                $event::PeerError { code, message }
            }

            fn on_frame(
                session: &mut Session<Self>,
                frame: Frame,
            ) -> Result<Option<$event>, ProtoError> {
                session.on_frame(frame)
            }

            fn set_closed(&mut self) {
                self.state = State::Closed;
            }

            fn set_ready(&mut self) {
                self.state = State::Ready;
            }
        }
    };
}

// The sides' conversations (after the macro, which they use).
mod receiver;
mod sender;

pub use receiver::{ReceiverEvent, ReceiverSession, ReceiverSide};
pub use sender::{SenderEvent, SenderSession, SenderSide};

/// Shortest heartbeat interval a session uses, whatever the configuration says, so a zero
/// interval cannot make the runtime spin.
pub const MIN_HEARTBEAT_INTERVAL: Duration = Duration::from_millis(100);

/// Longest software string sent in the hello; longer ones are cut.
const MAX_SOFTWARE_LEN: usize = 256;

/// Settings of one session (either side).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct SessionConfig {
    /// Protocol versions to offer. Default: [`SUPPORTED_VERSIONS`].
    pub versions: VersionRange,
    /// Software name for the peer's logs. Default: `zrep-proto <version>`.
    pub software: String,
    /// Features to announce. Default: zstd compression, nothing else.
    pub features: Features,
    /// Send a heartbeat when nothing was sent for this long. Default: 10 s.
    pub heartbeat_interval: Duration,
    /// Consider the peer dead when nothing arrived for this long (or three of the peer's
    /// heartbeat intervals, whichever is longer). Also bounds the handshake. Default: 60 s.
    pub idle_timeout: Duration,
}

impl Default for SessionConfig {
    fn default() -> Self {
        let features = Features::new().with_compression([Compression::Zstd]);
        Self {
            versions: SUPPORTED_VERSIONS,
            software: concat!("zrep-proto ", env!("CARGO_PKG_VERSION")).to_owned(),
            features,
            heartbeat_interval: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
        }
    }
}

/// State shared by both sessions: our hello, liveness, outbound bytes, negotiation result.
struct Core {
    hello: Hello,
    heartbeat_interval: Duration,
    idle_timeout: Duration,
    last_tx: Duration,
    last_rx: Duration,
    /// Encoded control/heartbeat/error frames not yet handed out. Bounded: each state allows
    /// at most a handful of queued frames (hello, one reply, a heartbeat, an error).
    out: BytesMut,
    negotiated: Option<Negotiated>,
    closed: bool,
}

impl Core {
    fn new(config: SessionConfig, role: Role, now: Duration) -> Self {
        let mut software = config.software;
        if software.len() > MAX_SOFTWARE_LEN {
            let mut cut = MAX_SOFTWARE_LEN;
            while !software.is_char_boundary(cut) {
                cut -= 1;
            }
            software.truncate(cut);
        }
        let heartbeat_interval = config.heartbeat_interval.max(MIN_HEARTBEAT_INTERVAL);
        let mut hello = Hello {
            versions: config.versions,
            role,
            software,
            heartbeat_interval_ms: u32::try_from(heartbeat_interval.as_millis())
                .unwrap_or(u32::MAX),
            features: config.features,
        };
        let mut out = BytesMut::new();
        if Frame::Hello(hello.clone()).encode(&mut out).is_err() {
            // Only unknown feature entries can push a hello past its 64 KiB limit; announce
            // without them rather than not at all.
            hello.features.other.clear();
            // Without `other` the hello is a few hundred bytes at most, far below the limit.
            let _ = Frame::Hello(hello.clone()).encode(&mut out);
        }
        Self {
            hello,
            heartbeat_interval,
            idle_timeout: config.idle_timeout,
            last_tx: now,
            last_rx: now,
            out,
            negotiated: None,
            closed: false,
        }
    }

    fn queue(&mut self, frame: &Frame) -> Result<(), EncodeError> {
        frame.encode(&mut self.out)
    }

    fn queue_message(&mut self, message: Message) -> Result<(), UsageError> {
        Ok(self.queue(&Frame::Control(message))?)
    }

    fn queue_frame(&mut self, frame: &Frame) -> Result<(), UsageError> {
        Ok(self.queue(frame)?)
    }

    fn poll_transmit(&mut self, now: Duration) -> Option<Bytes> {
        if !self.closed && self.out.is_empty() && self.heartbeat_due(now) {
            // A heartbeat frame always encodes.
            let _ = self.queue(&Frame::Heartbeat);
        }
        if self.out.is_empty() {
            return None;
        }
        self.last_tx = now;
        Some(self.out.split().freeze())
    }

    fn heartbeat_due(&self, now: Duration) -> bool {
        !self.closed && now >= self.last_tx + self.heartbeat_interval
    }

    fn peer_deadline(&self) -> Duration {
        let peer = self
            .negotiated
            .as_ref()
            .map_or(Duration::ZERO, Negotiated::peer_heartbeat);
        self.last_rx + self.idle_timeout.max(peer * 3)
    }

    fn peer_overdue(&self, now: Duration) -> bool {
        !self.closed && now >= self.peer_deadline()
    }

    fn poll_timeout(&self) -> Option<Duration> {
        if self.closed {
            return None;
        }
        Some((self.last_tx + self.heartbeat_interval).min(self.peer_deadline()))
    }

    /// Checks the peer's deadline; on expiry queues a timeout error and closes.
    fn handle_timeout(&mut self, now: Duration) -> Result<(), ProtoError> {
        if !self.peer_overdue(now) {
            return Ok(());
        }
        Err(self.fail(ProtoError::PeerTimeout {
            silent_for: now.saturating_sub(self.last_rx),
        }))
    }

    /// Bookkeeping common to every incoming frame; refuses frames after close.
    fn on_receive(&mut self, now: Duration) -> Result<(), ProtoError> {
        if self.closed {
            return Err(ProtoError::Closed);
        }
        self.last_rx = self.last_rx.max(now);
        Ok(())
    }

    fn on_hello(&mut self, theirs: &Hello) -> Result<Negotiated, ProtoError> {
        let negotiated = negotiate(&self.hello, theirs)?;
        self.negotiated = Some(negotiated.clone());
        Ok(negotiated)
    }

    /// Queues an error frame for `err` (if it has a code) and closes. Returns `err`.
    fn fail(&mut self, err: ProtoError) -> ProtoError {
        if let Some(code) = err.code() {
            self.send_error(code, zrep_chain::one_line(&err));
        }
        self.closed = true;
        err
    }

    fn send_error(&mut self, code: ErrorCode, message: String) {
        if !self.closed {
            // ErrorFrame::new caps the message far below the error frame limit.
            let _ = self.queue(&Frame::Error(ErrorFrame::new(code, message)));
        }
        self.closed = true;
    }

    fn negotiated_or(&self, action: &'static str) -> Result<&Negotiated, UsageError> {
        self.negotiated.as_ref().ok_or(UsageError::WrongState {
            action,
            state: "waiting for hello",
        })
    }
}

impl fmt::Debug for Core {
    // `out` may hold megabytes of encoded state listings: show its size only.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Core")
            .field("role", &self.hello.role)
            .field("last_tx", &self.last_tx)
            .field("last_rx", &self.last_rx)
            .field("pending_out", &self.out.len())
            .field("negotiated", &self.negotiated.as_ref().map(|n| n.version))
            .field("closed", &self.closed)
            .finish()
    }
}
