//! In-memory sender↔receiver pair: bytes move between the two sessions through buffers, time
//! is a number the test advances. No sockets, no clocks.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use zrep_proto::{
    Compression, DataChunk, Features, Frame, IncomingStream, Negotiated, OutgoingStream,
    ProtoError, ReceiverEvent, ReceiverSession, SenderEvent, SenderSession, SessionConfig,
    SnapshotInfo, StreamSummary, TargetState, UsageError, compress_chunk, decode,
};

pub(crate) fn config() -> SessionConfig {
    let mut c = SessionConfig::default();
    c.features = Features::new()
        .with_compression([Compression::Zstd])
        .with_resumable(true)
        .with_raw_send(true)
        .with_zfs("openzfs", "2.2.4");
    c.heartbeat_interval = Duration::from_secs(10);
    c.idle_timeout = Duration::from_secs(60);
    c
}

pub(crate) struct Pair {
    pub(crate) now: Duration,
    pub(crate) s: SenderSession,
    pub(crate) r: ReceiverSession,
    /// Bytes on their way to the receiver / to the sender.
    pub(crate) to_r: BytesMut,
    pub(crate) to_s: BytesMut,
    /// The stream halves the runtime would own: taken on `Accepted` and on `accept`.
    out: Option<OutgoingStream>,
    inc: Option<IncomingStream>,
    /// What the receiver's stream half opened so far.
    pub(crate) received: Vec<u8>,
}

impl Pair {
    pub(crate) fn new(s: SessionConfig, r: SessionConfig) -> Self {
        let now = Duration::from_secs(1000);
        Self {
            now,
            s: SenderSession::new(s, now),
            r: ReceiverSession::new(r, now),
            to_r: BytesMut::new(),
            to_s: BytesMut::new(),
            out: None,
            inc: None,
            received: Vec::new(),
        }
    }

    /// A pair that has completed the handshake.
    pub(crate) fn connected() -> Self {
        let mut p = Self::new(config(), config());
        let (ns, nr) = p.handshake();
        assert_eq!(ns.version, 1);
        assert_eq!(nr.version, 1);
        p
    }

    pub(crate) fn handshake(&mut self) -> (Negotiated, Negotiated) {
        self.flush();
        let Some(SenderEvent::Negotiated(ns)) = self.s_event().unwrap() else {
            panic!("sender did not negotiate");
        };
        let Some(ReceiverEvent::Negotiated(nr)) = self.r_event().unwrap() else {
            panic!("receiver did not negotiate");
        };
        (ns, nr)
    }

    /// Moves everything both sides want to send into the other side's input buffer.
    pub(crate) fn flush(&mut self) {
        while let Some(b) = self.s.poll_transmit(self.now) {
            self.to_r.extend_from_slice(&b);
        }
        while let Some(b) = self.r.poll_transmit(self.now) {
            self.to_s.extend_from_slice(&b);
        }
    }

    /// The sender's next event; on `Accepted` the pair takes the stream's writing half.
    pub(crate) fn s_event(&mut self) -> Result<Option<SenderEvent>, ProtoError> {
        self.flush();
        let event = self.s.handle_bytes(&mut self.to_s, self.now)?;
        match event {
            Some(SenderEvent::Accepted) => self.out = Some(self.s.outgoing_stream().unwrap()),
            Some(_) => self.out = None,
            None => {}
        }
        Ok(event)
    }

    /// The receiver's next event, with its stream half doing what the runtime would: open
    /// each chunk (into `received`) and check the stream end.
    pub(crate) fn r_event(&mut self) -> Result<Option<ReceiverEvent>, ProtoError> {
        self.flush();
        let event = self.r.handle_bytes(&mut self.to_r, self.now)?;
        let checked = match (&event, self.inc.as_mut()) {
            (Some(ReceiverEvent::Data(chunk)), Some(inc)) => {
                inc.open(chunk).map(|b| self.received.extend_from_slice(&b))
            }
            (Some(ReceiverEvent::StreamEnded(summary)), Some(inc)) => inc.finish(*summary),
            (Some(ReceiverEvent::Data(_) | ReceiverEvent::StreamEnded(_)), None) => {
                panic!("stream event without accept")
            }
            _ => Ok(()),
        };
        checked.map_err(|e| self.r.reject_stream(e))?;
        Ok(event)
    }

    /// The receiver accepts the offer and the pair keeps the stream's reading half.
    pub(crate) fn accept(&mut self) -> Result<(), UsageError> {
        self.inc = Some(self.r.accept()?);
        self.received.clear();
        Ok(())
    }

    /// The sender runtime's step for one chunk: through the writing half, to the wire.
    pub(crate) fn send_data(&mut self, raw: &[u8], chunk: DataChunk) -> Result<Bytes, UsageError> {
        match self.out.as_mut() {
            Some(out) => out.push(raw, chunk),
            None => self
                .s
                .outgoing_stream()
                .and_then(|mut out| out.push(raw, chunk)),
        }
    }

    /// Ends the sender's stream with its writing half's summary.
    pub(crate) fn finish_stream(&mut self) -> Result<StreamSummary, UsageError> {
        let summary = match self.out.take() {
            Some(out) => out.summary(),
            None => self.s.outgoing_stream()?.summary(),
        };
        self.s.finish_stream(summary)
    }

    /// The next sender event, which must exist.
    pub(crate) fn s_next(&mut self) -> SenderEvent {
        self.s_event().unwrap().expect("a sender event")
    }

    /// The next receiver event, which must exist.
    pub(crate) fn r_next(&mut self) -> ReceiverEvent {
        self.r_event().unwrap().expect("a receiver event")
    }

    /// Sends `stream` as data frames (zstd where it helps) and returns what the receiver got.
    pub(crate) fn stream(&mut self, stream: &[u8], chunk_size: usize) -> Vec<u8> {
        let start = self.received.len();
        for raw in stream.chunks(chunk_size) {
            let chunk = compress_chunk(raw, 1).unwrap();
            let wire = self.send_data(raw, chunk).unwrap();
            self.to_r.extend_from_slice(&wire);
            while let Some(ev) = self.r_event().unwrap() {
                match ev {
                    ReceiverEvent::Data(_) => {}
                    other => panic!("unexpected {other:?}"),
                }
            }
        }
        self.received[start..].to_vec()
    }

    /// Frames the receiver has queued for the sender, decoded (consumes them).
    pub(crate) fn frames_to_s(&mut self) -> Vec<Frame> {
        self.flush();
        decode_all(&mut self.to_s)
    }

    /// Frames the sender has queued for the receiver, decoded (consumes them).
    pub(crate) fn frames_to_r(&mut self) -> Vec<Frame> {
        self.flush();
        decode_all(&mut self.to_r)
    }
}

/// Decodes every whole frame in `wire` (consumes them).
fn decode_all(wire: &mut BytesMut) -> Vec<Frame> {
    std::iter::from_fn(|| decode(wire).unwrap()).collect()
}

pub(crate) fn snap(name: &str, guid: u64, txg: u64) -> SnapshotInfo {
    SnapshotInfo {
        name: name.into(),
        guid,
        createtxg: txg,
        creation: 1_700_000_000 + txg,
    }
}

pub(crate) fn absent(target: &str) -> TargetState {
    TargetState {
        target: target.into(),
        ..TargetState::default()
    }
}

/// Deterministic test stream: compressible runs mixed with noise, so both chunk forms occur.
pub(crate) fn test_stream(len: usize) -> Vec<u8> {
    let mut x = 0x2545_f491_4f6c_dd1d_u64;
    (0..len)
        .map(|i| {
            if (i / 100_000) % 2 == 0 {
                (i % 251) as u8
            } else {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            }
        })
        .collect()
}

/// Stored chunk helper for tests that need an exact frame.
pub(crate) fn stored(raw: &[u8]) -> DataChunk {
    DataChunk::stored(raw).unwrap()
}
