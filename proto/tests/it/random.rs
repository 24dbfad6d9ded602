//! Randomized robustness: arbitrary, truncated and mutated bytes and frame sequences fed to the
//! decoder and both state machines must never panic and never grow buffers past the limits.

use std::time::Duration;

use bytes::BytesMut;
use proptest::prelude::*;
use zrep_proto::frame::{HEADER_LEN, MAX_CONTROL_PAYLOAD};
use zrep_proto::{
    AbortResumeOutcome, Compression, ErrorCode, ErrorFrame, FailureCode, Frame, Message,
    ReceiverEvent, ReceiverSession, RefusalCode, SenderSession, SnapshotInfo, StreamKind,
    TargetState, TransferOffer, decode,
};

use crate::util::{Pair, config, stored, test_stream};

/// Largest buffer capacity the decoder may ask for: one maximal frame.
const MAX_BUFFER: usize = HEADER_LEN + MAX_CONTROL_PAYLOAD;

fn name() -> impl Strategy<Value = String> {
    "[a-z0-9/@#. -]{0,12}"
}

fn snapshot() -> impl Strategy<Value = SnapshotInfo> {
    (name(), any::<u64>(), any::<u64>(), any::<u64>()).prop_map(
        |(name, guid, createtxg, creation)| SnapshotInfo {
            name,
            guid,
            createtxg,
            creation,
        },
    )
}

fn stream_kind() -> impl Strategy<Value = StreamKind> {
    prop_oneof![
        Just(StreamKind::Full),
        (any::<u64>(), name(), any::<bool>()).prop_map(|(base_guid, base_name, intermediates)| {
            StreamKind::Incremental {
                base_guid,
                base_name,
                intermediates,
            }
        }),
        name().prop_map(|token| StreamKind::Resume { token }),
    ]
}

fn offer() -> impl Strategy<Value = TransferOffer> {
    (
        name(),
        name(),
        any::<u64>(),
        stream_kind(),
        any::<bool>(),
        any::<bool>(),
        any::<Option<u64>>(),
    )
        .prop_map(
            |(target, snapshot, guid, kind, zstd, raw, size_estimate)| TransferOffer {
                target,
                snapshot,
                guid,
                kind,
                compression: if zstd {
                    Compression::Zstd
                } else {
                    Compression::None
                },
                raw,
                size_estimate,
            },
        )
}

fn message() -> impl Strategy<Value = Message> {
    prop_oneof![
        name().prop_map(|target| Message::StateRequest { target }),
        (
            name(),
            any::<bool>(),
            any::<bool>(),
            prop::collection::vec(snapshot(), 0..4),
            prop::option::of(name())
        )
            .prop_map(|(target, exists, read_only, snapshots, resume_token)| {
                Message::State(TargetState {
                    target,
                    exists,
                    read_only,
                    snapshots,
                    resume_token,
                })
            }),
        offer().prop_map(Message::Offer),
        Just(Message::Accept),
        (any::<u16>(), name()).prop_map(|(c, message)| Message::Refuse {
            code: RefusalCode::from(c),
            message
        }),
        (any::<u64>(), any::<u64>()).prop_map(|(bytes, xxh3)| Message::StreamEnd { bytes, xxh3 }),
        name().prop_map(|message| Message::StreamAbort { message }),
        (name(), any::<u64>()).prop_map(|(snapshot, guid)| Message::Committed { snapshot, guid }),
        (any::<u16>(), name()).prop_map(|(c, message)| Message::Failed {
            code: FailureCode::from(c),
            message
        }),
        name().prop_map(|target| Message::AbortResume { target }),
        (name(), 0u8..3, any::<u16>()).prop_map(|(target, o, c)| Message::AbortResumeResult {
            target,
            outcome: match o {
                0 => AbortResumeOutcome::Discarded,
                1 => AbortResumeOutcome::NothingToDiscard,
                _ => AbortResumeOutcome::Refused {
                    code: RefusalCode::from(c),
                    message: String::new(),
                },
            },
        }),
        Just(Message::Bye),
    ]
}

fn frame() -> impl Strategy<Value = Frame> {
    prop_oneof![
        4 => message().prop_map(Frame::Control),
        1 => Just(Frame::Heartbeat),
        1 => (any::<u16>(), name()).prop_map(|(c, m)| Frame::Error(ErrorFrame::new(ErrorCode::from(c), m))),
        2 => prop::collection::vec(any::<u8>(), 1..64).prop_map(|raw| Frame::Data(stored(&raw))),
        1 => prop::collection::vec(0u8..2, 1..2000)
            .prop_map(|raw| Frame::Data(zrep_proto::compress_chunk(&raw, 1).unwrap())),
    ]
}

/// Feeds `bytes` to the decoder in pieces, checking the buffer bound after each call.
fn decode_all(bytes: &[u8], piece: usize) {
    let mut buf = BytesMut::new();
    for part in bytes.chunks(piece.max(1)) {
        buf.extend_from_slice(part);
        loop {
            let before = buf.len();
            match decode(&mut buf) {
                Ok(Some(_)) => assert!(buf.len() < before),
                Ok(None) => break,
                Err(_) => return,
            }
            assert!(buf.capacity() <= MAX_BUFFER.max(bytes.len()) + HEADER_LEN);
        }
    }
}

/// Feeds `bytes` to a receiver session in pieces, reacting to events as a runtime might.
/// `negotiated`: start after a completed handshake (else `bytes` must bring the hello).
fn feed_receiver(bytes: &[u8], piece: usize, act: &[u8], negotiated: bool) {
    let mut p = if negotiated {
        Pair::connected()
    } else {
        Pair::new(config(), config())
    };
    let mut buf = BytesMut::new();
    let mut now = p.now;
    let mut actions = act.iter().cycle();
    for part in bytes.chunks(piece.max(1)) {
        buf.extend_from_slice(part);
        now += Duration::from_millis(300);
        loop {
            match p.r.handle_bytes(&mut buf, now) {
                Ok(Some(ev)) => answer(&mut p.r, &ev, *actions.next().unwrap_or(&0)),
                Ok(None) => break,
                Err(_) => return,
            }
        }
        let _ = p.r.poll_transmit(now);
        let _ = p.r.handle_timeout(now);
    }
}

/// Random but legal-looking receiver runtime reactions (errors are fine, panics are not).
fn answer(r: &mut ReceiverSession, ev: &ReceiverEvent, choice: u8) {
    let _ = match ev {
        ReceiverEvent::StateRequested { target } => r.send_state(TargetState {
            target: target.clone(),
            ..TargetState::default()
        }),
        ReceiverEvent::TransferOffered(_) if choice.is_multiple_of(2) => r.accept().map(drop),
        ReceiverEvent::TransferOffered(_) => r.refuse(RefusalCode::Busy, "busy"),
        ReceiverEvent::Data(_) if choice.is_multiple_of(7) => {
            r.failed(FailureCode::NoSpace, "full")
        }
        ReceiverEvent::StreamEnded(_) => match r.current_offer().cloned() {
            Some(o) if !choice.is_multiple_of(3) => r.committed(o.snapshot, o.guid),
            _ => r.failed(FailureCode::ZfsReceive, "no"),
        },
        ReceiverEvent::StreamAborted { .. } => r.failed(FailureCode::Aborted, "aborted"),
        ReceiverEvent::AbortResumeRequested { .. } => {
            r.abort_resume_result(AbortResumeOutcome::NothingToDiscard)
        }
        _ => Ok(()),
    };
}

fn feed_sender(bytes: &[u8], piece: usize) {
    let mut s = SenderSession::new(config(), Duration::ZERO);
    let mut buf = BytesMut::new();
    let mut now = Duration::ZERO;
    for part in bytes.chunks(piece.max(1)) {
        buf.extend_from_slice(part);
        now += Duration::from_millis(300);
        loop {
            match s.handle_bytes(&mut buf, now) {
                Ok(Some(_)) => {
                    // Keep the conversation going where possible.
                    if s.is_ready() {
                        let _ = s.request_state("t");
                    }
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
        let _ = s.poll_transmit(now);
    }
}

/// Encoded bytes of a plausible sender→receiver conversation, to mutate.
fn valid_sender_stream() -> Vec<u8> {
    let mut p = Pair::new(config(), config());
    p.flush();
    let mut bytes = p.to_r.split().to_vec();
    let offer = TransferOffer {
        target: "t".into(),
        snapshot: "s".into(),
        guid: 1,
        kind: StreamKind::Full,
        compression: Compression::Zstd,
        raw: false,
        size_estimate: None,
    };
    let data = test_stream(3000);
    for f in [
        Frame::Control(Message::StateRequest { target: "t".into() }),
        Frame::Control(Message::Offer(offer)),
        Frame::Data(zrep_proto::compress_chunk(&data[..1500], 1).unwrap()),
        Frame::Data(stored(&data[1500..])),
        Frame::Heartbeat,
        Frame::Control(Message::StreamEnd {
            bytes: 3000,
            xxh3: stream_xxh3(&data),
        }),
        Frame::Control(Message::Bye),
    ] {
        bytes.extend_from_slice(&f.to_bytes().unwrap());
    }
    bytes
}

fn stream_xxh3(data: &[u8]) -> u64 {
    let mut h = zrep_proto::StreamHasher::new();
    h.update(data);
    h.digest()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn frames_round_trip(f in frame()) {
        let bytes = f.to_bytes().unwrap();
        let mut buf = BytesMut::from(&bytes[..]);
        prop_assert_eq!(decode(&mut buf).unwrap(), Some(f));
        prop_assert!(buf.is_empty());
    }

    #[test]
    fn truncated_frames_need_more_bytes(f in frame(), cut in any::<prop::sample::Index>()) {
        let bytes = f.to_bytes().unwrap();
        let cut = cut.index(bytes.len());
        let mut buf = BytesMut::from(&bytes[..cut]);
        prop_assert!(decode(&mut buf).unwrap().is_none());
        prop_assert_eq!(buf.len(), cut);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512), piece in 1usize..64) {
        decode_all(&bytes, piece);
        feed_sender(&bytes, piece);
        feed_receiver(&bytes, piece, &[0, 1, 2], false);
        feed_receiver(&bytes, piece, &[0, 1, 2], true);
    }

    #[test]
    fn arbitrary_bytes_after_a_valid_header(
        kind in 0u8..8, len in any::<u32>(), body in prop::collection::vec(any::<u8>(), 0..256)
    ) {
        let mut bytes = b"ZREP\x01".to_vec();
        bytes.push(kind);
        bytes.extend_from_slice(&[0, 0]);
        bytes.extend_from_slice(&(len % 300).to_be_bytes());
        bytes.extend_from_slice(&body);
        decode_all(&bytes, 7);
        feed_receiver(&bytes, 7, &[0], true);
        feed_sender(&bytes, 7);
    }

    #[test]
    fn mutated_conversations_never_panic(
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in any::<prop::sample::Index>(),
        piece in 1usize..4096,
        act in prop::collection::vec(any::<u8>(), 1..8),
    ) {
        let mut bytes = valid_sender_stream();
        for (i, v) in flips {
            let i = i.index(bytes.len());
            bytes[i] ^= v;
        }
        let cut = cut.index(bytes.len() + 1);
        bytes.truncate(cut);
        decode_all(&bytes, piece);
        feed_receiver(&bytes, piece, &act, false);
    }

    #[test]
    fn random_frame_sequences_never_panic(
        frames in prop::collection::vec(frame(), 0..24),
        act in prop::collection::vec(any::<u8>(), 1..8),
    ) {
        let mut bytes = Vec::new();
        for f in &frames {
            bytes.extend_from_slice(&f.to_bytes().unwrap());
        }
        feed_receiver(&bytes, 1000, &act, true);
        feed_sender(&bytes, 1000);
    }
}

#[test]
fn unmutated_conversation_is_accepted() {
    // The base input of the mutation test is itself a valid conversation.
    let mut p = Pair::new(config(), config());
    p.flush();
    p.to_r = BytesMut::from(&valid_sender_stream()[..]);
    let mut events = Vec::new();
    while let Some(ev) = p.r.handle_bytes(&mut p.to_r, p.now).unwrap() {
        answer(&mut p.r, &ev, 0);
        events.push(ev);
    }
    assert!(
        matches!(events.last(), Some(ReceiverEvent::Bye)),
        "{events:?}"
    );
}
