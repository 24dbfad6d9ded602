//! Error types of the protocol crate.
//!
//! Rules, so callers can act on the type alone:
//!
//! - [`DecodeError`]: the bytes from the peer are not a valid frame. "Need more bytes" is *not*
//!   an error; [`decode`](crate::decode) returns `Ok(None)` for it. A decode error is fatal for
//!   the connection, because framing is lost.
//! - [`ProtoError`]: the peer broke the protocol (or went silent). Returned by the sessions'
//!   `handle_*` methods. When one is returned the session has already queued an error frame for
//!   the peer and is closed: drain `poll_transmit`, then close the connection.
//! - [`UsageError`]: the local caller asked for something the session cannot do now (wrong
//!   state, feature not negotiated, message too large). The session is left unchanged, nothing
//!   is sent; this is a bug or a policy decision in the runtime, not the peer's fault.
//! - [`ChunkError`]: compressing or decompressing one data chunk failed.
//! - [`EncodeError`]: a frame could not be encoded (too large for its kind).
//!
//! No error is ever reported by panicking; peer input can only produce values of these types.
//!
//! A message never repeats its source: a variant that wraps a cause says what was being done
//! or what was wrong ("malformed frame", "bad data chunk") and exposes the cause only as
//! `source()`. Print these errors with `zrep_chain::one_line`, wherever they go: a log line, a
//! message for the user, and the text of the error frame sent to the peer.

use std::time::Duration;

use crate::codec::FrameKind;
use crate::codes::ErrorCode;
use crate::types::{Compression, Role, VersionRange};

/// The bytes received are not a valid zrep frame. Fatal for the connection.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The first four bytes are not the zrep magic: the peer does not speak zrep at all (or TLS
    /// is missing on one side).
    #[error("peer does not speak zrep: bad magic {got:02x?}")]
    BadMagic {
        /// The four bytes received instead of the magic.
        got: [u8; 4],
    },
    /// The header's wire version byte is one this implementation does not know.
    #[error("unsupported zrep wire version {0} (this side speaks 1)")]
    UnsupportedWireVersion(u8),
    /// The frame kind code is not assigned (or reserved for later use).
    #[error("unknown frame kind 0x{0:02x}")]
    UnknownKind(u8),
    /// The reserved header flags are not zero.
    #[error("reserved header flags set: 0x{0:04x}")]
    ReservedFlags(u16),
    /// The length field exceeds the maximum for the frame kind (checked before allocating).
    #[error("{kind:?} frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// Kind from the header.
        kind: FrameKind,
        /// Payload length from the header.
        len: u32,
        /// Maximum payload length of that kind.
        max: usize,
    },
    /// The bincode body of a hello, control or error frame is malformed.
    #[error("malformed {kind:?} frame body")]
    Body {
        /// Kind of the frame whose body failed.
        kind: FrameKind,
        /// What bincode reported.
        #[source]
        source: bincode::error::DecodeError,
    },
    /// A control frame has bytes after its message.
    #[error("{extra} trailing bytes after the control message")]
    TrailingBytes {
        /// Number of bytes left over.
        extra: usize,
    },
    /// A data frame is shorter than its 5-byte prefix.
    #[error("data frame shorter than its prefix ({len} bytes)")]
    DataTooShort {
        /// Payload length.
        len: usize,
    },
    /// A data frame names a compression code that is not assigned.
    #[error("unknown data compression code {0}")]
    UnknownCompression(u8),
    /// A data frame's uncompressed length is zero or above the chunk maximum.
    #[error("data chunk length {raw_len} out of range 1..={max}")]
    BadChunkLength {
        /// Uncompressed length declared in the frame.
        raw_len: u32,
        /// Maximum chunk size.
        max: usize,
    },
    /// A stored (uncompressed) data frame whose body length differs from its declared length.
    #[error("stored data chunk declares {raw_len} bytes but carries {body} bytes")]
    StoredLengthMismatch {
        /// Declared uncompressed length.
        raw_len: u32,
        /// Actual body length.
        body: usize,
    },
}

// Here rather than next to `Compression`, so the types module stays a leaf: this conversion
// (used by serde and by the data frame decoder) is the one place a shared type meets an error.
impl TryFrom<u8> for Compression {
    type Error = DecodeError;

    fn try_from(code: u8) -> Result<Self, Self::Error> {
        Self::from_code(code).ok_or(DecodeError::UnknownCompression(code))
    }
}

/// Encoding a frame failed. Nothing was written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// The encoded payload is larger than the limit of its frame kind.
    #[error("{kind:?} payload of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// Kind of the frame.
        kind: FrameKind,
        /// Encoded payload length.
        len: usize,
        /// Maximum payload length of that kind.
        max: usize,
    },
    /// bincode refused to encode the message (cannot happen with the crate's own types).
    #[error("bincode could not encode the message")]
    Bincode(#[from] bincode::error::EncodeError),
}

/// Compressing or decompressing a data chunk failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ChunkError {
    /// Chunks carry at least one byte.
    #[error("empty data chunk")]
    Empty,
    /// The chunk is larger than [`MAX_CHUNK`](crate::MAX_CHUNK).
    #[error("data chunk of {len} bytes exceeds the maximum of {max} bytes")]
    TooLarge {
        /// Length given.
        len: usize,
        /// Maximum chunk size.
        max: usize,
    },
    /// The zstd level is outside the range the linked zstd supports.
    #[error("zstd level {0} out of range")]
    BadLevel(i32),
    /// zstd could not decompress the body (corrupt, or output above the declared length).
    #[error("zstd could not decompress the chunk")]
    Zstd(#[source] std::io::Error),
    /// Decompression produced a different length than the frame declared.
    #[error("chunk declared {declared} bytes but decompressed to {actual}")]
    LengthMismatch {
        /// Length declared in the frame.
        declared: usize,
        /// Length produced.
        actual: usize,
    },
}

/// The peer broke the protocol or went silent. The session is closed and has queued an error
/// frame (except for [`ProtoError::Closed`]); drain `poll_transmit` and close the connection.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProtoError {
    /// The incoming bytes are not a valid frame.
    #[error("malformed frame")]
    Decode(#[from] DecodeError),
    /// A valid frame arrived in a state where the protocol does not allow it.
    #[error("unexpected {frame} while {state}")]
    Unexpected {
        /// What arrived (frame kind or message name).
        frame: &'static str,
        /// State of this session when it arrived.
        state: &'static str,
    },
    /// The two sides' protocol version ranges do not overlap.
    #[error("no common protocol version: sender speaks {sender}, receiver speaks {receiver}")]
    IncompatibleVersion {
        /// Versions announced by the sender side.
        sender: VersionRange,
        /// Versions announced by the receiver side.
        receiver: VersionRange,
    },
    /// The peer announced the same role as ours (two senders, or two receivers).
    #[error("peer announced role {got}, expected {expected}")]
    WrongRole {
        /// The role we need the peer to have.
        expected: Role,
        /// The role the peer announced.
        got: Role,
    },
    /// The peer used a feature that was not negotiated (or a compression the offer did not
    /// announce).
    #[error("peer used {feature} without negotiating it")]
    NotNegotiated {
        /// Which feature.
        feature: &'static str,
    },
    /// A data frame used a compression that the transfer offer did not announce.
    #[error("data frame compressed with {got:?} in a stream announced as {announced:?}")]
    CompressionNotAnnounced {
        /// Compression announced in the offer.
        announced: Compression,
        /// Compression of the data frame.
        got: Compression,
    },
    /// A reply names a different target than the request.
    #[error("reply for target {got:?} while waiting for {expected:?}")]
    TargetMismatch {
        /// Target we asked about.
        expected: String,
        /// Target the reply names.
        got: String,
    },
    /// The receiver committed a different snapshot than the one offered.
    #[error(
        "receiver committed {got_snapshot}/{got_guid:#x}, offered {expected_snapshot}/{expected_guid:#x}"
    )]
    CommitMismatch {
        /// Snapshot name offered.
        expected_snapshot: String,
        /// GUID offered.
        expected_guid: u64,
        /// Snapshot name committed.
        got_snapshot: String,
        /// GUID committed.
        got_guid: u64,
    },
    /// The stream end announced another byte count than was received.
    #[error("stream length mismatch: sender counted {announced} bytes, received {received}")]
    StreamLength {
        /// Count in the stream-end message.
        announced: u64,
        /// Count of uncompressed bytes received.
        received: u64,
    },
    /// The stream end announced another checksum than the received bytes have.
    #[error("stream checksum mismatch: sender {announced:#018x}, received {computed:#018x}")]
    StreamChecksum {
        /// XXH3-64 in the stream-end message.
        announced: u64,
        /// XXH3-64 of the bytes received.
        computed: u64,
    },
    /// A data chunk could not be decompressed.
    #[error("bad data chunk")]
    Chunk(#[from] ChunkError),
    /// No frame arrived from the peer within the idle timeout.
    #[error("peer silent for {silent_for:?}")]
    PeerTimeout {
        /// Time since the last frame from the peer.
        silent_for: Duration,
    },
    /// A connection without a client certificate sent something other than the pairing
    /// exchange.
    #[error(
        "this connection presented no client certificate: only pairing is allowed on it, not {frame}"
    )]
    PairingOnly {
        /// What arrived (frame kind or message name).
        frame: &'static str,
    },
    /// A frame was handed to a session that is already closed (no error frame is sent).
    #[error("session already closed")]
    Closed,
}

impl ProtoError {
    /// The code sent to the peer in the error frame for this error (`None` for
    /// [`ProtoError::Closed`], which sends nothing).
    pub fn code(&self) -> Option<ErrorCode> {
        Some(match self {
            Self::Decode(_) | Self::Chunk(_) => ErrorCode::Malformed,
            Self::Unexpected { .. }
            | Self::NotNegotiated { .. }
            | Self::CompressionNotAnnounced { .. }
            | Self::TargetMismatch { .. }
            | Self::CommitMismatch { .. } => ErrorCode::ProtocolViolation,
            Self::IncompatibleVersion { .. } => ErrorCode::IncompatibleVersion,
            Self::WrongRole { .. } => ErrorCode::IncompatibleRole,
            Self::StreamLength { .. } | Self::StreamChecksum { .. } => ErrorCode::StreamCorrupt,
            Self::PeerTimeout { .. } => ErrorCode::Timeout,
            Self::PairingOnly { .. } => ErrorCode::NotAuthorized,
            Self::Closed => return None,
        })
    }
}

/// The local caller asked for something the session cannot do now. The session is unchanged.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UsageError {
    /// The action is not allowed in the session's current state.
    #[error("cannot {action} while {state}")]
    WrongState {
        /// What was attempted.
        action: &'static str,
        /// Current state.
        state: &'static str,
    },
    /// The action needs a feature that the handshake did not negotiate.
    #[error("{feature} was not negotiated with the peer")]
    NotNegotiated {
        /// Which feature.
        feature: &'static str,
    },
    /// The message does not fit in one control frame.
    #[error(transparent)]
    Encode(#[from] EncodeError),
    /// The chunk handed to `send_data` does not match the raw bytes handed with it, or uses a
    /// compression the offer did not announce.
    #[error("data chunk does not match: {0}")]
    ChunkMismatch(&'static str),
    /// The answer names another target than the request.
    #[error("answer for target {got:?}, but {expected:?} was requested")]
    WrongTarget {
        /// Target of the request.
        expected: String,
        /// Target given.
        got: String,
    },
    /// The committed snapshot differs from the one offered: report `failed` instead.
    #[error(
        "committed {got_snapshot}/{got_guid:#x} but the offer was {expected_snapshot}/{expected_guid:#x}"
    )]
    CommitMismatch {
        /// Snapshot name offered.
        expected_snapshot: String,
        /// GUID offered.
        expected_guid: u64,
        /// Snapshot name given.
        got_snapshot: String,
        /// GUID given.
        got_guid: u64,
    },
}

#[cfg(test)]
mod tests {
    use bytes::{BufMut, BytesMut};

    use super::*;
    use crate::codec::write_header;

    #[test]
    fn a_malformed_body_is_said_once() {
        let mut buf = BytesMut::new();
        write_header(&mut buf, FrameKind::Control, 4);
        buf.put_u32(u32::MAX);
        let err = ProtoError::from(crate::decode(&mut buf).unwrap_err());
        assert_eq!(err.to_string(), "malformed frame");
        let bincode = std::error::Error::source(&err)
            .and_then(|body| body.source())
            .expect("bincode's error is the source of the body error")
            .to_string();
        let text = zrep_chain::one_line(&err);
        assert_eq!(
            text,
            format!("malformed frame: malformed Control frame body: {bincode}")
        );
        assert_eq!(text.matches(&bincode).count(), 1, "{text}");
    }

    #[test]
    fn a_wrapped_os_error_is_said_once() {
        let err = ProtoError::from(ChunkError::Zstd(std::io::Error::from_raw_os_error(2)));
        let text = zrep_chain::one_line(&err);
        assert_eq!(
            text,
            "bad data chunk: zstd could not decompress the chunk: No such file or directory (os error 2)"
        );
        assert_eq!(text.matches("os error 2").count(), 1, "{text}");
    }

    #[test]
    fn an_encoding_failure_is_said_once() {
        let err = UsageError::from(EncodeError::from(bincode::error::EncodeError::Other(
            "a refusing serializer",
        )));
        assert_eq!(err.to_string(), "bincode could not encode the message");
        let text = zrep_chain::one_line(&err);
        assert!(
            text.starts_with("bincode could not encode the message: "),
            "{text}"
        );
        assert_eq!(text.matches("a refusing serializer").count(), 1, "{text}");
    }
}
