//! [`PeerName`]: the identity of a sender, carried as the subject CN of its client certificate.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The longest accepted peer name, in bytes (all allowed characters are ASCII).
pub const PEER_NAME_MAX_LEN: usize = 64;

/// A validated peer name such as `nas1`: 1 to 64 characters of `[A-Za-z0-9._-]`, not starting
/// with `.` or `-`.
///
/// Names are compared exactly (case-sensitive): `nas1` and `NAS1` are different peers. A
/// `PeerName` is parsed once, from the CLI, a config file (serde, as a string) or a verified
/// certificate, and cannot hold anything else.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PeerName(String);

/// Why a string is not a valid [`PeerName`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PeerNameError {
    /// The name is empty.
    #[error("invalid peer name: empty")]
    Empty,
    /// The name is longer than [`PEER_NAME_MAX_LEN`].
    #[error("invalid peer name: {len} characters, at most {PEER_NAME_MAX_LEN} allowed")]
    TooLong {
        /// The length of the rejected name, in bytes.
        len: usize,
    },
    /// The name contains a character outside `[A-Za-z0-9._-]`.
    #[error("invalid peer name: character {ch:?} at position {index} is not in [A-Za-z0-9._-]")]
    InvalidChar {
        /// The offending character.
        ch: char,
        /// Its position (in characters).
        index: usize,
    },
    /// The name starts with `.` or `-`.
    #[error("invalid peer name: must not start with {ch:?}")]
    InvalidStart {
        /// The offending first character.
        ch: char,
    },
}

impl PeerName {
    /// Validates `name`.
    pub fn new(name: impl Into<String>) -> Result<Self, PeerNameError> {
        let name = name.into();
        validate(&name)?;
        Ok(PeerName(name))
    }

    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn validate(name: &str) -> Result<(), PeerNameError> {
    if name.is_empty() {
        return Err(PeerNameError::Empty);
    }
    for (index, ch) in name.chars().enumerate() {
        if !(ch.is_ascii_alphanumeric() || matches!(ch, '.' | '_' | '-')) {
            return Err(PeerNameError::InvalidChar { ch, index });
        }
        if index == 0 && matches!(ch, '.' | '-') {
            return Err(PeerNameError::InvalidStart { ch });
        }
    }
    // Checked after the characters, which are all ASCII by now, so bytes == characters.
    if name.len() > PEER_NAME_MAX_LEN {
        return Err(PeerNameError::TooLong { len: name.len() });
    }
    Ok(())
}

impl FromStr for PeerName {
    type Err = PeerNameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        PeerName::new(s)
    }
}

impl TryFrom<String> for PeerName {
    type Error = PeerNameError;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        PeerName::new(s)
    }
}

impl TryFrom<&str> for PeerName {
    type Error = PeerNameError;

    fn try_from(s: &str) -> Result<Self, Self::Error> {
        PeerName::new(s)
    }
}

impl From<PeerName> for String {
    fn from(name: PeerName) -> Self {
        name.0
    }
}

impl AsRef<str> for PeerName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for PeerName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for PeerName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PeerName({:?})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_valid_names() {
        for ok in [
            "nas1",
            "a",
            "NAS_1",
            "backup.example.org",
            "x-y",
            "0",
            "_x",
            &"a".repeat(64),
        ] {
            let name: PeerName = ok.parse().unwrap();
            assert_eq!(name.as_str(), ok);
        }
    }

    #[test]
    fn rejects_invalid_names() {
        assert_eq!(PeerName::new(""), Err(PeerNameError::Empty));
        assert_eq!(
            PeerName::new("a".repeat(65)),
            Err(PeerNameError::TooLong { len: 65 })
        );
        assert_eq!(
            PeerName::new(".hidden"),
            Err(PeerNameError::InvalidStart { ch: '.' })
        );
        assert_eq!(
            PeerName::new("-rf"),
            Err(PeerNameError::InvalidStart { ch: '-' })
        );
        assert_eq!(
            PeerName::new("nas 1"),
            Err(PeerNameError::InvalidChar { ch: ' ', index: 3 })
        );
        for bad in ["a/b", "a\0", "näs", "a:b", "a\n", "CN=x,O=y"] {
            assert!(PeerName::new(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn serde_round_trip_validates() {
        #[derive(Debug, Deserialize, Serialize)]
        struct Cfg {
            peer: PeerName,
        }
        let cfg: Cfg = toml::from_str("peer = \"nas1\"").unwrap();
        assert_eq!(cfg.peer.as_str(), "nas1");
        assert_eq!(toml::to_string(&cfg).unwrap().trim(), "peer = \"nas1\"");
        assert!(toml::from_str::<Cfg>("peer = \"../etc\"").is_err());
    }
}
