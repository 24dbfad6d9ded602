//! zrep wire protocol, sans-IO: frames, messages, and the sender and receiver session state
//! machines.
//!
//! This crate does no I/O: no sockets, no processes, no clocks, no TLS. The runtime reads bytes
//! from the (TLS) connection and feeds them in; it writes out what the sessions hand back, and
//! passes the current time as a [`Duration`](std::time::Duration) since an epoch of its choice.
//! That makes every conversation testable in memory and fuzzable. `PROTOCOL.md` next to this
//! crate is the normative description of the wire format.
//!
//! # Layers
//!
//! - [`frame`]: the 12-byte header, frame kinds, limits, [`decode`] and [`Frame::encode`].
//! - [`message`]: control messages (bincode 2, one fixed config [`BINCODE`]).
//! - [`handshake`]: hello, version ranges, features, [`negotiate`].
//! - [`pairing`]: pairing messages (enrolment with a one-time token, certificate renewal).
//! - [`data`]: per-chunk compression ([`compress_chunk`], [`decompress_chunk`]) and the stream
//!   checksum ([`StreamHasher`]).
//! - [`plan`]: pure planning helpers ([`choose_base`]) and light name checks.
//! - [`SenderSession`] / [`ReceiverSession`]: the state machines.
//!
//! # Module map
//!
//! Inside the crate the modules form layers; a module imports only from the layers below it,
//! never from its own layer or above, so there are no import cycles. Three private leaves hold
//! what several layers share; the public modules re-export their items, so the public paths
//! (`frame::HEADER_LEN`, `data::Compression`, `handshake::Role`, `message::BINCODE`, ...) name
//! the same items as before the split.
//!
//! ```text
//! layer  module     imports from (crate modules)
//!     0  codec      -            magic, header length, frame kinds, MAX_* limits, BINCODE
//!     0  types      -            Compression, Role, VersionRange
//!     0  codes      -            error, refusal and failure codes
//!     0  pairing    -            pairing messages
//!     1  error      codec codes types
//!     2  data       codec error types
//!     2  handshake  error types
//!     2  message    codec codes types
//!     3  frame      codec data error handshake message pairing
//!     3  plan       message
//!     4  session    codes data error frame handshake message pairing types
//! ```
//!
//! # Driving a session
//!
//! Both sessions work the same way:
//!
//! 1. `new(config, now)` queues the hello.
//! 2. Whenever anything may have changed, write out everything
//!    `poll_transmit(now)` returns (it also produces heartbeats when due).
//! 3. Append bytes read from the connection to a `BytesMut` and call
//!    `handle_bytes(&mut buf, now)` until it returns `Ok(None)`; act on each event, usually by
//!    calling one of the session's methods, which queue the answer.
//! 4. Sleep until `poll_timeout()` at the latest, then call `handle_timeout(now)`.
//! 5. Stop when `is_closed()` (after draining `poll_transmit` once more).
//!
//! `handle_*` errors ([`ProtoError`]) are fatal: the session has queued an error frame and is
//! closed. Method errors ([`UsageError`]) leave the session unchanged.
//!
//! Stream data never waits in a session queue: the sender runtime turns each chunk into a frame
//! with a pure function and the session only checks order and accounts bytes and checksum
//! ([`SenderSession::send_data`]); the receiver hands each chunk's bytes out as one
//! [`ReceiverEvent::Data`] event.

#![forbid(unsafe_code)]

mod codec;
mod codes;
pub mod data;
pub mod error;
pub mod frame;
pub mod handshake;
pub mod message;
pub mod pairing;
pub mod plan;
mod session;
pub mod stream;
mod types;

pub use data::{
    ChunkCompressor, ChunkDecompressor, Compression, DataChunk, MAX_CHUNK, StreamHasher,
    compress_chunk, decompress_chunk,
};
pub use error::{ChunkError, DecodeError, EncodeError, ProtoError, UsageError};
pub use frame::{Frame, FrameKind, HEADER_LEN, decode};
pub use handshake::{
    Features, Hello, Negotiated, PROTOCOL_VERSION, Role, SUPPORTED_VERSIONS, VersionRange,
    ZfsDialect, negotiate,
};
pub use message::{
    AbortResumeOutcome, BINCODE, ErrorCode, ErrorFrame, FailureCode, Message, RefusalCode,
    SnapshotInfo, StreamKind, TargetState, TransferOffer,
};
pub use pairing::{EnrollRequest, Enrolment, MAX_CSR_LEN, PairMessage};
pub use plan::{BaseChoice, choose_base, newest_common_by_guid};
pub use session::{
    MIN_HEARTBEAT_INTERVAL, ReceiverEvent, ReceiverSession, ReceiverSide, SenderEvent,
    SenderSession, SenderSide, Session, SessionConfig, Side,
};
pub use stream::{IncomingStream, OutgoingStream, StreamSummary};
