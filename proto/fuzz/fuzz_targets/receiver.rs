//! Receiver state machine: after a valid sender hello, a sequence of operations built from the
//! fuzz input: well-formed frames with fuzzed fields (to reach every state), raw garbage,
//! time jumps, and the runtime's answers; pairing frames too, and sessions without a client
//! certificate (pairing only). Must never panic.

#![no_main]

use std::time::Duration;

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use zrep_proto::{
    AbortResumeOutcome, Compression, DataChunk, EnrollRequest, Enrolment, ErrorCode, ErrorFrame,
    FailureCode, Features, Frame, Hello, IncomingStream, Message, PairMessage, ReceiverEvent,
    ReceiverSession, RefusalCode, Role, SessionConfig, StreamHasher, StreamKind, TargetState,
    TransferOffer, VersionRange, compress_chunk,
};

struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn byte(&mut self) -> u8 {
        let Some((&b, rest)) = self.0.split_first() else {
            return 0;
        };
        self.0 = rest;
        b
    }

    fn bytes(&mut self, n: usize) -> &[u8] {
        let n = n.min(self.0.len());
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        head
    }

    fn u64(&mut self) -> u64 {
        u64::from(self.byte()) % 4
    }

    fn name(&mut self) -> String {
        let n = usize::from(self.byte() % 4);
        String::from_utf8_lossy(self.bytes(n)).into_owned()
    }
}

fn config() -> SessionConfig {
    let mut c = SessionConfig::default();
    c.features = Features::new()
        .with_compression([Compression::Zstd])
        .with_resumable(true)
        .with_raw_send(true)
        .with_enroll(true)
        .with_renew(true);
    c
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let mut now = Duration::from_secs(1);
    let mut r = if input.byte() % 2 == 0 {
        ReceiverSession::new(config(), now)
    } else {
        ReceiverSession::new_pairing_only(config(), now)
    };
    // Frames in flight, and bytes delivered to the session but not yet consumed.
    let mut wire = BytesMut::new();
    let mut inbox = BytesMut::new();
    let hello = Hello {
        versions: VersionRange::new(1, 1 + u16::from(input.byte() % 2)),
        role: Role::Sender,
        software: "fuzz".into(),
        heartbeat_interval_ms: 1000,
        features: config().features,
    };
    push(&mut wire, Frame::Hello(hello));
    // What the sender would have hashed so far, to build a matching stream end.
    let mut hasher = StreamHasher::new();
    // The reading half the runtime takes on accept: it opens and checks the stream.
    let mut incoming: Option<IncomingStream> = None;

    while !input.0.is_empty() {
        match input.byte() % 13 {
            0 => {
                let n = usize::from(input.byte());
                wire.extend_from_slice(input.bytes(n));
            }
            1 => push(
                &mut wire,
                msg(Message::StateRequest {
                    target: input.name(),
                }),
            ),
            2 => {
                let kind = match input.byte() % 3 {
                    0 => StreamKind::Full,
                    1 => StreamKind::Incremental {
                        base_guid: input.u64(),
                        base_name: input.name(),
                        intermediates: input.byte() % 2 == 0,
                    },
                    _ => StreamKind::Resume {
                        token: input.name(),
                    },
                };
                let offer = TransferOffer {
                    target: input.name(),
                    snapshot: input.name(),
                    guid: input.u64(),
                    kind,
                    compression: if input.byte() % 2 == 0 {
                        Compression::Zstd
                    } else {
                        Compression::None
                    },
                    raw: input.byte() % 2 == 0,
                    size_estimate: None,
                };
                hasher = StreamHasher::new();
                push(&mut wire, msg(Message::Offer(offer)));
            }
            3 => {
                let n = usize::from(input.byte()).max(1);
                let raw = input.bytes(n).to_vec();
                if let Ok(chunk) = DataChunk::stored(&raw) {
                    hasher.update(&raw);
                    push(&mut wire, Frame::Data(chunk));
                }
            }
            4 => {
                let n = usize::from(input.byte()) * 64 + 1;
                let raw = vec![input.byte(); n];
                if let Ok(chunk) = compress_chunk(&raw, 1) {
                    hasher.update(&raw);
                    push(&mut wire, Frame::Data(chunk));
                }
            }
            5 => {
                let (bytes, xxh3) = if input.byte() % 4 == 0 {
                    (input.u64(), input.u64())
                } else {
                    (hasher.bytes(), hasher.digest())
                };
                push(&mut wire, msg(Message::StreamEnd { bytes, xxh3 }));
            }
            6 => push(
                &mut wire,
                msg(Message::StreamAbort {
                    message: input.name(),
                }),
            ),
            7 => push(
                &mut wire,
                msg(Message::AbortResume {
                    target: input.name(),
                }),
            ),
            8 => push(&mut wire, Frame::Heartbeat),
            9 => {
                let frame = match input.byte() % 4 {
                    0 => msg(Message::Bye),
                    1 => Frame::Error(ErrorFrame::new(ErrorCode::Internal, input.name())),
                    2 => msg(Message::Accept),
                    _ => msg(Message::Committed {
                        snapshot: input.name(),
                        guid: input.u64(),
                    }),
                };
                push(&mut wire, frame);
            }
            12 => {
                let frame = match input.byte() % 4 {
                    0 => PairMessage::Enroll(EnrollRequest {
                        token_id: input.u64(),
                        proof: input.bytes(32).to_vec(),
                        csr: input.name().into_bytes(),
                    }),
                    1 => PairMessage::Renew {
                        csr: input.name().into_bytes(),
                    },
                    2 => PairMessage::Renewed {
                        certificate: input.name().into_bytes(),
                    },
                    _ => PairMessage::Enrolled(Enrolment {
                        peer: input.name(),
                        root: input.name(),
                        certificate: Vec::new(),
                        ca_certificate: Vec::new(),
                    }),
                };
                push(&mut wire, Frame::Pairing(frame));
            }
            10 => {
                now += Duration::from_secs(u64::from(input.byte()));
                let _ = r.handle_timeout(now);
            }
            _ => {
                // Flip one byte of what is buffered (corruption in flight).
                if !wire.is_empty() {
                    let i = usize::from(input.byte()) % wire.len();
                    wire[i] ^= input.byte() | 1;
                }
            }
        }
        // Deliver a prefix of what is in flight, as a socket read would.
        let take = (usize::from(input.byte()) * 16).min(wire.len());
        inbox.extend_from_slice(&wire.split_to(take));
        loop {
            match r.handle_bytes(&mut inbox, now) {
                Ok(Some(ev)) => {
                    let checked = match (&ev, incoming.as_mut()) {
                        (ReceiverEvent::Data(chunk), Some(inc)) => inc.open(chunk).map(drop),
                        (ReceiverEvent::StreamEnded(summary), Some(inc)) => inc.finish(*summary),
                        _ => Ok(()),
                    };
                    if let Err(err) = checked {
                        r.reject_stream(err);
                        return;
                    }
                    if let Some(inc) = answer(&mut r, &ev, input.byte()) {
                        incoming = Some(inc);
                    }
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
        while r.poll_transmit(now).is_some() {}
        if r.is_closed() {
            return;
        }
    }
});

fn msg(m: Message) -> Frame {
    Frame::Control(m)
}

fn push(wire: &mut BytesMut, frame: Frame) {
    // Every frame built here is small, far below its kind's limit.
    if let Ok(bytes) = frame.to_bytes() {
        wire.extend_from_slice(&bytes);
    }
}

/// The runtime's reaction, chosen by the input (usage errors are fine, panics are not);
/// returns the stream half of an accepted offer.
fn answer(r: &mut ReceiverSession, ev: &ReceiverEvent, choice: u8) -> Option<IncomingStream> {
    if let ReceiverEvent::TransferOffered(_) = ev
        && choice % 3 != 0
    {
        return r.accept().ok();
    }
    let _ = match (ev, choice % 4) {
        (ReceiverEvent::StateRequested { target }, 0) => r
            .send_state(TargetState {
                target: "wrong".into(),
                ..TargetState::default()
            })
            .or_else(|_| {
                r.send_state(TargetState {
                    target: target.clone(),
                    ..TargetState::default()
                })
            }),
        (ReceiverEvent::StateRequested { target }, _) => r.send_state(TargetState {
            target: target.clone(),
            exists: true,
            ..TargetState::default()
        }),
        (ReceiverEvent::TransferOffered(_), _) => r.refuse(RefusalCode::Busy, "busy"),
        (ReceiverEvent::Data(_), 0) => r.failed(FailureCode::NoSpace, "full"),
        (ReceiverEvent::StreamEnded(_), 0) => r.failed(FailureCode::ZfsReceive, "no"),
        (ReceiverEvent::StreamEnded(_), 1) => r.committed("x", 1),
        (ReceiverEvent::StreamEnded(_), _) => match r.current_offer().cloned() {
            Some(o) => r.committed(o.snapshot, o.guid),
            None => Ok(()),
        },
        (ReceiverEvent::StreamAborted { .. }, _) => r.failed(FailureCode::Aborted, "aborted"),
        (ReceiverEvent::EnrollRequested(_), 0) => r.refuse_enrollment("wrong token"),
        (ReceiverEvent::EnrollRequested(_), _) => r.enrolled(Enrolment {
            peer: "nas1".into(),
            root: "backup/nas1".into(),
            certificate: vec![1],
            ca_certificate: vec![2],
        }),
        (ReceiverEvent::RenewRequested { .. }, 0) => r.renew_refused("no"),
        (ReceiverEvent::RenewRequested { .. }, _) => r.renewed(vec![3]),
        (ReceiverEvent::AbortResumeRequested { .. }, c) => r.abort_resume_result(match c {
            0 => AbortResumeOutcome::Discarded,
            1 => AbortResumeOutcome::NothingToDiscard,
            _ => AbortResumeOutcome::Refused {
                code: RefusalCode::NotPermitted,
                message: String::new(),
            },
        }),
        (_, 3) => {
            r.error(ErrorCode::ShuttingDown, "bye");
            Ok(())
        }
        _ => Ok(()),
    };
    None
}
