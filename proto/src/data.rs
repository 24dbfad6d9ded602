//! Data chunks: the pieces of a `zfs send` stream carried by data frames.
//!
//! Each chunk is compressed on its own (or stored as is), so chunks can be compressed in
//! parallel and incompressible data (already compressed or encrypted datasets) costs nothing:
//! [`compress_chunk`] keeps the zstd result only when it is strictly smaller than the input.
//! A [`DataChunk`] owns its complete encoded frame, so handing it to the socket copies nothing.
//!
//! The stream checksum is XXH3-64 over the *uncompressed* stream bytes, computed with
//! [`StreamHasher`]; the sessions use it to fill and check the stream-end message.

use std::fmt;

use bytes::{BufMut, Bytes, BytesMut};

pub use crate::codec::{DATA_PREFIX_LEN, MAX_CHUNK};
use crate::codec::{FrameKind, HEADER_LEN, write_header};
use crate::error::{ChunkError, DecodeError};
pub use crate::types::Compression;

/// One chunk of stream data, as a complete encoded data frame.
///
/// Built by [`compress_chunk`], [`DataChunk::stored`] or [`ChunkCompressor`] on the sending
/// side (pure functions, safe to run on worker threads), and by the decoder on the receiving
/// side. Validated on construction: `1..=MAX_CHUNK` uncompressed bytes; a stored body has
/// exactly that length.
#[derive(Clone, PartialEq, Eq)]
pub struct DataChunk {
    compression: Compression,
    raw_len: u32,
    /// The whole frame: header, prefix, body.
    wire: Bytes,
}

impl DataChunk {
    /// A chunk that carries `raw` uncompressed.
    pub fn stored(raw: &[u8]) -> Result<Self, ChunkError> {
        let raw_len = check_raw_len(raw.len())?;
        let mut wire = BytesMut::with_capacity(HEADER_LEN + DATA_PREFIX_LEN + raw.len());
        write_header(&mut wire, FrameKind::Data, DATA_PREFIX_LEN + raw.len());
        wire.put_u8(Compression::None.code());
        wire.put_u32(raw_len);
        wire.extend_from_slice(raw);
        Ok(Self {
            compression: Compression::None,
            raw_len,
            wire: wire.freeze(),
        })
    }

    /// How the body is compressed.
    pub fn compression(&self) -> Compression {
        self.compression
    }

    /// Number of uncompressed stream bytes in this chunk.
    pub fn raw_len(&self) -> usize {
        self.raw_len as usize
    }

    /// The body as carried on the wire (compressed or stored bytes).
    pub fn body(&self) -> &[u8] {
        &self.wire[HEADER_LEN + DATA_PREFIX_LEN..]
    }

    /// Total encoded frame length (header included).
    pub fn wire_len(&self) -> usize {
        self.wire.len()
    }

    /// The complete encoded frame, ready to write to the connection.
    pub fn into_wire(self) -> Bytes {
        self.wire
    }

    /// Parses a complete data frame (`frame` includes the header, already validated).
    pub(crate) fn from_frame(frame: Bytes) -> Result<Self, DecodeError> {
        let payload = &frame[HEADER_LEN..];
        if payload.len() < DATA_PREFIX_LEN {
            return Err(DecodeError::DataTooShort { len: payload.len() });
        }
        let compression = Compression::try_from(payload[0])?;
        let raw_len = u32::from_be_bytes([payload[1], payload[2], payload[3], payload[4]]);
        if raw_len == 0 || raw_len as usize > MAX_CHUNK {
            return Err(DecodeError::BadChunkLength {
                raw_len,
                max: MAX_CHUNK,
            });
        }
        let body = payload.len() - DATA_PREFIX_LEN;
        if compression == Compression::None && body != raw_len as usize {
            return Err(DecodeError::StoredLengthMismatch { raw_len, body });
        }
        Ok(Self {
            compression,
            raw_len,
            wire: frame,
        })
    }
}

impl fmt::Debug for DataChunk {
    // The body is up to 1 MiB: never dump it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DataChunk")
            .field("compression", &self.compression)
            .field("raw_len", &self.raw_len)
            .field("body_len", &self.body().len())
            .finish()
    }
}

/// Compresses `raw` with zstd at `level`, or stores it when compression does not shrink it.
///
/// Pure and independent per chunk: run it on as many threads as you like, then hand the chunks
/// to [`SenderSession::send_data`](crate::SenderSession::send_data) in stream order. For many
/// chunks on one thread, [`ChunkCompressor`] reuses the zstd context.
pub fn compress_chunk(raw: &[u8], level: i32) -> Result<DataChunk, ChunkError> {
    ChunkCompressor::new(level)?.compress(raw)
}

/// Decompresses a chunk into its uncompressed bytes.
///
/// The output is bounded by the chunk's declared length (at most [`MAX_CHUNK`]): a body that
/// would expand beyond it is an error, and nothing larger is ever allocated. Stored chunks are
/// returned without copying. For many chunks, [`ChunkDecompressor`] reuses the zstd context.
pub fn decompress_chunk(chunk: &DataChunk) -> Result<Bytes, ChunkError> {
    match chunk.compression {
        Compression::None => Ok(stored_body(chunk)),
        Compression::Zstd => ChunkDecompressor::new()?.decompress(chunk),
    }
}

/// A reusable zstd decompressor for data chunks (the receiver session keeps one).
pub struct ChunkDecompressor {
    dctx: zstd::bulk::Decompressor<'static>,
}

impl ChunkDecompressor {
    /// A new decompressor.
    pub fn new() -> Result<Self, ChunkError> {
        Ok(Self {
            dctx: zstd::bulk::Decompressor::new().map_err(ChunkError::Zstd)?,
        })
    }

    /// Like [`decompress_chunk`], reusing this decompressor's context.
    pub fn decompress(&mut self, chunk: &DataChunk) -> Result<Bytes, ChunkError> {
        if chunk.compression == Compression::None {
            return Ok(stored_body(chunk));
        }
        let declared = chunk.raw_len();
        // Invariant from construction: 1 <= declared <= MAX_CHUNK, so this allocation is
        // bounded no matter what the body claims about its own content size; zstd writes into
        // this capacity only and fails if the output does not fit.
        let mut out = Vec::with_capacity(declared);
        let actual = self
            .dctx
            .decompress_to_buffer(chunk.body(), &mut out)
            .map_err(ChunkError::Zstd)?;
        if actual != declared {
            return Err(ChunkError::LengthMismatch { declared, actual });
        }
        Ok(Bytes::from(out))
    }
}

impl fmt::Debug for ChunkDecompressor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChunkDecompressor").finish_non_exhaustive()
    }
}

fn stored_body(chunk: &DataChunk) -> Bytes {
    chunk.wire.slice(HEADER_LEN + DATA_PREFIX_LEN..)
}

/// A reusable zstd compressor for data chunks (one per worker thread).
pub struct ChunkCompressor {
    level: i32,
    cctx: zstd::bulk::Compressor<'static>,
}

impl ChunkCompressor {
    /// A compressor at `level` (zstd levels; 1..=3 is a good range for replication).
    pub fn new(level: i32) -> Result<Self, ChunkError> {
        if !zstd::compression_level_range().contains(&level) {
            return Err(ChunkError::BadLevel(level));
        }
        let cctx = zstd::bulk::Compressor::new(level).map_err(|_| ChunkError::BadLevel(level))?;
        Ok(Self { level, cctx })
    }

    /// Compresses one chunk; stores it raw when zstd does not make it strictly smaller.
    pub fn compress(&mut self, raw: &[u8]) -> Result<DataChunk, ChunkError> {
        let raw_len = check_raw_len(raw.len())?;
        // Compress straight into the final frame buffer, but give zstd one byte less room than
        // the input: if the result does not fit, it did not shrink and we store instead.
        let start = HEADER_LEN + DATA_PREFIX_LEN;
        let mut buf = vec![0u8; start + raw.len() - 1];
        let Ok(body_len) = self.cctx.compress_to_buffer(raw, &mut buf[start..]) else {
            return DataChunk::stored(raw);
        };
        buf.truncate(start + body_len);
        let mut head = &mut buf[..start];
        let mut header = BytesMut::with_capacity(HEADER_LEN);
        write_header(&mut header, FrameKind::Data, DATA_PREFIX_LEN + body_len);
        head.put_slice(&header);
        head.put_u8(Compression::Zstd.code());
        head.put_u32(raw_len);
        Ok(DataChunk {
            compression: Compression::Zstd,
            raw_len,
            wire: Bytes::from(buf),
        })
    }
}

impl fmt::Debug for ChunkCompressor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChunkCompressor")
            .field("level", &self.level)
            .finish_non_exhaustive()
    }
}

/// Streaming XXH3-64 (seed 0) over the uncompressed stream, plus a byte count.
///
/// Feeding the stream in any split gives the same digest as hashing it in one piece.
#[derive(Clone, Default)]
pub struct StreamHasher {
    hasher: xxhash_rust::xxh3::Xxh3Default,
    bytes: u64,
}

impl StreamHasher {
    /// A hasher that has seen nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds the next bytes of the stream.
    pub fn update(&mut self, bytes: &[u8]) {
        self.hasher.update(bytes);
        self.bytes += bytes.len() as u64;
    }

    /// Number of bytes seen so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// XXH3-64 of the bytes seen so far (the hasher can keep going afterwards).
    pub fn digest(&self) -> u64 {
        self.hasher.digest()
    }
}

impl fmt::Debug for StreamHasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamHasher")
            .field("bytes", &self.bytes)
            .field("digest", &format_args!("{:#018x}", self.digest()))
            .finish()
    }
}

/// Checks the 1..=MAX_CHUNK range and narrows to the wire's u32.
fn check_raw_len(len: usize) -> Result<u32, ChunkError> {
    if len == 0 {
        return Err(ChunkError::Empty);
    }
    if len > MAX_CHUNK {
        return Err(ChunkError::TooLarge {
            len,
            max: MAX_CHUNK,
        });
    }
    // MAX_CHUNK is far below u32::MAX, so the conversion cannot fail after the check above.
    u32::try_from(len).map_err(|_| ChunkError::TooLarge {
        len,
        max: MAX_CHUNK,
    })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::RngCore;
    use proptest::test_runner::{RngAlgorithm, TestRng};

    use super::*;

    fn compressible(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i % 7) as u8).collect()
    }

    fn noise(len: usize) -> Vec<u8> {
        // Deterministic, and incompressible for zstd.
        let mut rng = TestRng::deterministic_rng(RngAlgorithm::ChaCha);
        let mut out = vec![0; len];
        rng.fill_bytes(&mut out);
        out
    }

    #[test]
    fn compressible_chunk_round_trips_compressed() {
        let raw = compressible(MAX_CHUNK);
        let chunk = compress_chunk(&raw, 3).unwrap();
        assert_eq!(chunk.compression(), Compression::Zstd);
        assert!(chunk.body().len() < raw.len() / 10);
        assert_eq!(chunk.raw_len(), raw.len());
        assert_eq!(decompress_chunk(&chunk).unwrap(), raw);
    }

    #[test]
    fn incompressible_chunk_is_stored() {
        let raw = noise(64 * 1024);
        let chunk = compress_chunk(&raw, 3).unwrap();
        assert_eq!(chunk.compression(), Compression::None);
        assert_eq!(chunk.body(), &raw[..]);
        assert_eq!(
            chunk.wire_len(),
            HEADER_LEN + DATA_PREFIX_LEN + raw.len(),
            "stored costs only the prefix"
        );
        assert_eq!(decompress_chunk(&chunk).unwrap(), raw);
    }

    #[test]
    fn tiny_chunk_is_stored() {
        let chunk = compress_chunk(b"x", 3).unwrap();
        assert_eq!(chunk.compression(), Compression::None);
        assert_eq!(decompress_chunk(&chunk).unwrap(), &b"x"[..]);
    }

    #[test]
    fn size_limits_are_enforced() {
        assert!(matches!(compress_chunk(&[], 3), Err(ChunkError::Empty)));
        assert!(matches!(
            DataChunk::stored(&vec![0; MAX_CHUNK + 1]),
            Err(ChunkError::TooLarge { .. })
        ));
        assert!(matches!(
            ChunkCompressor::new(1000),
            Err(ChunkError::BadLevel(1000))
        ));
    }

    /// A zstd chunk whose body expands to `raw` but whose prefix declares `declared` bytes.
    fn zstd_chunk_declaring(raw: &[u8], declared: u32) -> DataChunk {
        let body = zstd::bulk::compress(raw, 3).unwrap();
        let mut frame = BytesMut::new();
        write_header(&mut frame, FrameKind::Data, DATA_PREFIX_LEN + body.len());
        frame.put_u8(1);
        frame.put_u32(declared);
        frame.extend_from_slice(&body);
        DataChunk::from_frame(frame.freeze()).unwrap()
    }

    #[test]
    fn decompression_is_bounded_by_declared_length() {
        // A zstd body that expands to 4096 bytes, declared as 100: must fail, not grow.
        let chunk = zstd_chunk_declaring(&[0u8; 4096], 100);
        assert!(matches!(decompress_chunk(&chunk), Err(ChunkError::Zstd(_))));
    }

    #[test]
    fn short_decompression_is_a_length_mismatch() {
        let chunk = zstd_chunk_declaring(&[1u8; 50], 100);
        assert!(matches!(
            decompress_chunk(&chunk),
            Err(ChunkError::LengthMismatch {
                declared: 100,
                actual: 50
            })
        ));
    }

    #[test]
    fn hasher_is_split_independent() {
        let data = noise(10_000);
        let mut h = StreamHasher::new();
        for part in data.chunks(333) {
            h.update(part);
        }
        assert_eq!(h.digest(), xxhash_rust::xxh3::xxh3_64(&data));
        assert_eq!(h.bytes(), 10_000);
        // Known value pins the algorithm (XXH3-64, seed 0) against silent drift.
        assert_eq!(StreamHasher::new().digest(), 0x2d06_8005_38d3_94c2);
    }
}
