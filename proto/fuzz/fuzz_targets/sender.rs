//! Sender state machine: after a valid receiver hello, a sequence of operations built from the
//! fuzz input: receiver frames with fuzzed fields, raw garbage, time jumps, and the runtime's
//! requests. Must never panic.

#![no_main]

use std::time::Duration;

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use zrep_proto::{
    AbortResumeOutcome, Compression, DataChunk, ErrorCode, ErrorFrame, FailureCode, Features,
    Frame, Hello, Message, OutgoingStream, RefusalCode, Role, SenderEvent, SenderSession,
    SessionConfig, StreamKind, StreamSummary, TargetState, TransferOffer, VersionRange,
    compress_chunk,
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

    fn small(&mut self) -> u64 {
        u64::from(self.byte()) % 4
    }

    fn name(&mut self) -> String {
        // Mostly "t"/"s" so replies often match the request.
        match self.byte() % 4 {
            0 => String::from_utf8_lossy(self.bytes(3)).into_owned(),
            1 => "s".into(),
            _ => "t".into(),
        }
    }
}

fn config() -> SessionConfig {
    let mut c = SessionConfig::default();
    c.features = Features::new()
        .with_compression([Compression::Zstd])
        .with_resumable(true)
        .with_raw_send(true);
    c
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let mut now = Duration::from_secs(1);
    let mut s = SenderSession::new(config(), now);
    let mut outgoing: Option<OutgoingStream> = None;
    let mut wire = BytesMut::new();
    let mut inbox = BytesMut::new();
    let features = match input.byte() % 3 {
        0 => Features::new(),
        _ => config().features,
    };
    push(
        &mut wire,
        Frame::Hello(Hello {
            versions: VersionRange::new(1, 1),
            role: Role::Receiver,
            software: "fuzz".into(),
            heartbeat_interval_ms: u32::from(input.byte()) * 100,
            features,
        }),
    );

    while !input.0.is_empty() {
        match input.byte() % 14 {
            0 => {
                let n = usize::from(input.byte());
                wire.extend_from_slice(input.bytes(n));
            }
            1 => {
                let state = TargetState {
                    target: input.name(),
                    exists: input.byte() % 2 == 0,
                    ..TargetState::default()
                };
                push(&mut wire, msg(Message::State(state)));
            }
            2 => push(&mut wire, msg(Message::Accept)),
            3 => push(
                &mut wire,
                msg(Message::Refuse {
                    code: RefusalCode::from(u16::from(input.byte())),
                    message: input.name(),
                }),
            ),
            4 => push(
                &mut wire,
                msg(Message::Committed {
                    snapshot: input.name(),
                    guid: input.small(),
                }),
            ),
            5 => push(
                &mut wire,
                msg(Message::Failed {
                    code: FailureCode::from(u16::from(input.byte())),
                    message: input.name(),
                }),
            ),
            6 => push(
                &mut wire,
                msg(Message::AbortResumeResult {
                    target: input.name(),
                    outcome: AbortResumeOutcome::NothingToDiscard,
                }),
            ),
            7 => {
                let frame = match input.byte() % 3 {
                    0 => Frame::Heartbeat,
                    1 => Frame::Error(ErrorFrame::new(ErrorCode::Internal, input.name())),
                    _ => msg(Message::Bye),
                };
                push(&mut wire, frame);
            }
            8 => {
                now += Duration::from_secs(u64::from(input.byte()));
                let _ = s.handle_timeout(now);
            }
            9 => {
                let _ = s.request_state(input.name());
            }
            10 => {
                let kind = match input.byte() % 3 {
                    0 => StreamKind::Full,
                    1 => StreamKind::Incremental {
                        base_guid: input.small(),
                        base_name: input.name(),
                        intermediates: true,
                    },
                    _ => StreamKind::Resume {
                        token: input.name(),
                    },
                };
                let _ = s.offer_transfer(TransferOffer {
                    target: input.name(),
                    snapshot: input.name(),
                    guid: input.small(),
                    kind,
                    compression: if input.byte() % 2 == 0 {
                        Compression::Zstd
                    } else {
                        Compression::None
                    },
                    raw: input.byte() % 2 == 0,
                    size_estimate: None,
                });
            }
            11 => {
                let n = usize::from(input.byte()) * 8 + 1;
                let raw = vec![input.byte(); n];
                let chunk = if input.byte() % 2 == 0 {
                    compress_chunk(&raw, 1)
                } else {
                    DataChunk::stored(&raw)
                };
                if let (Ok(chunk), Some(out)) = (chunk, outgoing.as_mut()) {
                    let _ = out.push(&raw, chunk);
                }
            }
            12 => {
                let _ = match input.byte() % 4 {
                    0 => s
                        .finish_stream(
                            outgoing
                                .take()
                                .map_or(StreamSummary { bytes: 0, xxh3: 0 }, |out| out.summary()),
                        )
                        .map(drop),
                    1 => s.abort_stream("stop"),
                    2 => s.abort_resume(input.name()),
                    _ => s.close(),
                };
            }
            _ => {
                if !wire.is_empty() {
                    let i = usize::from(input.byte()) % wire.len();
                    wire[i] ^= input.byte() | 1;
                }
            }
        }
        let take = (usize::from(input.byte()) * 16).min(wire.len());
        inbox.extend_from_slice(&wire.split_to(take));
        loop {
            match s.handle_bytes(&mut inbox, now) {
                // The runtime takes the stream's writing half once the offer is accepted.
                Ok(Some(SenderEvent::Accepted)) => outgoing = s.outgoing_stream().ok(),
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(_) => return,
            }
        }
        while s.poll_transmit(now).is_some() {}
        if s.is_closed() {
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
