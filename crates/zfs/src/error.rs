//! Errors of the ZFS driver.
//!
//! Rules: every failure of a `zfs` command keeps the command line (for humans, never executed),
//! the exit status and ZFS's stderr. Known situations get their own variant so that callers can
//! act on them; the classification reads ZFS's message, which is text for humans, so callers must
//! re-read state with the driver before they act on anything destructive.
//!
//! A message never repeats its source: a variant that wraps a cause says what was being done
//! ("cannot run /sbin/zfs") and exposes the cause only as `source()`. Print a [`ZfsError`] with
//! `zrep_chain::one_line` wherever it leaves the program (stderr, logs, a message to the peer),
//! not with `Display` alone, or the cause is lost.

use std::fmt;
use std::time::Duration;

use thiserror::Error;

use crate::name::NameError;

/// A failed ZFS operation.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ZfsError {
    /// The `zfs` program could not be started.
    #[error("cannot run {program}")]
    Spawn {
        /// The program that failed to start.
        program: String,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// The command did not finish in time and was killed.
    #[error("`{command}` did not finish within {after:?} and was killed")]
    Timeout {
        /// The command line, for humans.
        command: CommandLine,
        /// The limit that was exceeded.
        after: Duration,
    },
    /// The dataset, snapshot or bookmark does not exist.
    #[error("{failure}")]
    NotFound {
        /// The failed command.
        failure: CommandFailure,
    },
    /// An incremental receive found the target changed since its newest snapshot.
    #[error("{failure}")]
    DestinationModified {
        /// The failed command.
        failure: CommandFailure,
    },
    /// An incremental stream's base is not the target's newest snapshot.
    #[error("{failure}")]
    IncrementalMismatch {
        /// The failed command.
        failure: CommandFailure,
    },
    /// A full stream was sent to a dataset that already exists.
    #[error("{failure}")]
    DestinationExists {
        /// The failed command.
        failure: CommandFailure,
    },
    /// The target holds a partially received stream (OpenZFS `zfs receive -s` that was cut):
    /// resume it with its `receive_resume_token` or discard it with `zfs receive -A` before
    /// anything else can be received into it.
    #[error("{failure}")]
    PartialReceive {
        /// The failed command.
        failure: CommandFailure,
    },
    /// The stream was truncated or corrupt. After a cut resumable receive the target keeps a
    /// `receive_resume_token`.
    #[error("{failure}")]
    InvalidStream {
        /// The failed command.
        failure: CommandFailure,
    },
    /// The dataset is busy, e.g. a held snapshot cannot be destroyed.
    #[error("{failure}")]
    Busy {
        /// The failed command.
        failure: CommandFailure,
    },
    /// The name is taken: a snapshot, dataset or bookmark of this name exists, or the snapshot
    /// already has a hold with this tag.
    #[error("{failure}")]
    AlreadyExists {
        /// The failed command.
        failure: CommandFailure,
    },
    /// The pool ran out of space (a receive, a snapshot, a property).
    #[error("{failure}")]
    NoSpace {
        /// The failed command.
        failure: CommandFailure,
    },
    /// A release named a hold tag the snapshot does not have.
    #[error("{failure}")]
    NoSuchHold {
        /// The failed command.
        failure: CommandFailure,
    },
    /// Any other failure of a command.
    #[error("{failure}")]
    Failed {
        /// The failed command.
        failure: CommandFailure,
    },
    /// The local ZFS lacks a feature this operation needs.
    #[error("this ZFS ({dialect}) does not support {feature}")]
    Unsupported {
        /// The feature, e.g. `bookmarks`.
        feature: &'static str,
        /// The probed dialect, for the message.
        dialect: String,
    },
    /// ZFS printed something the driver could not understand.
    #[error("cannot parse output of `{command}`: {reason}: {line:?}")]
    Parse {
        /// The command line, for humans.
        command: CommandLine,
        /// The offending line.
        line: String,
        /// What was wrong with it.
        reason: String,
    },
    /// ZFS printed a name that is not a valid name.
    #[error("ZFS printed an invalid name")]
    Name(#[from] NameError),
    /// Reading from or writing to a child process failed.
    #[error("I/O with `{command}` failed")]
    Io {
        /// The command line, for humans.
        command: CommandLine,
        /// The underlying error.
        source: std::io::Error,
    },
}

impl ZfsError {
    /// The failed command's details, where the error came from a command that ran.
    pub fn failure(&self) -> Option<&CommandFailure> {
        match self {
            Self::NotFound { failure }
            | Self::DestinationModified { failure }
            | Self::IncrementalMismatch { failure }
            | Self::PartialReceive { failure }
            | Self::DestinationExists { failure }
            | Self::InvalidStream { failure }
            | Self::Busy { failure }
            | Self::AlreadyExists { failure }
            | Self::NoSpace { failure }
            | Self::NoSuchHold { failure }
            | Self::Failed { failure } => Some(failure),
            _ => None,
        }
    }

    /// Classifies a failed command by ZFS's message (zfs-fuse 0.7 and OpenZFS 2.x wordings).
    pub(crate) fn from_failure(failure: CommandFailure) -> Self {
        // ZFS wraps long messages; fold all whitespace so phrases match across lines.
        let text = failure
            .stderr
            .to_ascii_lowercase()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        let has = |phrase: &str| text.contains(phrase);
        if has("out of space") || has("no space left") {
            Self::NoSpace { failure }
        } else if has("no such tag") || has("reference not found") {
            // zfs-fuse says "no such tag on this dataset", OpenZFS "reference not found".
            Self::NoSuchHold { failure }
        } else if has("has been modified") {
            Self::DestinationModified { failure }
        } else if has("contains partially-complete state") {
            // OpenZFS: a plain receive into a target that holds a cut `receive -s`.
            Self::PartialReceive { failure }
        } else if has("does not match incremental source")
            || has("most recent snapshot of") && has("does not match")
        {
            Self::IncrementalMismatch { failure }
        } else if has("invalid backup stream")
            || has("invalid stream")
            || has("checksum mismatch")
            || has("unexpected end")
            || has("incomplete stream")
            || has("failed to read from stream")
        {
            // A cut `receive -s` says "checksum mismatch or incomplete stream" too, then
            // "partially received snapshot is saved": its target keeps a resume token.
            Self::InvalidStream { failure }
        } else if has("does not exist")
            || has("could not find any snapshots")
            || has("no such pool")
            || has("no such dataset")
            || has("no longer exists")
        {
            // "no longer exists": OpenZFS `send -t` whose source snapshot was destroyed.
            Self::NotFound { failure }
        } else if has("must specify -f to overwrite") || has("destination") && has("exists") {
            Self::DestinationExists { failure }
        } else if has("dataset is busy") || has("being held") {
            // OpenZFS says why: "cannot destroy snapshot p/a@s: it's being held".
            Self::Busy { failure }
        } else if has("already exists") || has("bookmark exists") {
            Self::AlreadyExists { failure }
        } else {
            Self::Failed { failure }
        }
    }
}

/// A command line kept for messages; it is never run through a shell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandLine(pub(crate) Vec<String>);

impl CommandLine {
    /// The program and its arguments.
    pub fn args(&self) -> &[String] {
        &self.0
    }
}

impl fmt::Display for CommandLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, arg) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            if arg.is_empty() || arg.contains(|c: char| c.is_whitespace() || c == '\'') {
                write!(f, "'{}'", arg.replace('\'', r"'\''"))?;
            } else {
                f.write_str(arg)?;
            }
        }
        Ok(())
    }
}

/// What a failed command left behind: its command line, exit status and stderr.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandFailure {
    /// The command line, for humans.
    pub command: CommandLine,
    /// The exit code; `None` if a signal ended it.
    pub status: Option<i32>,
    /// ZFS's message, trimmed (the tail is kept if it was long).
    pub stderr: String,
}

impl fmt::Display for CommandFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.status {
            Some(code) => write!(f, "`{}` failed with exit status {code}", self.command)?,
            None => write!(f, "`{}` was killed by a signal", self.command)?,
        }
        if !self.stderr.is_empty() {
            write!(f, ": {}", self.stderr)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failure(stderr: &str) -> CommandFailure {
        CommandFailure {
            command: CommandLine(vec!["zfs".into(), "receive".into(), "p/a b".into()]),
            status: Some(1),
            stderr: stderr.into(),
        }
    }

    #[test]
    fn classifies_zfs_messages() {
        let cases = [
            (
                "cannot receive incremental stream: destination p/ds has been modified\nsince most recent snapshot",
                "DestinationModified",
            ),
            (
                "cannot receive incremental stream: most recent snapshot of p/ds does not\nmatch incremental source",
                "IncrementalMismatch",
            ),
            (
                "cannot receive new filesystem stream: destination 'p/ds' exists\nmust specify -F to overwrite it",
                "DestinationExists",
            ),
            (
                "cannot receive new filesystem stream: invalid backup stream",
                "InvalidStream",
            ),
            ("cannot open 'p/nope': dataset does not exist", "NotFound"),
            ("cannot destroy snapshot p/a@s: dataset is busy", "Busy"),
            (
                "cannot receive new filesystem stream: out of space",
                "NoSpace",
            ),
            (
                "cannot release hold from snapshot 'p/d@s': no such tag on this dataset",
                "NoSuchHold",
            ),
            ("something else", "Failed"),
        ];
        // OpenZFS 2.3.2, as `scripts/test-openzfs` saw them.
        let openzfs = [
            (
                "cannot destroy snapshot p/a@s1: it's being held. Run 'zfs holds -r p/a@s1' to \
                 see holders.",
                "Busy",
            ),
            (
                "cannot receive incremental stream: destination p/d contains partially-complete \
                 state from \"zfs receive -s\".",
                "PartialReceive",
            ),
            (
                "cannot receive incremental stream: checksum mismatch or incomplete stream.\n\
                 Partially received snapshot is saved.\n\
                 A resuming stream can be generated on the sending system by running:\n    \
                 zfs send -t 1-a72d4ae97-d8-789c63",
                "InvalidStream",
            ),
            (
                "cannot receive new filesystem stream: incomplete stream",
                "InvalidStream",
            ),
            (
                "cannot receive: invalid stream (bad magic number)",
                "InvalidStream",
            ),
            (
                "cannot receive: failed to read from stream",
                "InvalidStream",
            ),
            (
                "cannot receive incremental stream: destination 'p/nope' does not exist",
                "NotFound",
            ),
            (
                "cannot open 'p/x': dataset does not exist\n\
                 cannot receive new filesystem stream: unable to restore to destination",
                "NotFound",
            ),
            (
                "cannot resume send: 'p/d@s2' used in the initial send no longer exists",
                "NotFound",
            ),
            ("bookmark 'p/d#nope' does not exist.", "NotFound"),
            (
                "cannot create bookmark 'p/d#b1': bookmark exists",
                "AlreadyExists",
            ),
            (
                "cannot hold snapshot 'p/d@s1': tag already exists on this dataset",
                "AlreadyExists",
            ),
            (
                "cannot create snapshot 'p/d@s1': dataset already exists",
                "AlreadyExists",
            ),
            ("cannot unmount '/mnt/p/d': pool or dataset is busy", "Busy"),
            (
                "cannot rollback to 'p/d@s1': more recent snapshots or bookmarks exist\n\
                 use '-r' to force deletion of the following snapshots and bookmarks:\np/d@s2",
                "Failed",
            ),
            (
                "'p/d' does not have any resumable receive state to abort",
                "Failed",
            ),
            (
                "cannot receive incremental stream: No space left on device",
                "NoSpace",
            ),
            (
                "cannot release hold from snapshot 'p/d@s1': reference not found",
                "NoSuchHold",
            ),
        ];
        let cases = cases.into_iter().chain(openzfs);
        for (stderr, want) in cases {
            let err = ZfsError::from_failure(failure(stderr));
            let got = format!("{err:?}");
            assert!(got.starts_with(want), "{stderr:?} → {got}");
            assert_eq!(err.failure().unwrap().stderr, stderr);
        }
    }

    #[test]
    fn a_wrapped_cause_is_printed_once() {
        let missing = std::process::Command::new("/nonexistent/zrep/zfs")
            .output()
            .unwrap_err();
        let err = ZfsError::Spawn {
            program: "/nonexistent/zrep/zfs".into(),
            source: missing,
        };
        assert_eq!(err.to_string(), "cannot run /nonexistent/zrep/zfs");
        assert_eq!(
            zrep_chain::one_line(&err),
            "cannot run /nonexistent/zrep/zfs: No such file or directory (os error 2)"
        );
        let err = ZfsError::Io {
            command: CommandLine(vec!["zfs".into(), "receive".into(), "p/a".into()]),
            source: std::io::Error::from_raw_os_error(32),
        };
        let text = zrep_chain::one_line(&err);
        assert!(
            text.starts_with("I/O with `zfs receive p/a` failed: "),
            "{text}"
        );
        assert_eq!(text.matches("os error 32").count(), 1, "{text}");
        let err = ZfsError::from(NameError::Empty);
        assert_eq!(
            zrep_chain::one_line(&err),
            "ZFS printed an invalid name: name is empty"
        );
    }

    #[test]
    fn command_line_quotes_for_humans() {
        let line = CommandLine(vec!["zfs".into(), "send".into(), "p/a b@it's".into()]);
        assert_eq!(line.to_string(), r"zfs send 'p/a b@it'\''s'");
    }
}
