//! Typed ZFS names, parsed once.
//!
//! A value of these types always holds a name that ZFS accepts and that cannot be mistaken for a
//! command-line option, so the driver passes them to `zfs` as single arguments without further
//! checks. Spaces are legal in ZFS names and are kept as they are.

use std::fmt;
use std::str::FromStr;

use thiserror::Error;

/// ZFS refuses names of 256 bytes or more (`ZFS_MAX_DATASET_NAME_LEN` includes the NUL).
pub const MAX_NAME_LEN: usize = 255;

/// Why a string is not a valid ZFS name.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum NameError {
    /// The name is empty.
    #[error("name is empty")]
    Empty,
    /// The name is longer than ZFS allows.
    #[error("name {name:?} is {len} bytes long; ZFS allows at most {MAX_NAME_LEN}")]
    TooLong {
        /// The offending name.
        name: String,
        /// Its length in bytes.
        len: usize,
    },
    /// A character outside `[A-Za-z0-9_.: -]` (plus the separators of the name's kind).
    #[error("name {name:?} contains {ch:?}, which ZFS does not allow here")]
    InvalidChar {
        /// The offending name.
        name: String,
        /// The first character that is not allowed.
        ch: char,
    },
    /// A `/`-separated component is empty (leading, trailing or doubled `/`).
    #[error("name {name:?} has an empty component")]
    EmptyComponent {
        /// The offending name.
        name: String,
    },
    /// A component is `.` or `..`.
    #[error("name {name:?} has a `.` or `..` component")]
    DotComponent {
        /// The offending name.
        name: String,
    },
    /// The pool (first component) does not start with a letter.
    #[error("pool name in {name:?} must start with a letter")]
    BadPoolName {
        /// The offending name.
        name: String,
    },
    /// A snapshot name lacks `@`, or a bookmark name lacks `#`.
    #[error("{name:?} is not of the form {form}")]
    MissingSeparator {
        /// The offending name.
        name: String,
        /// The expected form, for the message.
        form: &'static str,
    },
    /// A short name (after `@` or `#`), a hold tag or a property name is malformed.
    #[error("{name:?} is not a valid {what}")]
    BadShortName {
        /// The offending name.
        name: String,
        /// What kind of name it should have been.
        what: &'static str,
    },
}

/// A filesystem or volume name such as `tank/nfs/vm 1`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DatasetName(String);

/// A snapshot name: a dataset, `@`, and a short name (`tank/nfs@zrep_20260101T000000Z`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SnapshotName {
    full: String,
    sep: usize,
}

/// A bookmark name: a dataset, `#`, and a short name (OpenZFS only).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BookmarkName {
    full: String,
    sep: usize,
}

/// A dataset path relative to some root (`nfs/vm/esxi`): no pool, no leading `/`.
///
/// The receiver joins it under a peer's root, so it must never escape that root: `..`, `@`, `#`,
/// `%`, empty components and control characters are all refused by the character rules.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RelativeName(String);

/// A user hold tag (`zfs hold TAG snapshot`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HoldTag(String);

/// A ZFS property name such as `readonly` or `com.example:owner`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PropertyName(String);

fn is_component_char(ch: char) -> bool {
    ch.is_ascii_alphanumeric() || matches!(ch, '_' | '.' | ':' | ' ' | '-')
}

fn check_len(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > MAX_NAME_LEN {
        return Err(NameError::TooLong {
            name: name.to_owned(),
            len: name.len(),
        });
    }
    Ok(())
}

/// Checks `/`-separated components of a dataset path (absolute or relative).
fn check_path(name: &str) -> Result<(), NameError> {
    check_len(name)?;
    if let Some(ch) = name.chars().find(|&c| c != '/' && !is_component_char(c)) {
        return Err(NameError::InvalidChar {
            name: name.to_owned(),
            ch,
        });
    }
    for component in name.split('/') {
        if component.is_empty() {
            return Err(NameError::EmptyComponent {
                name: name.to_owned(),
            });
        }
        if component == "." || component == ".." {
            return Err(NameError::DotComponent {
                name: name.to_owned(),
            });
        }
    }
    Ok(())
}

fn check_short(short: &str, full: &str, what: &'static str) -> Result<(), NameError> {
    if short.is_empty() || short == "." || short == ".." {
        return Err(NameError::BadShortName {
            name: full.to_owned(),
            what,
        });
    }
    if let Some(ch) = short.chars().find(|&c| !is_component_char(c)) {
        return Err(NameError::InvalidChar {
            name: full.to_owned(),
            ch,
        });
    }
    Ok(())
}

/// A `what` of 1 to `max_len` of `[A-Za-z0-9_.:-]` whose start the caller judged (`start_ok`).
fn check_word(
    name: &str,
    max_len: usize,
    start_ok: bool,
    what: &'static str,
) -> Result<String, NameError> {
    let valid = !name.is_empty()
        && name.len() <= max_len
        && start_ok
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '-'));
    if valid {
        Ok(name.to_owned())
    } else {
        Err(NameError::BadShortName {
            name: name.to_owned(),
            what,
        })
    }
}

impl DatasetName {
    /// Parses a full dataset name; the pool must start with a letter (so no name reads as an
    /// option).
    pub fn parse(name: &str) -> Result<Self, NameError> {
        check_path(name)?;
        if !name.starts_with(|c: char| c.is_ascii_alphabetic()) {
            return Err(NameError::BadPoolName {
                name: name.to_owned(),
            });
        }
        Ok(Self(name.to_owned()))
    }

    /// The name as ZFS prints it.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The pool, i.e. the first component.
    pub fn pool(&self) -> &str {
        self.0.split('/').next().unwrap_or(&self.0)
    }

    /// The parent dataset, or `None` for a pool's root dataset.
    pub fn parent(&self) -> Option<DatasetName> {
        self.0
            .rsplit_once('/')
            .map(|(parent, _)| DatasetName(parent.to_owned()))
    }

    /// Whether `self` is `other` or lies below it.
    pub fn is_within(&self, other: &DatasetName) -> bool {
        self.0 == other.0
            || (self.0.starts_with(&other.0) && self.0.as_bytes().get(other.0.len()) == Some(&b'/'))
    }

    /// The path of `self` below `root`, if it lies strictly below it.
    pub fn relative_to(&self, root: &DatasetName) -> Option<RelativeName> {
        let rest = self.0.strip_prefix(&root.0)?.strip_prefix('/')?;
        Some(RelativeName(rest.to_owned()))
    }

    /// Everything after the pool (`tank/a/b` → `a/b`), or `None` for a pool's root dataset.
    pub fn without_pool(&self) -> Option<RelativeName> {
        self.0
            .split_once('/')
            .map(|(_, rest)| RelativeName(rest.to_owned()))
    }

    /// `self/relative`, checked against the length limit.
    pub fn join(&self, relative: &RelativeName) -> Result<DatasetName, NameError> {
        DatasetName::parse(&format!("{}/{}", self.0, relative.0))
    }

    /// A direct child `self/component`.
    pub fn child(&self, component: &str) -> Result<DatasetName, NameError> {
        let relative = RelativeName::parse(component)?;
        if relative.0.contains('/') {
            return Err(NameError::InvalidChar {
                name: component.to_owned(),
                ch: '/',
            });
        }
        self.join(&relative)
    }

    /// The snapshot `self@short`.
    pub fn snapshot(&self, short: &str) -> Result<SnapshotName, NameError> {
        SnapshotName::parse(&format!("{}@{short}", self.0))
    }

    /// The bookmark `self#short`.
    pub fn bookmark(&self, short: &str) -> Result<BookmarkName, NameError> {
        BookmarkName::parse(&format!("{}#{short}", self.0))
    }
}

/// Writes `parse` and the accessors of a name that is a dataset, `$sep`, and a short name
/// (`full` holds the whole name, `sep` the separator's byte offset).
macro_rules! dataset_child_name {
    ($ty:ident, $sep:literal, $what:literal) => {
        impl $ty {
            #[doc = concat!("Parses `dataset", $sep, "short`.")]
            pub fn parse(name: &str) -> Result<Self, NameError> {
                check_len(name)?;
                let (dataset, short) =
                    name.split_once($sep).ok_or(NameError::MissingSeparator {
                        name: name.to_owned(),
                        form: concat!("dataset", $sep, $what),
                    })?;
                DatasetName::parse(dataset)?;
                check_short(short, name, concat!($what, " name"))?;
                Ok(Self {
                    full: name.to_owned(),
                    sep: dataset.len(),
                })
            }

            #[doc = concat!("The full name, `dataset", $sep, "short`.")]
            pub fn as_str(&self) -> &str {
                &self.full
            }

            /// The dataset part.
            pub fn dataset(&self) -> DatasetName {
                DatasetName(self.full[..self.sep].to_owned())
            }

            #[doc = concat!("The part after `", $sep, "`.")]
            pub fn short_name(&self) -> &str {
                &self.full[self.sep + 1..]
            }
        }
    };
}

dataset_child_name!(SnapshotName, '@', "snapshot");
dataset_child_name!(BookmarkName, '#', "bookmark");

impl SnapshotName {
    /// The same short name on another dataset.
    pub fn on_dataset(&self, dataset: &DatasetName) -> Result<SnapshotName, NameError> {
        dataset.snapshot(self.short_name())
    }
}

impl RelativeName {
    /// Parses a relative path such as `nfs/vm/esxi`.
    pub fn parse(name: &str) -> Result<Self, NameError> {
        check_path(name)?;
        Ok(Self(name.to_owned()))
    }

    /// The path as given.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The components, outermost first.
    pub fn components(&self) -> impl Iterator<Item = &str> {
        self.0.split('/')
    }
}

impl HoldTag {
    /// Parses a hold tag: 1 to 64 of `[A-Za-z0-9_.:-]`, not starting with `-` or `.`.
    pub fn parse(tag: &str) -> Result<Self, NameError> {
        let start_ok = !tag.starts_with(['-', '.']);
        check_word(tag, 64, start_ok, "hold tag").map(Self)
    }

    /// The tag as given.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl PropertyName {
    /// Parses a native (`readonly`) or user (`com.example:owner`) property name.
    pub fn parse(name: &str) -> Result<Self, NameError> {
        let start_ok = name.starts_with(|c: char| c.is_ascii_lowercase());
        check_word(name, 256, start_ok, "property name").map(Self)
    }

    /// The name as given.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

macro_rules! name_traits {
    ($($ty:ty),*) => {$(
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $ty {
            type Err = NameError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::parse(s)
            }
        }

        impl AsRef<str> for $ty {
            fn as_ref(&self) -> &str {
                self.as_str()
            }
        }
    )*};
}

name_traits!(
    DatasetName,
    SnapshotName,
    BookmarkName,
    RelativeName,
    HoldTag,
    PropertyName
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spaces_and_punctuation_are_legal() {
        let snap = SnapshotName::parse("pool/data 1@2012-01-09 08:39:41").unwrap();
        assert_eq!(snap.dataset().as_str(), "pool/data 1");
        assert_eq!(snap.short_name(), "2012-01-09 08:39:41");
        assert_eq!(snap.to_string(), "pool/data 1@2012-01-09 08:39:41");
    }

    #[test]
    fn rejects_malformed_datasets() {
        for bad in [
            "",
            "/pool",
            "pool/",
            "pool//a",
            "pool/../x",
            "pool/.",
            "1pool",
            "-R",
            "pool/a@b",
            "pool/a#b",
            "pool/a%b",
            "pool/a\nb",
            "pool/a\tb",
            "pool/ä",
        ] {
            assert!(DatasetName::parse(bad).is_err(), "{bad:?} was accepted");
        }
        assert!(DatasetName::parse(&format!("p/{}", "a".repeat(254))).is_err());
        assert!(DatasetName::parse(&format!("p/{}", "a".repeat(253))).is_ok());
    }

    #[test]
    fn rejects_malformed_snapshots_and_bookmarks() {
        for bad in [
            "pool/a",
            "pool/a@",
            "pool/a@b@c",
            "pool/a@b/c",
            "@b",
            "pool/a@..",
        ] {
            assert!(SnapshotName::parse(bad).is_err(), "{bad:?} was accepted");
        }
        assert!(BookmarkName::parse("pool/a#mark 1").is_ok());
        assert!(BookmarkName::parse("pool/a@mark").is_err());
    }

    #[test]
    fn relative_names_cannot_escape() {
        for bad in [
            "", "/a", "a/", "a//b", "..", "a/../b", "a@b", "a#b", "a%b", "a\u{7}b",
        ] {
            assert!(RelativeName::parse(bad).is_err(), "{bad:?} was accepted");
        }
        let root = DatasetName::parse("backup/nas1").unwrap();
        let rel = RelativeName::parse("nfs/vm 1").unwrap();
        let joined = root.join(&rel).unwrap();
        assert_eq!(joined.as_str(), "backup/nas1/nfs/vm 1");
        assert!(joined.is_within(&root));
        assert_eq!(joined.relative_to(&root), Some(rel));
        assert!(!DatasetName::parse("backup/nas10").unwrap().is_within(&root));
    }

    #[test]
    fn dataset_helpers() {
        let ds = DatasetName::parse("tank/a/b").unwrap();
        assert_eq!(ds.pool(), "tank");
        assert_eq!(ds.parent().unwrap().as_str(), "tank/a");
        assert_eq!(ds.without_pool().unwrap().as_str(), "a/b");
        assert!(DatasetName::parse("tank").unwrap().without_pool().is_none());
        assert!(ds.child("c/d").is_err());
    }

    #[test]
    fn hold_tags_and_properties() {
        assert!(HoldTag::parse("zrep").is_ok());
        assert!(HoldTag::parse("-r").is_err());
        assert!(HoldTag::parse("a b").is_err());
        assert!(PropertyName::parse("com.example:owner").is_ok());
        assert!(PropertyName::parse("readonly=on").is_err());
        assert!(PropertyName::parse("-o").is_err());
    }
}
