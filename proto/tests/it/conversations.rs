//! Whole conversations between the two state machines, as the runtimes would drive them.

use std::collections::HashMap;
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use zrep_proto::frame::{FrameKind, MAX_CONTROL_PAYLOAD};
use zrep_proto::{
    AbortResumeOutcome, Compression, ErrorCode, FailureCode, Frame, Message, ProtoError,
    ReceiverEvent, RefusalCode, SenderEvent, StreamKind, TargetState, TransferOffer, UsageError,
    VersionRange, choose_base,
};

use crate::util::{Pair, absent, config, snap, stored, test_stream};

fn full_offer(target: &str, snapshot: &str, guid: u64) -> TransferOffer {
    TransferOffer {
        target: target.into(),
        snapshot: snapshot.into(),
        guid,
        kind: StreamKind::Full,
        compression: Compression::Zstd,
        raw: false,
        size_estimate: None,
    }
}

/// Plans `target` and returns the state the receiver reported.
fn plan(p: &mut Pair, target: &str, state: TargetState) -> TargetState {
    p.s.request_state(target).unwrap();
    assert_eq!(
        p.r_next(),
        ReceiverEvent::StateRequested {
            target: target.into()
        }
    );
    p.r.send_state(state).unwrap();
    match p.s_next() {
        SenderEvent::State(st) => st,
        other => panic!("expected state, got {other:?}"),
    }
}

/// The sender's next event is `outcome` (a transfer's end), after which it is ready for the next
/// dataset.
fn expect_outcome(p: &mut Pair, outcome: SenderEvent) {
    assert_eq!(p.s_next(), outcome);
    assert!(p.s.is_ready());
}

/// Offer → accept → stream → end. Returns the bytes the receiver saw.
fn transfer(p: &mut Pair, offer: TransferOffer, stream: &[u8]) -> Vec<u8> {
    p.s.offer_transfer(offer.clone()).unwrap();
    assert_eq!(p.r_next(), ReceiverEvent::TransferOffered(offer));
    p.accept().unwrap();
    assert_eq!(p.s_next(), SenderEvent::Accepted);
    let got = p.stream(stream, 256 * 1024);
    let summary = p.finish_stream().unwrap();
    assert_eq!(summary.bytes, stream.len() as u64);
    assert_eq!(p.r_next(), ReceiverEvent::StreamEnded(summary));
    got
}

#[test]
fn full_transfer_then_bye() {
    let mut p = Pair::connected();
    let st = plan(&mut p, "backup/tank/home", absent("backup/tank/home"));
    assert!(!st.exists);
    let source = [snap("zrep-1", 0xaaa, 10)];
    let base = choose_base(&source, &st.snapshots);
    assert_eq!(base.common, None);
    assert!(!base.diverged());

    let stream = test_stream(3 * 1024 * 1024 + 17);
    let got = transfer(
        &mut p,
        full_offer("backup/tank/home", "zrep-1", 0xaaa),
        &stream,
    );
    assert_eq!(got, stream);

    p.r.committed("zrep-1", 0xaaa).unwrap();
    expect_outcome(
        &mut p,
        SenderEvent::Committed {
            snapshot: "zrep-1".into(),
            guid: 0xaaa,
        },
    );
    p.s.close().unwrap();
    assert!(p.s.is_closed());
    assert_eq!(p.r_next(), ReceiverEvent::Bye);
    assert!(p.r.is_closed());
    assert!(p.s.poll_transmit(p.now).is_none());
}

#[test]
fn incremental_transfer_with_intermediates() {
    let mut p = Pair::connected();
    let target_state = TargetState {
        target: "t".into(),
        exists: true,
        read_only: true,
        snapshots: vec![snap("a", 1, 100), snap("b", 2, 101)],
        resume_token: None,
    };
    let st = plan(&mut p, "t", target_state.clone());
    assert_eq!(st, target_state);
    let source = [
        snap("a", 1, 10),
        snap("b", 2, 20),
        snap("c", 3, 30),
        snap("d", 4, 40),
    ];
    let base = choose_base(&source, &st.snapshots);
    assert_eq!(base.base_guid(), Some(2));
    assert!(!base.diverged());

    let offer = TransferOffer {
        target: "t".into(),
        snapshot: "d".into(),
        guid: 4,
        kind: StreamKind::Incremental {
            base_guid: 2,
            base_name: "b".into(),
            intermediates: true,
        },
        compression: Compression::Zstd,
        raw: true,
        size_estimate: Some(1000),
    };
    let stream = test_stream(1000);
    assert_eq!(transfer(&mut p, offer, &stream), stream);
    // The runtime must not commit anything but the offered snapshot.
    assert!(matches!(
        p.r.committed("c", 3),
        Err(UsageError::CommitMismatch { .. })
    ));
    p.r.committed("d", 4).unwrap();
    assert!(matches!(p.s_next(), SenderEvent::Committed { guid: 4, .. }));
}

#[test]
fn refused_offer_leaves_session_ready() {
    let mut p = Pair::connected();
    p.s.offer_transfer(full_offer("t", "s", 9)).unwrap();
    assert!(matches!(p.r_next(), ReceiverEvent::TransferOffered(_)));
    p.r.refuse(RefusalCode::TargetExists, "t exists").unwrap();
    expect_outcome(
        &mut p,
        SenderEvent::Refused {
            code: RefusalCode::TargetExists,
            message: "t exists".into(),
        },
    );
    // Both sides can go on with the next dataset.
    plan(&mut p, "u", absent("u"));
}

#[test]
fn failed_receive_is_reported_with_zfs_message() {
    let mut p = Pair::connected();
    let stream = test_stream(5000);
    transfer(&mut p, full_offer("t", "s", 9), &stream);
    p.r.failed(
        FailureCode::ZfsReceive,
        "cannot receive new filesystem stream: out of space",
    )
    .unwrap();
    expect_outcome(
        &mut p,
        SenderEvent::Failed {
            code: FailureCode::ZfsReceive,
            message: "cannot receive new filesystem stream: out of space".into(),
        },
    );
    plan(&mut p, "t", absent("t"));
}

#[test]
fn early_failure_drains_data_in_flight() {
    let mut p = Pair::connected();
    p.s.offer_transfer(full_offer("t", "s", 9)).unwrap();
    p.r_next();
    p.accept().unwrap();
    p.s_next();
    let stream = test_stream(300_000);
    p.stream(&stream[..100_000], 50_000);
    // zfs receive dies; the receiver says so at once...
    p.r.failed(FailureCode::NoSpace, "out of space").unwrap();
    // ...while the sender still has a chunk in flight.
    let raw = &stream[100_000..150_000];
    let wire = p.send_data(raw, stored(raw)).unwrap();
    p.to_r.extend_from_slice(&wire);
    assert_eq!(p.r_event().unwrap(), None, "data after failure is dropped");
    // The sender learns of the failure and terminates the stream itself.
    assert!(matches!(
        p.s_next(),
        SenderEvent::Failed {
            code: FailureCode::NoSpace,
            ..
        }
    ));
    assert!(p.s.is_ready());
    assert!(matches!(
        p.send_data(raw, stored(raw)),
        Err(UsageError::WrongState { .. })
    ));
    assert_eq!(p.r_event().unwrap(), None, "stream abort consumed");
    assert_eq!(p.r.state_name(), "ready");
    plan(&mut p, "t", absent("t"));
}

#[test]
fn sender_abort_is_answered_with_failed() {
    let mut p = Pair::connected();
    p.s.offer_transfer(full_offer("t", "s", 9)).unwrap();
    p.r_next();
    p.accept().unwrap();
    p.s_next();
    p.stream(&test_stream(10_000), 4096);
    p.s.abort_stream("zfs send: I/O error").unwrap();
    assert_eq!(
        p.r_next(),
        ReceiverEvent::StreamAborted {
            message: "zfs send: I/O error".into()
        }
    );
    assert!(matches!(
        p.r.committed("s", 9),
        Err(UsageError::WrongState { .. })
    ));
    p.r.failed(FailureCode::Aborted, "aborted by sender")
        .unwrap();
    assert!(matches!(
        p.s_next(),
        SenderEvent::Failed {
            code: FailureCode::Aborted,
            ..
        }
    ));
}

/// A tiny model of the receiving pool, so the lost-commit test can check "the truth".
#[derive(Default)]
struct FakePool {
    datasets: HashMap<String, Vec<zrep_proto::SnapshotInfo>>,
}

impl FakePool {
    fn state(&self, target: &str) -> TargetState {
        match self.datasets.get(target) {
            Some(snaps) => TargetState {
                target: target.into(),
                exists: true,
                read_only: true,
                snapshots: snaps.clone(),
                resume_token: None,
            },
            None => absent(target),
        }
    }
}

#[test]
fn lost_commit_is_recovered_by_planning_again() {
    let mut pool = FakePool::default();
    let mut p = Pair::connected();
    let st = plan(&mut p, "t", pool.state("t"));
    assert!(!st.exists);
    transfer(&mut p, full_offer("t", "s1", 0x51), &test_stream(2000));
    // zfs receive succeeded on the receiver...
    pool.datasets.insert("t".into(), vec![snap("s1", 0x51, 7)]);
    p.r.committed("s1", 0x51).unwrap();
    // ...but the connection dies before the answer reaches the sender.
    drop(p);

    // The next session plans again and sees the truth: the snapshot is there, same GUID.
    let mut p = Pair::connected();
    let st = plan(&mut p, "t", pool.state("t"));
    let base = choose_base(&[snap("s1", 0x51, 70)], &st.snapshots);
    assert_eq!(base.base_guid(), Some(0x51), "transfer is known to be done");
    assert!(!base.diverged());
    p.s.close().unwrap();
    assert_eq!(p.r_next(), ReceiverEvent::Bye);
}

#[test]
fn lost_commit_of_failed_receive_shows_resume_token() {
    let mut p = Pair::connected();
    transfer(&mut p, full_offer("t", "s1", 0x51), &test_stream(2000));
    drop(p);
    // The receiver's pool kept partial state; a new session sees the token and resumes.
    let mut p = Pair::connected();
    let state = TargetState {
        resume_token: Some("1-e604ea4bf-e0-789c".into()),
        ..absent("t")
    };
    let st = plan(&mut p, "t", state);
    let token = st.resume_token.unwrap();
    let offer = TransferOffer {
        kind: StreamKind::Resume { token },
        ..full_offer("t", "s1", 0x51)
    };
    let stream = test_stream(700);
    assert_eq!(transfer(&mut p, offer, &stream), stream);
    p.r.committed("s1", 0x51).unwrap();
    assert!(matches!(p.s_next(), SenderEvent::Committed { .. }));
}

#[test]
fn abort_resume_is_the_receivers_decision() {
    let mut p = Pair::connected();
    p.s.abort_resume("t").unwrap();
    assert_eq!(
        p.r_next(),
        ReceiverEvent::AbortResumeRequested { target: "t".into() }
    );
    p.r.abort_resume_result(AbortResumeOutcome::Refused {
        code: RefusalCode::NotPermitted,
        message: "policy keeps partial state".into(),
    })
    .unwrap();
    assert!(matches!(
        p.s_next(),
        SenderEvent::AbortResumeAnswered {
            outcome: AbortResumeOutcome::Refused { .. },
            ..
        }
    ));
    p.s.abort_resume("t").unwrap();
    p.r_next();
    p.r.abort_resume_result(AbortResumeOutcome::Discarded)
        .unwrap();
    assert_eq!(
        p.s_next(),
        SenderEvent::AbortResumeAnswered {
            target: "t".into(),
            outcome: AbortResumeOutcome::Discarded
        }
    );
}

#[test]
fn several_datasets_in_one_session() {
    let mut p = Pair::connected();
    for (i, target) in ["a", "a/b", "c"].into_iter().enumerate() {
        let guid = 100 + i as u64;
        plan(&mut p, target, absent(target));
        let stream = test_stream(1000 * (i + 1));
        assert_eq!(
            transfer(&mut p, full_offer(target, "s", guid), &stream),
            stream
        );
        p.r.committed("s", guid).unwrap();
        assert!(matches!(p.s_next(), SenderEvent::Committed { .. }));
    }
    p.s.close().unwrap();
    assert_eq!(p.r_next(), ReceiverEvent::Bye);
}

#[test]
fn heartbeats_and_overdue_peer() {
    let mut p = Pair::connected();
    let t0 = p.now;
    assert_eq!(p.s.poll_timeout(), Some(t0 + Duration::from_secs(10)));
    assert!(!p.s.heartbeat_due(t0 + Duration::from_secs(9)));
    assert!(p.s.heartbeat_due(t0 + Duration::from_secs(10)));

    // Idle for 50 s with heartbeats every 10 s: nobody is overdue.
    for _ in 0..5 {
        p.now += Duration::from_secs(10);
        p.s.handle_timeout(p.now).unwrap();
        p.r.handle_timeout(p.now).unwrap();
        let to_r = p.frames_to_r();
        assert_eq!(to_r, vec![Frame::Heartbeat]);
        for f in to_r {
            assert_eq!(p.r.handle_frame(f, p.now).unwrap(), None);
        }
        let to_s = p.frames_to_s();
        assert_eq!(to_s, vec![Frame::Heartbeat]);
        for f in to_s {
            assert_eq!(p.s.handle_frame(f, p.now).unwrap(), None);
        }
    }
    assert!(!p.s.peer_overdue(p.now));

    // The receiver goes silent (waiting on ZFS without heartbeats, say): the sender's deadline
    // is 60 s after the last frame it got.
    let last = p.now;
    p.now = last + Duration::from_secs(59);
    p.s.handle_timeout(p.now).unwrap();
    assert!(!p.s.peer_overdue(p.now));
    p.now = last + Duration::from_secs(60);
    assert!(p.s.peer_overdue(p.now));
    let err = p.s.handle_timeout(p.now).unwrap_err();
    assert!(
        matches!(err, ProtoError::PeerTimeout { silent_for } if silent_for == Duration::from_secs(60))
    );
    assert!(p.s.is_closed());
    assert_eq!(p.s.poll_timeout(), None);
    // The receiver is told why.
    let frames = p.frames_to_r();
    let [Frame::Error(e)] = &frames[..] else {
        panic!("expected one error frame, got {frames:?}");
    };
    assert_eq!(e.code, ErrorCode::Timeout);
}

#[test]
fn heartbeats_keep_a_slow_commit_alive() {
    let mut p = Pair::connected();
    transfer(&mut p, full_offer("t", "s", 1), &test_stream(100));
    // zfs receive takes five minutes; the receiver keeps sending heartbeats meanwhile.
    for _ in 0..30 {
        p.now += Duration::from_secs(10);
        p.r.handle_timeout(p.now).unwrap();
        p.s.handle_timeout(p.now).unwrap();
        assert_eq!(p.s_event().unwrap(), None);
        assert_eq!(p.r_event().unwrap(), None);
    }
    p.r.committed("s", 1).unwrap();
    assert!(matches!(p.s_next(), SenderEvent::Committed { .. }));
}

#[test]
fn handshake_timeout() {
    let mut p = Pair::new(config(), config());
    p.now += Duration::from_secs(60);
    assert!(matches!(
        p.r.handle_timeout(p.now),
        Err(ProtoError::PeerTimeout { .. })
    ));
}

#[test]
fn version_mismatch_names_both_versions() {
    let mut s_cfg = config();
    s_cfg.versions = VersionRange::new(2, 3);
    let mut p = Pair::new(s_cfg, config());
    let s_err = p.s_event().unwrap_err();
    let r_err = p.r_event().unwrap_err();
    let expected =
        "no common protocol version: sender speaks versions 2..=3, receiver speaks version 1";
    assert_eq!(s_err.to_string(), expected);
    assert_eq!(r_err.to_string(), expected);
    // Each side also told the other, in an error frame.
    for frames in [p.frames_to_s(), p.frames_to_r()] {
        let [Frame::Error(e)] = &frames[..] else {
            panic!("expected one error frame, got {frames:?}");
        };
        assert_eq!(e.code, ErrorCode::IncompatibleVersion);
        assert_eq!(e.message, expected);
    }
    assert!(p.s.is_closed() && p.r.is_closed());
}

#[test]
fn peer_error_frame_is_an_event() {
    let mut p = Pair::connected();
    p.r.error(ErrorCode::ShuttingDown, "receiver stops");
    assert_eq!(
        p.s_next(),
        SenderEvent::PeerError {
            code: ErrorCode::ShuttingDown,
            message: "receiver stops".into()
        }
    );
    assert!(p.s.is_closed());
    assert!(matches!(
        p.s.request_state("t"),
        Err(UsageError::WrongState { .. })
    ));
}

#[test]
fn data_before_accept_is_a_protocol_violation() {
    let mut p = Pair::connected();
    p.to_r
        .extend_from_slice(&Frame::Data(stored(b"x")).to_bytes().unwrap());
    let err = p.r_event().unwrap_err();
    assert!(matches!(
        err,
        ProtoError::Unexpected {
            frame: "Data",
            state: "ready"
        }
    ));
    let frames = p.frames_to_s();
    let [Frame::Error(e)] = &frames[..] else {
        panic!("expected error frame");
    };
    assert_eq!(e.code, ErrorCode::ProtocolViolation);
    assert!(matches!(p.r_event(), Ok(None)), "closed: input ignored");
    assert!(matches!(
        p.r.handle_frame(Frame::Heartbeat, p.now),
        Err(ProtoError::Closed)
    ));
}

#[test]
fn malformed_bytes_close_with_an_error_frame() {
    let mut p = Pair::connected();
    let mut junk = BytesMut::new();
    junk.put_slice(b"ZREP");
    junk.put_u8(1);
    junk.put_u8(FrameKind::Control.code());
    junk.put_u16(0);
    junk.put_u32(MAX_CONTROL_PAYLOAD as u32 + 1);
    p.to_s.extend_from_slice(&junk);
    assert!(matches!(p.s_event(), Err(ProtoError::Decode(_))));
    let frames = p.frames_to_r();
    assert!(matches!(&frames[..], [Frame::Error(e)] if e.code == ErrorCode::Malformed));
}

#[test]
fn corrupted_stream_fails_the_checksum() {
    let mut p = Pair::connected();
    p.s.offer_transfer(full_offer("t", "s", 1)).unwrap();
    p.r_next();
    p.accept().unwrap();
    p.s_next();
    // A runtime bug: the session accounts one chunk, the wire carries another.
    let wire = p.send_data(b"aaaa", stored(b"bbbb")).unwrap();
    p.to_r.extend_from_slice(&wire);
    assert!(matches!(p.r_next(), ReceiverEvent::Data(_)));
    p.finish_stream().unwrap();
    assert!(matches!(
        p.r_event(),
        Err(ProtoError::StreamChecksum { .. })
    ));
    let frames = p.frames_to_s();
    assert!(matches!(&frames[..], [Frame::Error(e)] if e.code == ErrorCode::StreamCorrupt));
}

#[test]
fn stream_length_mismatch_is_detected() {
    let mut p = Pair::connected();
    p.s.offer_transfer(full_offer("t", "s", 1)).unwrap();
    p.r_next();
    p.accept().unwrap();
    p.s_next();
    let end = Frame::Control(Message::StreamEnd { bytes: 5, xxh3: 0 });
    p.to_r.extend_from_slice(&end.to_bytes().unwrap());
    assert!(matches!(
        p.r_event(),
        Err(ProtoError::StreamLength {
            announced: 5,
            received: 0
        })
    ));
}

#[test]
fn features_must_be_negotiated() {
    let mut r_cfg = config();
    r_cfg.features = zrep_proto::Features::new();
    let mut p = Pair::new(config(), r_cfg);
    let (ns, _) = p.handshake();
    assert!(!ns.raw_send && !ns.resumable && ns.compression.is_empty());
    // The sender session refuses to offer what was not negotiated...
    let raw = TransferOffer {
        raw: true,
        compression: Compression::None,
        ..full_offer("t", "s", 1)
    };
    assert!(matches!(
        p.s.offer_transfer(raw.clone()),
        Err(UsageError::NotNegotiated { feature: "raw" })
    ));
    assert!(matches!(
        p.s.offer_transfer(full_offer("t", "s", 1)),
        Err(UsageError::NotNegotiated {
            feature: "compression"
        })
    ));
    assert!(matches!(
        p.s.abort_resume("t"),
        Err(UsageError::NotNegotiated { feature: "resume" })
    ));
    // ...and the receiver session rejects a peer that does it anyway.
    p.to_r
        .extend_from_slice(&Frame::Control(Message::Offer(raw)).to_bytes().unwrap());
    assert!(matches!(
        p.r_event(),
        Err(ProtoError::NotNegotiated { feature: "raw" })
    ));
}

#[test]
fn zstd_frames_only_when_announced() {
    let mut p = Pair::connected();
    let offer = TransferOffer {
        compression: Compression::None,
        ..full_offer("t", "s", 1)
    };
    p.s.offer_transfer(offer).unwrap();
    p.r_next();
    p.accept().unwrap();
    p.s_next();
    let raw = vec![0u8; 10_000];
    let chunk = zrep_proto::compress_chunk(&raw, 1).unwrap();
    assert_eq!(chunk.compression(), Compression::Zstd);
    assert!(matches!(
        p.send_data(&raw, chunk.clone()),
        Err(UsageError::ChunkMismatch(_))
    ));
    assert!(matches!(
        p.send_data(&raw[1..], stored(&raw)),
        Err(UsageError::ChunkMismatch(_))
    ));
    // A peer that sends it anyway is cut off.
    p.to_r.extend_from_slice(&chunk.into_wire());
    assert!(matches!(
        p.r_event(),
        Err(ProtoError::CompressionNotAnnounced { .. })
    ));
}

#[test]
fn wrong_replies_are_protocol_errors() {
    let mut p = Pair::connected();
    p.s.request_state("t").unwrap();
    p.r_next();
    assert!(matches!(
        p.r.send_state(absent("other")),
        Err(UsageError::WrongTarget { .. })
    ));
    // A misbehaving receiver that answers for another target anyway:
    let reply = Frame::Control(Message::State(absent("other")));
    p.to_s.extend_from_slice(&reply.to_bytes().unwrap());
    assert!(matches!(
        p.s_event(),
        Err(ProtoError::TargetMismatch { .. })
    ));
}

#[test]
fn commit_of_another_guid_is_rejected_by_the_sender() {
    let mut p = Pair::connected();
    transfer(&mut p, full_offer("t", "s", 1), &test_stream(10));
    let lie = Frame::Control(Message::Committed {
        snapshot: "s".into(),
        guid: 2,
    });
    p.to_s.extend_from_slice(&lie.to_bytes().unwrap());
    assert!(matches!(
        p.s_event(),
        Err(ProtoError::CommitMismatch { got_guid: 2, .. })
    ));
}

#[test]
fn usage_errors_leave_the_session_unchanged() {
    let mut p = Pair::new(config(), config());
    assert!(matches!(
        p.s.request_state("t"),
        Err(UsageError::WrongState {
            state: "waiting for hello",
            ..
        })
    ));
    p.handshake();
    assert!(matches!(p.accept(), Err(UsageError::WrongState { .. })));
    assert!(matches!(
        p.finish_stream(),
        Err(UsageError::WrongState { .. })
    ));
    let huge = "x".repeat(MAX_CONTROL_PAYLOAD);
    assert!(matches!(
        p.s.request_state(huge),
        Err(UsageError::Encode(_))
    ));
    assert!(p.s.is_ready());
    plan(&mut p, "t", absent("t"));
}

#[test]
fn big_state_listing_fits() {
    let mut p = Pair::connected();
    let snapshots: Vec<_> = (0..40_000)
        .map(|i| snap(&format!("zrep-2026-01-01T00:00:{i:05}Z"), i, i))
        .collect();
    let state = TargetState {
        snapshots,
        exists: true,
        ..absent("t")
    };
    let st = plan(&mut p, "t", state.clone());
    assert_eq!(st, state);
}
