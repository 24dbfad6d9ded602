//! Handshake: the hello message, version ranges, features, and their negotiation.
//!
//! Both sides send a hello as their first frame, without waiting for the peer's. Each side then
//! computes the same result from the two hellos: the highest protocol version in both ranges,
//! and the features both announced. The hello layout is frozen for all protocol versions
//! (fields may only be appended, and decoders ignore bytes after the fields they know), so any
//! two zrep versions can at least tell each other that they are incompatible.
//!
//! Features are an open list of `(key, values)` string entries. Unknown keys are kept in
//! [`Features::other`] and otherwise ignored, so new capabilities (pairing, new codecs) are added
//! without changing the hello layout.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::ProtoError;
use crate::types::Compression;
pub use crate::types::{Role, VersionRange};

/// The protocol version this crate implements.
pub const PROTOCOL_VERSION: u16 = 1;

/// The protocol versions this crate can speak.
pub const SUPPORTED_VERSIONS: VersionRange = VersionRange {
    min: PROTOCOL_VERSION,
    max: PROTOCOL_VERSION,
};

/// Longest heartbeat interval taken from a peer's hello when computing its deadline, so a peer
/// cannot disable our timeout by announcing a huge interval.
pub const MAX_PEER_HEARTBEAT: Duration = Duration::from_secs(300);

/// The first frame in each direction.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// Protocol versions this side speaks.
    pub versions: VersionRange,
    /// This side's role.
    pub role: Role,
    /// Free-form software name and version, for logs (e.g. `"zrep 0.1.0"`).
    pub software: String,
    /// How often this side sends heartbeats when otherwise silent, in milliseconds.
    pub heartbeat_interval_ms: u32,
    /// What this side can do.
    pub features: Features,
}

/// Capabilities announced in a hello.
///
/// Wire: a sequence of [`FeatureEntry`] (see the key list in `PROTOCOL.md`). Build with
/// [`Features::new`] and the `with_*` methods.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "Vec<FeatureEntry>", into = "Vec<FeatureEntry>")]
#[non_exhaustive]
pub struct Features {
    /// Compressions this side can use for data frames, besides `None` which is always
    /// supported (key `compress`).
    pub compression: Vec<Compression>,
    /// Resumable receive: the receiver keeps partial state (`zfs receive -s`) and reports
    /// tokens; the sender can continue from one (`zfs send -t`) (key `resume`).
    pub resumable: bool,
    /// The sender may use a bookmark as incremental base (key `bookmarks`).
    pub bookmarks: bool,
    /// Raw streams (`zfs send -w`) of encrypted datasets (key `raw`).
    pub raw_send: bool,
    /// The ZFS implementation and version on this side (key `zfs`), informational.
    pub zfs: Option<ZfsDialect>,
    /// Enrolment with a pairing token (key `enroll`): PAIRING frames `Enroll`/`Enrolled` on a
    /// connection without client certificate.
    pub enroll: bool,
    /// Certificate renewal (key `renew`): PAIRING frames `Renew`/`Renewed`/`RenewRefused` on an
    /// authenticated connection.
    pub renew: bool,
    /// Entries this version does not know, kept as received.
    pub other: Vec<FeatureEntry>,
}

/// Writes builder setters `fn $setter(self, on: bool) -> Self` that set the bool `$field`.
macro_rules! on_off_setters {
    ($($(#[$doc:meta])* $setter:ident => $field:ident,)*) => {$(
        $(#[$doc])*
        pub fn $setter(mut self, on: bool) -> Self {
            self.$field = on;
            self
        }
    )*};
}

impl Features {
    /// No features (only uncompressed data).
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the compressions this side can use.
    pub fn with_compression(mut self, compression: impl IntoIterator<Item = Compression>) -> Self {
        self.compression = compression.into_iter().collect();
        self
    }

    on_off_setters! {
        /// Sets resumable-receive support.
        with_resumable => resumable,
        /// Sets bookmark-base support.
        with_bookmarks => bookmarks,
        /// Sets raw-stream support.
        with_raw_send => raw_send,
        /// Sets enrolment support (key `enroll`).
        with_enroll => enroll,
        /// Sets certificate-renewal support (key `renew`).
        with_renew => renew,
    }

    /// Sets this side's ZFS implementation and version.
    pub fn with_zfs(
        mut self,
        implementation: impl Into<String>,
        version: impl Into<String>,
    ) -> Self {
        self.zfs = Some(ZfsDialect {
            implementation: implementation.into(),
            version: version.into(),
        });
        self
    }
}

/// A ZFS implementation and its version, e.g. `openzfs` / `2.2.4`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ZfsDialect {
    /// Implementation name, e.g. `openzfs`, `illumos`.
    pub implementation: String,
    /// Version string as the implementation reports it.
    pub version: String,
}

/// One raw feature entry. Wire: `key` string, `values` sequence of strings.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FeatureEntry {
    /// Feature name.
    pub key: String,
    /// Parameters; empty for plain flags.
    pub values: Vec<String>,
}

const KEY_COMPRESS: &str = "compress";
const KEY_RESUME: &str = "resume";
const KEY_BOOKMARKS: &str = "bookmarks";
const KEY_RAW: &str = "raw";
const KEY_ZFS: &str = "zfs";
const KEY_ENROLL: &str = "enroll";
const KEY_RENEW: &str = "renew";

impl From<Features> for Vec<FeatureEntry> {
    fn from(f: Features) -> Self {
        let flag = |key: &str| FeatureEntry {
            key: key.to_owned(),
            values: Vec::new(),
        };
        let mut out = Vec::new();
        let codecs: Vec<String> = f
            .compression
            .iter()
            .filter(|c| **c != Compression::None)
            .map(|c| c.name().to_owned())
            .collect();
        if !codecs.is_empty() {
            out.push(FeatureEntry {
                key: KEY_COMPRESS.to_owned(),
                values: codecs,
            });
        }
        if f.resumable {
            out.push(flag(KEY_RESUME));
        }
        if f.bookmarks {
            out.push(flag(KEY_BOOKMARKS));
        }
        if f.raw_send {
            out.push(flag(KEY_RAW));
        }
        if f.enroll {
            out.push(flag(KEY_ENROLL));
        }
        if f.renew {
            out.push(flag(KEY_RENEW));
        }
        if let Some(z) = f.zfs {
            out.push(FeatureEntry {
                key: KEY_ZFS.to_owned(),
                values: vec![z.implementation, z.version],
            });
        }
        out.extend(f.other);
        out
    }
}

impl From<Vec<FeatureEntry>> for Features {
    fn from(entries: Vec<FeatureEntry>) -> Self {
        let mut f = Features::default();
        for entry in entries {
            match entry.key.as_str() {
                KEY_COMPRESS => {
                    // Names we do not know (newer codecs) are simply not usable with us.
                    for c in entry
                        .values
                        .iter()
                        .filter_map(|v| Compression::from_name(v))
                    {
                        if c != Compression::None && !f.compression.contains(&c) {
                            f.compression.push(c);
                        }
                    }
                }
                KEY_RESUME => f.resumable = true,
                KEY_BOOKMARKS => f.bookmarks = true,
                KEY_RAW => f.raw_send = true,
                KEY_ENROLL => f.enroll = true,
                KEY_RENEW => f.renew = true,
                KEY_ZFS if entry.values.len() >= 2 => {
                    let mut v = entry.values.into_iter();
                    f.zfs = Some(ZfsDialect {
                        implementation: v.next().unwrap_or_default(),
                        version: v.next().unwrap_or_default(),
                    });
                }
                _ => f.other.push(entry),
            }
        }
        f
    }
}

/// The outcome of a successful handshake, as both sides compute it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Negotiated {
    /// The protocol version in use: the highest both speak.
    pub version: u16,
    /// Compressions both support for data frames (besides `None`, which is always allowed).
    pub compression: Vec<Compression>,
    /// Both support resumable receive.
    pub resumable: bool,
    /// Both support bookmark bases.
    pub bookmarks: bool,
    /// Both support raw streams.
    pub raw_send: bool,
    /// Both support enrolment (pairing with a token).
    pub enroll: bool,
    /// Both support certificate renewal.
    pub renew: bool,
    /// The peer's hello as received (software, ZFS dialect, unknown features).
    pub peer: Hello,
}

impl Negotiated {
    /// Whether data frames may use `c`.
    pub fn supports(&self, c: Compression) -> bool {
        c == Compression::None || self.compression.contains(&c)
    }

    /// The peer's ZFS implementation, if it said.
    pub fn peer_zfs(&self) -> Option<&ZfsDialect> {
        self.peer.features.zfs.as_ref()
    }

    /// The peer's heartbeat interval, capped at [`MAX_PEER_HEARTBEAT`].
    pub fn peer_heartbeat(&self) -> Duration {
        Duration::from_millis(u64::from(self.peer.heartbeat_interval_ms)).min(MAX_PEER_HEARTBEAT)
    }
}

/// Combines our hello with the peer's. Fails if the roles are not complementary or the version
/// ranges do not overlap; the error names both ranges by role.
pub fn negotiate(ours: &Hello, theirs: &Hello) -> Result<Negotiated, ProtoError> {
    let expected = match ours.role {
        Role::Sender => Role::Receiver,
        _ => Role::Sender,
    };
    if theirs.role != expected {
        return Err(ProtoError::WrongRole {
            expected,
            got: theirs.role,
        });
    }
    let Some(version) = ours.versions.highest_common(theirs.versions) else {
        let (sender, receiver) = match ours.role {
            Role::Sender => (ours.versions, theirs.versions),
            _ => (theirs.versions, ours.versions),
        };
        return Err(ProtoError::IncompatibleVersion { sender, receiver });
    };
    let (a, b) = (&ours.features, &theirs.features);
    Ok(Negotiated {
        version,
        compression: a
            .compression
            .iter()
            .copied()
            .filter(|c| *c != Compression::None && b.compression.contains(c))
            .collect(),
        resumable: a.resumable && b.resumable,
        bookmarks: a.bookmarks && b.bookmarks,
        raw_send: a.raw_send && b.raw_send,
        enroll: a.enroll && b.enroll,
        renew: a.renew && b.renew,
        peer: theirs.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello(role: Role, min: u16, max: u16, features: Features) -> Hello {
        Hello {
            versions: VersionRange::new(min, max),
            role,
            software: "test".into(),
            heartbeat_interval_ms: 5000,
            features,
        }
    }

    #[test]
    fn highest_common_version_is_chosen() {
        let r = |a, b| VersionRange::new(a, b);
        assert_eq!(r(1, 3).highest_common(r(2, 5)), Some(3));
        assert_eq!(r(1, 1).highest_common(r(1, 1)), Some(1));
        assert_eq!(r(1, 1).highest_common(r(2, 2)), None);
        assert_eq!(r(3, 1).highest_common(r(1, 3)), None, "empty range");
    }

    #[test]
    fn version_mismatch_names_both_ranges_by_role() {
        let s = hello(Role::Sender, 2, 3, Features::default());
        let r = hello(Role::Receiver, 1, 1, Features::default());
        for err in [
            negotiate(&s, &r).unwrap_err(),
            negotiate(&r, &s).unwrap_err(),
        ] {
            assert_eq!(
                err.to_string(),
                "no common protocol version: sender speaks versions 2..=3, receiver speaks version 1"
            );
        }
    }

    #[test]
    fn same_role_is_refused() {
        let s = hello(Role::Sender, 1, 1, Features::default());
        assert!(matches!(
            negotiate(&s, &s),
            Err(ProtoError::WrongRole {
                expected: Role::Receiver,
                got: Role::Sender
            })
        ));
    }

    #[test]
    fn features_intersect() {
        let a = Features::new()
            .with_compression([Compression::Zstd])
            .with_resumable(true)
            .with_raw_send(true);
        let b = Features::new()
            .with_resumable(true)
            .with_bookmarks(true)
            .with_zfs("openzfs", "2.1.5");
        let n = negotiate(
            &hello(Role::Sender, 1, 1, a),
            &hello(Role::Receiver, 1, 1, b),
        )
        .unwrap();
        assert!(n.compression.is_empty());
        assert!(n.supports(Compression::None));
        assert!(!n.supports(Compression::Zstd));
        assert!(n.resumable && !n.raw_send && !n.bookmarks);
        assert_eq!(n.peer_zfs().unwrap().version, "2.1.5");
        assert_eq!(n.peer_heartbeat(), Duration::from_secs(5));
    }

    #[test]
    fn unknown_features_are_kept_and_ignored() {
        let entries = vec![
            FeatureEntry {
                key: "compress".into(),
                values: vec!["lz4".into(), "zstd".into(), "zstd".into()],
            },
            FeatureEntry {
                key: "teleport".into(),
                values: vec!["v1".into()],
            },
            FeatureEntry {
                key: "enroll".into(),
                values: Vec::new(),
            },
            FeatureEntry {
                key: "zfs".into(),
                values: vec!["only-one".into()],
            },
        ];
        let f = Features::from(entries);
        assert_eq!(f.compression, vec![Compression::Zstd]);
        assert_eq!(f.other.len(), 2);
        assert!(f.enroll && !f.renew);
        assert_eq!(f.zfs, None);
        let back: Vec<FeatureEntry> = f.clone().into();
        assert_eq!(Features::from(back), f);
    }
}
