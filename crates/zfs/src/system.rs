//! The real driver: runs `zfs` with argument vectors, never through a shell.

use std::collections::HashMap;
use std::ffi::OsString;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::pin::Pin;
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::task::JoinHandle;
use tracing::{debug, warn};

use crate::caps::{Capabilities, Dialect};
use crate::driver::{
    BookmarkInfo, Completion, DatasetInfo, DatasetKind, Guid, IncrementalBase, ObjectName,
    PropertyValue, ReceiveRequest, ReceiveSink, ResumeTokenInfo, SendKind, SendRequest, SendStream,
    SnapshotInfo, Zfs,
};
use crate::error::{CommandFailure, CommandLine, ZfsError};
use crate::name::{BookmarkName, DatasetName, HoldTag, PropertyName, SnapshotName};

/// Only the tail of a long stderr is kept: ZFS puts the reason last.
const MAX_STDERR: usize = 16 * 1024;

/// Settings of the real driver.
#[derive(Debug, Clone)]
pub struct SystemZfsConfig {
    /// The `zfs` program.
    pub zfs: PathBuf,
    /// Limit for every short command (list, get, snapshot, destroy, ...).
    pub command_timeout: Duration,
    /// Limit for a send or receive process to exit once its stream has ended.
    pub finish_timeout: Duration,
    /// Limit for a send or receive process to exit once its stream was abandoned (the reader of
    /// `zfs send` or the writer of `zfs receive` dropped before the end); only then is it killed.
    /// zfs-fuse's `zfs send` releases the holds it took when it exits on the broken pipe, but not
    /// when it is killed; its `zfs receive` exits only once the daemon discarded the partial
    /// stream, while a killed one leaves the daemon to do that behind its back. Also the longest
    /// a stream process is waited for, blocking, as the program exits.
    pub abort_timeout: Duration,
}

impl Default for SystemZfsConfig {
    fn default() -> Self {
        Self {
            zfs: PathBuf::from("zfs"),
            command_timeout: Duration::from_secs(120),
            finish_timeout: Duration::from_secs(600),
            abort_timeout: Duration::from_secs(30),
        }
    }
}

/// The driver that runs the local `zfs` command.
#[derive(Debug, Clone)]
pub struct SystemZfs {
    config: Arc<SystemZfsConfig>,
    caps: Capabilities,
}

impl SystemZfs {
    /// Probes the local ZFS and returns a driver for its dialect.
    pub async fn probe(config: SystemZfsConfig) -> Result<Self, ZfsError> {
        let runner = Runner {
            config: Arc::new(config),
        };
        // `zfs` without arguments and `zfs get` without a property print usage and exit 2.
        let usage = runner.output_any_status(Vec::new()).await?;
        let properties = runner.output_any_status(vec!["get".into()]).await?;
        let version = runner.output_any_status(vec!["version".into()]).await?;
        let mut caps = Capabilities::from_probe(&usage, &properties, &version);
        // zfs-fuse answers `createtxg` without listing it; ask a pool's root dataset.
        let createtxg = caps.createtxg || runner.createtxg_answers().await;
        caps = caps.with_createtxg(createtxg);
        debug!(?caps, "probed ZFS");
        Ok(Self {
            config: runner.config,
            caps,
        })
    }

    /// A driver for the given capabilities without probing (tests, or a dialect forced by
    /// configuration).
    pub fn with_capabilities(config: SystemZfsConfig, caps: Capabilities) -> Self {
        Self {
            config: Arc::new(config),
            caps,
        }
    }

    fn runner(&self) -> Runner {
        Runner {
            config: self.config.clone(),
        }
    }

    fn unsupported(&self, feature: &'static str) -> ZfsError {
        ZfsError::Unsupported {
            feature,
            dialect: self.caps.dialect.to_string(),
        }
    }

    async fn zfs(&self, args: Vec<OsString>) -> Result<String, ZfsError> {
        self.runner().output(args).await
    }

    fn snapshot_properties(&self) -> &'static str {
        if self.caps.createtxg {
            "type,guid,creation,createtxg"
        } else {
            "type,guid,creation"
        }
    }

    /// What to do about the holds a killed `zfs send` of `request` leaves, where it leaves any:
    /// zfs-fuse's `zfs send -I` holds every snapshot in its range with the tag
    /// `.send-<pid>-0` and releases them only if it exits by itself.
    fn send_kill_hint(&self, request: &SendRequest, pid: Option<u32>) -> Option<String> {
        let SendKind::Incremental {
            from,
            to,
            intermediates: true,
        } = &request.kind
        else {
            return None;
        };
        if self.caps.dialect != Dialect::Legacy {
            // OpenZFS's send holds are temporary: the kernel drops them with the process.
            return None;
        }
        let pid = pid?;
        Some(format!(
            "it keeps its hold on every snapshot from {} to {}: `zfs release .send-{pid}-0 SNAPSHOT` on each",
            from.as_str(),
            to.as_str()
        ))
    }

    /// `zfs send` arguments for `request`, with `extra` flags right after `send`.
    fn send_args(&self, request: &SendRequest, extra: &[&str]) -> Result<Vec<OsString>, ZfsError> {
        let mut a = args(["send"]);
        a.extend(extra.iter().map(OsString::from));
        if request.properties {
            a.push("-p".into());
        }
        if request.raw {
            if !self.caps.raw_send {
                return Err(self.unsupported("raw send (`zfs send -w`)"));
            }
            a.push("-w".into());
        }
        if request.compressed {
            if !self.caps.compressed_send {
                return Err(self.unsupported("compressed send (`zfs send -c -L -e`)"));
            }
            a.extend(["-c".into(), "-L".into(), "-e".into()]);
        }
        match &request.kind {
            SendKind::Full { snapshot } => a.push(snapshot.as_str().into()),
            SendKind::Incremental {
                from,
                to,
                intermediates,
            } => {
                if matches!(from, IncrementalBase::Bookmark(_)) {
                    if !self.caps.bookmarks {
                        return Err(self.unsupported("bookmarks"));
                    }
                    if *intermediates {
                        // ZFS cannot send intermediates from a bookmark: it has no data.
                        return Err(self.unsupported("`-I` from a bookmark"));
                    }
                }
                a.push(if *intermediates { "-I" } else { "-i" }.into());
                a.push(from.as_str().into());
                a.push(to.as_str().into());
            }
            SendKind::Resume { token } => {
                if !self.caps.resumable_receive {
                    return Err(self.unsupported("resumable send (`zfs send -t`)"));
                }
                check_resume_token(token)?;
                a.push("-t".into());
                a.push(token.into());
            }
        }
        Ok(a)
    }
}

impl Zfs for SystemZfs {
    fn capabilities(&self) -> &Capabilities {
        &self.caps
    }

    async fn exists(&self, dataset: &DatasetName) -> Result<bool, ZfsError> {
        let args = args(["list", "-H", "-o", "name", dataset.as_str()]);
        match self.zfs(args).await {
            Ok(_) => Ok(true),
            Err(ZfsError::NotFound { .. }) => Ok(false),
            Err(err) => Err(err),
        }
    }

    async fn list_datasets(&self, root: &DatasetName) -> Result<Vec<DatasetInfo>, ZfsError> {
        let args = args([
            "list",
            "-H",
            "-o",
            "name,type",
            "-t",
            "filesystem,volume",
            "-r",
            root.as_str(),
        ]);
        let command = command_line(&self.config, &args);
        let out = self.zfs(args).await?;
        out.lines()
            .map(|line| {
                let (name, kind) = line
                    .split_once('\t')
                    .ok_or_else(|| parse_error(&command, line, "expected 2 fields"))?;
                let kind = match kind {
                    "filesystem" => DatasetKind::Filesystem,
                    "volume" => DatasetKind::Volume,
                    _ => return Err(parse_error(&command, line, "unknown dataset type")),
                };
                Ok(DatasetInfo {
                    name: DatasetName::parse(name)?,
                    kind,
                })
            })
            .collect()
    }

    async fn list_snapshots(
        &self,
        dataset: &DatasetName,
        recursive: bool,
    ) -> Result<Vec<SnapshotInfo>, ZfsError> {
        // `zfs get` gives exact numbers on every dialect (zfs-fuse lacks `list -p`) and lists
        // snapshots of each dataset in creation order.
        let depth = if recursive { "-r" } else { "-d1" };
        let args = args([
            "get",
            "-Hp",
            "-o",
            "name,property,value",
            depth,
            self.snapshot_properties(),
            dataset.as_str(),
        ]);
        let command = command_line(&self.config, &args);
        let out = self.zfs(args).await?;
        let mut snapshots = parse_snapshot_table(&command, &out)?;
        if !recursive {
            snapshots.retain(|snap| snap.name.dataset() == *dataset);
        }
        fill_order(&mut snapshots);
        Ok(snapshots)
    }

    async fn create_snapshot(
        &self,
        snapshot: &SnapshotName,
        recursive: bool,
    ) -> Result<(), ZfsError> {
        let mut a = args(["snapshot"]);
        if recursive {
            a.push("-r".into());
        }
        a.push(snapshot.as_str().into());
        self.zfs(a).await.map(drop)
    }

    async fn destroy_snapshot(&self, snapshot: &SnapshotName) -> Result<(), ZfsError> {
        self.zfs(args(["destroy", snapshot.as_str()]))
            .await
            .map(drop)
    }

    async fn destroy_dataset(&self, dataset: &DatasetName) -> Result<(), ZfsError> {
        self.zfs(args(["destroy", "-r", dataset.as_str()]))
            .await
            .map(drop)
    }

    async fn hold(&self, tag: &HoldTag, snapshot: &SnapshotName) -> Result<(), ZfsError> {
        self.zfs(args(["hold", tag.as_str(), snapshot.as_str()]))
            .await
            .map(drop)
    }

    async fn release(&self, tag: &HoldTag, snapshot: &SnapshotName) -> Result<(), ZfsError> {
        self.zfs(args(["release", tag.as_str(), snapshot.as_str()]))
            .await
            .map(drop)
    }

    async fn holds(&self, snapshot: &SnapshotName) -> Result<Vec<HoldTag>, ZfsError> {
        self.hold_tags(snapshot)
            .await?
            .iter()
            .map(|tag| Ok(HoldTag::parse(tag)?))
            .collect()
    }

    async fn hold_tags(&self, snapshot: &SnapshotName) -> Result<Vec<String>, ZfsError> {
        if !self.caps.holds_scriptable {
            return Err(self.unsupported("`zfs holds -H`"));
        }
        let args = args(["holds", "-H", snapshot.as_str()]);
        let command = command_line(&self.config, &args);
        let out = self.zfs(args).await?;
        out.lines()
            .map(|line| {
                line.split('\t')
                    .nth(1)
                    .map(str::to_owned)
                    .ok_or_else(|| parse_error(&command, line, "expected name, tag, timestamp"))
            })
            .collect()
    }

    async fn get_property<O: ObjectName>(
        &self,
        object: &O,
        property: &PropertyName,
    ) -> Result<Option<PropertyValue>, ZfsError> {
        let args = args([
            "get",
            "-Hp",
            "-o",
            "value,source",
            property.as_str(),
            object.object_name(),
        ]);
        let command = command_line(&self.config, &args);
        let out = self.zfs(args).await?;
        let line = out.strip_suffix('\n').unwrap_or(&out);
        let (value, source) = line
            .split_once('\t')
            .ok_or_else(|| parse_error(&command, line, "expected value and source"))?;
        if value == "-" && source == "-" {
            return Ok(None);
        }
        Ok(Some(PropertyValue {
            value: value.to_owned(),
            source: source.to_owned(),
        }))
    }

    async fn set_property<O: ObjectName>(
        &self,
        object: &O,
        property: &PropertyName,
        value: &str,
    ) -> Result<(), ZfsError> {
        let assignment = property_assignment(property, value)?;
        self.zfs(args(["set", &assignment, object.object_name()]))
            .await
            .map(drop)
    }

    async fn create_dataset(
        &self,
        dataset: &DatasetName,
        properties: &[(PropertyName, String)],
        parents: bool,
    ) -> Result<(), ZfsError> {
        let mut a = args(["create"]);
        if parents {
            a.push("-p".into());
        }
        for (property, value) in properties {
            a.push("-o".into());
            a.push(property_assignment(property, value)?.into());
        }
        a.push(dataset.as_str().into());
        self.zfs(a).await.map(drop)
    }

    async fn unmount(&self, dataset: &DatasetName) -> Result<(), ZfsError> {
        let mounted = self
            .get_property(dataset, &PropertyName::parse("mounted")?)
            .await?;
        if mounted.is_some_and(|m| m.value == "yes") {
            self.zfs(args(["unmount", dataset.as_str()])).await?;
        }
        Ok(())
    }

    async fn rollback(&self, snapshot: &SnapshotName) -> Result<(), ZfsError> {
        self.zfs(args(["rollback", snapshot.as_str()]))
            .await
            .map(drop)
    }

    async fn send(&self, request: &SendRequest) -> Result<SendStream, ZfsError> {
        let a = self.send_args(request, &[])?;
        let mut process = self
            .runner()
            .spawn_stream(a, Stdio::null(), Stdio::piped())?;
        let stdout = process
            .child
            .stdout
            .take()
            .ok_or_else(|| missing_pipe(&process.command))?;
        let hint = self.send_kill_hint(request, process.child.id());
        let (end, completion) = StreamEnd::new(process, &self.config, "zfs send", hint);
        Ok(SendStream::new(
            Box::pin(SendOutput { stdout, end }),
            completion,
        ))
    }

    async fn send_estimate(&self, request: &SendRequest) -> Result<Option<u64>, ZfsError> {
        if !self.caps.send_estimate {
            return Ok(None);
        }
        let a = self.send_args(request, &["-nP"])?;
        let out = self.zfs(a).await?;
        // `size\t<bytes>` is the total over every snapshot the stream carries.
        Ok(out
            .lines()
            .filter_map(|line| line.strip_prefix("size\t"))
            .find_map(|n| n.trim().parse().ok()))
    }

    async fn resume_token_info(&self, token: &str) -> Result<ResumeTokenInfo, ZfsError> {
        if !self.caps.resumable_receive {
            return Err(self.unsupported("resumable send (`zfs send -t`)"));
        }
        check_resume_token(token)?;
        let a = args(["send", "-nv", "-t", token]);
        let command = command_line(&self.config, &a);
        let out = self.zfs(a).await?;
        parse_resume_token_info(&command, &out)
    }

    async fn receive(&self, request: &ReceiveRequest) -> Result<ReceiveSink, ZfsError> {
        let mut a = args(["receive"]);
        if request.resumable {
            if !self.caps.resumable_receive {
                return Err(self.unsupported("resumable receive (`zfs receive -s`)"));
            }
            a.push("-s".into());
        }
        if request.no_mount {
            if !self.caps.receive_no_mount {
                return Err(self.unsupported("`zfs receive -u`"));
            }
            a.push("-u".into());
        }
        for (property, value) in &request.set_properties {
            if !self.caps.receive_set_property {
                return Err(self.unsupported("`zfs receive -o`"));
            }
            a.push("-o".into());
            a.push(property_assignment(property, value)?.into());
        }
        for property in &request.exclude_properties {
            if !self.caps.receive_exclude_property {
                return Err(self.unsupported("`zfs receive -x`"));
            }
            a.push("-x".into());
            a.push(property.as_str().into());
        }
        a.push(request.target.as_str().into());
        let mut process = self
            .runner()
            .spawn_stream(a, Stdio::piped(), Stdio::null())?;
        let stdin = process
            .child
            .stdin
            .take()
            .ok_or_else(|| missing_pipe(&process.command))?;
        let (end, completion) = StreamEnd::new(process, &self.config, "zfs receive", None);
        Ok(ReceiveSink::new(
            Box::pin(ReceiveInput { stdin, end }),
            completion,
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
        self.zfs(args(["bookmark", snapshot.as_str(), bookmark.as_str()]))
            .await
            .map(drop)
    }

    async fn list_bookmarks(&self, dataset: &DatasetName) -> Result<Vec<BookmarkInfo>, ZfsError> {
        // Without createtxg a bookmark has no place among the snapshots (see `with_createtxg`).
        if !self.caps.bookmarks || !self.caps.createtxg {
            return Ok(Vec::new());
        }
        let args = args([
            "list",
            "-Hp",
            "-t",
            "bookmark",
            "-d1",
            "-o",
            "name,guid,creation,createtxg",
            "-s",
            "createtxg",
            dataset.as_str(),
        ]);
        let command = command_line(&self.config, &args);
        let out = self.zfs(args).await?;
        out.lines()
            .map(|line| {
                let fields: Vec<&str> = line.split('\t').collect();
                let [name, guid, creation, createtxg] = fields[..] else {
                    return Err(parse_error(
                        &command,
                        line,
                        "expected name, guid, creation, createtxg",
                    ));
                };
                let createtxg = parse_number(&command, line, createtxg)?;
                Ok(BookmarkInfo {
                    name: BookmarkName::parse(name)?,
                    guid: parse_number(&command, line, guid).map(Guid)?,
                    creation: parse_number(&command, line, creation)?,
                    createtxg: Some(createtxg),
                    order: createtxg,
                })
            })
            .collect()
    }

    async fn destroy_bookmark(&self, bookmark: &BookmarkName) -> Result<(), ZfsError> {
        if !self.caps.bookmarks {
            return Err(self.unsupported("bookmarks"));
        }
        self.zfs(args(["destroy", bookmark.as_str()]))
            .await
            .map(drop)
    }

    async fn abort_resumable_receive(&self, dataset: &DatasetName) -> Result<(), ZfsError> {
        if !self.caps.resumable_receive {
            return Err(self.unsupported("`zfs receive -A`"));
        }
        self.zfs(args(["receive", "-A", dataset.as_str()]))
            .await
            .map(drop)
    }
}

/// Runs the `zfs` program.
#[derive(Debug, Clone)]
struct Runner {
    config: Arc<SystemZfsConfig>,
}

/// A spawned child and where its stderr goes.
struct Process {
    command: CommandLine,
    child: Child,
    stderr: Stderr,
}

/// A child's stderr, whose tail is kept for the error.
enum Stderr {
    /// A pipe, read by a task as the child writes (short commands).
    Pipe(JoinHandle<String>),
    /// An unlinked file, read after the exit (`zfs send`, `zfs receive`). A pipe would end with
    /// this program: a `zfs send` whose stderr reader is gone dies of SIGPIPE on its first
    /// warning ("Broken pipe"), before it releases its holds.
    File(std::fs::File),
}

impl Stderr {
    /// The tail of what the child wrote.
    async fn tail(self) -> String {
        match self {
            Self::Pipe(task) => task.await.unwrap_or_default(),
            Self::File(mut file) => {
                let len = file.metadata().map_or(0, |m| m.len());
                let mut kept = Vec::new();
                let from = len.saturating_sub(MAX_STDERR as u64);
                // A few KiB at most, read once the process is gone.
                if file.seek(SeekFrom::Start(from)).is_ok() {
                    let _ = file.read_to_end(&mut kept);
                }
                String::from_utf8_lossy(&kept).into_owned()
            }
        }
    }
}

/// A file that no directory lists, for a stream process's stderr.
fn unlinked_file() -> std::io::Result<std::fs::File> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir();
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = dir.join(format!(".zrep-zfs-stderr-{}-{n}", std::process::id()));
        match std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
        {
            Ok(file) => {
                std::fs::remove_file(&path)?;
                return Ok(file);
            }
            Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(err) => return Err(err),
        }
    }
}

/// How a `zfs send` or `zfs receive` ends. Once the stream's pipe is closed (read to its end,
/// written and shut down, or abandoned by dropping it), a task waits for the process to exit,
/// kills it only if it does not exit within the limit, and reaps it either way; the stream's
/// [`crate::Completion`] reports the outcome. Ending it by closing the pipe matters: zfs-fuse's
/// `zfs send -I` holds every snapshot it sends and releases them when it stops on the broken
/// pipe, but a signal leaves the holds for good.
struct StreamEnd {
    process: Option<Process>,
    what: &'static str,
    finish: Duration,
    abort: Duration,
    /// Said when the process had to be killed.
    kill_hint: Option<String>,
    /// The stream reached its end (EOF read, or the writer shut down).
    ended: bool,
    outcome: Outcome,
}

/// Where the task that reaps a stream process leaves its handle for the stream's completion.
type Outcome = Arc<Mutex<Option<JoinHandle<Result<(), ZfsError>>>>>;

impl StreamEnd {
    fn new(
        process: Process,
        config: &SystemZfsConfig,
        what: &'static str,
        kill_hint: Option<String>,
    ) -> (Self, Completion) {
        let outcome = Outcome::default();
        let slot = Arc::clone(&outcome);
        let command = process.command.clone();
        let completion: Completion = Box::pin(async move {
            // SendStream::finish and ReceiveSink::finish drop the pipe first, which starts the
            // task; without a runtime to run it the process was left to exit alone.
            let task = slot.lock().unwrap_or_else(PoisonError::into_inner).take();
            let gone = |why: &str| ZfsError::Io {
                command: command.clone(),
                source: std::io::Error::other(why.to_owned()),
            };
            match task {
                Some(task) => task
                    .await
                    .unwrap_or_else(|_| Err(gone("the task waiting for it was cancelled"))),
                None => Err(gone("its pipe is still open or no runtime waits for it")),
            }
        });
        let end = Self {
            process: Some(process),
            what,
            finish: config.finish_timeout,
            abort: config.abort_timeout,
            kill_hint,
            ended: false,
            outcome,
        };
        (end, completion)
    }
}

impl Drop for StreamEnd {
    /// Runs right after the pipe itself was closed (it is declared before this in its owner).
    fn drop(&mut self) {
        let Some(process) = self.process.take() else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            // No runtime (the program is ending): wait here for the exit the closed pipe brings;
            // killing it could leave its holds.
            drop(Unreaped {
                process: Some(process),
                limit: self.abort,
            });
            return;
        };
        let limit = if self.ended { self.finish } else { self.abort };
        let task = runtime.spawn(reap(
            process,
            self.what,
            limit,
            self.abort,
            !self.ended,
            self.kill_hint.take(),
        ));
        *self.outcome.lock().unwrap_or_else(PoisonError::into_inner) = Some(task);
    }
}

/// Waits up to `limit` for a stream process whose pipe is closed, kills it after that, reaps it
/// and classifies its exit. Cancelled (the runtime shuts down as the program exits), it still
/// reaps the process, blocking for up to `blocking`, so that no zombie is left behind.
async fn reap(
    process: Process,
    what: &'static str,
    limit: Duration,
    blocking: Duration,
    abandoned: bool,
    kill_hint: Option<String>,
) -> Result<(), ZfsError> {
    let started = Instant::now();
    let mut unreaped = Unreaped {
        process: Some(process),
        limit: blocking,
    };
    let Some(running) = unreaped.process.as_mut() else {
        unreachable!("set just above")
    };
    let pid = running.child.id();
    let waited = tokio::time::timeout(limit, running.child.wait()).await;
    let status = match waited {
        Ok(Ok(status)) => status,
        Ok(Err(source)) => {
            return Err(ZfsError::Io {
                command: running.command.clone(),
                source,
            });
        }
        Err(_) => {
            warn!(
                command = %running.command,
                pid,
                after = ?limit,
                hint = kill_hint.as_deref().unwrap_or("-"),
                "{what} did not exit after its stream was closed; killing it"
            );
            let _ = running.child.start_kill();
            // SIGKILL cannot be caught, but a process stuck in the kernel may not die at once.
            if tokio::time::timeout(limit, running.child.wait())
                .await
                .is_err()
            {
                warn!(command = %running.command, pid, "{what} did not die after SIGKILL");
            }
            return Err(ZfsError::Timeout {
                command: running.command.clone(),
                after: limit,
            });
        }
    };
    let Some(process) = unreaped.process.take() else {
        unreachable!("taken only here")
    };
    if abandoned {
        debug!(
            command = %process.command,
            pid,
            %status,
            after = ?started.elapsed(),
            "{what} exited after its stream was abandoned"
        );
    }
    let stderr = process.stderr.tail().await;
    check_status(process.command, status, stderr)
}

/// A stream process whose exit has not been collected yet.
struct Unreaped {
    process: Option<Process>,
    /// How long dropping it may block waiting for the exit.
    limit: Duration,
}

impl Drop for Unreaped {
    /// Only reached when the reaping was cancelled or could not be started: waits (blocking, the
    /// program is ending) for the exit the closed pipe brings, and never signals the process.
    fn drop(&mut self) {
        let Some(process) = self.process.as_mut() else {
            return;
        };
        let deadline = Instant::now() + self.limit;
        while let Ok(None) = process.child.try_wait() {
            if Instant::now() >= deadline {
                // Left to exit on its own; init reaps it once this program is gone.
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// `zfs send`'s stdout, which notes when it reached the end of the stream.
struct SendOutput {
    stdout: ChildStdout,
    // Declared after the pipe: dropped after it, so the process sees the pipe closed.
    end: StreamEnd,
}

impl AsyncRead for SendOutput {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.stdout).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(())))
            && buf.filled().len() == before
            && buf.remaining() > 0
        {
            self.end.ended = true;
        }
        polled
    }
}

/// `zfs receive`'s stdin, which notes when the stream was shut down (complete).
struct ReceiveInput {
    stdin: ChildStdin,
    // Declared after the pipe: dropped after it, so the process sees the pipe closed.
    end: StreamEnd,
}

impl AsyncWrite for ReceiveInput {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stdin).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stdin).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let polled = Pin::new(&mut self.stdin).poll_shutdown(cx);
        if polled.is_ready() {
            // A failed shutdown means zfs receive closed its end: it is exiting already.
            self.end.ended = true;
        }
        polled
    }
}

impl Runner {
    /// Starts a short command, killed if it is dropped before it exited (on a timeout).
    fn spawn(&self, args: Vec<OsString>, stdin: Stdio, stdout: Stdio) -> Result<Process, ZfsError> {
        self.spawn_with(args, stdin, stdout, true)
    }

    /// Starts `zfs send` or `zfs receive`: never killed on drop, because ending it by a signal
    /// can leave the holds it took; [`StreamEnd`] ends and reaps it.
    fn spawn_stream(
        &self,
        args: Vec<OsString>,
        stdin: Stdio,
        stdout: Stdio,
    ) -> Result<Process, ZfsError> {
        self.spawn_with(args, stdin, stdout, false)
    }

    fn spawn_with(
        &self,
        args: Vec<OsString>,
        stdin: Stdio,
        stdout: Stdio,
        kill_on_drop: bool,
    ) -> Result<Process, ZfsError> {
        let command = command_line(&self.config, &args);
        debug!(%command, "running");
        let spawn_error = |source| ZfsError::Spawn {
            program: self.config.zfs.display().to_string(),
            source,
        };
        // Short commands are killed on drop and may use a pipe; stream processes must not.
        let file = if kill_on_drop {
            None
        } else {
            Some(unlinked_file().map_err(spawn_error)?)
        };
        let to_stderr = match &file {
            Some(file) => Stdio::from(file.try_clone().map_err(spawn_error)?),
            None => Stdio::piped(),
        };
        let mut child = Command::new(&self.config.zfs)
            .args(&args)
            // Stable, untranslated messages for classification.
            .env("LC_ALL", "C")
            .stdin(stdin)
            .stdout(stdout)
            .stderr(to_stderr)
            .kill_on_drop(kill_on_drop)
            .spawn()
            .map_err(spawn_error)?;
        let stderr = match file {
            Some(file) => Stderr::File(file),
            None => {
                let pipe = child.stderr.take();
                Stderr::Pipe(tokio::spawn(async move {
                    match pipe {
                        Some(pipe) => read_tail(pipe).await,
                        None => String::new(),
                    }
                }))
            }
        };
        Ok(Process {
            command,
            child,
            stderr,
        })
    }

    /// Runs a short command and returns its stdout, or the classified failure.
    async fn output(&self, args: Vec<OsString>) -> Result<String, ZfsError> {
        let (command, status, stdout, stderr) = self.run(args).await?;
        check_status(command, status, stderr)?;
        Ok(stdout)
    }

    /// Runs a probe command whose exit status does not matter; returns stdout and stderr.
    async fn output_any_status(&self, args: Vec<OsString>) -> Result<String, ZfsError> {
        let (_, _, stdout, stderr) = self.run(args).await?;
        Ok(stdout + &stderr)
    }

    async fn run(
        &self,
        args: Vec<OsString>,
    ) -> Result<(CommandLine, ExitStatus, String, String), ZfsError> {
        let mut process = self.spawn(args, Stdio::null(), Stdio::piped())?;
        let mut stdout = process
            .child
            .stdout
            .take()
            .ok_or_else(|| missing_pipe(&process.command))?;
        let limit = self.config.command_timeout;
        let command = process.command.clone();
        let work = async {
            let mut out = Vec::new();
            stdout.read_to_end(&mut out).await?;
            let status = process.child.wait().await?;
            Ok::<_, std::io::Error>((out, status))
        };
        let (out, status) = match tokio::time::timeout(limit, work).await {
            Ok(result) => result.map_err(|source| ZfsError::Io {
                command: command.clone(),
                source,
            })?,
            Err(_) => {
                return Err(ZfsError::Timeout {
                    command,
                    after: limit,
                });
            }
        };
        let stderr = process.stderr.tail().await;
        Ok((
            command,
            status,
            String::from_utf8_lossy(&out).into_owned(),
            stderr,
        ))
    }

    /// Whether some pool's root dataset answers `createtxg` with a number. Every pool is tried
    /// in turn: one may be going away while we ask (parallel tests, an admin's `zpool destroy`).
    async fn createtxg_answers(&self) -> bool {
        let Ok(pools) = self.output(args(["list", "-H", "-o", "name", "-d0"])).await else {
            return false;
        };
        for pool in pools.lines() {
            let value = self
                .output(args(["get", "-Hp", "-o", "value", "createtxg", pool]))
                .await;
            if value.is_ok_and(|value| value.trim().parse::<u64>().is_ok()) {
                return true;
            }
        }
        false
    }
}

fn args<'a>(items: impl IntoIterator<Item = &'a str>) -> Vec<OsString> {
    items.into_iter().map(OsString::from).collect()
}

fn command_line(config: &SystemZfsConfig, args: &[OsString]) -> CommandLine {
    let mut line = vec![config.zfs.display().to_string()];
    line.extend(args.iter().map(|a| a.to_string_lossy().into_owned()));
    CommandLine(line)
}

fn check_status(command: CommandLine, status: ExitStatus, stderr: String) -> Result<(), ZfsError> {
    if status.success() {
        return Ok(());
    }
    Err(ZfsError::from_failure(CommandFailure {
        command,
        status: status.code(),
        stderr: without_usage(&stderr).trim().to_owned(),
    }))
}

/// OpenZFS follows some messages with the subcommand's usage text (`zfs receive -A` of a missing
/// dataset: "cannot open 'p/x': dataset does not exist", then "usage:" and 15 lines). The message
/// is what matters; the usage alone is kept where nothing precedes it.
fn without_usage(stderr: &str) -> &str {
    match stderr.find("\nusage:") {
        Some(at) if !stderr[..at].trim().is_empty() => &stderr[..at],
        _ => stderr,
    }
}

fn missing_pipe(command: &CommandLine) -> ZfsError {
    ZfsError::Io {
        command: command.clone(),
        source: std::io::Error::other("child process has no pipe"),
    }
}

fn parse_error(command: &CommandLine, line: &str, reason: &str) -> ZfsError {
    ZfsError::Parse {
        command: command.clone(),
        line: line.to_owned(),
        reason: reason.to_owned(),
    }
}

fn parse_number(command: &CommandLine, line: &str, field: &str) -> Result<u64, ZfsError> {
    field
        .parse()
        .map_err(|_| parse_error(command, line, "expected an exact number"))
}

/// `property=value`, refusing values ZFS would misread (a newline would split `-H` output).
fn property_assignment(property: &PropertyName, value: &str) -> Result<String, ZfsError> {
    if value.contains(['\n', '\0']) {
        return Err(ZfsError::Name(crate::name::NameError::BadShortName {
            name: value.to_owned(),
            what: "property value",
        }));
    }
    Ok(format!("{}={value}", property.as_str()))
}

/// Resume tokens come from the receiving side: accept only what ZFS makes (`1-<hex>-<hex>-<hex>`)
/// and a sane length, so a hostile peer cannot hand `zfs` anything else.
fn check_resume_token(token: &str) -> Result<(), ZfsError> {
    let valid = !token.is_empty()
        && token.len() <= 64 * 1024
        && token.starts_with(|c: char| c.is_ascii_digit())
        && token.chars().all(|c| c.is_ascii_hexdigit() || c == '-');
    if valid {
        Ok(())
    } else {
        Err(ZfsError::Name(crate::name::NameError::BadShortName {
            name: token.chars().take(64).collect(),
            what: "resume token",
        }))
    }
}

/// Parses the `resume token contents:` nvlist that `zfs send -nv -t` prints.
fn parse_resume_token_info(command: &CommandLine, out: &str) -> Result<ResumeTokenInfo, ZfsError> {
    let field = |key: &str| {
        out.lines().find_map(|line| {
            let (k, v) = line.trim().split_once(" = ")?;
            (k == key).then(|| v.trim().to_owned())
        })
    };
    let hex = |key: &str| -> Result<Option<u64>, ZfsError> {
        field(key)
            .map(|v| {
                u64::from_str_radix(v.trim_start_matches("0x"), 16)
                    .map_err(|_| parse_error(command, &v, &format!("{key} is not a hex number")))
            })
            .transpose()
    };
    let to_name = field("toname").ok_or_else(|| parse_error(command, out, "no toname"))?;
    Ok(ResumeTokenInfo {
        to_name: SnapshotName::parse(&to_name)?,
        to_guid: Guid(hex("toguid")?.ok_or_else(|| parse_error(command, out, "no toguid"))?),
        from_guid: hex("fromguid")?.map(Guid),
        bytes_done: hex("bytes")?,
    })
}

/// Reads a pipe to its end, keeping the last [`MAX_STDERR`] bytes.
async fn read_tail(mut pipe: impl AsyncRead + Unpin) -> String {
    let mut kept = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                kept.extend_from_slice(&buf[..n]);
                if kept.len() > 2 * MAX_STDERR {
                    kept.drain(..kept.len() - MAX_STDERR);
                }
            }
        }
    }
    if kept.len() > MAX_STDERR {
        kept.drain(..kept.len() - MAX_STDERR);
    }
    String::from_utf8_lossy(&kept).into_owned()
}

/// Parses `zfs get -Hp -o name,property,value type,guid,creation[,createtxg]` output into the
/// snapshots it lists, in the order ZFS printed them.
fn parse_snapshot_table(command: &CommandLine, out: &str) -> Result<Vec<SnapshotInfo>, ZfsError> {
    let mut order: Vec<String> = Vec::new();
    let mut rows: HashMap<String, HashMap<String, (String, String)>> = HashMap::new();
    for line in out.lines() {
        let mut fields = line.splitn(3, '\t');
        let (Some(name), Some(property), Some(value)) =
            (fields.next(), fields.next(), fields.next())
        else {
            return Err(parse_error(command, line, "expected name, property, value"));
        };
        if !name.contains('@') {
            continue;
        }
        let entry = rows.entry(name.to_owned()).or_insert_with(|| {
            order.push(name.to_owned());
            HashMap::new()
        });
        entry.insert(property.to_owned(), (value.to_owned(), line.to_owned()));
    }
    let mut snapshots = Vec::with_capacity(order.len());
    for name in order {
        let props = &rows[&name];
        let field = |key: &str| -> Result<u64, ZfsError> {
            let (value, line) = props
                .get(key)
                .ok_or_else(|| parse_error(command, &name, &format!("missing {key}")))?;
            parse_number(command, line, value)
        };
        if props
            .get("type")
            .is_some_and(|(kind, _)| kind != "snapshot")
        {
            continue;
        }
        snapshots.push(SnapshotInfo {
            name: SnapshotName::parse(&name)?,
            guid: Guid(field("guid")?),
            creation: field("creation")?,
            createtxg: props
                .contains_key("createtxg")
                .then(|| field("createtxg"))
                .transpose()?,
            order: 0,
        });
    }
    Ok(snapshots)
}

/// Orders each dataset's snapshots by `createtxg` and fills [`SnapshotInfo::order`]: the txg
/// where every snapshot of the dataset has one, otherwise the 1-based position in ZFS's listing
/// (which is creation order). Datasets stay grouped as ZFS listed them.
fn fill_order(snapshots: &mut [SnapshotInfo]) {
    let mut start = 0;
    while start < snapshots.len() {
        let dataset = snapshots[start].name.dataset();
        let len = snapshots[start..]
            .iter()
            .take_while(|s| s.name.dataset() == dataset)
            .count();
        let group = &mut snapshots[start..start + len];
        if group.iter().all(|s| s.createtxg.is_some()) {
            group.sort_by_key(|s| s.createtxg);
            for snap in group.iter_mut() {
                snap.order = snap.createtxg.unwrap_or_default();
            }
        } else {
            for (position, snap) in (1..).zip(group.iter_mut()) {
                snap.order = position;
            }
        }
        start += len;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_snapshot_table_with_spaces_and_exact_guids() {
        let out = "p/a b\ttype\tfilesystem\np/a b\tguid\t1\n\
                   p/a b@s 1\ttype\tsnapshot\np/a b@s 1\tguid\t18446744073709551615\n\
                   p/a b@s 1\tcreation\t1795757988\np/a b@s 1\tcreatetxg\t11\n";
        let command = CommandLine(vec!["zfs".into()]);
        let snaps = parse_snapshot_table(&command, out).unwrap();
        assert_eq!(snaps.len(), 1);
        assert_eq!(snaps[0].name.as_str(), "p/a b@s 1");
        assert_eq!(snaps[0].guid, Guid(u64::MAX));
        assert_eq!(snaps[0].createtxg, Some(11));
    }

    fn listed(name: &str, createtxg: Option<u64>) -> SnapshotInfo {
        SnapshotInfo {
            name: SnapshotName::parse(name).unwrap(),
            guid: Guid(1),
            creation: 1,
            createtxg,
            order: 0,
        }
    }

    #[test]
    fn order_is_createtxg_or_list_position_per_dataset() {
        let mut snaps = vec![
            listed("p/a@y", Some(20)),
            listed("p/a@x", Some(10)),
            listed("p/b@first", None),
            listed("p/b@second", None),
            listed("p/c@only", Some(5)),
        ];
        fill_order(&mut snaps);
        let got: Vec<(&str, u64)> = snaps.iter().map(|s| (s.name.as_str(), s.order)).collect();
        assert_eq!(
            got,
            [
                ("p/a@x", 10),
                ("p/a@y", 20),
                ("p/b@first", 1),
                ("p/b@second", 2),
                ("p/c@only", 5)
            ]
        );
    }

    #[test]
    fn rejects_rounded_numbers() {
        let out = "p/a@s\ttype\tsnapshot\np/a@s\tguid\t9.04E\np/a@s\tcreation\t1\n";
        let command = CommandLine(vec!["zfs".into()]);
        assert!(matches!(
            parse_snapshot_table(&command, out),
            Err(ZfsError::Parse { .. })
        ));
    }

    #[test]
    fn usage_after_a_message_is_dropped() {
        let stderr = "cannot open 'p/nope': dataset does not exist\nusage:\n\
                      \treceive -A <filesystem|volume>\n\nFor the property list, run: zfs set|get\n";
        assert_eq!(
            without_usage(stderr),
            "cannot open 'p/nope': dataset does not exist"
        );
        let only_usage = "usage:\n\tget [-rHp] <property> <dataset>\n";
        assert_eq!(without_usage(only_usage), only_usage);
        let missing = "missing property argument\nusage:\n\tget [-rHp] ...\n";
        assert_eq!(without_usage(missing), "missing property argument");
    }

    #[test]
    fn parses_resume_token_contents() {
        let out = "resume token contents:\nnvlist version: 0\n\tobject = 0x2\n\toffset = 0x4a0000\n\
                   \tbytes = 0x4c3850\n\ttoguid = 0x372663f66e602d1d\n\ttoname = a/s p@one\n";
        let info = parse_resume_token_info(&CommandLine(vec!["zfs".into()]), out).unwrap();
        assert_eq!(info.to_name.as_str(), "a/s p@one");
        assert_eq!(info.to_guid, Guid(0x3726_63f6_6e60_2d1d));
        assert_eq!(info.from_guid, None);
        assert_eq!(info.bytes_done, Some(0x004c_3850));
        assert!(check_resume_token("1-9b0416192-b0-789c63").is_ok());
        for bad in ["", "-t", "1-abc;rm", "1 2", "x-1"] {
            assert!(check_resume_token(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn property_values_cannot_smuggle_lines() {
        let prop = PropertyName::parse("com.example:note").unwrap();
        assert!(property_assignment(&prop, "a\nb").is_err());
        assert_eq!(
            property_assignment(&prop, "a b=c").unwrap(),
            "com.example:note=a b=c"
        );
    }
}
