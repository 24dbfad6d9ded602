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

mod receiver;
mod sender;

pub use receiver::{ReceiverEvent, ReceiverSession};
pub use sender::{SenderEvent, SenderSession, StreamSummary};

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
            self.send_error(code, err.to_string());
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
