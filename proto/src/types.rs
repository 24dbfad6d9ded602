//! Plain shared types of the protocol: stream compression, peer role, protocol version range.
//!
//! A leaf module: it names no other module of this crate, so errors, data chunks, the
//! handshake and messages can all carry these values without importing each other. The
//! public paths are the old ones ([`data::Compression`](crate::data::Compression),
//! [`handshake::Role`](crate::handshake::Role), ...); `Compression`'s `TryFrom<u8>` (whose
//! error is a [`DecodeError`](crate::DecodeError)) lives in the error module for that reason.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Compression of a data chunk (and of a whole stream, in the transfer offer).
///
/// On the wire: one byte, `0` = none (stored), `1` = zstd. In the hello features: the names
/// `"none"` (implied, never listed) and `"zstd"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "u8", into = "u8")]
#[non_exhaustive]
pub enum Compression {
    /// Stored as is.
    None,
    /// One zstd frame per chunk.
    Zstd,
}

impl Compression {
    /// The one-byte wire code.
    pub fn code(self) -> u8 {
        match self {
            Self::None => 0,
            Self::Zstd => 1,
        }
    }

    /// The compression with this wire code, if it is assigned.
    pub fn from_code(code: u8) -> Option<Self> {
        match code {
            0 => Some(Self::None),
            1 => Some(Self::Zstd),
            _ => None,
        }
    }

    /// The name used in the hello feature list.
    pub fn name(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Zstd => "zstd",
        }
    }

    /// The compression with this feature-list name, if known.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "none" => Some(Self::None),
            "zstd" => Some(Self::Zstd),
            _ => None,
        }
    }
}

impl From<Compression> for u8 {
    fn from(c: Compression) -> u8 {
        c.code()
    }
}

/// An inclusive range of protocol versions. Wire: `min` u16, `max` u16.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct VersionRange {
    /// Oldest version spoken.
    pub min: u16,
    /// Newest version spoken.
    pub max: u16,
}

impl VersionRange {
    /// The range `min..=max`.
    pub const fn new(min: u16, max: u16) -> Self {
        Self { min, max }
    }

    /// The highest version in both ranges, if they overlap (empty ranges overlap nothing).
    pub fn highest_common(self, other: Self) -> Option<u16> {
        let low = self.min.max(other.min);
        let high = self.max.min(other.max);
        (low <= high && self.min <= self.max && other.min <= other.max).then_some(high)
    }
}

impl fmt::Display for VersionRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.min == self.max {
            write!(f, "version {}", self.min)
        } else {
            write!(f, "versions {}..={}", self.min, self.max)
        }
    }
}

/// Which end of a replication link a peer is. Wire: one byte, `1` sender, `2` receiver.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(from = "u8", into = "u8")]
#[non_exhaustive]
pub enum Role {
    /// Runs `zfs send`, drives the session.
    Sender,
    /// Runs `zfs receive`, answers.
    Receiver,
    /// A role code this version does not know.
    Unknown(u8),
}

impl From<u8> for Role {
    fn from(code: u8) -> Self {
        match code {
            1 => Self::Sender,
            2 => Self::Receiver,
            n => Self::Unknown(n),
        }
    }
}

impl From<Role> for u8 {
    fn from(role: Role) -> u8 {
        match role {
            Role::Sender => 1,
            Role::Receiver => 2,
            Role::Unknown(n) => n,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Sender => f.write_str("sender"),
            Self::Receiver => f.write_str("receiver"),
            Self::Unknown(n) => write!(f, "unknown({n})"),
        }
    }
}
