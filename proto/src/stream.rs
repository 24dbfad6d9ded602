//! The two halves of one transfer stream, kept outside the sessions.
//!
//! A session only knows *that* a stream is open (and answers its control messages); the bytes
//! are checked and accounted here. Either side may own either half: today the sender writes
//! and the receiver reads, a restore turns that around. Because the halves hold no reference to
//! a session, a runtime can move them to another task and build or open chunks on worker
//! threads, as long as chunks pass through the half in stream order.

use bytes::Bytes;

use crate::data::{ChunkDecompressor, DataChunk, StreamHasher};
use crate::error::{ProtoError, UsageError};
use crate::types::Compression;

/// Byte count and checksum of a whole stream, as carried by the stream-end message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamSummary {
    /// Uncompressed bytes.
    pub bytes: u64,
    /// XXH3-64 of those bytes.
    pub xxh3: u64,
}

/// The writing half: checks each outgoing chunk against what the offer announced and accounts
/// it for the stream-end message.
#[derive(Debug)]
pub struct OutgoingStream {
    compression: Compression,
    hasher: Box<StreamHasher>,
}

impl OutgoingStream {
    /// A stream whose offer announced `compression` (chunks may also be stored).
    pub fn new(compression: Compression) -> Self {
        Self {
            compression,
            hasher: Box::default(),
        }
    }

    /// Accounts one chunk and returns its encoded frame to write.
    ///
    /// `raw` is the chunk's uncompressed bytes and `chunk` the frame built from them (by
    /// [`compress_chunk`](crate::compress_chunk) or [`DataChunk::stored`]); chunks must come in
    /// stream order, since `raw` feeds the checksum.
    pub fn push(&mut self, raw: &[u8], chunk: DataChunk) -> Result<Bytes, UsageError> {
        if chunk.raw_len() != raw.len() {
            return Err(UsageError::ChunkMismatch(
                "raw length differs from the chunk's",
            ));
        }
        if chunk.compression() != Compression::None && chunk.compression() != self.compression {
            return Err(UsageError::ChunkMismatch(
                "compression not announced in the offer",
            ));
        }
        self.hasher.update(raw);
        Ok(chunk.into_wire())
    }

    /// Uncompressed bytes pushed so far.
    pub fn bytes(&self) -> u64 {
        self.hasher.bytes()
    }

    /// What the stream-end message announces for the chunks pushed so far.
    pub fn summary(&self) -> StreamSummary {
        StreamSummary {
            bytes: self.hasher.bytes(),
            xxh3: self.hasher.digest(),
        }
    }
}

/// The reading half: opens each incoming chunk and checks the whole stream against the
/// peer's stream-end message.
///
/// Every error is the peer's fault; hand it to the session's
/// [`reject_stream`](crate::Session::reject_stream), which closes the session with the error
/// frame that says why.
#[derive(Debug)]
pub struct IncomingStream {
    compression: Compression,
    hasher: Box<StreamHasher>,
    /// Created on the first zstd chunk, then reused for the whole stream.
    dctx: Option<ChunkDecompressor>,
}

impl IncomingStream {
    /// A stream whose offer announced `compression`.
    pub fn new(compression: Compression) -> Self {
        Self {
            compression,
            hasher: Box::default(),
            dctx: None,
        }
    }

    /// Checks that `chunk` uses what the offer announced and returns its uncompressed bytes,
    /// accounted. Chunks must come in stream order.
    pub fn open(&mut self, chunk: &DataChunk) -> Result<Bytes, ProtoError> {
        self.check(chunk)?;
        let dctx = match &mut self.dctx {
            Some(dctx) => dctx,
            None => self.dctx.insert(ChunkDecompressor::new()?),
        };
        let bytes = dctx.decompress(chunk)?;
        self.account(&bytes);
        Ok(bytes)
    }

    /// The order-independent part of [`open`](Self::open): whether `chunk` may appear in this
    /// stream at all. A runtime that decompresses on worker threads checks here, opens with
    /// [`decompress_chunk`](crate::decompress_chunk), then [`account`](Self::account)s the
    /// bytes in stream order.
    pub fn check(&self, chunk: &DataChunk) -> Result<(), ProtoError> {
        let got = chunk.compression();
        if got != Compression::None && got != self.compression {
            return Err(ProtoError::CompressionNotAnnounced {
                announced: self.compression,
                got,
            });
        }
        Ok(())
    }

    /// Accounts the next uncompressed bytes of the stream, in stream order.
    pub fn account(&mut self, raw: &[u8]) {
        self.hasher.update(raw);
    }

    /// Uncompressed bytes accounted so far.
    pub fn bytes(&self) -> u64 {
        self.hasher.bytes()
    }

    /// Checks the peer's stream-end message against what arrived.
    pub fn finish(&self, announced: StreamSummary) -> Result<(), ProtoError> {
        if self.hasher.bytes() != announced.bytes {
            return Err(ProtoError::StreamLength {
                announced: announced.bytes,
                received: self.hasher.bytes(),
            });
        }
        let computed = self.hasher.digest();
        if computed != announced.xxh3 {
            return Err(ProtoError::StreamChecksum {
                announced: announced.xxh3,
                computed,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::compress_chunk;

    fn stored(raw: &[u8]) -> DataChunk {
        DataChunk::stored(raw).expect("a short chunk")
    }

    #[test]
    fn halves_agree_on_the_summary_of_the_bytes_that_crossed() {
        let mut out = OutgoingStream::new(Compression::Zstd);
        let mut inc = IncomingStream::new(Compression::Zstd);
        let parts: [&[u8]; 3] = [b"first part ", &[7u8; 70_000], b"last"];
        let mut received = Vec::new();
        for raw in parts {
            let wire = out
                .push(raw, compress_chunk(raw, 3).expect("zstd"))
                .expect("push");
            let chunk = match crate::frame::decode(&mut bytes::BytesMut::from(&wire[..])) {
                Ok(Some(crate::frame::Frame::Data(chunk))) => chunk,
                other => panic!("not a data frame: {other:?}"),
            };
            received.extend_from_slice(&inc.open(&chunk).expect("open"));
        }
        assert_eq!(received, parts.concat());
        assert_eq!(out.bytes(), received.len() as u64);
        inc.finish(out.summary()).expect("same summary");
    }

    #[test]
    fn incoming_refuses_a_wrong_length_a_wrong_checksum_and_unannounced_compression() {
        let mut inc = IncomingStream::new(Compression::None);
        inc.open(&stored(b"abcd"))
            .expect("stored is always allowed");
        let mut out = OutgoingStream::new(Compression::None);
        out.push(b"abcd", stored(b"abcd")).expect("push");
        let honest = out.summary();
        let short = StreamSummary { bytes: 3, ..honest };
        assert!(matches!(
            inc.finish(short),
            Err(ProtoError::StreamLength {
                announced: 3,
                received: 4
            })
        ));
        let forged = StreamSummary {
            xxh3: honest.xxh3 ^ 1,
            ..honest
        };
        assert!(matches!(
            inc.finish(forged),
            Err(ProtoError::StreamChecksum { .. })
        ));
        let zstd = compress_chunk(&[0u8; 4096], 3).expect("zstd");
        assert!(matches!(
            inc.open(&zstd),
            Err(ProtoError::CompressionNotAnnounced {
                announced: Compression::None,
                got: Compression::Zstd
            })
        ));
        assert_eq!(inc.bytes(), 4, "a refused chunk is not accounted");
    }

    #[test]
    fn outgoing_refuses_chunks_that_do_not_match() {
        let mut out = OutgoingStream::new(Compression::None);
        assert!(matches!(
            out.push(b"abc", stored(b"abcd")),
            Err(UsageError::ChunkMismatch(_))
        ));
        let zstd = compress_chunk(&[0u8; 4096], 3).expect("zstd");
        assert!(matches!(
            out.push(&[0u8; 4096], zstd),
            Err(UsageError::ChunkMismatch(_))
        ));
        assert_eq!(out.bytes(), 0);
    }
}
