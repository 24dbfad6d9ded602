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

/// Stream feature flags (`drr_versioninfo` from bit 2 up, so bit 0 here is `DEDUP`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct FeatureFlags(pub u64);

impl FeatureFlags {
    /// No feature.
    pub const NONE: FeatureFlags = FeatureFlags(0);
    /// Deduplicated stream (WRITE_BYREF records).
    pub const DEDUP: FeatureFlags = FeatureFlags(1 << 0);
    /// Dedup properties.
    pub const DEDUPPROPS: FeatureFlags = FeatureFlags(1 << 1);
    /// System-attribute spill blocks (ZPL version 5 and later).
    pub const SA_SPILL: FeatureFlags = FeatureFlags(1 << 2);
    /// WRITE_EMBEDDED records (`zfs send -e`).
    pub const EMBED_DATA: FeatureFlags = FeatureFlags(1 << 16);
    /// LZ4-compressed blocks.
    pub const LZ4: FeatureFlags = FeatureFlags(1 << 17);
    /// Blocks over 128 KiB (`zfs send -L`).
    pub const LARGE_BLOCKS: FeatureFlags = FeatureFlags(1 << 19);
    /// Resumes a cut send (`zfs send -t`).
    pub const RESUMING: FeatureFlags = FeatureFlags(1 << 20);
    /// Redacted send.
    pub const REDACTED: FeatureFlags = FeatureFlags(1 << 21);
    /// Blocks as compressed on disk (`zfs send -c`).
    pub const COMPRESSED: FeatureFlags = FeatureFlags(1 << 22);
    /// Dnodes over 512 bytes.
    pub const LARGE_DNODE: FeatureFlags = FeatureFlags(1 << 23);
    /// Raw (encrypted) blocks (`zfs send -w`).
    pub const RAW: FeatureFlags = FeatureFlags(1 << 24);
    /// ZSTD-compressed blocks.
    pub const ZSTD: FeatureFlags = FeatureFlags(1 << 25);
    /// User holds (`zfs send -h`).
    pub const HOLDS: FeatureFlags = FeatureFlags(1 << 26);
    /// Switch to large blocks (defined, not set by OpenZFS 2.3).
    pub const SWITCH_TO_LARGE_BLOCKS: FeatureFlags = FeatureFlags(1 << 27);
    /// File names over 255 bytes.
    pub const LONGNAME: FeatureFlags = FeatureFlags(1 << 28);
    /// Micro ZAPs over 128 KiB.
    pub const LARGE_MICROZAP: FeatureFlags = FeatureFlags(1 << 29);

    const NAMED: [(FeatureFlags, &'static str); 16] = [
        (Self::DEDUP, "DEDUP"),
        (Self::DEDUPPROPS, "DEDUPPROPS"),
        (Self::SA_SPILL, "SA_SPILL"),
        (Self::EMBED_DATA, "EMBED_DATA"),
        (Self::LZ4, "LZ4"),
        (Self::LARGE_BLOCKS, "LARGE_BLOCKS"),
        (Self::RESUMING, "RESUMING"),
        (Self::REDACTED, "REDACTED"),
        (Self::COMPRESSED, "COMPRESSED"),
        (Self::LARGE_DNODE, "LARGE_DNODE"),
        (Self::RAW, "RAW"),
        (Self::ZSTD, "ZSTD"),
        (Self::HOLDS, "HOLDS"),
        (Self::SWITCH_TO_LARGE_BLOCKS, "SWITCH_TO_LARGE_BLOCKS"),
        (Self::LONGNAME, "LONGNAME"),
        (Self::LARGE_MICROZAP, "LARGE_MICROZAP"),
    ];

    /// The raw bits.
    pub fn bits(self) -> u64 {
        self.0
    }

    /// Whether every flag of `other` is set here.
    pub fn contains(self, other: FeatureFlags) -> bool {
        self.0 & other.0 == other.0
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
        Self::NAMED
            .iter()
            .fold(self, |rest, (flag, _)| rest.without(*flag))
    }
}

impl std::ops::BitOr for FeatureFlags {
    type Output = FeatureFlags;
    fn bitor(self, rhs: FeatureFlags) -> FeatureFlags {
        FeatureFlags(self.0 | rhs.0)
    }
}

/// Lists the names, `|`-separated, then unknown bits in hex; `none` when empty.
impl fmt::Display for FeatureFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names = Self::NAMED
            .iter()
            .filter(|(flag, _)| self.contains(*flag))
            .map(|(_, name)| (*name).to_owned());
        let unknown = self.unknown();
        let unknown = (!unknown.is_empty()).then(|| format!("unknown {:#x}", unknown.0));
        let all: Vec<String> = names.chain(unknown).collect();
        if all.is_empty() {
            f.write_str("none")
        } else {
            f.write_str(&all.join("|"))
        }
    }
}

impl fmt::Debug for FeatureFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FeatureFlags({self})")
    }
}

/// BEGIN record flags (`drr_flags`, `DRR_FLAG_*`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct BeginFlags(pub u32);

impl BeginFlags {
    /// The snapshot is a clone's: its origin lives in another dataset.
    pub const CLONE: BeginFlags = BeginFlags(1 << 0);
    /// Case-insensitive dataset.
    pub const CI_DATA: BeginFlags = BeginFlags(1 << 1);
    /// A full stream that carries FREE and FREEOBJECTS records.
    pub const FREERECORDS: BeginFlags = BeginFlags(1 << 2);
    /// OBJECT/SPILL records carry meaningful spill flags.
    pub const SPILL_BLOCK: BeginFlags = BeginFlags(1 << 3);

    const NAMED: [(BeginFlags, &'static str); 4] = [
        (Self::CLONE, "CLONE"),
        (Self::CI_DATA, "CI_DATA"),
        (Self::FREERECORDS, "FREERECORDS"),
        (Self::SPILL_BLOCK, "SPILL_BLOCK"),
    ];

    /// Whether every flag of `other` is set here.
    pub fn contains(self, other: BeginFlags) -> bool {
        self.0 & other.0 == other.0
    }

    /// Bits that no known flag names.
    pub fn unknown(self) -> u32 {
        Self::NAMED
            .iter()
            .fold(self.0, |rest, (flag, _)| rest & !flag.0)
    }
}

/// Lists the names, `|`-separated, then unknown bits in hex; `none` when empty.
impl fmt::Display for BeginFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut all: Vec<String> = Self::NAMED
            .iter()
            .filter(|(flag, _)| self.contains(*flag))
            .map(|(_, name)| (*name).to_owned())
            .collect();
        if self.unknown() != 0 {
            all.push(format!("unknown {:#x}", self.unknown()));
        }
        if all.is_empty() {
            f.write_str("none")
        } else {
            f.write_str(&all.join("|"))
        }
    }
}

impl fmt::Debug for BeginFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BeginFlags({self})")
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
