//! Framing: the fixed 12-byte header, frame kinds, size limits, and the frame codec.
//!
//! ```text
//! offset  size  field
//!      0     4  magic    "ZREP" (5a 52 45 50)
//!      4     1  version  wire (framing) version, 1
//!      5     1  kind     frame kind code (see FrameKind)
//!      6     2  flags    reserved, must be 0
//!      8     4  length   payload length in bytes, big-endian
//! ```
//!
//! The length is checked against the kind's limit as soon as the header is complete, before
//! any buffer is grown for the payload.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::codec::{BINCODE, write_header};
pub use crate::codec::{
    FrameKind, HEADER_LEN, MAGIC, MAX_CONTROL_PAYLOAD, MAX_DATA_PAYLOAD, MAX_ERROR_PAYLOAD,
    MAX_HELLO_PAYLOAD, MAX_PAIRING_PAYLOAD, WIRE_VERSION,
};
use crate::data::DataChunk;
use crate::error::{DecodeError, EncodeError};
use crate::handshake::Hello;
use crate::message::{ErrorFrame, Message};
use crate::pairing::PairMessage;

/// A parsed frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    /// Frame kind.
    pub kind: FrameKind,
    /// Payload length (already checked against the kind's limit).
    pub len: u32,
}

impl FrameHeader {
    /// Parses and validates a header from the start of `src`.
    ///
    /// `Ok(None)` if fewer than [`HEADER_LEN`] bytes are available, except that a wrong magic is
    /// reported as soon as four bytes are there.
    pub fn parse(src: &[u8]) -> Result<Option<Self>, DecodeError> {
        if src.len() >= MAGIC.len() && src[..MAGIC.len()] != MAGIC {
            let mut got = [0u8; 4];
            got.copy_from_slice(&src[..4]);
            return Err(DecodeError::BadMagic { got });
        }
        if src.len() < HEADER_LEN {
            return Ok(None);
        }
        let mut buf = &src[4..HEADER_LEN];
        let version = buf.get_u8();
        if version != WIRE_VERSION {
            return Err(DecodeError::UnsupportedWireVersion(version));
        }
        let code = buf.get_u8();
        let kind = FrameKind::from_code(code).ok_or(DecodeError::UnknownKind(code))?;
        let flags = buf.get_u16();
        if flags != 0 {
            return Err(DecodeError::ReservedFlags(flags));
        }
        let len = buf.get_u32();
        let max = kind.max_payload();
        if len as usize > max {
            return Err(DecodeError::TooLarge { kind, len, max });
        }
        Ok(Some(Self { kind, len }))
    }
}

/// One frame, fully parsed.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum Frame {
    /// Handshake (kind `0x01`).
    Hello(Hello),
    /// Control message (kind `0x02`).
    Control(Message),
    /// Stream data (kind `0x03`).
    Data(DataChunk),
    /// Liveness (kind `0x04`).
    Heartbeat,
    /// Fatal error (kind `0x05`).
    Error(ErrorFrame),
    /// Pairing message (kind `0x06`).
    Pairing(PairMessage),
}

impl Frame {
    /// The frame's kind.
    pub fn kind(&self) -> FrameKind {
        match self {
            Self::Hello(_) => FrameKind::Hello,
            Self::Control(_) => FrameKind::Control,
            Self::Data(_) => FrameKind::Data,
            Self::Heartbeat => FrameKind::Heartbeat,
            Self::Error(_) => FrameKind::Error,
            Self::Pairing(_) => FrameKind::Pairing,
        }
    }

    /// Short name for errors and logs (the message name for control frames).
    pub fn name(&self) -> &'static str {
        match self {
            Self::Hello(_) => "Hello",
            Self::Control(m) => m.name(),
            Self::Data(_) => "Data",
            Self::Heartbeat => "Heartbeat",
            Self::Error(_) => "Error",
            Self::Pairing(m) => m.name(),
        }
    }

    /// Appends the encoded frame to `dst`. On error `dst` is left as it was.
    pub fn encode(&self, dst: &mut BytesMut) -> Result<(), EncodeError> {
        match self {
            Self::Hello(h) => encode_body(dst, FrameKind::Hello, h),
            Self::Control(m) => encode_body(dst, FrameKind::Control, m),
            Self::Error(e) => encode_body(dst, FrameKind::Error, e),
            Self::Pairing(m) => encode_body(dst, FrameKind::Pairing, m),
            Self::Data(chunk) => {
                dst.extend_from_slice(chunk.clone().into_wire().as_ref());
                Ok(())
            }
            Self::Heartbeat => {
                write_header(dst, FrameKind::Heartbeat, 0);
                Ok(())
            }
        }
    }

    /// The encoded frame as one buffer.
    pub fn to_bytes(&self) -> Result<Bytes, EncodeError> {
        if let Self::Data(chunk) = self {
            return Ok(chunk.clone().into_wire());
        }
        let mut dst = BytesMut::new();
        self.encode(&mut dst)?;
        Ok(dst.freeze())
    }
}

/// Takes one complete frame off the front of `src`.
///
/// `Ok(None)` means more bytes are needed; nothing is consumed then, and `src` is grown only up
/// to the size of the frame being received (never past the kind's limit). Any `Err` is fatal
/// for the connection: framing is lost.
pub fn decode(src: &mut BytesMut) -> Result<Option<Frame>, DecodeError> {
    let Some(header) = FrameHeader::parse(src)? else {
        return Ok(None);
    };
    let total = HEADER_LEN + header.len as usize;
    if src.len() < total {
        // Bounded by the limit check in FrameHeader::parse.
        src.reserve(total - src.len());
        return Ok(None);
    }
    let frame = src.split_to(total).freeze();
    let payload = &frame[HEADER_LEN..];
    Ok(Some(match header.kind {
        FrameKind::Hello => Frame::Hello(decode_body(FrameKind::Hello, payload, true)?),
        FrameKind::Control => Frame::Control(decode_body(FrameKind::Control, payload, false)?),
        FrameKind::Error => Frame::Error(decode_body(FrameKind::Error, payload, true)?),
        FrameKind::Pairing => Frame::Pairing(decode_body(FrameKind::Pairing, payload, false)?),
        FrameKind::Heartbeat => Frame::Heartbeat,
        FrameKind::Data => Frame::Data(DataChunk::from_frame(frame)?),
    }))
}

/// Encodes a bincode body after a header, patching the length in afterwards.
fn encode_body<T: serde::Serialize>(
    dst: &mut BytesMut,
    kind: FrameKind,
    body: &T,
) -> Result<(), EncodeError> {
    let start = dst.len();
    write_header(dst, kind, 0);
    let mut writer = dst.writer();
    let result = bincode::serde::encode_into_std_write(body, &mut writer, BINCODE);
    let dst = writer.into_inner();
    let len = match result {
        Ok(len) => len,
        Err(e) => {
            dst.truncate(start);
            return Err(e.into());
        }
    };
    let max = kind.max_payload();
    if len > max {
        dst.truncate(start);
        return Err(EncodeError::TooLarge { kind, len, max });
    }
    // Length field is the last four header bytes.
    dst[start + 8..start + HEADER_LEN].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(())
}

/// Decodes a bincode body. Hello and error bodies may carry trailing bytes (fields appended by
/// later versions); control and pairing bodies must be consumed exactly.
fn decode_body<T: serde::de::DeserializeOwned>(
    kind: FrameKind,
    payload: &[u8],
    allow_trailing: bool,
) -> Result<T, DecodeError> {
    let (value, used) = bincode::serde::decode_from_slice(payload, BINCODE)
        .map_err(|source| DecodeError::Body { kind, source })?;
    if !allow_trailing && used != payload.len() {
        return Err(DecodeError::TrailingBytes {
            extra: payload.len() - used,
        });
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{DATA_PREFIX_LEN, MAX_CHUNK};
    use crate::codes::{ErrorCode, FailureCode, RefusalCode};
    use crate::data::compress_chunk;
    use crate::handshake::Features;
    use crate::message::{
        AbortResumeOutcome, SnapshotInfo, StreamKind, TargetState, TransferOffer,
    };
    use crate::types::{Compression, Role, VersionRange};

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn round_trip(frame: Frame) {
        let mut buf = BytesMut::new();
        frame.encode(&mut buf).unwrap();
        assert_eq!(buf, frame.to_bytes().unwrap());
        // Every strict prefix is "need more bytes", never an error.
        for cut in 0..buf.len() {
            let mut part = BytesMut::from(&buf[..cut]);
            assert!(decode(&mut part).unwrap().is_none(), "prefix {cut}");
            assert_eq!(part.len(), cut, "nothing consumed");
        }
        buf.extend_from_slice(b"ZREP");
        let back = decode(&mut buf).unwrap().unwrap();
        assert_eq!(back, frame);
        assert_eq!(&buf[..], b"ZREP", "exactly one frame consumed");
    }

    fn sample_messages() -> Vec<Message> {
        let offer = TransferOffer {
            target: "tank/home".into(),
            snapshot: "zrep-0002".into(),
            guid: 0x1122_3344_5566_7788,
            kind: StreamKind::Incremental {
                base_guid: 42,
                base_name: "zrep-0001".into(),
                intermediates: true,
            },
            compression: Compression::Zstd,
            raw: true,
            size_estimate: Some(1 << 30),
        };
        vec![
            Message::StateRequest {
                target: "tank/home".into(),
            },
            Message::State(TargetState {
                target: "tank/home".into(),
                exists: true,
                read_only: true,
                snapshots: vec![SnapshotInfo {
                    name: "zrep-0001".into(),
                    guid: 42,
                    createtxg: 1000,
                    creation: 1_700_000_000,
                }],
                resume_token: Some("1-abc-def".into()),
            }),
            Message::Offer(offer.clone()),
            Message::Offer(TransferOffer {
                kind: StreamKind::Full,
                ..offer.clone()
            }),
            Message::Offer(TransferOffer {
                kind: StreamKind::Resume {
                    token: "1-abc".into(),
                },
                ..offer
            }),
            Message::Accept,
            Message::Refuse {
                code: RefusalCode::Busy,
                message: "another transfer runs".into(),
            },
            Message::StreamEnd {
                bytes: 123,
                xxh3: 0xdead_beef,
            },
            Message::StreamAbort {
                message: "zfs send died".into(),
            },
            Message::Committed {
                snapshot: "zrep-0002".into(),
                guid: 7,
            },
            Message::Failed {
                code: FailureCode::ZfsReceive,
                message: "cannot receive".into(),
            },
            Message::AbortResume {
                target: "tank/home".into(),
            },
            Message::AbortResumeResult {
                target: "tank/home".into(),
                outcome: AbortResumeOutcome::Discarded,
            },
            Message::AbortResumeResult {
                target: "tank/home".into(),
                outcome: AbortResumeOutcome::NothingToDiscard,
            },
            Message::AbortResumeResult {
                target: "tank/home".into(),
                outcome: AbortResumeOutcome::Refused {
                    code: RefusalCode::NotPermitted,
                    message: "policy".into(),
                },
            },
            Message::Bye,
        ]
    }

    #[test]
    fn every_frame_kind_round_trips() {
        let features = Features::new()
            .with_compression([Compression::Zstd])
            .with_resumable(true)
            .with_zfs("openzfs", "2.2.4");
        round_trip(Frame::Hello(Hello {
            versions: VersionRange::new(1, 3),
            role: Role::Sender,
            software: "zrep 0.1.0".into(),
            heartbeat_interval_ms: 10_000,
            features,
        }));
        round_trip(Frame::Heartbeat);
        round_trip(Frame::Error(ErrorFrame::new(ErrorCode::Timeout, "silent")));
        round_trip(Frame::Data(DataChunk::stored(b"stream bytes").unwrap()));
        round_trip(Frame::Data(compress_chunk(&[9u8; 5000], 1).unwrap()));
    }

    #[test]
    fn every_message_round_trips() {
        for m in sample_messages() {
            round_trip(Frame::Control(m));
        }
    }

    #[test]
    fn pairing_frames_round_trip() {
        use crate::pairing::{EnrollRequest, Enrolment};
        for m in [
            PairMessage::Enroll(EnrollRequest {
                token_id: 0x0102_0304_0506_0708,
                proof: vec![7; 32],
                csr: vec![0x30, 0x82, 1, 2],
            }),
            PairMessage::Enrolled(Enrolment {
                peer: "nas1".into(),
                root: "backup/nas1".into(),
                certificate: vec![1, 2, 3],
                ca_certificate: vec![4, 5],
            }),
            PairMessage::Renew { csr: vec![9; 100] },
            PairMessage::Renewed {
                certificate: vec![8; 10],
            },
            PairMessage::RenewRefused {
                message: "no".into(),
            },
        ] {
            round_trip(Frame::Pairing(m));
        }
    }

    #[test]
    fn golden_pairing_renew() {
        let frame = Frame::Pairing(PairMessage::Renew {
            csr: vec![0xab, 0xcd],
        });
        assert_eq!(
            hex(&frame.to_bytes().unwrap()),
            concat!(
                "5a524550",
                "01",
                "06",
                "0000",
                "0000000e", // header: PAIRING, 14 bytes
                "00000002", // variant 2: Renew
                "0000000000000002",
                "abcd", // csr: 2 bytes
            )
        );
    }

    #[test]
    fn golden_heartbeat() {
        let bytes = Frame::Heartbeat.to_bytes().unwrap();
        assert_eq!(hex(&bytes), "5a52455001040000_00000000".replace('_', ""));
    }

    #[test]
    fn golden_state_request() {
        let frame = Frame::Control(Message::StateRequest {
            target: "tank/a".into(),
        });
        // header: magic, v1, kind 2, flags 0, len 18
        // body: variant u32 0, string length u64 6, "tank/a"
        assert_eq!(
            hex(&frame.to_bytes().unwrap()),
            concat!(
                "5a524550",
                "01",
                "02",
                "0000",
                "00000012", //
                "00000000",
                "0000000000000006",
                "74616e6b2f61",
            )
        );
    }

    #[test]
    fn golden_stream_end_and_accept() {
        let end = Frame::Control(Message::StreamEnd {
            bytes: 0x0102,
            xxh3: 0x0a0b_0c0d_0e0f_1011,
        });
        assert_eq!(
            hex(&end.to_bytes().unwrap()),
            concat!(
                "5a524550",
                "01",
                "02",
                "0000",
                "00000014", //
                "00000005",
                "0000000000000102",
                "0a0b0c0d0e0f1011",
            )
        );
        let accept = Frame::Control(Message::Accept);
        assert_eq!(
            hex(&accept.to_bytes().unwrap()),
            "5a524550010200000000000400000003"
        );
    }

    #[test]
    fn golden_error() {
        let frame = Frame::Error(ErrorFrame::new(ErrorCode::IncompatibleVersion, "v"));
        // body: code u16 3, string length u64 1, "v"
        assert_eq!(
            hex(&frame.to_bytes().unwrap()),
            concat!(
                "5a524550",
                "01",
                "05",
                "0000",
                "0000000b",
                "0003",
                "0000000000000001",
                "76"
            )
        );
    }

    #[test]
    fn golden_stored_data() {
        let frame = Frame::Data(DataChunk::stored(b"hi").unwrap());
        // prefix: compression 0, raw length u32 2
        assert_eq!(
            hex(&frame.to_bytes().unwrap()),
            concat!(
                "5a524550", "01", "03", "0000", "00000007", "00", "00000002", "6869"
            )
        );
    }

    #[test]
    fn golden_hello() {
        let features = Features::new()
            .with_compression([Compression::Zstd])
            .with_resumable(true);
        let frame = Frame::Hello(Hello {
            versions: VersionRange::new(1, 2),
            role: Role::Receiver,
            software: "z".into(),
            heartbeat_interval_ms: 10_000,
            features,
        });
        assert_eq!(
            hex(&frame.to_bytes().unwrap()),
            concat!(
                "5a524550",
                "01",
                "01",
                "0000",
                "00000054", //
                "0001",
                "0002", // versions 1..=2
                "02",   // role receiver
                "0000000000000001",
                "7a",               // software "z"
                "00002710",         // heartbeat 10000 ms
                "0000000000000002", // two feature entries
                "0000000000000008",
                "636f6d7072657373", // "compress"
                "0000000000000001",
                "0000000000000004",
                "7a737464", // ["zstd"]
                "0000000000000006",
                "726573756d65",     // "resume"
                "0000000000000000", // []
            )
        );
    }

    #[test]
    fn bad_magic_is_detected_from_four_bytes() {
        let mut buf = BytesMut::from(&b"GET / HTTP/1.1\r\n"[..]);
        assert!(matches!(
            decode(&mut buf),
            Err(DecodeError::BadMagic { got }) if &got == b"GET "
        ));
        let mut buf = BytesMut::from(&b"ZRE"[..]);
        assert!(decode(&mut buf).unwrap().is_none());
    }

    #[test]
    fn header_checks() {
        let header = |v: u8, k: u8, flags: u16, len: u32| {
            let mut b = BytesMut::new();
            b.put_slice(&MAGIC);
            b.put_u8(v);
            b.put_u8(k);
            b.put_u16(flags);
            b.put_u32(len);
            b
        };
        // (version, kind, flags, length) and the refusal, variant and values by its text.
        for ((v, k, flags, len), refusal) in [
            (
                (2, 2, 0, 0),
                "unsupported zrep wire version 2 (this side speaks 1)",
            ),
            ((1, 7, 0, 0), "unknown frame kind 0x07"),
            ((1, 0, 0, 0), "unknown frame kind 0x00"),
            ((1, 4, 1, 0), "reserved header flags set: 0x0001"),
            (
                (1, 4, 0, 1),
                "Heartbeat frame of 1 bytes exceeds the limit of 0 bytes",
            ),
        ] {
            let err = decode(&mut header(v, k, flags, len)).unwrap_err();
            assert_eq!(err.to_string(), refusal);
        }
    }

    #[test]
    fn oversize_length_is_rejected_before_allocating() {
        for (kind, max) in [
            (FrameKind::Hello, MAX_HELLO_PAYLOAD),
            (FrameKind::Control, MAX_CONTROL_PAYLOAD),
            (FrameKind::Data, MAX_DATA_PAYLOAD),
            (FrameKind::Error, MAX_ERROR_PAYLOAD),
            (FrameKind::Pairing, MAX_PAIRING_PAYLOAD),
        ] {
            let mut b = BytesMut::with_capacity(HEADER_LEN);
            write_header(&mut b, kind, 0);
            b[8..12].copy_from_slice(&((max as u32) + 1).to_be_bytes());
            let cap = b.capacity();
            assert!(matches!(decode(&mut b), Err(DecodeError::TooLarge { .. })));
            assert_eq!(b.capacity(), cap, "no growth for a refused frame");
        }
        // A u32::MAX claim as well.
        let mut b = BytesMut::new();
        write_header(&mut b, FrameKind::Control, 0);
        b[8..12].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(decode(&mut b), Err(DecodeError::TooLarge { .. })));
    }

    #[test]
    fn control_trailing_bytes_are_rejected() {
        let mut b = BytesMut::new();
        Frame::Control(Message::Bye).encode(&mut b).unwrap();
        b.put_u8(0);
        b[8..12].copy_from_slice(&5u32.to_be_bytes());
        assert!(matches!(
            decode(&mut b),
            Err(DecodeError::TrailingBytes { extra: 1 })
        ));
    }

    #[test]
    fn hello_tolerates_appended_fields() {
        let hello = Hello {
            versions: VersionRange::new(1, 1),
            role: Role::Sender,
            software: String::new(),
            heartbeat_interval_ms: 1000,
            features: Features::default(),
        };
        let mut b = BytesMut::new();
        Frame::Hello(hello.clone()).encode(&mut b).unwrap();
        let len = b.len() - HEADER_LEN + 3;
        b.put_slice(&[1, 2, 3]);
        b[8..12].copy_from_slice(&(len as u32).to_be_bytes());
        assert_eq!(decode(&mut b).unwrap().unwrap(), Frame::Hello(hello));
    }

    #[test]
    fn data_prefix_checks() {
        let data = |compression: u8, raw_len: u32, body: &[u8]| {
            let mut b = BytesMut::new();
            write_header(&mut b, FrameKind::Data, DATA_PREFIX_LEN + body.len());
            b.put_u8(compression);
            b.put_u32(raw_len);
            b.put_slice(body);
            b
        };
        assert!(matches!(
            decode(&mut data(9, 1, b"x")),
            Err(DecodeError::UnknownCompression(9))
        ));
        assert!(matches!(
            decode(&mut data(0, 0, b"")),
            Err(DecodeError::BadChunkLength { raw_len: 0, .. })
        ));
        assert!(matches!(
            decode(&mut data(1, MAX_CHUNK as u32 + 1, b"x")),
            Err(DecodeError::BadChunkLength { .. })
        ));
        assert!(matches!(
            decode(&mut data(0, 3, b"xy")),
            Err(DecodeError::StoredLengthMismatch {
                raw_len: 3,
                body: 2
            })
        ));
        let mut short = BytesMut::new();
        write_header(&mut short, FrameKind::Data, 2);
        short.put_slice(&[0, 0]);
        assert!(matches!(
            decode(&mut short),
            Err(DecodeError::DataTooShort { len: 2 })
        ));
    }

    #[test]
    fn oversized_control_message_is_an_encode_error() {
        let huge = Message::StateRequest {
            target: "x".repeat(MAX_CONTROL_PAYLOAD),
        };
        let mut b = BytesMut::from(&b"keep"[..]);
        assert!(matches!(
            Frame::Control(huge).encode(&mut b),
            Err(EncodeError::TooLarge { .. })
        ));
        assert_eq!(&b[..], b"keep");
    }
}
