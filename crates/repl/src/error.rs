//! Errors of the replication logic.
//!
//! Rules: every variant says what went wrong in words an admin can act on; where the fix is on
//! the other host, the message says so. ZFS and protocol errors keep their typed source.
//!
//! A message never repeats its source: a variant that wraps a cause says what was being done
//! ("listing snapshots of tank/data") and exposes the cause as `source()`; print chains with
//! `zrep_chain::one_line` ("listing snapshots of tank/data: cannot run zfs: ..."), also where the
//! text goes to the peer (a refusal, a failure, an error frame) or into a log field.

use std::time::Duration;

use thiserror::Error;
use zrep_proto::{ChunkError, ErrorCode, FailureCode, RefusalCode, UsageError};
use zrep_zfs::{NameError, ZfsError};

use crate::transport::TransportError;

/// Why one dataset was not replicated.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ReplicationError {
    /// A local ZFS operation failed.
    #[error("{action}")]
    Zfs {
        /// What zrep was doing.
        action: String,
        /// ZFS's error.
        source: ZfsError,
    },
    /// A name could not be formed (too long, invalid characters).
    #[error("invalid name")]
    Name(#[from] NameError),
    /// The connection failed or the receiver broke the protocol.
    #[error(transparent)]
    Transport(TransportError),
    /// The receiver refused the transfer; nothing changed there.
    #[error("the receiver refused the transfer ({code}): {message}")]
    Refused {
        /// The stable refusal code.
        code: RefusalCode,
        /// The receiver's explanation.
        message: String,
    },
    /// The receiver accepted the stream but did not commit it.
    #[error("the receiver did not commit the snapshot ({code}): {message}")]
    Failed {
        /// The stable failure code.
        code: FailureCode,
        /// The receiver's explanation, with ZFS's message.
        message: String,
    },
    /// Source and target histories differ; zrep never destroys anything to reconcile them.
    #[error("{0}")]
    Diverged(String),
    /// The receiver closed the session with an error.
    #[error("the receiver ended the session ({code}): {message}")]
    PeerError {
        /// The stable error code.
        code: ErrorCode,
        /// The receiver's explanation.
        message: String,
    },
    /// No commit answer arrived in time. The next cycle finds out by GUID whether it landed.
    #[error("no commit answer from the receiver within {0:?}; the next cycle reconciles by GUID")]
    CommitTimeout(Duration),
    /// The receiver sent something the sender did not ask for.
    #[error("unexpected answer from the receiver: {0}")]
    Unexpected(String),
    /// The local `zfs send` failed while streaming; the stream was aborted and the receiver
    /// discards what it got. A cause on this side, not the receiver's.
    #[error("zfs send failed; the stream was aborted")]
    SendFailed(#[source] SendFailure),
    /// A protocol call was out of order: a bug in zrep.
    #[error("internal error")]
    Usage(#[from] UsageError),
    /// Compressing a chunk failed.
    #[error("compression failed")]
    Chunk(#[from] ChunkError),
}

/// What went wrong with the local `zfs send` ([`ReplicationError::SendFailed`]).
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum SendFailure {
    /// Reading its output failed.
    #[error("reading its output")]
    Read(#[source] std::io::Error),
    /// It exited with an error (ZFS's message is in the failure).
    #[error(transparent)]
    Zfs(#[from] ZfsError),
}

impl ReplicationError {
    pub(crate) fn zfs(action: impl Into<String>) -> impl FnOnce(ZfsError) -> Self {
        let action = action.into();
        move |source| Self::Zfs { action, source }
    }
}

impl From<TransportError> for ReplicationError {
    /// The receiver's error frame reads the same whether it came as an event or was found
    /// after a failed write.
    fn from(err: TransportError) -> Self {
        match err {
            TransportError::PeerClosed { code, message } => Self::PeerError { code, message },
            other => Self::Transport(other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_zfs_is_said_once() {
        let source = std::fs::read("/nonexistent/zrep/zfs").unwrap_err();
        let err = ReplicationError::zfs("listing snapshots of tank/data")(ZfsError::Spawn {
            program: "/nonexistent/zrep/zfs".into(),
            source,
        });
        assert_eq!(err.to_string(), "listing snapshots of tank/data");
        let text = zrep_chain::one_line(&err);
        assert_eq!(
            text,
            "listing snapshots of tank/data: cannot run /nonexistent/zrep/zfs: No such file or directory (os error 2)"
        );
        assert_eq!(text.matches("os error 2").count(), 1, "{text}");
    }

    #[test]
    fn a_failed_zfs_send_is_local_and_said_once() {
        let err =
            ReplicationError::SendFailed(SendFailure::Read(std::io::Error::from_raw_os_error(32)));
        let text = zrep_chain::one_line(&err);
        assert!(
            text.starts_with("zfs send failed; the stream was aborted: reading its output: "),
            "{text}"
        );
        assert_eq!(text.matches("os error 32").count(), 1, "{text}");
        assert!(!text.contains("receiver"), "{text}");
    }
}
