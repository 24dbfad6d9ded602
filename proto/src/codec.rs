//! Wire constants and limits: the frame header layout, frame kinds, size limits and the one
//! bincode configuration.
//!
//! A leaf module: it names no other module of this crate, so every layer above (errors, data
//! chunks, messages, frames, sessions) can use these numbers without importing each other.
//! The public paths are the old ones ([`frame`](crate::frame), [`data`](crate::data),
//! [`message`](crate::message) re-export from here).

use bincode::config::{BigEndian, Configuration, Fixint, Limit};
use bytes::BufMut;

/// The four magic bytes every frame starts with.
pub const MAGIC: [u8; 4] = *b"ZREP";
/// The wire (framing) version in every header.
pub const WIRE_VERSION: u8 = 1;
/// Length of the fixed frame header.
pub const HEADER_LEN: usize = 12;

/// Largest uncompressed chunk carried by one data frame (1 MiB).
pub const MAX_CHUNK: usize = 1 << 20;
/// Length of the prefix of a data frame payload: compression code (1) + uncompressed length (4).
pub const DATA_PREFIX_LEN: usize = 5;

/// Maximum payload of a hello frame.
pub const MAX_HELLO_PAYLOAD: usize = 64 * 1024;
/// Maximum payload of a control frame (fits a state listing of tens of thousands of snapshots).
pub const MAX_CONTROL_PAYLOAD: usize = 4 * 1024 * 1024;
/// Maximum payload of a data frame: prefix plus one chunk.
pub const MAX_DATA_PAYLOAD: usize = DATA_PREFIX_LEN + MAX_CHUNK;
/// Maximum payload of an error frame.
pub const MAX_ERROR_PAYLOAD: usize = 64 * 1024;
/// Maximum payload of a pairing frame (a CSR or a certificate and the CA certificate).
pub const MAX_PAIRING_PAYLOAD: usize = 64 * 1024;

/// The one bincode configuration used for every hello, control and error body.
pub type BincodeConfig = Configuration<BigEndian, Fixint, Limit<MAX_CONTROL_PAYLOAD>>;

/// The one bincode configuration used for every hello, control and error body.
pub const BINCODE: BincodeConfig = bincode::config::standard()
    .with_big_endian()
    .with_fixed_int_encoding()
    .with_limit::<MAX_CONTROL_PAYLOAD>();

/// The kind of a frame, from the header's kind byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FrameKind {
    /// `0x01`: the handshake message, first frame in each direction.
    Hello,
    /// `0x02`: one bincode-encoded [`Message`](crate::Message).
    Control,
    /// `0x03`: one chunk of stream data.
    Data,
    /// `0x04`: liveness signal, empty payload.
    Heartbeat,
    /// `0x05`: fatal error; the sender closes the connection after it.
    Error,
    /// `0x06`: one bincode-encoded [`PairMessage`](crate::PairMessage) (enrolment, renewal).
    Pairing,
}

impl FrameKind {
    /// The kind code in the header.
    pub fn code(self) -> u8 {
        match self {
            Self::Hello => 0x01,
            Self::Control => 0x02,
            Self::Data => 0x03,
            Self::Heartbeat => 0x04,
            Self::Error => 0x05,
            Self::Pairing => 0x06,
        }
    }

    /// The kind with this code, if assigned.
    pub fn from_code(code: u8) -> Option<Self> {
        match code {
            0x01 => Some(Self::Hello),
            0x02 => Some(Self::Control),
            0x03 => Some(Self::Data),
            0x04 => Some(Self::Heartbeat),
            0x05 => Some(Self::Error),
            0x06 => Some(Self::Pairing),
            _ => None,
        }
    }

    /// Largest payload allowed for this kind.
    pub fn max_payload(self) -> usize {
        match self {
            Self::Hello => MAX_HELLO_PAYLOAD,
            Self::Control => MAX_CONTROL_PAYLOAD,
            Self::Data => MAX_DATA_PAYLOAD,
            Self::Heartbeat => 0,
            Self::Error => MAX_ERROR_PAYLOAD,
            Self::Pairing => MAX_PAIRING_PAYLOAD,
        }
    }
}

/// Writes a header for a payload of `len` bytes. Callers guarantee `len` is within the kind's
/// limit, which is far below `u32::MAX`.
pub(crate) fn write_header(dst: &mut impl BufMut, kind: FrameKind, len: usize) {
    debug_assert!(len <= kind.max_payload());
    dst.put_slice(&MAGIC);
    dst.put_u8(WIRE_VERSION);
    dst.put_u8(kind.code());
    dst.put_u16(0);
    dst.put_u32(len as u32);
}
