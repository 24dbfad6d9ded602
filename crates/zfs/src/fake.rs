//! An in-memory ZFS for fast tests of the replication logic and for fault injection.
//!
//! It keeps the rules the replication logic relies on, with ZFS's own messages so that errors
//! classify as they do on real ZFS: GUIDs travel with snapshots, a full stream needs an absent
//! target, an incremental needs its base to be the target's newest snapshot and an unmodified
//! target, held snapshots refuse destruction, a cut stream lands nothing. Files are a flat map per
//! dataset; streams are ZFS's record framing around a private payload. It is never the only proof: the same behaviours are
//! tested on real ZFS.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Cursor;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::AsyncWrite;

use crate::caps::Capabilities;
use crate::driver::{
    BookmarkInfo, DatasetInfo, DatasetKind, Guid, IncrementalBase, ObjectName, PropertyValue,
    ReceiveRequest, ReceiveSink, ResumeTokenInfo, SendKind, SendRequest, SendStream, SnapshotInfo,
    Zfs,
};
use crate::error::{CommandFailure, CommandLine, ZfsError};
use crate::name::{BookmarkName, DatasetName, HoldTag, PropertyName, SnapshotName};

const STREAM_MAGIC: &[u8; 8] = b"FAKEZFS1";

/// Operations that [`FakeZfs::fail_next`] can make fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FakeOp {
    /// `list_snapshots`.
    ListSnapshots,
    /// `create_snapshot`.
    CreateSnapshot,
    /// `destroy_snapshot`.
    DestroySnapshot,
    /// `hold`.
    Hold,
    /// `release`.
    Release,
    /// `set_property`.
    SetProperty,
    /// `create_dataset`.
    CreateDataset,
    /// The completion of `send` (the stream itself is delivered in full).
    Send,
    /// The completion of `receive` (nothing lands).
    Receive,
}

/// An in-memory ZFS; clones share the same pools.
#[derive(Debug, Clone)]
pub struct FakeZfs {
    caps: Capabilities,
    state: Arc<Mutex<State>>,
}

#[derive(Debug, Default)]
struct State {
    datasets: BTreeMap<String, Dataset>,
    seed: u64,
    counter: u64,
    clock: u64,
    faults: HashMap<FakeOp, Vec<String>>,
    latency: HashMap<FakeOp, Duration>,
}

#[derive(Debug, Clone, Default)]
struct Dataset {
    properties: BTreeMap<String, String>,
    files: BTreeMap<String, Vec<u8>>,
    modified: bool,
    snapshots: Vec<Snapshot>,
    bookmarks: Vec<Bookmark>,
}

#[derive(Debug, Clone)]
struct Snapshot {
    short: String,
    guid: u64,
    creation: u64,
    txg: u64,
    holds: BTreeSet<String>,
    files: BTreeMap<String, Vec<u8>>,
}

#[derive(Debug, Clone)]
struct Bookmark {
    short: String,
    guid: u64,
    creation: u64,
    txg: u64,
}

impl FakeZfs {
    /// An empty fake with the given dialect (bookmarks only with `createtxg`, as the real
    /// driver's probe settles it).
    pub fn new(caps: Capabilities) -> Self {
        let createtxg = caps.createtxg;
        let caps = caps.with_createtxg(createtxg);
        static INSTANCES: AtomicU64 = AtomicU64::new(1);
        let state = State {
            seed: INSTANCES.fetch_add(1, Ordering::Relaxed),
            clock: 1_700_000_000,
            ..State::default()
        };
        Self {
            caps,
            state: Arc::new(Mutex::new(state)),
        }
    }

    /// Creates a pool, i.e. its root dataset.
    pub fn create_pool(&self, name: &str) -> DatasetName {
        let pool = DatasetName::parse(name).expect("valid pool name");
        self.lock()
            .datasets
            .insert(pool.as_str().to_owned(), Dataset::default());
        pool
    }

    /// Writes a file into a dataset, which marks it modified since its newest snapshot.
    pub fn write_file(&self, dataset: &DatasetName, path: &str, contents: &[u8]) {
        let mut state = self.lock();
        let ds = state
            .datasets
            .get_mut(dataset.as_str())
            .unwrap_or_else(|| panic!("fake dataset {dataset} does not exist"));
        ds.files.insert(path.to_owned(), contents.to_vec());
        ds.modified = true;
    }

    /// A dataset's current files.
    pub fn files(&self, dataset: &DatasetName) -> BTreeMap<String, Vec<u8>> {
        self.lock()
            .datasets
            .get(dataset.as_str())
            .map(|ds| ds.files.clone())
            .unwrap_or_default()
    }

    /// Sets the clock used for snapshot creation times (seconds since the epoch).
    pub fn set_clock(&self, seconds: u64) {
        self.lock().clock = seconds;
    }

    /// Makes the next call of `op` fail with a command failure carrying `stderr` (classified as
    /// real ZFS messages are).
    pub fn fail_next(&self, op: FakeOp, stderr: &str) {
        self.lock()
            .faults
            .entry(op)
            .or_default()
            .push(stderr.to_owned());
    }

    /// Makes every later call of `op` take `latency` first (tokio's clock: tests with paused
    /// time run it at once), as a slow pool or a long `zfs receive` would.
    pub fn set_latency(&self, op: FakeOp, latency: Duration) {
        self.lock().latency.insert(op, latency);
    }

    async fn work(&self, op: FakeOp) {
        let latency = self.lock().latency.get(&op).copied();
        if let Some(latency) = latency {
            tokio::time::sleep(latency).await;
        }
    }

    /// The user holds on a snapshot, whatever the dialect.
    pub fn holds_of(&self, snapshot: &SnapshotName) -> Vec<String> {
        let state = self.lock();
        state
            .find_snapshot(snapshot)
            .map(|s| s.holds.iter().cloned().collect())
            .unwrap_or_default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock is a failed test already; keep the state readable.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn unsupported(&self, feature: &'static str) -> ZfsError {
        ZfsError::Unsupported {
            feature,
            dialect: self.caps.dialect.to_string(),
        }
    }
}

fn failure(args: &[&str], stderr: String) -> ZfsError {
    let mut line = vec!["zfs".to_owned()];
    line.extend(args.iter().map(|a| (*a).to_owned()));
    ZfsError::from_failure(CommandFailure {
        command: CommandLine(line),
        status: Some(1),
        stderr,
    })
}

fn not_found(args: &[&str], name: &str) -> ZfsError {
    failure(
        args,
        format!("cannot open '{name}': dataset does not exist"),
    )
}

impl State {
    fn take_fault(&mut self, op: FakeOp, args: &[&str]) -> Result<(), ZfsError> {
        match self.faults.get_mut(&op).and_then(|queue| queue.pop()) {
            Some(stderr) => Err(failure(args, stderr)),
            None => Ok(()),
        }
    }

    fn next_ids(&mut self) -> (u64, u64) {
        self.counter += 1;
        // splitmix64 over (instance, counter): GUIDs that look random and span all 64 bits, and
        // that differ between fakes, as GUIDs of different pools do.
        let mut z = (self.seed << 32 | self.counter).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (z ^ (z >> 31), self.counter)
    }

    fn dataset(&self, name: &DatasetName, args: &[&str]) -> Result<&Dataset, ZfsError> {
        self.datasets
            .get(name.as_str())
            .ok_or_else(|| not_found(args, name.as_str()))
    }

    fn dataset_mut(&mut self, name: &DatasetName, args: &[&str]) -> Result<&mut Dataset, ZfsError> {
        self.datasets
            .get_mut(name.as_str())
            .ok_or_else(|| not_found(args, name.as_str()))
    }

    fn find_snapshot(&self, name: &SnapshotName) -> Option<&Snapshot> {
        self.datasets
            .get(name.dataset().as_str())?
            .snapshots
            .iter()
            .find(|s| s.short == name.short_name())
    }

    fn below<'a>(
        &'a self,
        root: &'a DatasetName,
    ) -> impl Iterator<Item = (&'a String, &'a Dataset)> {
        self.datasets
            .iter()
            .filter(move |(name, _)| DatasetName::parse(name).is_ok_and(|n| n.is_within(root)))
    }
}

impl Zfs for FakeZfs {
    fn capabilities(&self) -> &Capabilities {
        &self.caps
    }

    async fn exists(&self, dataset: &DatasetName) -> Result<bool, ZfsError> {
        Ok(self.lock().datasets.contains_key(dataset.as_str()))
    }

    async fn list_datasets(&self, root: &DatasetName) -> Result<Vec<DatasetInfo>, ZfsError> {
        let state = self.lock();
        state.dataset(root, &["list", root.as_str()])?;
        state
            .below(root)
            .map(|(name, _)| {
                Ok(DatasetInfo {
                    name: DatasetName::parse(name)?,
                    kind: DatasetKind::Filesystem,
                })
            })
            .collect()
    }

    async fn list_snapshots(
        &self,
        dataset: &DatasetName,
        recursive: bool,
    ) -> Result<Vec<SnapshotInfo>, ZfsError> {
        self.work(FakeOp::ListSnapshots).await;
        let mut state = self.lock();
        let args = ["get", "guid", dataset.as_str()];
        state.take_fault(FakeOp::ListSnapshots, &args)?;
        state.dataset(dataset, &args)?;
        let mut out = Vec::new();
        for (name, ds) in state.below(dataset) {
            if !recursive && name != dataset.as_str() {
                continue;
            }
            // The order real ZFS gives: the txg, or without it the position in the listing.
            for (position, snap) in (1..).zip(&ds.snapshots) {
                out.push(SnapshotInfo {
                    name: SnapshotName::parse(&format!("{name}@{}", snap.short))?,
                    guid: Guid(snap.guid),
                    creation: snap.creation,
                    createtxg: self.caps.createtxg.then_some(snap.txg),
                    order: if self.caps.createtxg {
                        snap.txg
                    } else {
                        position
                    },
                });
            }
        }
        Ok(out)
    }

    async fn create_snapshot(
        &self,
        snapshot: &SnapshotName,
        recursive: bool,
    ) -> Result<(), ZfsError> {
        self.work(FakeOp::CreateSnapshot).await;
        let mut state = self.lock();
        let args = ["snapshot", snapshot.as_str()];
        state.take_fault(FakeOp::CreateSnapshot, &args)?;
        let root = snapshot.dataset();
        state.dataset(&root, &args)?;
        let targets: Vec<String> = if recursive {
            state.below(&root).map(|(name, _)| name.clone()).collect()
        } else {
            vec![root.as_str().to_owned()]
        };
        if targets.iter().any(|name| {
            state.datasets[name]
                .snapshots
                .iter()
                .any(|s| s.short == snapshot.short_name())
        }) {
            return Err(failure(
                &args,
                format!("cannot create snapshot '{snapshot}': dataset already exists"),
            ));
        }
        let creation = state.clock;
        for name in targets {
            let (guid, txg) = state.next_ids();
            let ds = state
                .datasets
                .get_mut(&name)
                .expect("names were collected from the map under the same lock");
            ds.snapshots.push(Snapshot {
                short: snapshot.short_name().to_owned(),
                guid,
                creation,
                txg,
                holds: BTreeSet::new(),
                files: ds.files.clone(),
            });
            ds.modified = false;
        }
        Ok(())
    }

    async fn destroy_snapshot(&self, snapshot: &SnapshotName) -> Result<(), ZfsError> {
        self.work(FakeOp::DestroySnapshot).await;
        let mut state = self.lock();
        let args = ["destroy", snapshot.as_str()];
        state.take_fault(FakeOp::DestroySnapshot, &args)?;
        let ds = state.dataset_mut(&snapshot.dataset(), &args)?;
        let index = ds
            .snapshots
            .iter()
            .position(|s| s.short == snapshot.short_name())
            .ok_or_else(|| {
                failure(
                    &args,
                    "could not find any snapshots to destroy; check snapshot names.".to_owned(),
                )
            })?;
        if !ds.snapshots[index].holds.is_empty() {
            return Err(failure(
                &args,
                format!("cannot destroy snapshot {snapshot}: dataset is busy"),
            ));
        }
        ds.snapshots.remove(index);
        Ok(())
    }

    async fn destroy_dataset(&self, dataset: &DatasetName) -> Result<(), ZfsError> {
        let mut state = self.lock();
        let args = ["destroy", "-r", dataset.as_str()];
        state.dataset(dataset, &args)?;
        let doomed: Vec<String> = state.below(dataset).map(|(name, _)| name.clone()).collect();
        for name in &doomed {
            if let Some(held) = state.datasets[name]
                .snapshots
                .iter()
                .find(|s| !s.holds.is_empty())
            {
                return Err(failure(
                    &args,
                    format!(
                        "cannot destroy snapshot {name}@{}: dataset is busy",
                        held.short
                    ),
                ));
            }
        }
        for name in doomed {
            state.datasets.remove(&name);
        }
        Ok(())
    }

    async fn hold(&self, tag: &HoldTag, snapshot: &SnapshotName) -> Result<(), ZfsError> {
        self.work(FakeOp::Hold).await;
        let mut state = self.lock();
        let args = ["hold", tag.as_str(), snapshot.as_str()];
        state.take_fault(FakeOp::Hold, &args)?;
        let snap = snapshot_mut(&mut state, snapshot, &args)?;
        if !snap.holds.insert(tag.as_str().to_owned()) {
            return Err(failure(
                &args,
                format!("cannot hold snapshot '{snapshot}': tag already exists on this dataset"),
            ));
        }
        Ok(())
    }

    async fn release(&self, tag: &HoldTag, snapshot: &SnapshotName) -> Result<(), ZfsError> {
        self.work(FakeOp::Release).await;
        let mut state = self.lock();
        let args = ["release", tag.as_str(), snapshot.as_str()];
        state.take_fault(FakeOp::Release, &args)?;
        let snap = snapshot_mut(&mut state, snapshot, &args)?;
        if !snap.holds.remove(tag.as_str()) {
            return Err(failure(
                &args,
                format!("cannot release '{tag}' from '{snapshot}': no such tag on this dataset"),
            ));
        }
        Ok(())
    }

    async fn holds(&self, snapshot: &SnapshotName) -> Result<Vec<HoldTag>, ZfsError> {
        if !self.caps.holds_scriptable {
            return Err(self.unsupported("`zfs holds -H`"));
        }
        let state = self.lock();
        let snap = state
            .find_snapshot(snapshot)
            .ok_or_else(|| not_found(&["holds", snapshot.as_str()], snapshot.as_str()))?;
        snap.holds.iter().map(|t| Ok(HoldTag::parse(t)?)).collect()
    }

    async fn get_property<O: ObjectName>(
        &self,
        object: &O,
        property: &PropertyName,
    ) -> Result<Option<PropertyValue>, ZfsError> {
        let state = self.lock();
        let name = object.object_name();
        let args = ["get", property.as_str(), name];
        let value = |value: String, source: &str| {
            Ok(Some(PropertyValue {
                value,
                source: source.to_owned(),
            }))
        };
        if let Ok(snapshot) = SnapshotName::parse(name) {
            let snap = state
                .find_snapshot(&snapshot)
                .ok_or_else(|| not_found(&args, name))?;
            return match property.as_str() {
                "guid" => value(snap.guid.to_string(), "-"),
                "creation" => value(snap.creation.to_string(), "-"),
                "createtxg" => value(snap.txg.to_string(), "-"),
                "userrefs" => value(snap.holds.len().to_string(), "-"),
                "type" => value("snapshot".into(), "-"),
                _ => Ok(None),
            };
        }
        let dataset = DatasetName::parse(name)?;
        let ds = state.dataset(&dataset, &args)?;
        if let Some(v) = ds.properties.get(property.as_str()) {
            return value(v.clone(), "local");
        }
        match property.as_str() {
            "readonly" => value("off".into(), "default"),
            "type" => value("filesystem".into(), "-"),
            "receive_resume_token" if self.caps.resumable_receive => value("-".into(), "default"),
            _ => Ok(None),
        }
    }

    async fn set_property<O: ObjectName>(
        &self,
        object: &O,
        property: &PropertyName,
        value: &str,
    ) -> Result<(), ZfsError> {
        self.work(FakeOp::SetProperty).await;
        let mut state = self.lock();
        let name = object.object_name();
        let args = ["set", property.as_str(), name];
        state.take_fault(FakeOp::SetProperty, &args)?;
        let dataset = DatasetName::parse(name)?;
        state
            .dataset_mut(&dataset, &args)?
            .properties
            .insert(property.as_str().to_owned(), value.to_owned());
        Ok(())
    }

    async fn create_dataset(
        &self,
        dataset: &DatasetName,
        properties: &[(PropertyName, String)],
        parents: bool,
    ) -> Result<(), ZfsError> {
        self.work(FakeOp::CreateDataset).await;
        let mut state = self.lock();
        let args = ["create", dataset.as_str()];
        state.take_fault(FakeOp::CreateDataset, &args)?;
        if state.datasets.contains_key(dataset.as_str()) {
            return Err(failure(
                &args,
                format!("cannot create '{dataset}': dataset already exists"),
            ));
        }
        let mut missing = Vec::new();
        let mut parent = dataset.parent();
        while let Some(p) = parent.take() {
            if state.datasets.contains_key(p.as_str()) {
                parent = Some(p);
                break;
            }
            parent = p.parent();
            missing.push(p);
        }
        if !missing.is_empty() && (!parents || parent.is_none()) {
            return Err(failure(
                &args,
                format!("cannot create '{dataset}': parent does not exist"),
            ));
        }
        for p in missing {
            state
                .datasets
                .insert(p.as_str().to_owned(), Dataset::default());
        }
        let ds = Dataset {
            properties: properties
                .iter()
                .map(|(k, v)| (k.as_str().to_owned(), v.clone()))
                .collect(),
            ..Dataset::default()
        };
        state.datasets.insert(dataset.as_str().to_owned(), ds);
        Ok(())
    }

    async fn unmount(&self, dataset: &DatasetName) -> Result<(), ZfsError> {
        let state = self.lock();
        state
            .dataset(dataset, &["unmount", dataset.as_str()])
            .map(drop)
    }

    async fn rollback(&self, snapshot: &SnapshotName) -> Result<(), ZfsError> {
        let mut state = self.lock();
        let args = ["rollback", snapshot.as_str()];
        let ds = state.dataset_mut(&snapshot.dataset(), &args)?;
        match ds.snapshots.last() {
            Some(newest) if newest.short == snapshot.short_name() => {
                ds.files = newest.files.clone();
                ds.modified = false;
                Ok(())
            }
            Some(_) => Err(failure(
                &args,
                format!(
                    "cannot rollback to '{snapshot}': more recent snapshots or bookmarks exist\nuse '-r' to force deletion"
                ),
            )),
            None => Err(not_found(&args, snapshot.as_str())),
        }
    }

    async fn send(&self, request: &SendRequest) -> Result<SendStream, ZfsError> {
        if request.raw && !self.caps.raw_send {
            return Err(self.unsupported("raw send (`zfs send -w`)"));
        }
        self.work(FakeOp::Send).await;
        let mut state = self.lock();
        let fault = state.take_fault(FakeOp::Send, &["send"]);
        let stream = match &request.kind {
            SendKind::Full { snapshot } => {
                let args = ["send", snapshot.as_str()];
                let ds = state.dataset(&snapshot.dataset(), &args)?;
                let snap = ds
                    .snapshots
                    .iter()
                    .find(|s| s.short == snapshot.short_name())
                    .ok_or_else(|| {
                        failure(
                            &args,
                            format!("WARNING: could not send {snapshot}: does not exist"),
                        )
                    })?;
                encode_stream(&snapshot.dataset(), 0, std::slice::from_ref(snap))
            }
            SendKind::Incremental {
                from,
                to,
                intermediates,
            } => {
                let args = ["send", "-i", from.as_str(), to.as_str()];
                let ds = state.dataset(&to.dataset(), &args)?;
                let from_guid = match from {
                    IncrementalBase::Snapshot(s) => ds
                        .snapshots
                        .iter()
                        .find(|x| x.short == s.short_name())
                        .map(|x| x.guid),
                    IncrementalBase::Bookmark(b) => {
                        if !self.caps.bookmarks {
                            return Err(self.unsupported("bookmarks"));
                        }
                        ds.bookmarks
                            .iter()
                            .find(|x| x.short == b.short_name())
                            .map(|x| x.guid)
                    }
                }
                .ok_or_else(|| {
                    failure(
                        &args,
                        format!("cannot open '{}': dataset does not exist", from.as_str()),
                    )
                })?;
                let start = ds.snapshots.iter().position(|s| s.guid == from_guid);
                let end = ds
                    .snapshots
                    .iter()
                    .position(|s| s.short == to.short_name())
                    .ok_or_else(|| not_found(&args, to.as_str()))?;
                let first = match start {
                    Some(start) if start < end => start + 1,
                    Some(_) => {
                        return Err(failure(
                            &args,
                            format!("cannot send '{to}': not an earlier snapshot from the same fs"),
                        ));
                    }
                    // From a bookmark whose snapshot is gone: only the newest can be sent.
                    None => end,
                };
                let range = if *intermediates {
                    first..=end
                } else {
                    end..=end
                };
                encode_stream(&to.dataset(), from_guid, &ds.snapshots[range])
            }
            SendKind::Resume { .. } => {
                return Err(self.unsupported("resumable send in the fake"));
            }
        };
        Ok(SendStream::new(
            Box::pin(Cursor::new(stream)),
            Box::pin(async move { fault }),
        ))
    }

    async fn send_estimate(&self, _request: &SendRequest) -> Result<Option<u64>, ZfsError> {
        Ok(None)
    }

    async fn resume_token_info(&self, _token: &str) -> Result<ResumeTokenInfo, ZfsError> {
        Err(self.unsupported("resumable send in the fake"))
    }

    async fn receive(&self, request: &ReceiveRequest) -> Result<ReceiveSink, ZfsError> {
        if request.resumable && !self.caps.resumable_receive {
            return Err(self.unsupported("resumable receive (`zfs receive -s`)"));
        }
        if request.no_mount && !self.caps.receive_no_mount {
            return Err(self.unsupported("`zfs receive -u`"));
        }
        if !request.set_properties.is_empty() && !self.caps.receive_set_property {
            return Err(self.unsupported("`zfs receive -o`"));
        }
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let writer = SharedWriter(buffer.clone());
        let fake = self.clone();
        let request = request.clone();
        Ok(ReceiveSink::new(
            Box::pin(writer),
            Box::pin(async move {
                fake.work(FakeOp::Receive).await;
                let bytes = std::mem::take(&mut *buffer.lock().unwrap_or_else(|p| p.into_inner()));
                fake.apply_stream(&request, &bytes)
            }),
        ))
    }

    async fn create_bookmark(
        &self,
        snapshot: &SnapshotName,
        bookmark: &BookmarkName,
    ) -> Result<(), ZfsError> {
        if !self.caps.bookmarks {
            return Err(self.unsupported("bookmarks"));
        }
        let mut state = self.lock();
        let args = ["bookmark", snapshot.as_str(), bookmark.as_str()];
        let snap = state
            .find_snapshot(snapshot)
            .cloned()
            .ok_or_else(|| not_found(&args, snapshot.as_str()))?;
        let ds = state.dataset_mut(&snapshot.dataset(), &args)?;
        if ds
            .bookmarks
            .iter()
            .any(|b| b.short == bookmark.short_name())
        {
            return Err(failure(
                &args,
                format!("cannot create bookmark '{bookmark}': bookmark exists"),
            ));
        }
        ds.bookmarks.push(Bookmark {
            short: bookmark.short_name().to_owned(),
            guid: snap.guid,
            creation: snap.creation,
            txg: snap.txg,
        });
        Ok(())
    }

    async fn list_bookmarks(&self, dataset: &DatasetName) -> Result<Vec<BookmarkInfo>, ZfsError> {
        if !self.caps.bookmarks {
            return Ok(Vec::new());
        }
        let state = self.lock();
        let ds = state.dataset(dataset, &["list", "-t", "bookmark", dataset.as_str()])?;
        ds.bookmarks
            .iter()
            .map(|b| {
                Ok(BookmarkInfo {
                    name: dataset.bookmark(&b.short)?,
                    guid: Guid(b.guid),
                    creation: b.creation,
                    createtxg: Some(b.txg),
                    order: b.txg,
                })
            })
            .collect()
    }

    async fn destroy_bookmark(&self, bookmark: &BookmarkName) -> Result<(), ZfsError> {
        if !self.caps.bookmarks {
            return Err(self.unsupported("bookmarks"));
        }
        let mut state = self.lock();
        let args = ["destroy", bookmark.as_str()];
        let ds = state.dataset_mut(&bookmark.dataset(), &args)?;
        let before = ds.bookmarks.len();
        ds.bookmarks.retain(|b| b.short != bookmark.short_name());
        if ds.bookmarks.len() == before {
            return Err(not_found(&args, bookmark.as_str()));
        }
        Ok(())
    }

    async fn abort_resumable_receive(&self, dataset: &DatasetName) -> Result<(), ZfsError> {
        if !self.caps.resumable_receive {
            return Err(self.unsupported("`zfs receive -A`"));
        }
        Err(failure(
            &["receive", "-A", dataset.as_str()],
            format!("'{dataset}' does not have any resumable receive state to abort"),
        ))
    }
}

impl FakeZfs {
    fn apply_stream(&self, request: &ReceiveRequest, bytes: &[u8]) -> Result<(), ZfsError> {
        let target = &request.target;
        let args = ["receive", target.as_str()];
        let mut state = self.lock();
        state.take_fault(FakeOp::Receive, &args)?;
        let Some((from_guid, snapshots)) = decode_stream(bytes) else {
            let kind = if state.datasets.contains_key(target.as_str()) {
                "incremental"
            } else {
                "new filesystem"
            };
            return Err(failure(
                &args,
                format!("cannot receive {kind} stream: invalid backup stream"),
            ));
        };
        let Some(newest_files) = snapshots.last().map(|s| s.files.clone()) else {
            return Err(failure(&args, "cannot receive: empty stream".into()));
        };
        if from_guid == 0 {
            if state.datasets.contains_key(target.as_str()) {
                return Err(failure(
                    &args,
                    format!(
                        "cannot receive new filesystem stream: destination '{target}' exists\nmust specify -F to overwrite it"
                    ),
                ));
            }
            let parent_exists = target
                .parent()
                .is_some_and(|p| state.datasets.contains_key(p.as_str()));
            if !parent_exists {
                return Err(failure(
                    &args,
                    format!(
                        "cannot receive new filesystem stream: parent of '{target}' does not exist"
                    ),
                ));
            }
            let mut ds = Dataset {
                files: newest_files,
                ..Dataset::default()
            };
            for (key, value) in &request.set_properties {
                ds.properties.insert(key.as_str().to_owned(), value.clone());
            }
            state.datasets.insert(target.as_str().to_owned(), ds);
        } else {
            let ds = state.dataset(target, &args).map_err(|_| {
                failure(
                    &args,
                    format!(
                        "cannot receive incremental stream: destination '{target}' does not exist"
                    ),
                )
            })?;
            if ds.snapshots.last().map(|s| s.guid) != Some(from_guid) {
                return Err(failure(
                    &args,
                    format!(
                        "cannot receive incremental stream: most recent snapshot of {target} does not\nmatch incremental source"
                    ),
                ));
            }
            if ds.modified {
                return Err(failure(
                    &args,
                    format!(
                        "cannot receive incremental stream: destination {target} has been modified\nsince most recent snapshot"
                    ),
                ));
            }
            if let Some(clash) = snapshots
                .iter()
                .find(|s| ds.snapshots.iter().any(|d| d.short == s.short))
            {
                return Err(failure(
                    &args,
                    format!(
                        "cannot receive incremental stream: destination snapshot {target}@{} exists",
                        clash.short
                    ),
                ));
            }
            let ds = state.dataset_mut(target, &args)?;
            ds.files = newest_files;
        }
        let mut txgs = Vec::new();
        for _ in &snapshots {
            txgs.push(state.next_ids().1);
        }
        let ds = state.dataset_mut(target, &args)?;
        for (snap, txg) in snapshots.into_iter().zip(txgs) {
            ds.snapshots.push(Snapshot { txg, ..snap });
        }
        ds.modified = false;
        Ok(())
    }
}

fn snapshot_mut<'a>(
    state: &'a mut State,
    snapshot: &SnapshotName,
    args: &[&str],
) -> Result<&'a mut Snapshot, ZfsError> {
    state
        .datasets
        .get_mut(snapshot.dataset().as_str())
        .and_then(|ds| {
            ds.snapshots
                .iter_mut()
                .find(|s| s.short == snapshot.short_name())
        })
        .ok_or_else(|| not_found(args, snapshot.as_str()))
}

/// Collects what a receive is given; the completion parses it.
struct SharedWriter(Arc<Mutex<Vec<u8>>>);

impl AsyncWrite for SharedWriter {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u64).to_be_bytes());
    out.extend_from_slice(bytes);
}

/// A stream in ZFS's own record framing, so that the receiver's stream inspection sees what it
/// sees from `zfs send`: one substream per snapshot (BEGIN, one WRITE record whose block carries
/// the fake's files, END), wrapped in a compound package (outer BEGIN and END, substreams, END) when
/// there are several, as `zfs send -I` does. Records are little-endian, as from an x86 sender.
fn encode_stream(dataset: &DatasetName, from_guid: u64, snapshots: &[Snapshot]) -> Vec<u8> {
    let mut out = Vec::new();
    let compound = snapshots.len() > 1;
    if let (true, Some(last)) = (compound, snapshots.last()) {
        let name = format!("{dataset}@{}", last.short);
        begin_record(&mut out, HDR_COMPOUND, 0, 0, 0, &name, 0);
        end_record(&mut out, 0);
    }
    let mut from = from_guid;
    for snap in snapshots {
        let mut blob = STREAM_MAGIC.to_vec();
        put_bytes(&mut blob, snap.short.as_bytes());
        blob.extend_from_slice(&snap.guid.to_be_bytes());
        blob.extend_from_slice(&snap.creation.to_be_bytes());
        blob.extend_from_slice(&(snap.files.len() as u64).to_be_bytes());
        for (path, data) in &snap.files {
            put_bytes(&mut blob, path.as_bytes());
            put_bytes(&mut blob, data);
        }
        let name = format!("{dataset}@{}", snap.short);
        begin_record(
            &mut out,
            HDR_SUBSTREAM,
            snap.creation,
            snap.guid,
            from,
            &name,
            0,
        );
        write_record(&mut out, snap.guid, blob.len());
        out.extend_from_slice(&blob);
        end_record(&mut out, snap.guid);
        from = snap.guid;
    }
    if compound {
        end_record(&mut out, 0);
    }
    out
}

const RECORD_LEN: usize = 312;
const DRR_BEGIN: u32 = 0;
const DRR_WRITE: u32 = 3;
const DRR_END: u32 = 5;
const BACKUP_MAGIC: u64 = 0x2_F5BA_CBAC;
const HDR_SUBSTREAM: u64 = 1;
const HDR_COMPOUND: u64 = 2;
/// `dmu_objset_type_t` of a filesystem.
const OBJSET_ZFS: u32 = 2;

fn begin_record(
    out: &mut Vec<u8>,
    header: u64,
    creation: u64,
    to_guid: u64,
    from_guid: u64,
    to_name: &str,
    payload: usize,
) {
    let mut record = [0u8; RECORD_LEN];
    record[0..4].copy_from_slice(&DRR_BEGIN.to_le_bytes());
    let payload = u32::try_from(payload).expect("fake streams are small");
    record[4..8].copy_from_slice(&payload.to_le_bytes());
    record[8..16].copy_from_slice(&BACKUP_MAGIC.to_le_bytes());
    record[16..24].copy_from_slice(&header.to_le_bytes());
    record[24..32].copy_from_slice(&creation.to_le_bytes());
    record[32..36].copy_from_slice(&OBJSET_ZFS.to_le_bytes());
    record[40..48].copy_from_slice(&to_guid.to_le_bytes());
    record[48..56].copy_from_slice(&from_guid.to_le_bytes());
    let name = to_name.as_bytes();
    let len = name.len().min(223);
    record[56..56 + len].copy_from_slice(&name[..len]);
    out.extend_from_slice(&record);
}

fn write_record(out: &mut Vec<u8>, to_guid: u64, len: usize) {
    let mut record = [0u8; RECORD_LEN];
    record[0..4].copy_from_slice(&DRR_WRITE.to_le_bytes());
    // drr_write: object, type, pad, offset, then the logical size (the payload: the block,
    // uncompressed as drr_compressiontype is 0), then toguid.
    record[8..16].copy_from_slice(&1u64.to_le_bytes());
    record[32..40].copy_from_slice(&(len as u64).to_le_bytes());
    record[40..48].copy_from_slice(&to_guid.to_le_bytes());
    out.extend_from_slice(&record);
}

fn end_record(out: &mut Vec<u8>, to_guid: u64) {
    let mut record = [0u8; RECORD_LEN];
    record[0..4].copy_from_slice(&DRR_END.to_le_bytes());
    // drr_end: the stream checksum (32 bytes, left zero here), then drr_toguid.
    record[40..48].copy_from_slice(&to_guid.to_le_bytes());
    out.extend_from_slice(&record);
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn u64(&mut self) -> Option<u64> {
        let (head, rest) = self.0.split_first_chunk::<8>()?;
        self.0 = rest;
        Some(u64::from_be_bytes(*head))
    }

    fn bytes(&mut self) -> Option<Vec<u8>> {
        let len = usize::try_from(self.u64()?).ok()?;
        if len > self.0.len() {
            return None;
        }
        let (head, rest) = self.0.split_at(len);
        self.0 = rest;
        Some(head.to_vec())
    }

    fn record(&mut self) -> Option<&[u8]> {
        if self.0.len() < RECORD_LEN {
            return None;
        }
        let (head, rest) = self.0.split_at(RECORD_LEN);
        self.0 = rest;
        Some(head)
    }

    fn raw(&mut self, len: usize) -> Option<&[u8]> {
        if self.0.len() < len {
            return None;
        }
        let (head, rest) = self.0.split_at(len);
        self.0 = rest;
        Some(head)
    }
}

fn le32(record: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(record[at..at + 4].try_into().unwrap_or_default())
}

fn le64(record: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(record[at..at + 8].try_into().unwrap_or_default())
}

/// `None` for a truncated or foreign stream: the first substream's base GUID and the snapshots.
fn decode_stream(bytes: &[u8]) -> Option<(u64, Vec<Snapshot>)> {
    let mut r = Reader(bytes);
    let first = r.record()?;
    if le32(first, 0) != DRR_BEGIN || le64(first, 8) != BACKUP_MAGIC {
        return None;
    }
    let compound = le64(first, 16) & 3 == HDR_COMPOUND;
    let mut next = if compound {
        if le32(r.record()?, 0) != DRR_END {
            return None;
        }
        r.record()?
    } else {
        first
    };
    let mut from_guid = None;
    let mut snapshots = Vec::new();
    loop {
        if le32(next, 0) != DRR_BEGIN || le64(next, 16) & 3 != HDR_SUBSTREAM {
            return None;
        }
        from_guid.get_or_insert(le64(next, 48));
        let write = r.record()?;
        if le32(write, 0) != DRR_WRITE {
            return None;
        }
        let len = usize::try_from(le64(write, 32)).ok()?;
        snapshots.push(decode_blob(r.raw(len)?)?);
        if le32(r.record()?, 0) != DRR_END {
            return None;
        }
        if !compound {
            break;
        }
        next = r.record()?;
        if le32(next, 0) == DRR_END {
            break;
        }
    }
    r.0.is_empty().then_some((from_guid?, snapshots))
}

fn decode_blob(blob: &[u8]) -> Option<Snapshot> {
    let mut r = Reader(blob.strip_prefix(STREAM_MAGIC)?);
    let short = String::from_utf8(r.bytes()?).ok()?;
    let guid = r.u64()?;
    let creation = r.u64()?;
    let files = r.u64()?;
    let mut map = BTreeMap::new();
    for _ in 0..files {
        let path = String::from_utf8(r.bytes()?).ok()?;
        map.insert(path, r.bytes()?);
    }
    r.0.is_empty().then_some(Snapshot {
        short,
        guid,
        creation,
        txg: 0,
        holds: BTreeSet::new(),
        files: map,
    })
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    async fn pipe(
        fake: &FakeZfs,
        kind: SendKind,
        target: &DatasetName,
        cut: Option<usize>,
    ) -> Result<(), ZfsError> {
        let mut stream = fake.send(&SendRequest::new(kind)).await?;
        let mut bytes = Vec::new();
        stream.reader.read_to_end(&mut bytes).await.unwrap();
        stream.finish().await?;
        if let Some(cut) = cut {
            bytes.truncate(cut);
        }
        let mut sink = fake.receive(&ReceiveRequest::new(target.clone())).await?;
        sink.writer.write_all(&bytes).await.unwrap();
        sink.finish().await
    }

    #[tokio::test]
    async fn fake_follows_zfs_rules() {
        let fake = FakeZfs::new(Capabilities::legacy());
        let src = fake.create_pool("src");
        let dst_pool = fake.create_pool("dst");
        let dst = dst_pool.child("copy").unwrap();
        fake.write_file(&src, "a", b"1");
        let s1 = src.snapshot("s1").unwrap();
        fake.create_snapshot(&s1, false).await.unwrap();
        fake.write_file(&src, "a", b"2");
        let s2 = src.snapshot("s2").unwrap();
        fake.create_snapshot(&s2, false).await.unwrap();

        let cut = pipe(
            &fake,
            SendKind::Full {
                snapshot: s1.clone(),
            },
            &dst,
            Some(20),
        )
        .await;
        assert!(
            matches!(cut, Err(ZfsError::InvalidStream { .. })),
            "{cut:?}"
        );
        assert!(!fake.exists(&dst).await.unwrap());

        pipe(
            &fake,
            SendKind::Full {
                snapshot: s1.clone(),
            },
            &dst,
            None,
        )
        .await
        .unwrap();
        let again = pipe(
            &fake,
            SendKind::Full {
                snapshot: s1.clone(),
            },
            &dst,
            None,
        )
        .await;
        assert!(
            matches!(again, Err(ZfsError::DestinationExists { .. })),
            "{again:?}"
        );

        let incr = SendKind::Incremental {
            from: IncrementalBase::Snapshot(s1.clone()),
            to: s2.clone(),
            intermediates: true,
        };
        fake.write_file(&dst, "x", b"intruder");
        let modified = pipe(&fake, incr.clone(), &dst, None).await;
        assert!(
            matches!(modified, Err(ZfsError::DestinationModified { .. })),
            "{modified:?}"
        );
        fake.rollback(&s1.on_dataset(&dst).unwrap()).await.unwrap();
        pipe(&fake, incr.clone(), &dst, None).await.unwrap();
        assert_eq!(fake.files(&dst)["a"], b"2");
        let mismatch = pipe(&fake, incr, &dst, None).await;
        assert!(
            matches!(mismatch, Err(ZfsError::IncrementalMismatch { .. })),
            "{mismatch:?}"
        );

        let src_guids: Vec<_> = fake
            .list_snapshots(&src, false)
            .await
            .unwrap()
            .into_iter()
            .map(|s| s.guid)
            .collect();
        let dst_guids: Vec<_> = fake
            .list_snapshots(&dst, false)
            .await
            .unwrap()
            .into_iter()
            .map(|s| s.guid)
            .collect();
        assert_eq!(src_guids, dst_guids);

        let tag = HoldTag::parse("zrep").unwrap();
        fake.hold(&tag, &s2).await.unwrap();
        assert!(matches!(
            fake.destroy_snapshot(&s2).await,
            Err(ZfsError::Busy { .. })
        ));
        fake.release(&tag, &s2).await.unwrap();
        fake.destroy_snapshot(&s2).await.unwrap();

        fake.fail_next(
            FakeOp::CreateSnapshot,
            "cannot create snapshot: out of space",
        );
        assert!(matches!(
            fake.create_snapshot(&s2, false).await,
            Err(ZfsError::NoSpace { .. })
        ));
        fake.create_snapshot(&s2, false).await.unwrap();
    }
}
