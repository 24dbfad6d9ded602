//! Sans-IO inspector of ZFS send streams.
//!
//! The receiver runs every byte a peer sends through a [`StreamInspector`] before it reaches
//! `zfs receive`: the stream must be exactly what the receiver agreed to take (a
//! [`StreamExpectation`]), or it is refused with a [`StreamRefusal`] before the offending record
//! header is released.
//!
//! # Stream format (OpenZFS `include/sys/zfs_ioctl.h`, `lib/libzfs/libzfs_sendrecv.c`)
//!
//! A stream is a sequence of records. Each starts with a fixed [`RECORD_LEN`]-byte header
//! (`dmu_replay_record`: u32 record type, u32 payload length, then a 304-byte union) and is
//! followed by a payload whose length depends on the record type. Integers are in the sender's
//! byte order, told by the BEGIN record's magic. A *substream* is one snapshot: BEGIN, records,
//! END. A *package* (compound stream, made by `zfs send -I/-R/-p/-h`) is an outer BEGIN of header
//! type compound with an nvlist payload (empty for a plain `-I`), an END, one substream per
//! snapshot, and a final END.
//!
//! # What is taken
//!
//! - A single substream, or (only when the offer has intermediates) a plain `-I` package: one
//!   with an empty nvlist. Packages with an nvlist (`-R`, `-p`, `-h`), nested packages, clones
//!   (CLONE flag), and object types other than filesystem and volume are refused.
//! - Features: SA_SPILL, LARGE_DNODE and LONGNAME (what a plain `zfs send` sets by itself);
//!   for a raw offer also RAW and what raw implies (COMPRESSED, LZ4, ZSTD, EMBED_DATA,
//!   LARGE_BLOCKS, LARGE_MICROZAP); for a resumed offer RESUMING, which is then required. Any
//!   other bit (DEDUP, DEDUPPROPS, REDACTED, HOLDS, unknown ones) is refused.
//! - The chain: the first substream starts at the offer's origin (GUID 0 for a full stream),
//!   each next one at the previous one's snapshot, no GUID twice, the last one ends at the
//!   offer's snapshot (GUID and short name), all name one valid dataset, END records carry
//!   their BEGIN's GUID, nothing follows the final END.
//! - Payload lengths are computed as `zfs receive` does and bounded by what ZFS can produce
//!   (16 MiB blocks, 16 KiB bonus buffers, 112-byte embedded blocks, 1 MiB BEGIN nvlists), so
//!   the inspector and `zfs receive` always agree on where each record header is.
//!
//! Only the current record header is ever buffered; payloads are counted and passed through, so
//! memory stays bounded whatever the peer sends.

use std::collections::HashSet;
use std::fmt;

use thiserror::Error;

use crate::name::{NameError, SnapshotName};

/// Length of a record header (`sizeof (dmu_replay_record_t)`).
pub const RECORD_LEN: usize = 312;
/// `DMU_BACKUP_MAGIC`, the first field of every BEGIN record.
pub const BACKUP_MAGIC: u64 = 0x2_F5BA_CBAC;
/// Largest block ZFS has (`SPA_MAXBLOCKSIZE`, 16 MiB): the bound for WRITE and SPILL payloads.
pub const MAX_BLOCK_PAYLOAD: u64 = 16 << 20;
/// Largest BEGIN nvlist payload taken (resume state, raw key data: a few KiB in practice).
pub const MAX_BEGIN_PAYLOAD: u64 = 1 << 20;
/// Largest OBJECT payload: a bonus buffer fits in the largest dnode (`DNODE_MAX_SIZE`, 16 KiB).
pub const MAX_OBJECT_PAYLOAD: u64 = 16 << 10;
/// Largest WRITE_EMBEDDED payload: what fits in a block pointer (`BPE_PAYLOAD_SIZE`).
pub const MAX_EMBEDDED_PAYLOAD: u64 = 112;
/// Most substreams (snapshots) one package may carry; bounds the memory of the summary.
pub const MAX_SUBSTREAMS: usize = 100_000;

/// `dmu_objset_type_t` values in a BEGIN record.
const OBJSET_ZFS: u32 = 2;
const OBJSET_ZVOL: u32 = 3;

/// What the receiver agreed to take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamExpectation {
    /// None: a full stream (no origin). Some(g): incremental; the first substream must start at g.
    pub from_guid: Option<u64>,
    /// The snapshot the (last) substream must end at: its GUID and its short name (after '@').
    pub to_guid: u64,
    /// Short name (after `@`) of the snapshot the stream must end at.
    pub to_snapshot: String,
    /// The offer is raw (zfs send -w): RAW and the features raw implies are allowed.
    pub raw: bool,
    /// The offer resumes a cut receive (zfs send -t): RESUMING allowed (and required).
    pub resuming: bool,
    /// -I packages allowed (intermediate snapshots between from and to).
    pub intermediates: bool,
}

/// The object type of the stream's datasets (the receiver picks `zfs receive -o` options by it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ObjectKind {
    /// A ZFS filesystem (`DMU_OST_ZFS`).
    Filesystem,
    /// A volume (`DMU_OST_ZVOL`).
    Volume,
}

impl fmt::Display for ObjectKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ObjectKind::Filesystem => "filesystem",
            ObjectKind::Volume => "volume",
        })
    }
}

/// What a whole, accepted stream creates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamSummary {
    /// The snapshots the stream creates, in order: short name (after `@`) and GUID.
    pub snapshots: Vec<(String, u64)>,
    /// The object type of the stream's dataset.
    pub kind: ObjectKind,
}

/// Byte order of a stream (the sender's native order).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ByteOrder {
    /// Little-endian sender (x86, most ARM).
    Little,
    /// Big-endian sender (SPARC, POWER, s390x).
    Big,
}

impl ByteOrder {
    fn u32(self, b: &[u8], at: usize) -> u32 {
        let mut w = [0; 4];
        w.copy_from_slice(&b[at..at + 4]);
        match self {
            ByteOrder::Little => u32::from_le_bytes(w),
            ByteOrder::Big => u32::from_be_bytes(w),
        }
    }

    fn u64(self, b: &[u8], at: usize) -> u64 {
        let mut w = [0; 8];
        w.copy_from_slice(&b[at..at + 8]);
        match self {
            ByteOrder::Little => u64::from_le_bytes(w),
            ByteOrder::Big => u64::from_be_bytes(w),
        }
    }

    fn put_u32(self, b: &mut [u8], at: usize, v: u32) {
        b[at..at + 4].copy_from_slice(&match self {
            ByteOrder::Little => v.to_le_bytes(),
            ByteOrder::Big => v.to_be_bytes(),
        });
    }

    fn put_u64(self, b: &mut [u8], at: usize, v: u64) {
        b[at..at + 8].copy_from_slice(&match self {
            ByteOrder::Little => v.to_le_bytes(),
            ByteOrder::Big => v.to_be_bytes(),
        });
    }

    /// The order in which `magic` (the BEGIN's first field) reads as [`BACKUP_MAGIC`].
    fn detect(record: &[u8]) -> Option<ByteOrder> {
        [ByteOrder::Little, ByteOrder::Big]
            .into_iter()
            .find(|o| o.u64(record, 8) == BACKUP_MAGIC)
    }
}

/// Record types (`drr_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RecordType {
    /// Starts a substream or a package.
    Begin,
    /// Creates or changes an object; payload: its bonus buffer.
    Object,
    /// Frees a range of objects.
    FreeObjects,
    /// Writes a block; payload: the block.
    Write,
    /// Frees a range of an object.
    Free,
    /// Ends a substream or a package.
    End,
    /// Writes a block by reference to an earlier one (dedup streams).
    WriteByRef,
    /// Writes a spill block; payload: the block.
    Spill,
    /// Writes a block held in the block pointer; payload: its (compressed) data.
    WriteEmbedded,
    /// Describes a range of objects (raw streams).
    ObjectRange,
    /// Marks a redacted range (redacted streams).
    Redact,
}

impl RecordType {
    fn from_raw(raw: u32) -> Option<RecordType> {
        use RecordType::*;
        Some(match raw {
            0 => Begin,
            1 => Object,
            2 => FreeObjects,
            3 => Write,
            4 => Free,
            5 => End,
            6 => WriteByRef,
            7 => Spill,
            8 => WriteEmbedded,
            9 => ObjectRange,
            10 => Redact,
            _ => return None,
        })
    }

    /// The name OpenZFS uses (`DRR_` dropped).
    pub fn name(self) -> &'static str {
        use RecordType::*;
        match self {
            Begin => "BEGIN",
            Object => "OBJECT",
            FreeObjects => "FREEOBJECTS",
            Write => "WRITE",
            Free => "FREE",
            End => "END",
            WriteByRef => "WRITE_BYREF",
            Spill => "SPILL",
            WriteEmbedded => "WRITE_EMBEDDED",
            ObjectRange => "OBJECT_RANGE",
            Redact => "REDACT",
        }
    }
}

impl fmt::Display for RecordType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Header type of a BEGIN record (low two bits of `drr_versioninfo`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderType {
    /// One snapshot (`DMU_SUBSTREAM`).
    Substream,
    /// A package of substreams (`DMU_COMPOUNDSTREAM`).
    Compound,
}

/// Declares flag words: each a `pub struct` over its raw bits with its named bits (constants and
/// their `NAMED` table), `contains`, `|`, and `Display`/`Debug` by name (`|`-separated, then
/// unknown bits in hex; `none` when empty).
macro_rules! flag_set {
    ($(
        $(#[$type_doc:meta])*
        pub struct $name:ident($bits:ty) { $($(#[$doc:meta])* $flag:ident = $bit:literal,)* }
    )*) => {$(
        $(#[$type_doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
        pub struct $name(pub $bits);

        impl $name {
            $($(#[$doc])* pub const $flag: $name = $name(1 << $bit);)*

            const NAMED: &'static [($name, &'static str)] =
                &[$((Self::$flag, stringify!($flag)),)*];

            /// Whether every flag of `other` is set here.
            pub fn contains(self, other: $name) -> bool {
                self.0 & other.0 == other.0
            }

            fn unknown_bits(self) -> $bits {
                Self::NAMED
                    .iter()
                    .fold(self.0, |rest, (flag, _)| rest & !flag.0)
            }
        }

        impl std::ops::BitOr for $name {
            type Output = $name;
            fn bitor(self, rhs: $name) -> $name {
                $name(self.0 | rhs.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                let names = Self::NAMED
                    .iter()
                    .filter(|(flag, _)| self.contains(*flag))
                    .map(|(_, name)| (*name).to_owned());
                let unknown = self.unknown_bits();
                let unknown = (unknown != 0).then(|| format!("unknown {unknown:#x}"));
                let all: Vec<String> = names.chain(unknown).collect();
                if all.is_empty() {
                    f.write_str("none")
                } else {
                    f.write_str(&all.join("|"))
                }
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({})"), self)
            }
        }
    )*};
}

flag_set! {
    /// Stream feature flags (`drr_versioninfo` from bit 2 up, so bit 0 here is `DEDUP`).
    pub struct FeatureFlags(u64) {
        /// Deduplicated stream (WRITE_BYREF records).
        DEDUP = 0,
        /// Dedup properties.
        DEDUPPROPS = 1,
        /// System-attribute spill blocks (ZPL version 5 and later).
        SA_SPILL = 2,
        /// WRITE_EMBEDDED records (`zfs send -e`).
        EMBED_DATA = 16,
        /// LZ4-compressed blocks.
        LZ4 = 17,
        /// Blocks over 128 KiB (`zfs send -L`).
        LARGE_BLOCKS = 19,
        /// Resumes a cut send (`zfs send -t`).
        RESUMING = 20,
        /// Redacted send.
        REDACTED = 21,
        /// Blocks as compressed on disk (`zfs send -c`).
        COMPRESSED = 22,
        /// Dnodes over 512 bytes.
        LARGE_DNODE = 23,
        /// Raw (encrypted) blocks (`zfs send -w`).
        RAW = 24,
        /// ZSTD-compressed blocks.
        ZSTD = 25,
        /// User holds (`zfs send -h`).
        HOLDS = 26,
        /// Switch to large blocks (defined, not set by OpenZFS 2.3).
        SWITCH_TO_LARGE_BLOCKS = 27,
        /// File names over 255 bytes.
        LONGNAME = 28,
        /// Micro ZAPs over 128 KiB.
        LARGE_MICROZAP = 29,
    }
    /// BEGIN record flags (`drr_flags`, `DRR_FLAG_*`).
    pub struct BeginFlags(u32) {
        /// The snapshot is a clone's: its origin lives in another dataset.
        CLONE = 0,
        /// Case-insensitive dataset.
        CI_DATA = 1,
        /// A full stream that carries FREE and FREEOBJECTS records.
        FREERECORDS = 2,
        /// OBJECT/SPILL records carry meaningful spill flags.
        SPILL_BLOCK = 3,
    }
}

impl FeatureFlags {
    /// No feature.
    pub const NONE: FeatureFlags = FeatureFlags(0);

    /// The raw bits.
    pub fn bits(self) -> u64 {
        self.0
    }

    /// Whether no flag is set.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The flags set here but not in `other`.
    pub fn without(self, other: FeatureFlags) -> FeatureFlags {
        FeatureFlags(self.0 & !other.0)
    }

    /// Bits that no known feature names.
    pub fn unknown(self) -> FeatureFlags {
        FeatureFlags(self.unknown_bits())
    }
}

impl BeginFlags {
    /// Bits that no known flag names.
    pub fn unknown(self) -> u32 {
        self.unknown_bits()
    }
}

/// A parsed BEGIN record header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BeginRecord {
    /// The sender's byte order, told by the magic.
    pub byte_order: ByteOrder,
    /// Substream or package.
    pub header: HeaderType,
    /// Stream features.
    pub features: FeatureFlags,
    /// Creation time of the snapshot (seconds since the epoch).
    pub creation_time: u64,
    /// `dmu_objset_type_t`: 2 filesystem, 3 volume (0 in a package header).
    pub object_type: u32,
    /// `DRR_FLAG_*`.
    pub flags: BeginFlags,
    /// GUID of the snapshot the stream creates (0 in a package header).
    pub to_guid: u64,
    /// GUID of the incremental source, 0 for a full stream.
    pub from_guid: u64,
    /// `pool/dataset@snapshot` as the sender names it.
    pub to_name: String,
    /// Length of the nvlist payload after the header.
    pub payload_len: u32,
}

impl BeginRecord {
    /// Parses the first [`RECORD_LEN`] bytes of `record` as a BEGIN record header (offsets in
    /// errors are 0).
    pub fn parse(record: &[u8]) -> Result<BeginRecord, StreamRefusal> {
        if record.len() < RECORD_LEN {
            return Err(StreamRefusal::Truncated {
                offset: record.len() as u64,
                missing: format!("the rest of the {RECORD_LEN}-byte BEGIN record"),
            });
        }
        Self::parse_at(&record[..RECORD_LEN], 0, None)
    }

    /// The record header in `byte_order` (the inverse of [`BeginRecord::parse`]; a name over
    /// 255 bytes is cut, feature bits above 61 are dropped). For tests, tools and fakes.
    pub fn encode(&self) -> [u8; RECORD_LEN] {
        let mut r = [0; RECORD_LEN];
        let o = self.byte_order;
        o.put_u32(&mut r, 0, 0);
        o.put_u32(&mut r, 4, self.payload_len);
        o.put_u64(&mut r, 8, BACKUP_MAGIC);
        let header = match self.header {
            HeaderType::Substream => 1,
            HeaderType::Compound => 2,
        };
        o.put_u64(&mut r, 16, (self.features.0 << 2) | header);
        o.put_u64(&mut r, 24, self.creation_time);
        o.put_u32(&mut r, 32, self.object_type);
        o.put_u32(&mut r, 36, self.flags.0);
        o.put_u64(&mut r, 40, self.to_guid);
        o.put_u64(&mut r, 48, self.from_guid);
        let name = self.to_name.as_bytes();
        let len = name.len().min(RECORD_LEN - 56 - 1);
        r[56..56 + len].copy_from_slice(&name[..len]);
        r
    }

    /// The object kind, if the type is one zrep replicates.
    pub fn object_kind(&self) -> Option<ObjectKind> {
        match self.object_type {
            OBJSET_ZFS => Some(ObjectKind::Filesystem),
            OBJSET_ZVOL => Some(ObjectKind::Volume),
            _ => None,
        }
    }

    /// `record` is one whole header at stream offset `offset`; `order` is the stream's order if
    /// already known (a later BEGIN must match it).
    fn parse_at(
        record: &[u8],
        offset: u64,
        order: Option<ByteOrder>,
    ) -> Result<BeginRecord, StreamRefusal> {
        let Some(byte_order) = ByteOrder::detect(record) else {
            let raw_type = u32::from_le_bytes([record[0], record[1], record[2], record[3]]);
            if raw_type != 0 {
                return Err(StreamRefusal::NotBegin {
                    offset,
                    record_type: raw_type,
                });
            }
            return Err(StreamRefusal::BadMagic {
                offset,
                magic: ByteOrder::Little.u64(record, 8),
            });
        };
        if order.is_some_and(|o| o != byte_order) {
            return Err(StreamRefusal::ByteOrderChanged { offset });
        }
        let record_type = byte_order.u32(record, 0);
        if record_type != 0 {
            return Err(StreamRefusal::NotBegin {
                offset,
                record_type,
            });
        }
        let versioninfo = byte_order.u64(record, 16);
        let header = match versioninfo & 3 {
            1 => HeaderType::Substream,
            2 => HeaderType::Compound,
            other => {
                return Err(StreamRefusal::BadHeaderType {
                    offset,
                    header_type: other as u8,
                });
            }
        };
        let name_bytes = &record[56..RECORD_LEN];
        let Some(nul) = name_bytes.iter().position(|&b| b == 0) else {
            return Err(StreamRefusal::BadToName {
                offset,
                name: String::from_utf8_lossy(name_bytes).into_owned(),
                problem: "it is not NUL-terminated within 256 bytes".to_owned(),
            });
        };
        let to_name = std::str::from_utf8(&name_bytes[..nul])
            .map_err(|_| StreamRefusal::BadToName {
                offset,
                name: String::from_utf8_lossy(&name_bytes[..nul]).into_owned(),
                problem: "it is not UTF-8".to_owned(),
            })?
            .to_owned();
        Ok(BeginRecord {
            byte_order,
            header,
            features: FeatureFlags(versioninfo >> 2),
            creation_time: byte_order.u64(record, 24),
            object_type: byte_order.u32(record, 32),
            flags: BeginFlags(byte_order.u32(record, 36)),
            to_guid: byte_order.u64(record, 40),
            from_guid: byte_order.u64(record, 48),
            to_name,
            payload_len: byte_order.u32(record, 4),
        })
    }
}

/// An END record header carrying `to_guid` (0 for a package's), with a zero checksum. For tests,
/// tools and fakes.
pub fn end_record(order: ByteOrder, to_guid: u64) -> [u8; RECORD_LEN] {
    let mut r = [0; RECORD_LEN];
    order.put_u32(&mut r, 0, 5);
    order.put_u64(&mut r, 40, to_guid);
    r
}

/// Why a stream is refused. Offsets are byte positions from the start of the stream.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum StreamRefusal {
    /// The first record is not a BEGIN.
    #[error("not a ZFS send stream: the first record has type {record_type}, expected BEGIN (0)")]
    NotBegin {
        /// Offset of the record.
        offset: u64,
        /// Its type as read little-endian.
        record_type: u32,
    },
    /// A BEGIN record without the send-stream magic.
    #[error(
        "not a ZFS send stream: BEGIN at byte {offset} has magic {magic:#x}, expected {BACKUP_MAGIC:#x}"
    )]
    BadMagic {
        /// Offset of the record.
        offset: u64,
        /// The magic as read little-endian.
        magic: u64,
    },
    /// A later BEGIN in the other byte order than the first.
    #[error("BEGIN at byte {offset} is in the other byte order than the stream's first BEGIN")]
    ByteOrderChanged {
        /// Offset of the record.
        offset: u64,
    },
    /// A header type that is neither substream nor package.
    #[error(
        "BEGIN at byte {offset} has header type {header_type}, expected 1 (substream) or 2 (package)"
    )]
    BadHeaderType {
        /// Offset of the record.
        offset: u64,
        /// The low two bits of `drr_versioninfo`.
        header_type: u8,
    },
    /// A record type OpenZFS does not define.
    #[error("record at byte {offset} has unknown type {record_type}")]
    UnknownRecordType {
        /// Offset of the record.
        offset: u64,
        /// The type.
        record_type: u32,
    },
    /// A known record where the stream's structure does not allow it.
    #[error("{record} record at byte {offset}, expected {expected}")]
    UnexpectedRecord {
        /// Offset of the record.
        offset: u64,
        /// What came.
        record: RecordType,
        /// What the structure called for.
        expected: &'static str,
    },
    /// A record type that only a refused feature (dedup, redaction) produces.
    #[error(
        "{record} record at byte {offset}: only {feature} streams have it and they are refused"
    )]
    RecordNotAllowed {
        /// Offset of the record.
        offset: u64,
        /// What came.
        record: RecordType,
        /// The feature that produces it.
        feature: &'static str,
    },
    /// A package (compound stream) where the offer does not allow one.
    #[error("stream is a package (zfs send -I/-R/-p/-h), expected a single substream: {reason}")]
    PackageNotAllowed {
        /// Why the offer excludes it.
        reason: &'static str,
    },
    /// A package with an nvlist: properties, children or holds.
    #[error(
        "package header carries a {payload_len}-byte nvlist (zfs send -R, -p or -h: properties, children or holds); only a plain -I package is taken"
    )]
    PackageWithPayload {
        /// Length of the nvlist.
        payload_len: u32,
    },
    /// A package header inside a package.
    #[error("package header at byte {offset} inside a package")]
    NestedPackage {
        /// Offset of the record.
        offset: u64,
    },
    /// A package with no substream.
    #[error("package ends at byte {offset} without any snapshot")]
    EmptyPackage {
        /// Offset of the final END.
        offset: u64,
    },
    /// A clone's stream (its origin lives in another dataset).
    #[error("stream of {snapshot} at byte {offset} is a clone's (CLONE flag); clones are refused")]
    Clone {
        /// Offset of the BEGIN.
        offset: u64,
        /// The snapshot it creates.
        snapshot: String,
    },
    /// BEGIN flags no OpenZFS version defines.
    #[error("BEGIN at byte {offset} has unknown flags {flags}")]
    UnknownFlags {
        /// Offset of the BEGIN.
        offset: u64,
        /// All its flags.
        flags: BeginFlags,
    },
    /// An object type other than filesystem or volume.
    #[error(
        "stream of {snapshot} has object type {object_type}, expected 2 (filesystem) or 3 (volume)"
    )]
    BadObjectType {
        /// The snapshot it creates.
        snapshot: String,
        /// `drr_type`.
        object_type: u32,
    },
    /// Substreams of different object types.
    #[error("stream of {snapshot} is a {found}, the stream's first snapshot a {first}")]
    ObjectKindChanged {
        /// The snapshot whose kind differs.
        snapshot: String,
        /// The first substream's kind.
        first: ObjectKind,
        /// This substream's kind.
        found: ObjectKind,
    },
    /// A BEGIN whose `toname` is not a valid snapshot name.
    #[error("BEGIN at byte {offset} names {name:?}, not a valid snapshot name: {problem}")]
    BadToName {
        /// Offset of the BEGIN.
        offset: u64,
        /// The name (lossily decoded).
        name: String,
        /// What is wrong with it.
        problem: String,
    },
    /// Substreams of different datasets.
    #[error("stream names {found}, expected a snapshot of {expected} like the rest of the stream")]
    DatasetChanged {
        /// The dataset of the first BEGIN.
        expected: String,
        /// The full name that differs.
        found: String,
    },
    /// Stream features the offer does not allow.
    #[error(
        "stream of {snapshot} uses features {refused} that this offer does not allow (allowed: {allowed})"
    )]
    FeatureNotAllowed {
        /// The snapshot (or package) name.
        snapshot: String,
        /// The features outside the allowed set.
        refused: FeatureFlags,
        /// The allowed set.
        allowed: FeatureFlags,
    },
    /// A resumed offer whose stream does not resume.
    #[error(
        "stream of {snapshot} lacks the RESUMING feature, expected a resumed send (zfs send -t)"
    )]
    NotResuming {
        /// The snapshot name.
        snapshot: String,
    },
    /// A BEGIN nvlist where the offer calls for none.
    #[error(
        "BEGIN of {snapshot} carries a {payload_len}-byte nvlist, expected none (only raw and resumed sends have one)"
    )]
    UnexpectedBeginPayload {
        /// The snapshot name.
        snapshot: String,
        /// Length of the nvlist.
        payload_len: u32,
    },
    /// A payload longer than any legitimate one.
    #[error(
        "{record} record at byte {offset} announces a {len}-byte payload, at most {max} allowed"
    )]
    PayloadTooLarge {
        /// Offset of the record.
        offset: u64,
        /// Its type.
        record: RecordType,
        /// The announced length.
        len: u64,
        /// The bound.
        max: u64,
    },
    /// The first substream starts elsewhere than the offer's origin.
    #[error(
        "stream of {snapshot} starts from GUID {found:#x}, expected {}",
        describe_from(*expected)
    )]
    WrongOrigin {
        /// The snapshot name.
        snapshot: String,
        /// The GUID the offer starts from, 0 for a full stream.
        expected: u64,
        /// `drr_fromguid`.
        found: u64,
    },
    /// A substream that does not continue from the previous one.
    #[error(
        "stream of {snapshot} starts from GUID {found:#x}, expected the previous snapshot's {expected:#x}"
    )]
    ChainBroken {
        /// The snapshot name.
        snapshot: String,
        /// The previous substream's GUID.
        expected: u64,
        /// `drr_fromguid`.
        found: u64,
    },
    /// A snapshot GUID seen before in the stream.
    #[error("stream of {snapshot} repeats GUID {guid:#x} already seen in this stream")]
    RepeatedGuid {
        /// The snapshot name.
        snapshot: String,
        /// The GUID.
        guid: u64,
    },
    /// More substreams than the bound.
    #[error("package carries more than {MAX_SUBSTREAMS} snapshots")]
    TooManySubstreams,
    /// A substream after the one that ends at the expected snapshot.
    #[error("stream of {snapshot} follows the expected final snapshot {expected}")]
    PastTarget {
        /// The extra snapshot's name.
        snapshot: String,
        /// The expected final snapshot's short name.
        expected: String,
    },
    /// The stream (or a substream claiming the target's GUID or name) ends elsewhere.
    #[error(
        "stream brings {found} (GUID {found_guid:#x}) where the offer ends at @{expected} (GUID {expected_guid:#x})"
    )]
    WrongTarget {
        /// What the stream ends at (full name).
        found: String,
        /// Its GUID.
        found_guid: u64,
        /// The expected short name.
        expected: String,
        /// The expected GUID.
        expected_guid: u64,
    },
    /// An END that names another snapshot than its BEGIN.
    #[error("END at byte {offset} carries GUID {found:#x}, expected {expected:#x}")]
    EndMismatch {
        /// Offset of the END.
        offset: u64,
        /// The GUID of the BEGIN it closes (0 for a package's).
        expected: u64,
        /// `drr_toguid` of the END.
        found: u64,
    },
    /// Bytes after the stream's final END.
    #[error("stream continues after its final END at byte {offset}")]
    TrailingBytes {
        /// Offset of the first extra byte.
        offset: u64,
    },
    /// The stream stopped before its end.
    #[error("stream stops at byte {offset}, before {missing}")]
    Truncated {
        /// Bytes seen.
        offset: u64,
        /// What was still to come.
        missing: String,
    },
}

fn describe_from(expected: u64) -> String {
    if expected == 0 {
        "0 (a full stream)".to_owned()
    } else {
        format!("{expected:#x} (the offer's incremental source)")
    }
}

/// Where the inspector is in the stream's structure.
#[derive(Debug, Clone)]
enum Phase {
    /// Before the first record.
    Start,
    /// After a package header: its END comes next.
    PackageHeaderEnd,
    /// In a package, between substreams: a substream BEGIN or the final END.
    BetweenSubstreams,
    /// Inside a substream that creates the snapshot with this GUID.
    InSubstream {
        /// GUID of the substream's BEGIN (its END must carry it).
        to_guid: u64,
        /// Its features (decide which record types are legitimate).
        features: FeatureFlags,
    },
    /// After the final END.
    Done,
}

/// Checks a send stream as it passes, record by record, against a [`StreamExpectation`].
#[derive(Debug)]
pub struct StreamInspector {
    expect: StreamExpectation,
    header: [u8; RECORD_LEN],
    filled: usize,
    /// Payload bytes of the current record still to pass.
    skip: u64,
    /// Bytes consumed so far.
    offset: u64,
    phase: Phase,
    order: Option<ByteOrder>,
    package: bool,
    /// Dataset all BEGINs must name (set by the first one).
    dataset: Option<String>,
    kind: Option<ObjectKind>,
    snapshots: Vec<(String, u64)>,
    guids: HashSet<u64>,
    /// The substream ending at the expected snapshot has begun: nothing may follow it.
    reached_target: bool,
    error: Option<StreamRefusal>,
}

impl StreamInspector {
    /// An inspector for a stream that must match `expect`.
    pub fn new(expect: StreamExpectation) -> Self {
        StreamInspector {
            expect,
            header: [0; RECORD_LEN],
            filled: 0,
            skip: 0,
            offset: 0,
            phase: Phase::Start,
            order: None,
            package: false,
            dataset: None,
            kind: None,
            snapshots: Vec::new(),
            guids: HashSet::new(),
            reached_target: false,
            error: None,
        }
    }

    /// Inspects the next bytes. Returns how many bytes *from the start of the stream* are now
    /// cleared to reach `zfs receive` (monotonic). Everything up to the start of the current
    /// incomplete record header is cleared once every BEGIN record before it was checked; the
    /// bytes of an incomplete record header are held back (at most RECORD_LEN - 1), so no byte of
    /// an unchecked BEGIN is ever cleared. After an Err every later call returns the same Err.
    pub fn feed(&mut self, mut bytes: &[u8]) -> Result<u64, StreamRefusal> {
        if let Some(error) = &self.error {
            return Err(error.clone());
        }
        while !bytes.is_empty() {
            if self.skip > 0 {
                let n = self.skip.min(bytes.len() as u64);
                self.skip -= n;
                self.offset += n;
                // n <= bytes.len(), so it fits in usize.
                bytes = &bytes[n as usize..];
                continue;
            }
            if matches!(self.phase, Phase::Done) {
                return Err(self.fail(StreamRefusal::TrailingBytes {
                    offset: self.offset,
                }));
            }
            let n = (RECORD_LEN - self.filled).min(bytes.len());
            self.header[self.filled..self.filled + n].copy_from_slice(&bytes[..n]);
            self.filled += n;
            self.offset += n as u64;
            bytes = &bytes[n..];
            if self.filled == RECORD_LEN {
                self.filled = 0;
                let start = self.offset - RECORD_LEN as u64;
                match self.record(start) {
                    Ok(payload) => self.skip = payload,
                    Err(refusal) => return Err(self.fail(refusal)),
                }
            }
        }
        Ok(self.offset - self.filled as u64)
    }

    /// The first substream's object kind, once its BEGIN was checked (None before).
    pub fn object_kind(&self) -> Option<ObjectKind> {
        self.kind
    }

    /// At the stream's end: the stream ended exactly after its final END record (nothing
    /// missing, nothing trailing), and the last substream ended at the expected snapshot.
    /// Returns the snapshots the stream creates, in order.
    pub fn finish(&self) -> Result<StreamSummary, StreamRefusal> {
        if let Some(error) = &self.error {
            return Err(error.clone());
        }
        let missing = match (&self.phase, self.filled, self.skip) {
            (Phase::Done, _, _) => None,
            (_, 0, skip) if skip > 0 => Some(format!("{skip} more payload bytes")),
            (Phase::Start, 0, _) => Some("the first BEGIN record".to_owned()),
            (_, filled, _) if filled > 0 => Some(format!(
                "the last {} bytes of a record header",
                RECORD_LEN - filled
            )),
            (Phase::PackageHeaderEnd, _, _) => Some("the END of the package header".to_owned()),
            (Phase::BetweenSubstreams, _, _) => Some("the package's final END".to_owned()),
            (Phase::InSubstream { .. }, _, _) => {
                let name = self.snapshots.last().map_or("", |(n, _)| n.as_str());
                Some(format!("the END of the stream of @{name}"))
            }
            (Phase::Start, _, _) => Some("the first BEGIN record".to_owned()),
        };
        if let Some(missing) = missing {
            return Err(StreamRefusal::Truncated {
                offset: self.offset,
                missing,
            });
        }
        // Done implies at least one substream and a known kind (checked at its BEGIN).
        let (Some((name, guid)), Some(kind)) = (self.snapshots.last(), self.kind) else {
            return Err(StreamRefusal::EmptyPackage {
                offset: self.offset,
            });
        };
        if *guid != self.expect.to_guid || *name != self.expect.to_snapshot {
            return Err(self.wrong_target(name, *guid));
        }
        Ok(StreamSummary {
            snapshots: self.snapshots.clone(),
            kind,
        })
    }

    fn fail(&mut self, refusal: StreamRefusal) -> StreamRefusal {
        self.error = Some(refusal.clone());
        refusal
    }

    fn wrong_target(&self, short: &str, guid: u64) -> StreamRefusal {
        let dataset = self.dataset.as_deref().unwrap_or("");
        StreamRefusal::WrongTarget {
            found: format!("{dataset}@{short}"),
            found_guid: guid,
            expected: self.expect.to_snapshot.clone(),
            expected_guid: self.expect.to_guid,
        }
    }

    /// Checks the complete record header at `offset`; returns its payload length.
    fn record(&mut self, offset: u64) -> Result<u64, StreamRefusal> {
        if matches!(self.phase, Phase::Start) {
            // The first record: only a BEGIN tells the byte order.
            let begin = BeginRecord::parse_at(&self.header, offset, None)?;
            self.order = Some(begin.byte_order);
            return self.first_begin(offset, begin);
        }
        // Set by the first record, which left Phase::Start.
        let order = self.order.unwrap_or(ByteOrder::Little);
        let raw_type = order.u32(&self.header, 0);
        let Some(record) = RecordType::from_raw(raw_type) else {
            return Err(StreamRefusal::UnknownRecordType {
                offset,
                record_type: raw_type,
            });
        };
        match (self.phase.clone(), record) {
            (Phase::Start, _) => unreachable!("the first record is handled above"),
            (Phase::Done, _) => Err(StreamRefusal::TrailingBytes { offset }),
            (Phase::PackageHeaderEnd, RecordType::End) => {
                self.check_end(offset, 0)?;
                self.phase = Phase::BetweenSubstreams;
                Ok(0)
            }
            (Phase::PackageHeaderEnd, record) => Err(StreamRefusal::UnexpectedRecord {
                offset,
                record,
                expected: "the END of the package header",
            }),
            (Phase::BetweenSubstreams, RecordType::Begin) => {
                let begin = BeginRecord::parse_at(&self.header, offset, self.order)?;
                if begin.header == HeaderType::Compound {
                    return Err(StreamRefusal::NestedPackage { offset });
                }
                self.substream(offset, &begin)
            }
            (Phase::BetweenSubstreams, RecordType::End) => {
                self.check_end(offset, 0)?;
                let Some((short, guid)) = self.snapshots.last() else {
                    return Err(StreamRefusal::EmptyPackage { offset });
                };
                if !self.reached_target {
                    return Err(self.wrong_target(short, *guid));
                }
                self.phase = Phase::Done;
                Ok(0)
            }
            (Phase::BetweenSubstreams, record) => Err(StreamRefusal::UnexpectedRecord {
                offset,
                record,
                expected: "a snapshot's BEGIN or the package's final END",
            }),
            (Phase::InSubstream { .. }, RecordType::Begin) => {
                Err(StreamRefusal::UnexpectedRecord {
                    offset,
                    record: RecordType::Begin,
                    expected: "the END of the current snapshot's stream first",
                })
            }
            (Phase::InSubstream { to_guid, .. }, RecordType::End) => {
                self.check_end(offset, to_guid)?;
                self.phase = if self.package {
                    Phase::BetweenSubstreams
                } else {
                    Phase::Done
                };
                Ok(0)
            }
            (Phase::InSubstream { features, .. }, record) => {
                self.payload_len(offset, order, record, features)
            }
        }
    }

    /// Payload length of a record inside a substream, bounded.
    fn payload_len(
        &self,
        offset: u64,
        order: ByteOrder,
        record: RecordType,
        features: FeatureFlags,
    ) -> Result<u64, StreamRefusal> {
        let h = &self.header;
        let (len, max) = match record {
            RecordType::Object => {
                let bonus = u64::from(order.u32(h, 28));
                let raw_bonus = u64::from(order.u32(h, 36));
                let len = if raw_bonus != 0 {
                    raw_bonus
                } else {
                    bonus.div_ceil(8) * 8
                };
                (len, MAX_OBJECT_PAYLOAD)
            }
            RecordType::Write => {
                let len = if h[50] != 0 {
                    order.u64(h, 96)
                } else {
                    order.u64(h, 32)
                };
                (len, MAX_BLOCK_PAYLOAD)
            }
            RecordType::Spill => {
                let compressed = order.u64(h, 40);
                let len = if compressed != 0 {
                    compressed
                } else {
                    order.u64(h, 16)
                };
                (len, MAX_BLOCK_PAYLOAD)
            }
            RecordType::WriteEmbedded => {
                let psize = u64::from(order.u32(h, 52));
                (psize.div_ceil(8) * 8, MAX_EMBEDDED_PAYLOAD)
            }
            RecordType::FreeObjects | RecordType::Free | RecordType::ObjectRange => (0, 0),
            RecordType::WriteByRef if !features.contains(FeatureFlags::DEDUP) => {
                return Err(StreamRefusal::RecordNotAllowed {
                    offset,
                    record,
                    feature: "deduplicated (DEDUP)",
                });
            }
            RecordType::Redact if !features.contains(FeatureFlags::REDACTED) => {
                return Err(StreamRefusal::RecordNotAllowed {
                    offset,
                    record,
                    feature: "redacted (REDACTED)",
                });
            }
            RecordType::WriteByRef | RecordType::Redact => (0, 0),
            RecordType::Begin | RecordType::End => {
                unreachable!("BEGIN and END are handled by the caller")
            }
        };
        if len > max {
            return Err(StreamRefusal::PayloadTooLarge {
                offset,
                record,
                len,
                max,
            });
        }
        Ok(len)
    }

    fn check_end(&self, offset: u64, expected: u64) -> Result<(), StreamRefusal> {
        // The stream's order is known once any record after the first is read.
        let order = self.order.unwrap_or(ByteOrder::Little);
        let found = order.u64(&self.header, 40);
        if found != expected {
            return Err(StreamRefusal::EndMismatch {
                offset,
                expected,
                found,
            });
        }
        Ok(())
    }

    /// The stream's first BEGIN: a substream, or a package header.
    fn first_begin(&mut self, offset: u64, begin: BeginRecord) -> Result<u64, StreamRefusal> {
        if begin.header == HeaderType::Substream {
            return self.substream(offset, &begin);
        }
        if begin.payload_len != 0 {
            return Err(StreamRefusal::PackageWithPayload {
                payload_len: begin.payload_len,
            });
        }
        if self.expect.from_guid.is_none() {
            return Err(StreamRefusal::PackageNotAllowed {
                reason: "the offer is a full stream",
            });
        }
        if self.expect.resuming {
            return Err(StreamRefusal::PackageNotAllowed {
                reason: "the offer resumes one snapshot's stream",
            });
        }
        if !self.expect.intermediates {
            return Err(StreamRefusal::PackageNotAllowed {
                reason: "the offer has no intermediate snapshots",
            });
        }
        // A package header carries SA_SPILL for a filesystem and HOLDS for -h, nothing else.
        let allowed = FeatureFlags::SA_SPILL;
        let refused = begin.features.without(allowed);
        if !refused.is_empty() {
            return Err(StreamRefusal::FeatureNotAllowed {
                snapshot: begin.to_name,
                refused,
                allowed,
            });
        }
        self.check_flags(offset, &begin)?;
        let snapshot = self.check_name(offset, &begin)?;
        if snapshot.short_name() != self.expect.to_snapshot {
            return Err(StreamRefusal::WrongTarget {
                found: begin.to_name,
                found_guid: begin.to_guid,
                expected: self.expect.to_snapshot.clone(),
                expected_guid: self.expect.to_guid,
            });
        }
        self.package = true;
        self.phase = Phase::PackageHeaderEnd;
        Ok(0)
    }

    fn check_flags(&self, offset: u64, begin: &BeginRecord) -> Result<(), StreamRefusal> {
        if begin.flags.contains(BeginFlags::CLONE) {
            return Err(StreamRefusal::Clone {
                offset,
                snapshot: begin.to_name.clone(),
            });
        }
        if begin.flags.unknown() != 0 {
            return Err(StreamRefusal::UnknownFlags {
                offset,
                flags: begin.flags,
            });
        }
        Ok(())
    }

    /// Parses the BEGIN's name and checks it names the stream's one dataset.
    fn check_name(
        &mut self,
        offset: u64,
        begin: &BeginRecord,
    ) -> Result<SnapshotName, StreamRefusal> {
        let snapshot = SnapshotName::parse(&begin.to_name).map_err(|e: NameError| {
            StreamRefusal::BadToName {
                offset,
                name: begin.to_name.clone(),
                problem: e.to_string(),
            }
        })?;
        let dataset = snapshot.dataset();
        match &self.dataset {
            None => self.dataset = Some(dataset.as_str().to_owned()),
            Some(expected) if expected != dataset.as_str() => {
                return Err(StreamRefusal::DatasetChanged {
                    expected: expected.clone(),
                    found: begin.to_name.clone(),
                });
            }
            Some(_) => {}
        }
        Ok(snapshot)
    }

    /// The features a substream of this offer may use.
    fn allowed_features(&self) -> FeatureFlags {
        // What a plain `zfs send` sets by itself for a modern dataset.
        let mut allowed =
            FeatureFlags::SA_SPILL | FeatureFlags::LARGE_DNODE | FeatureFlags::LONGNAME;
        if self.expect.raw {
            // `zfs send -w` implies -c and -L, and -e for unencrypted datasets.
            allowed = allowed
                | FeatureFlags::RAW
                | FeatureFlags::COMPRESSED
                | FeatureFlags::LZ4
                | FeatureFlags::ZSTD
                | FeatureFlags::EMBED_DATA
                | FeatureFlags::LARGE_BLOCKS
                | FeatureFlags::LARGE_MICROZAP;
        }
        if self.expect.resuming {
            allowed = allowed | FeatureFlags::RESUMING;
        }
        allowed
    }

    /// A substream's BEGIN; returns its payload length.
    fn substream(&mut self, offset: u64, begin: &BeginRecord) -> Result<u64, StreamRefusal> {
        self.check_flags(offset, begin)?;
        let snapshot = self.check_name(offset, begin)?;
        let name = begin.to_name.clone();
        let Some(kind) = begin.object_kind() else {
            return Err(StreamRefusal::BadObjectType {
                snapshot: name,
                object_type: begin.object_type,
            });
        };
        if let Some(first) = self.kind
            && first != kind
        {
            return Err(StreamRefusal::ObjectKindChanged {
                snapshot: name,
                first,
                found: kind,
            });
        }
        let allowed = self.allowed_features();
        let refused = begin.features.without(allowed);
        if !refused.is_empty() {
            return Err(StreamRefusal::FeatureNotAllowed {
                snapshot: name,
                refused,
                allowed,
            });
        }
        let resuming = begin.features.contains(FeatureFlags::RESUMING);
        if self.expect.resuming && !resuming {
            return Err(StreamRefusal::NotResuming { snapshot: name });
        }
        let payload = u64::from(begin.payload_len);
        if payload != 0 {
            // Raw sends carry the key data, resumed ones the resume point; plain ones nothing.
            if !(resuming || begin.features.contains(FeatureFlags::RAW)) {
                return Err(StreamRefusal::UnexpectedBeginPayload {
                    snapshot: name,
                    payload_len: begin.payload_len,
                });
            }
            if payload > MAX_BEGIN_PAYLOAD {
                return Err(StreamRefusal::PayloadTooLarge {
                    offset,
                    record: RecordType::Begin,
                    len: payload,
                    max: MAX_BEGIN_PAYLOAD,
                });
            }
        }
        match self.snapshots.last() {
            None => {
                let expected = self.expect.from_guid.unwrap_or(0);
                if begin.from_guid != expected {
                    return Err(StreamRefusal::WrongOrigin {
                        snapshot: name,
                        expected,
                        found: begin.from_guid,
                    });
                }
            }
            Some((_, previous)) => {
                if begin.from_guid != *previous {
                    return Err(StreamRefusal::ChainBroken {
                        snapshot: name,
                        expected: *previous,
                        found: begin.from_guid,
                    });
                }
            }
        }
        if self.reached_target {
            return Err(StreamRefusal::PastTarget {
                snapshot: name,
                expected: self.expect.to_snapshot.clone(),
            });
        }
        let short = snapshot.short_name();
        let is_target = begin.to_guid == self.expect.to_guid;
        // The target's GUID must carry its name and vice versa; a lone substream is the target.
        if is_target != (short == self.expect.to_snapshot) || (!self.package && !is_target) {
            return Err(self.wrong_target(short, begin.to_guid));
        }
        if begin.to_guid == begin.from_guid
            || self.expect.from_guid == Some(begin.to_guid)
            || !self.guids.insert(begin.to_guid)
        {
            return Err(StreamRefusal::RepeatedGuid {
                snapshot: name,
                guid: begin.to_guid,
            });
        }
        if self.snapshots.len() >= MAX_SUBSTREAMS {
            return Err(StreamRefusal::TooManySubstreams);
        }
        self.reached_target = is_target;
        self.kind = Some(kind);
        self.snapshots.push((short.to_owned(), begin.to_guid));
        self.phase = Phase::InSubstream {
            to_guid: begin.to_guid,
            features: begin.features,
        };
        Ok(payload)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DS: &str = "tank/data";
    const G1: u64 = 0x1111;
    const G2: u64 = 0x2222;
    const G3: u64 = 0x3333;

    /// Builds synthetic streams record by record.
    struct Synth {
        order: ByteOrder,
        out: Vec<u8>,
    }

    impl Synth {
        fn new() -> Synth {
            Synth::with_order(ByteOrder::Little)
        }

        fn with_order(order: ByteOrder) -> Synth {
            Synth {
                order,
                out: Vec::new(),
            }
        }

        fn begin(&self, short: &str, to: u64, from: u64) -> BeginRecord {
            BeginRecord {
                byte_order: self.order,
                header: HeaderType::Substream,
                features: FeatureFlags::SA_SPILL | FeatureFlags::LARGE_DNODE,
                creation_time: 1_700_000_000,
                object_type: OBJSET_ZFS,
                flags: BeginFlags::FREERECORDS | BeginFlags::SPILL_BLOCK,
                to_guid: to,
                from_guid: from,
                to_name: format!("{DS}@{short}"),
                payload_len: 0,
            }
        }

        fn package(&self, last: &str) -> BeginRecord {
            BeginRecord {
                header: HeaderType::Compound,
                features: FeatureFlags::SA_SPILL,
                object_type: 0,
                flags: BeginFlags(0),
                to_guid: 0,
                ..self.begin(last, 0, 0)
            }
        }

        fn push_begin(&mut self, begin: &BeginRecord) -> &mut Self {
            self.out.extend_from_slice(&begin.encode());
            self.out
                .extend(std::iter::repeat_n(0xab, begin.payload_len as usize));
            self
        }

        fn end(&mut self, to: u64) -> &mut Self {
            self.out.extend_from_slice(&end_record(self.order, to));
            self
        }

        /// A record of `record_type` with the given (offset, u64/u32/u8 value) fields, then
        /// `payload` filler bytes.
        fn record(
            &mut self,
            record_type: u32,
            fields: &[(usize, Field)],
            payload: usize,
        ) -> &mut Self {
            let mut r = [0; RECORD_LEN];
            self.order.put_u32(&mut r, 0, record_type);
            for &(at, field) in fields {
                match field {
                    Field::U64(v) => self.order.put_u64(&mut r, at, v),
                    Field::U32(v) => self.order.put_u32(&mut r, at, v),
                    Field::U8(v) => r[at] = v,
                }
            }
            self.out.extend_from_slice(&r);
            self.out.extend(std::iter::repeat_n(0xcd, payload));
            self
        }

        fn write(&mut self, logical: u64) -> &mut Self {
            self.record(3, &[(32, Field::U64(logical))], logical as usize)
        }

        /// A substream of `short` from `from` with one OBJECT and one WRITE.
        fn substream(&mut self, short: &str, to: u64, from: u64) -> &mut Self {
            let begin = self.begin(short, to, from);
            self.push_begin(&begin)
                .record(1, &[(28, Field::U32(13))], 16)
                .write(4096)
                .end(to)
        }

        fn bytes(&self) -> Vec<u8> {
            self.out.clone()
        }
    }

    #[derive(Clone, Copy)]
    enum Field {
        U64(u64),
        U32(u32),
        U8(u8),
    }

    fn full(to: u64, short: &str) -> StreamExpectation {
        StreamExpectation {
            from_guid: None,
            to_guid: to,
            to_snapshot: short.to_owned(),
            raw: false,
            resuming: false,
            intermediates: false,
        }
    }

    fn incremental(from: u64, to: u64, short: &str) -> StreamExpectation {
        StreamExpectation {
            from_guid: Some(from),
            ..full(to, short)
        }
    }

    fn with_intermediates(mut e: StreamExpectation) -> StreamExpectation {
        e.intermediates = true;
        e
    }

    /// Feeds whole and one byte at a time; both must agree. Checks the cleared count on the
    /// way: monotonic, and (bytewise) it never covers the start of the record that is refused.
    fn verdict(stream: &[u8], expect: &StreamExpectation) -> Result<StreamSummary, StreamRefusal> {
        let mut whole = StreamInspector::new(expect.clone());
        let whole = whole.feed(stream).and_then(|_| whole.finish());
        let mut bytewise = StreamInspector::new(expect.clone());
        let mut cleared = 0;
        let mut result = None;
        for (i, b) in stream.iter().enumerate() {
            match bytewise.feed(std::slice::from_ref(b)) {
                Ok(now) => {
                    assert!(now >= cleared && now <= i as u64 + 1);
                    cleared = now;
                }
                Err(e) => {
                    // The refused record started within the last RECORD_LEN bytes fed (or is a
                    // trailing byte) and none of it was cleared.
                    assert!(i as u64 + 1 - cleared <= RECORD_LEN as u64, "{e}");
                    result = Some(Err(e));
                    break;
                }
            }
        }
        let bytewise = result.unwrap_or_else(|| bytewise.finish());
        assert_eq!(whole, bytewise);
        whole
    }

    fn refused(stream: &[u8], expect: &StreamExpectation) -> StreamRefusal {
        let e = verdict(stream, expect).expect_err("stream must be refused");
        assert!(!e.to_string().contains('\n'));
        e
    }

    /// Asserts that `stream` is [`refused`] with a refusal that matches the pattern.
    macro_rules! assert_refused {
        ($stream:expr, $expect:expr, $($pattern:tt)+) => {{
            let e = refused($stream, $expect);
            assert!(matches!(e, $($pattern)+), "{e:?}");
        }};
    }

    #[test]
    fn full_and_incremental_substreams() {
        let mut s = Synth::new();
        s.substream("a", G1, 0);
        let summary = verdict(&s.bytes(), &full(G1, "a")).expect("accepted");
        assert_eq!(summary.snapshots, vec![("a".to_owned(), G1)]);
        assert_eq!(summary.kind, ObjectKind::Filesystem);

        let mut s = Synth::new();
        s.substream("b", G2, G1);
        let summary = verdict(&s.bytes(), &incremental(G1, G2, "b")).expect("accepted");
        assert_eq!(summary.snapshots, vec![("b".to_owned(), G2)]);
    }

    #[test]
    fn byte_swapped_streams_are_read_in_their_order() {
        let mut s = Synth::with_order(ByteOrder::Big);
        s.substream("b", G2, G1);
        let bytes = s.bytes();
        let begin = BeginRecord::parse(&bytes).expect("BEGIN");
        assert_eq!(begin.byte_order, ByteOrder::Big);
        assert_eq!(begin.to_guid, G2);
        assert_eq!(begin.to_name, "tank/data@b");
        assert_eq!(
            begin.features,
            FeatureFlags::SA_SPILL | FeatureFlags::LARGE_DNODE
        );
        let summary = verdict(&bytes, &incremental(G1, G2, "b")).expect("accepted");
        assert_eq!(summary.snapshots, vec![("b".to_owned(), G2)]);

        // A package whose second substream switches order.
        let mut s = Synth::with_order(ByteOrder::Big);
        let package = s.package("c");
        s.push_begin(&package).end(0).substream("b", G2, G1);
        let mut little = Synth::new();
        little.substream("c", G3, G2);
        let mut bytes = s.bytes();
        let second = bytes.len() as u64;
        bytes.extend(little.bytes());
        bytes.extend(end_record(ByteOrder::Big, 0));
        let e = refused(&bytes, &with_intermediates(incremental(G1, G3, "c")));
        assert_eq!(e, StreamRefusal::ByteOrderChanged { offset: second });
    }

    #[test]
    fn intermediates_package() {
        let mut s = Synth::new();
        let package = s.package("c");
        s.push_begin(&package)
            .end(0)
            .substream("b", G2, G1)
            .substream("c", G3, G2)
            .end(0);
        let expect = with_intermediates(incremental(G1, G3, "c"));
        let summary = verdict(&s.bytes(), &expect).expect("accepted");
        assert_eq!(
            summary.snapshots,
            vec![("b".to_owned(), G2), ("c".to_owned(), G3)]
        );
        // Not without intermediates, not for a full or resumed offer.
        let e = refused(&s.bytes(), &incremental(G1, G3, "c"));
        assert_eq!(
            e.to_string(),
            "stream is a package (zfs send -I/-R/-p/-h), expected a single substream: the offer \
             has no intermediate snapshots"
        );
        assert_refused!(
            &s.bytes(),
            &with_intermediates(full(G3, "c")),
            StreamRefusal::PackageNotAllowed { .. }
        );
        let mut resuming = expect.clone();
        resuming.resuming = true;
        assert_refused!(
            &s.bytes(),
            &resuming,
            StreamRefusal::PackageNotAllowed { .. }
        );
    }

    #[test]
    fn package_structure_violations() {
        let expect = with_intermediates(incremental(G1, G3, "c"));
        let s = Synth::new();
        let package = s.package("c");

        // -R/-p/-h: an nvlist in the package header.
        let mut p = Synth::new();
        p.push_begin(&BeginRecord {
            payload_len: 700,
            ..package.clone()
        });
        assert_eq!(
            refused(&p.bytes(), &expect),
            StreamRefusal::PackageWithPayload { payload_len: 700 }
        );
        // -h also sets HOLDS.
        let mut p = Synth::new();
        p.push_begin(&BeginRecord {
            features: FeatureFlags::SA_SPILL | FeatureFlags::HOLDS,
            ..package.clone()
        });
        assert_refused!(
            &p.bytes(),
            &expect,
            StreamRefusal::FeatureNotAllowed { refused, .. } if refused == FeatureFlags::HOLDS
        );
        // What follows the package header (written by the case's builder), and how it is refused.
        type Build = fn(&mut Synth, &BeginRecord);
        let after_header: [(&str, Build, StreamRefusal); 6] = [
            (
                "the header's END missing",
                |p, _| {
                    p.substream("b", G2, G1);
                },
                StreamRefusal::UnexpectedRecord {
                    offset: RECORD_LEN as u64,
                    record: RecordType::Begin,
                    expected: "the END of the package header",
                },
            ),
            (
                "a nested package",
                |p, package| {
                    p.end(0).push_begin(package);
                },
                StreamRefusal::NestedPackage {
                    offset: 2 * RECORD_LEN as u64,
                },
            ),
            (
                "an empty package",
                |p, _| {
                    p.end(0).end(0);
                },
                StreamRefusal::EmptyPackage {
                    offset: 2 * RECORD_LEN as u64,
                },
            ),
            (
                "a GUID in the header's END",
                |p, _| {
                    p.end(G1);
                },
                StreamRefusal::EndMismatch {
                    offset: RECORD_LEN as u64,
                    expected: 0,
                    found: G1,
                },
            ),
            (
                "a substream after the target",
                |p, _| {
                    p.end(0).substream("c", G3, G1).substream("d", 0x4444, G3);
                },
                StreamRefusal::PastTarget {
                    snapshot: "tank/data@d".into(),
                    expected: "c".into(),
                },
            ),
            (
                "a broken chain",
                |p, _| {
                    p.end(0).substream("b", G2, G1).substream("c", G3, G1);
                },
                StreamRefusal::ChainBroken {
                    snapshot: "tank/data@c".into(),
                    expected: G2,
                    found: G1,
                },
            ),
        ];
        for (case, build, expected) in after_header {
            let mut p = Synth::new();
            p.push_begin(&package);
            build(&mut p, &package);
            assert_eq!(refused(&p.bytes(), &expect), expected, "{case}");
        }
        // A data record between substreams.
        let mut p = Synth::new();
        p.push_begin(&package).end(0).write(512);
        let e = refused(&p.bytes(), &expect);
        assert!(
            matches!(
                e,
                StreamRefusal::UnexpectedRecord {
                    record: RecordType::Write,
                    ..
                }
            ),
            "{e:?}"
        );
        // The package header names another final snapshot.
        let mut p = Synth::new();
        p.push_begin(&s.package("b"));
        assert_refused!(&p.bytes(), &expect, StreamRefusal::WrongTarget { .. });
        // Ends before reaching the target.
        let mut p = Synth::new();
        p.push_begin(&package).end(0).substream("b", G2, G1).end(0);
        assert_refused!(
            &p.bytes(),
            &expect,
            StreamRefusal::WrongTarget { found_guid: G2, .. }
        );
        // Another dataset in the second substream.
        let mut p = Synth::new();
        p.push_begin(&package).end(0).substream("b", G2, G1);
        let other = BeginRecord {
            to_name: "tank/other@c".into(),
            ..p.begin("c", G3, G2)
        };
        p.push_begin(&other);
        assert_eq!(
            refused(&p.bytes(), &expect),
            StreamRefusal::DatasetChanged {
                expected: DS.into(),
                found: "tank/other@c".into()
            }
        );
        // A volume after a filesystem.
        let mut p = Synth::new();
        p.push_begin(&package).end(0).substream("b", G2, G1);
        let vol = BeginRecord {
            object_type: OBJSET_ZVOL,
            ..p.begin("c", G3, G2)
        };
        p.push_begin(&vol);
        let e = refused(&p.bytes(), &expect);
        assert_eq!(
            e.to_string(),
            "stream of tank/data@c is a volume, the stream's first snapshot a filesystem"
        );
        // The target's name with another GUID.
        let mut p = Synth::new();
        p.push_begin(&package).end(0).substream("c", 0x4444, G1);
        let e = refused(&p.bytes(), &expect);
        assert!(
            matches!(
                e,
                StreamRefusal::WrongTarget {
                    found_guid: 0x4444,
                    ..
                }
            ),
            "{e:?}"
        );
    }

    #[test]
    fn substream_begin_checks() {
        let s = Synth::new();
        let base = s.begin("b", G2, G1);
        let expect = incremental(G1, G2, "b");
        let one = |begin: BeginRecord| {
            let mut s = Synth::new();
            s.push_begin(&begin).end(begin.to_guid);
            refused(&s.bytes(), &expect)
        };
        let e = one(BeginRecord {
            flags: BeginFlags::CLONE,
            ..base.clone()
        });
        assert_eq!(
            e.to_string(),
            "stream of tank/data@b at byte 0 is a clone's (CLONE flag); clones are refused"
        );
        let e = one(BeginRecord {
            flags: BeginFlags(1 << 24),
            ..base.clone()
        });
        assert_eq!(
            e.to_string(),
            "BEGIN at byte 0 has unknown flags unknown 0x1000000"
        );
        let e = one(BeginRecord {
            object_type: 1,
            ..base.clone()
        });
        assert!(
            matches!(e, StreamRefusal::BadObjectType { object_type: 1, .. }),
            "{e:?}"
        );
        for (name, fragment) in [
            ("tank/data", "not of the form"),
            ("tank/data@b;rm", "contains"),
            ("tank//data@b", "empty component"),
            ("tank/data@--head--x/y", "snapshot name"),
        ] {
            let e = one(BeginRecord {
                to_name: name.into(),
                ..base.clone()
            });
            assert!(
                matches!(&e, StreamRefusal::BadToName { .. }) && e.to_string().contains(fragment),
                "{name}: {e}"
            );
        }
        for (features, refused_flags) in [
            (FeatureFlags::DEDUP, FeatureFlags::DEDUP),
            (FeatureFlags::HOLDS, FeatureFlags::HOLDS),
            (FeatureFlags::REDACTED, FeatureFlags::REDACTED),
            (
                FeatureFlags::RAW | FeatureFlags::COMPRESSED,
                FeatureFlags::RAW | FeatureFlags::COMPRESSED,
            ),
            (FeatureFlags::LARGE_BLOCKS, FeatureFlags::LARGE_BLOCKS),
            (FeatureFlags::EMBED_DATA, FeatureFlags::EMBED_DATA),
            (FeatureFlags::RESUMING, FeatureFlags::RESUMING),
            (FeatureFlags(1 << 40), FeatureFlags(1 << 40)),
        ] {
            let e = one(BeginRecord {
                features: features | FeatureFlags::SA_SPILL,
                ..base.clone()
            });
            assert!(
                matches!(e, StreamRefusal::FeatureNotAllowed { refused, .. } if refused == refused_flags),
                "{features}: {e:?}"
            );
        }
        let e = one(BeginRecord {
            features: FeatureFlags(1 << 40),
            ..base.clone()
        });
        assert!(
            e.to_string().contains("features unknown 0x10000000000"),
            "{e}"
        );
        // An nvlist in a plain substream.
        let e = one(BeginRecord {
            payload_len: 64,
            ..base.clone()
        });
        assert_eq!(
            e,
            StreamRefusal::UnexpectedBeginPayload {
                snapshot: "tank/data@b".into(),
                payload_len: 64
            }
        );
        // Chain: the snapshot repeats its origin.
        let e = one(BeginRecord {
            to_guid: G1,
            from_guid: G1,
            ..base.clone()
        });
        assert!(
            matches!(
                e,
                StreamRefusal::WrongTarget { .. } | StreamRefusal::RepeatedGuid { .. }
            ),
            "{e:?}"
        );
        // A header type of 3.
        let mut r = base.encode();
        r[16] |= 3;
        let mut bytes = r.to_vec();
        bytes.extend(end_record(ByteOrder::Little, G2));
        assert_eq!(
            refused(&bytes, &expect),
            StreamRefusal::BadHeaderType {
                offset: 0,
                header_type: 3
            }
        );
        // A name without NUL.
        let mut r = base.encode();
        r[56..].fill(b'a');
        assert!(matches!(
            refused(&r, &expect),
            StreamRefusal::BadToName { .. }
        ));
    }

    #[test]
    fn raw_and_resuming_offers() {
        let s = Synth::new();
        let raw_begin = BeginRecord {
            features: FeatureFlags::SA_SPILL
                | FeatureFlags::RAW
                | FeatureFlags::COMPRESSED
                | FeatureFlags::LZ4
                | FeatureFlags::LARGE_BLOCKS,
            payload_len: 1024,
            ..s.begin("b", G2, G1)
        };
        let mut raw = Synth::new();
        raw.push_begin(&raw_begin).write(512).end(G2);
        let mut expect = incremental(G1, G2, "b");
        assert!(matches!(
            refused(&raw.bytes(), &expect),
            StreamRefusal::FeatureNotAllowed { .. }
        ));
        expect.raw = true;
        verdict(&raw.bytes(), &expect).expect("raw offer takes a raw stream");

        let resumed_begin = BeginRecord {
            features: FeatureFlags::SA_SPILL | FeatureFlags::RESUMING,
            payload_len: 200,
            ..s.begin("b", G2, G1)
        };
        let mut resumed = Synth::new();
        resumed.push_begin(&resumed_begin).write(512).end(G2);
        let mut expect = incremental(G1, G2, "b");
        expect.resuming = true;
        verdict(&resumed.bytes(), &expect).expect("resumed offer takes a resumed stream");
        let mut plain = Synth::new();
        plain.substream("b", G2, G1);
        assert_eq!(
            refused(&plain.bytes(), &expect),
            StreamRefusal::NotResuming {
                snapshot: "tank/data@b".into()
            }
        );
        // A BEGIN nvlist over the bound.
        let mut big = Synth::new();
        big.out.extend_from_slice(
            &BeginRecord {
                payload_len: (MAX_BEGIN_PAYLOAD + 1) as u32,
                ..resumed_begin
            }
            .encode(),
        );
        assert!(matches!(
            refused(&big.bytes(), &expect),
            StreamRefusal::PayloadTooLarge {
                record: RecordType::Begin,
                ..
            }
        ));
    }

    #[test]
    fn record_level_checks() {
        let expect = incremental(G1, G2, "b");
        let start = |s: &mut Synth| {
            let b = s.begin("b", G2, G1);
            s.push_begin(&b);
        };
        // BEGIN inside a substream.
        let mut s = Synth::new();
        start(&mut s);
        let b = s.begin("b", G2, G1);
        s.push_begin(&b);
        assert!(matches!(
            refused(&s.bytes(), &expect),
            StreamRefusal::UnexpectedRecord {
                offset: 312,
                record: RecordType::Begin,
                ..
            }
        ));
        // Unknown record type.
        let mut s = Synth::new();
        start(&mut s);
        s.record(11, &[], 0);
        assert_eq!(
            refused(&s.bytes(), &expect),
            StreamRefusal::UnknownRecordType {
                offset: 312,
                record_type: 11
            }
        );
        // WRITE_BYREF and REDACT need refused features.
        for t in [6, 10] {
            let mut s = Synth::new();
            start(&mut s);
            s.record(t, &[], 0);
            assert!(matches!(
                refused(&s.bytes(), &expect),
                StreamRefusal::RecordNotAllowed { offset: 312, .. }
            ));
        }
        // Payload bounds.
        for (t, fields, record) in [
            (
                3,
                vec![(32, Field::U64(MAX_BLOCK_PAYLOAD + 1))],
                RecordType::Write,
            ),
            (
                3,
                vec![(50, Field::U8(15)), (96, Field::U64(MAX_BLOCK_PAYLOAD + 8))],
                RecordType::Write,
            ),
            (7, vec![(16, Field::U64(u64::MAX))], RecordType::Spill),
            (1, vec![(36, Field::U32(u32::MAX))], RecordType::Object),
            (1, vec![(28, Field::U32(16 * 1024 + 1))], RecordType::Object),
            (8, vec![(52, Field::U32(113))], RecordType::WriteEmbedded),
        ] {
            let mut s = Synth::new();
            start(&mut s);
            s.record(t, &fields, 0);
            assert_refused!(
                &s.bytes(),
                &expect,
                StreamRefusal::PayloadTooLarge { offset: 312, record: r, .. } if r == record
            );
        }
        // Payload lengths by type: each record's payload is skipped exactly.
        let mut s = Synth::new();
        start(&mut s);
        s.record(1, &[(28, Field::U32(13))], 16) // bonus rounded up to 8
            .record(1, &[(28, Field::U32(13)), (36, Field::U32(40))], 40) // raw bonus
            .record(
                3,
                &[
                    (32, Field::U64(8192)),
                    (50, Field::U8(15)),
                    (96, Field::U64(100)),
                ],
                100,
            )
            .record(7, &[(16, Field::U64(512))], 512)
            .record(7, &[(16, Field::U64(512)), (40, Field::U64(64))], 64)
            .record(8, &[(52, Field::U32(13))], 16)
            .record(2, &[], 0)
            .record(4, &[], 0)
            .record(9, &[], 0)
            .end(G2);
        verdict(&s.bytes(), &expect).expect("accepted");
        // END with another GUID.
        let mut s = Synth::new();
        start(&mut s);
        s.end(G1);
        assert_eq!(
            refused(&s.bytes(), &expect),
            StreamRefusal::EndMismatch {
                offset: 312,
                expected: G2,
                found: G1
            }
        );
    }

    #[test]
    fn truncated_and_trailing() {
        let expect = incremental(G1, G2, "b");
        let mut s = Synth::new();
        s.substream("b", G2, G1);
        let bytes = s.bytes();
        // Every proper prefix is accepted by feed and refused by finish as truncated.
        for cut in 0..bytes.len() {
            let mut i = StreamInspector::new(expect.clone());
            let cleared = i.feed(&bytes[..cut]).expect("a prefix is not refused");
            assert!(cleared <= cut as u64);
            assert!(
                matches!(i.finish(), Err(StreamRefusal::Truncated { offset, .. }) if offset == cut as u64),
                "cut at {cut}"
            );
        }
        let e = StreamInspector::new(expect.clone())
            .finish()
            .expect_err("empty");
        assert_eq!(
            e.to_string(),
            "stream stops at byte 0, before the first BEGIN record"
        );
        // One byte after the END.
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert_eq!(
            refused(&trailing, &expect),
            StreamRefusal::TrailingBytes {
                offset: bytes.len() as u64
            }
        );
        // A forged WRITE length that runs past the end of the stream.
        let mut s = Synth::new();
        let b = s.begin("b", G2, G1);
        s.push_begin(&b)
            .record(3, &[(32, Field::U64(1 << 20))], 100)
            .end(G2);
        let e = verdict(&s.bytes(), &expect).expect_err("truncated");
        assert!(matches!(e, StreamRefusal::Truncated { .. }), "{e:?}");
        assert!(e.to_string().contains("more payload bytes"), "{e}");
        // A forged WRITE length of 0 with data behind it: the data is read as a header.
        let mut s = Synth::new();
        let b = s.begin("b", G2, G1);
        s.push_begin(&b)
            .record(3, &[(32, Field::U64(0))], 4096)
            .end(G2);
        assert_refused!(&s.bytes(), &expect, StreamRefusal::UnknownRecordType { .. });
    }

    #[test]
    fn first_record_must_be_begin() {
        let expect = full(G1, "a");
        let mut s = Synth::new();
        s.write(512);
        let e = refused(&s.bytes(), &expect);
        assert_eq!(
            e,
            StreamRefusal::NotBegin {
                offset: 0,
                record_type: 3
            }
        );
        let mut r = Synth::new().begin("a", G1, 0).encode();
        r[8] ^= 1;
        assert_refused!(&r, &expect, StreamRefusal::BadMagic { offset: 0, .. });
        assert_eq!(
            BeginRecord::parse(&r[..100]),
            Err(StreamRefusal::Truncated {
                offset: 100,
                missing: "the rest of the 312-byte BEGIN record".into()
            })
        );
    }

    #[test]
    fn begin_bytes_are_held_until_checked() {
        // A package whose second substream BEGIN is refused: no byte of it is ever cleared.
        let mut s = Synth::new();
        let package = s.package("c");
        s.push_begin(&package).end(0).substream("b", G2, G1);
        let refused_at = s.out.len() as u64;
        let clone = BeginRecord {
            flags: BeginFlags::CLONE,
            ..s.begin("c", G3, G2)
        };
        s.push_begin(&clone).end(G3).end(0);
        let bytes = s.bytes();
        let expect = with_intermediates(incremental(G1, G3, "c"));
        for step in [1, 2, 7, 100, 311, 312, 313, 4096] {
            let mut i = StreamInspector::new(expect.clone());
            let mut cleared = 0;
            let mut err = None;
            for chunk in bytes.chunks(step) {
                match i.feed(chunk) {
                    Ok(now) => {
                        assert!(now <= refused_at, "step {step}: cleared {now}");
                        cleared = now;
                    }
                    Err(e) => {
                        err = Some(e);
                        break;
                    }
                }
            }
            assert!(
                matches!(err, Some(StreamRefusal::Clone { offset, .. }) if offset == refused_at)
            );
            assert!(cleared <= refused_at);
            assert_eq!(i.object_kind(), Some(ObjectKind::Filesystem));
        }
    }

    #[test]
    fn flags_display_names() {
        assert_eq!(FeatureFlags::NONE.to_string(), "none");
        assert_eq!(
            (FeatureFlags::RAW | FeatureFlags::LZ4 | FeatureFlags(1 << 50)).to_string(),
            "LZ4|RAW|unknown 0x4000000000000"
        );
        assert_eq!(
            format!("{:?}", FeatureFlags::SA_SPILL),
            "FeatureFlags(SA_SPILL)"
        );
        assert_eq!(
            (BeginFlags::CLONE | BeginFlags::SPILL_BLOCK).to_string(),
            "CLONE|SPILL_BLOCK"
        );
    }
}
