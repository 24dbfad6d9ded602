//! zrep's ZFS driver.
//!
//! Everything zrep does to ZFS goes through the [`Zfs`] trait: the replication logic is written
//! against it, [`SystemZfs`] runs the real `zfs` command (argument vectors, never a shell, a
//! timeout on every call), and with the `test-util` feature `FakeZfs` holds pools in memory for
//! fast tests and fault injection, while `testbed` makes real file-backed zfs-fuse pools.
//!
//! Names are typed ([`DatasetName`], [`SnapshotName`], ...) and validated once, so an invalid
//! name or one that reads as an option never reaches `zfs`. The local dialect (zfs-fuse or
//! OpenZFS 2.x) is probed at run time into [`Capabilities`]; operations a dialect lacks report
//! [`ZfsError::Unsupported`] instead of running a command that would fail obscurely.

mod caps;
mod driver;
mod error;
mod name;
pub mod received;
pub mod stream;
mod system;

#[cfg(feature = "test-util")]
pub mod fake;
#[cfg(feature = "test-util")]
pub mod testbed;

pub use caps::{Capabilities, Dialect};
pub use driver::{
    BookmarkInfo, Completion, DatasetInfo, DatasetKind, Guid, IncrementalBase, ObjectName,
    PropertyValue, ReceiveRequest, ReceiveSink, ResumeTokenInfo, SendKind, SendRequest, SendStream,
    SnapshotInfo, Zfs,
};
pub use error::{CommandFailure, CommandLine, ZfsError};
pub use name::{
    BookmarkName, DatasetName, HoldTag, MAX_NAME_LEN, NameError, PropertyName, RelativeName,
    SnapshotName,
};
pub use system::{SystemZfs, SystemZfsConfig};
