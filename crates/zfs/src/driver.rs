//! The `Zfs` trait: every operation zrep performs on ZFS, and the values it returns.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use crate::caps::Capabilities;
use crate::error::ZfsError;
use crate::name::{BookmarkName, DatasetName, HoldTag, PropertyName, SnapshotName};

/// A ZFS object's 64-bit GUID, which identifies a snapshot across pools: a received snapshot has
/// the GUID of the snapshot it was sent from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Guid(pub u64);

impl fmt::Display for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl FromStr for Guid {
    type Err = std::num::ParseIntError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.parse().map(Guid)
    }
}

/// A filesystem or a volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DatasetKind {
    /// A filesystem.
    Filesystem,
    /// A volume (zvol).
    Volume,
}

/// One dataset found under a root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatasetInfo {
    /// The dataset's name.
    pub name: DatasetName,
    /// Filesystem or volume.
    pub kind: DatasetKind,
}

/// One snapshot with the numbers that identify and order it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotInfo {
    /// The snapshot's name.
    pub name: SnapshotName,
    /// Its exact GUID.
    pub guid: Guid,
    /// Creation time, seconds since the Unix epoch.
    pub creation: u64,
    /// The transaction group that created it, where the dialect reports it; it orders snapshots
    /// taken within the same second.
    pub createtxg: Option<u64>,
    /// Its place in the dataset's creation order, always filled by the driver: `createtxg` where
    /// the dialect reports it, otherwise the 1-based position in the dataset's listing (which is
    /// creation order). Either way the orders of one dataset's snapshots and bookmarks compare
    /// with each other (without `createtxg` no bookmarks are used: see
    /// [`Capabilities::bookmarks`]); orders of different datasets or hosts do not.
    pub order: u64,
}

/// One bookmark (OpenZFS).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BookmarkInfo {
    /// The bookmark's name.
    pub name: BookmarkName,
    /// The GUID of the snapshot it was made from.
    pub guid: Guid,
    /// Creation time of that snapshot, seconds since the Unix epoch.
    pub creation: u64,
    /// The transaction group of that snapshot, where reported.
    pub createtxg: Option<u64>,
    /// That snapshot's place in the dataset's creation order, comparable with
    /// [`SnapshotInfo::order`] of the same dataset.
    pub order: u64,
}

/// A property's value and where it comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PropertyValue {
    /// The value as `zfs get -Hp` prints it (exact numbers).
    pub value: String,
    /// `local`, `default`, `inherited from ...`, `temporary`, `received`, or `-`.
    pub source: String,
}

/// The base of an incremental stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IncrementalBase {
    /// A snapshot of the same dataset.
    Snapshot(SnapshotName),
    /// A bookmark of the same dataset (OpenZFS; never with intermediates).
    Bookmark(BookmarkName),
}

impl IncrementalBase {
    /// The base's full name.
    pub fn as_str(&self) -> &str {
        match self {
            Self::Snapshot(snap) => snap.as_str(),
            Self::Bookmark(mark) => mark.as_str(),
        }
    }
}

/// What `zfs send` should produce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendKind {
    /// A full stream of one snapshot.
    Full {
        /// The snapshot to send.
        snapshot: SnapshotName,
    },
    /// The changes from `from` to `to`; with `intermediates` (`-I`) every snapshot in between
    /// travels too, otherwise (`-i`) only `to`.
    Incremental {
        /// The base the target already has.
        from: IncrementalBase,
        /// The newest snapshot to send.
        to: SnapshotName,
        /// `-I` rather than `-i`.
        intermediates: bool,
    },
    /// The rest of an interrupted stream (`zfs send -t TOKEN`, OpenZFS).
    Resume {
        /// The target's `receive_resume_token`.
        token: String,
    },
}

/// A `zfs send` request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendRequest {
    /// What to send.
    pub kind: SendKind,
    /// `-p`: include the dataset's properties.
    pub properties: bool,
    /// `-w`: raw stream of an encrypted dataset (the receiver never sees the key).
    pub raw: bool,
    /// `-c -L -e`: keep on-disk compression, large and embedded blocks.
    pub compressed: bool,
}

impl SendRequest {
    /// A plain stream of the given kind.
    pub fn new(kind: SendKind) -> Self {
        Self {
            kind,
            properties: false,
            raw: false,
            compressed: false,
        }
    }
}

/// What a resume token says about the interrupted stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResumeTokenInfo {
    /// The snapshot the stream ends at.
    pub to_name: SnapshotName,
    /// Its GUID.
    pub to_guid: Guid,
    /// The incremental base's GUID (`None` for a full stream).
    pub from_guid: Option<Guid>,
    /// Stream bytes the receiver already has.
    pub bytes_done: Option<u64>,
}

/// A `zfs receive` request. There is deliberately no `-F`: a receive never rolls back or destroys
/// anything on the target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceiveRequest {
    /// The dataset the stream lands in.
    pub target: DatasetName,
    /// `-s`: keep a resume token if the stream is cut (OpenZFS).
    pub resumable: bool,
    /// `-u`: do not mount the received filesystem (OpenZFS).
    pub no_mount: bool,
    /// `-o property=value` for each entry (OpenZFS).
    pub set_properties: Vec<(PropertyName, String)>,
    /// `-x property` for each entry (OpenZFS).
    pub exclude_properties: Vec<PropertyName>,
}

impl ReceiveRequest {
    /// A plain receive into `target`.
    pub fn new(target: DatasetName) -> Self {
        Self {
            target,
            resumable: false,
            no_mount: false,
            set_properties: Vec::new(),
            exclude_properties: Vec::new(),
        }
    }
}

/// How a stream process ends: resolves once the process exited, with its classified error.
pub type Completion = Pin<Box<dyn Future<Output = Result<(), ZfsError>> + Send>>;

/// A running `zfs send`: read the stream from `reader`, then call [`SendStream::finish`].
///
/// Dropping it (or calling `finish` before the end of the stream) aborts the send the way that
/// releases its holds: the pipe is closed, `zfs send` stops on the broken pipe and exits, and the
/// real driver kills it only if it has not exited within its abort limit; either way the process
/// is reaped. `finish` waits for that; a plain drop lets it happen in the background.
pub struct SendStream {
    /// The stream's bytes; reading applies backpressure to `zfs send`.
    pub reader: Pin<Box<dyn AsyncRead + Send>>,
    completion: Completion,
}

impl SendStream {
    /// Wraps a reader and the future that reports the process's end.
    pub fn new(reader: Pin<Box<dyn AsyncRead + Send>>, completion: Completion) -> Self {
        Self { reader, completion }
    }

    /// Waits for the process to exit (after the reader hit end of stream) and reports its status.
    /// Before the end of the stream it aborts the send as dropping does, waits until the process
    /// is gone and reports how it ended (an error: the stream was cut).
    pub async fn finish(self) -> Result<(), ZfsError> {
        drop(self.reader);
        self.completion.await
    }
}

impl fmt::Debug for SendStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SendStream").finish_non_exhaustive()
    }
}

/// A running `zfs receive`: write the stream into `writer`, then call [`ReceiveSink::finish`].
///
/// Dropping it closes the stream short: `zfs receive` sees it truncated, discards the partial
/// stream (or keeps a resume token with `-s`) and exits; the real driver kills it only if it has
/// not exited within its abort limit, and reaps it either way, in the background. To know that
/// the process is gone (and the partial stream discarded) before touching the target again,
/// call `finish` instead: it ends the stream the same way and waits for the exit.
pub struct ReceiveSink {
    /// Where the stream goes; writes wait while `zfs receive` is busy.
    pub writer: Pin<Box<dyn AsyncWrite + Send>>,
    completion: Completion,
}

impl ReceiveSink {
    /// Wraps a writer and the future that reports the process's end.
    pub fn new(writer: Pin<Box<dyn AsyncWrite + Send>>, completion: Completion) -> Self {
        Self { writer, completion }
    }

    /// Closes the stream and waits for `zfs receive` to commit it.
    pub async fn finish(mut self) -> Result<(), ZfsError> {
        // A failed shutdown means the process already closed its stdin; its exit status says why.
        let _ = self.writer.shutdown().await;
        drop(self.writer);
        self.completion.await
    }
}

impl fmt::Debug for ReceiveSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReceiveSink").finish_non_exhaustive()
    }
}

/// Something `zfs get`/`zfs set` can address.
pub trait ObjectName: fmt::Display + Send + Sync {
    /// The name as ZFS prints it.
    fn object_name(&self) -> &str;
}

impl ObjectName for DatasetName {
    fn object_name(&self) -> &str {
        self.as_str()
    }
}

impl ObjectName for SnapshotName {
    fn object_name(&self) -> &str {
        self.as_str()
    }
}

impl ObjectName for BookmarkName {
    fn object_name(&self) -> &str {
        self.as_str()
    }
}

/// Every operation zrep performs on ZFS. The real driver is [`crate::SystemZfs`]; with the
/// `test-util` feature, `FakeZfs` implements it in memory.
pub trait Zfs: Send + Sync {
    /// What this ZFS supports.
    fn capabilities(&self) -> &Capabilities;

    /// Whether a dataset exists.
    fn exists(&self, dataset: &DatasetName) -> impl Future<Output = Result<bool, ZfsError>> + Send;

    /// `root` and every filesystem and volume below it, parents before children.
    fn list_datasets(
        &self,
        root: &DatasetName,
    ) -> impl Future<Output = Result<Vec<DatasetInfo>, ZfsError>> + Send;

    /// Snapshots of `dataset` (and, if `recursive`, of every dataset below it) with exact GUIDs,
    /// grouped by dataset and in creation order within each, in one call.
    fn list_snapshots(
        &self,
        dataset: &DatasetName,
        recursive: bool,
    ) -> impl Future<Output = Result<Vec<SnapshotInfo>, ZfsError>> + Send;

    /// Creates a snapshot (and, if `recursive`, the same name on every dataset below, atomically).
    fn create_snapshot(
        &self,
        snapshot: &SnapshotName,
        recursive: bool,
    ) -> impl Future<Output = Result<(), ZfsError>> + Send;

    /// Destroys one snapshot (never recursively). A held snapshot fails with [`ZfsError::Busy`].
    fn destroy_snapshot(
        &self,
        snapshot: &SnapshotName,
    ) -> impl Future<Output = Result<(), ZfsError>> + Send;

    /// Destroys a dataset with its snapshots and anything below it (`zfs destroy -r`). The
    /// receiver uses it only on a dataset its own failed transfer created.
    fn destroy_dataset(
        &self,
        dataset: &DatasetName,
    ) -> impl Future<Output = Result<(), ZfsError>> + Send;

    /// Places a user hold.
    fn hold(
        &self,
        tag: &HoldTag,
        snapshot: &SnapshotName,
    ) -> impl Future<Output = Result<(), ZfsError>> + Send;

    /// Releases a user hold.
    fn release(
        &self,
        tag: &HoldTag,
        snapshot: &SnapshotName,
    ) -> impl Future<Output = Result<(), ZfsError>> + Send;

    /// The user holds on a snapshot (needs `zfs holds -H`; on zfs-fuse it reports
    /// [`ZfsError::Unsupported`], use the `userrefs` property there).
    fn holds(
        &self,
        snapshot: &SnapshotName,
    ) -> impl Future<Output = Result<Vec<HoldTag>, ZfsError>> + Send;

    /// Every user hold's tag on a snapshot as ZFS lists it, including tags zrep could not place
    /// itself (an admin's `keep me`, OpenZFS's temporary `.send-PID-N`); needs `zfs holds -H`
    /// like [`Zfs::holds`].
    fn hold_tags(
        &self,
        snapshot: &SnapshotName,
    ) -> impl Future<Output = Result<Vec<String>, ZfsError>> + Send {
        async move {
            let tags = self.holds(snapshot).await?;
            Ok(tags.iter().map(|tag| tag.as_str().to_owned()).collect())
        }
    }

    /// A property, or `None` where ZFS reports `-` (not applicable).
    fn get_property<O: ObjectName>(
        &self,
        object: &O,
        property: &PropertyName,
    ) -> impl Future<Output = Result<Option<PropertyValue>, ZfsError>> + Send;

    /// Sets a property.
    fn set_property<O: ObjectName>(
        &self,
        object: &O,
        property: &PropertyName,
        value: &str,
    ) -> impl Future<Output = Result<(), ZfsError>> + Send;

    /// Creates a filesystem with properties; with `parents`, missing parents too (`-p`).
    fn create_dataset(
        &self,
        dataset: &DatasetName,
        properties: &[(PropertyName, String)],
        parents: bool,
    ) -> impl Future<Output = Result<(), ZfsError>> + Send;

    /// Unmounts a filesystem; one that is not mounted is left as it is.
    fn unmount(&self, dataset: &DatasetName) -> impl Future<Output = Result<(), ZfsError>> + Send;

    /// Rolls a dataset back to its newest snapshot (never `-r`: no snapshot is destroyed).
    fn rollback(
        &self,
        snapshot: &SnapshotName,
    ) -> impl Future<Output = Result<(), ZfsError>> + Send;

    /// Starts `zfs send`.
    fn send(
        &self,
        request: &SendRequest,
    ) -> impl Future<Output = Result<SendStream, ZfsError>> + Send;

    /// The stream size `zfs send -nP` estimates, or `None` where the dialect cannot tell.
    fn send_estimate(
        &self,
        request: &SendRequest,
    ) -> impl Future<Output = Result<Option<u64>, ZfsError>> + Send;

    /// What a `receive_resume_token` refers to (`zfs send -nv -t`, OpenZFS). A token whose
    /// snapshot is gone reports [`ZfsError::NotFound`].
    fn resume_token_info(
        &self,
        token: &str,
    ) -> impl Future<Output = Result<ResumeTokenInfo, ZfsError>> + Send;

    /// Starts `zfs receive`.
    fn receive(
        &self,
        request: &ReceiveRequest,
    ) -> impl Future<Output = Result<ReceiveSink, ZfsError>> + Send;

    /// Creates a bookmark of a snapshot (OpenZFS).
    fn create_bookmark(
        &self,
        snapshot: &SnapshotName,
        bookmark: &BookmarkName,
    ) -> impl Future<Output = Result<(), ZfsError>> + Send;

    /// Bookmarks of one dataset, oldest first (OpenZFS; empty where unsupported or where the
    /// dialect has no `createtxg` to order them among snapshots).
    fn list_bookmarks(
        &self,
        dataset: &DatasetName,
    ) -> impl Future<Output = Result<Vec<BookmarkInfo>, ZfsError>> + Send;

    /// Destroys a bookmark (OpenZFS).
    fn destroy_bookmark(
        &self,
        bookmark: &BookmarkName,
    ) -> impl Future<Output = Result<(), ZfsError>> + Send;

    /// Discards a partially received stream and its resume token (`zfs receive -A`, OpenZFS).
    fn abort_resumable_receive(
        &self,
        dataset: &DatasetName,
    ) -> impl Future<Output = Result<(), ZfsError>> + Send;
}
