//! One replication cycle of one dataset, on the sending side: snapshot, plan by GUID, stream,
//! wait for the commit, then move the hold and prune zrep's older snapshots — never the newest
//! common one. The decisions are `plan`'s (pure); this module gathers the facts from ZFS and the
//! receiver and carries them out.

use std::time::{Duration, Instant, SystemTime};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tracing::{debug, info, warn};
use zrep_proto::{
    AbortResumeOutcome, ChunkCompressor, MAX_CHUNK, SenderEvent, SenderSession, SenderSide,
    TargetState, TransferOffer,
};
use zrep_zfs::{
    BookmarkInfo, DatasetName, Guid, HoldTag, RelativeName, SendKind, SendRequest, SnapshotInfo,
    SnapshotName, Zfs, ZfsError,
};

use crate::error::{ReplicationError, SendFailure};
use crate::naming::{bookmark_short_name, next_snapshot_short_name};
use crate::plan::{Plan, Resume, plan, plan_resume, settlement, stale_bookmarks};
use crate::rate::Pacer;
use crate::retention::KeepPolicy;
use crate::transport::{Connection, Either};

/// How the sender streams and how long it waits.
#[derive(Debug, Clone)]
pub struct SenderOptions {
    /// zstd level for data chunks.
    pub compression_level: i32,
    /// Uncompressed bytes per data frame (at most [`MAX_CHUNK`]).
    pub chunk_size: usize,
    /// Limit for the commit answer once the stream has ended.
    pub commit_timeout: Duration,
    /// The hold placed on the newest common snapshot (one tag per receiver).
    pub hold_tag: HoldTag,
    /// Bytes per second of data frames on the wire, at most (`None`: unlimited).
    pub bandwidth_limit: Option<u64>,
    /// Told after every data frame and at the end of each stream.
    pub progress: Option<ProgressSink>,
}

/// How far a stream is.
#[derive(Debug, Clone)]
pub struct Progress {
    /// The dataset (source) and snapshot being sent, `pool/ds@snap`.
    pub snapshot: String,
    /// Uncompressed stream bytes so far.
    pub stream_bytes: u64,
    /// Data frame bytes on the wire so far.
    pub wire_bytes: u64,
    /// `zfs send -nP`'s estimate of the stream, where the platform gives one.
    pub estimate: Option<u64>,
    /// Since the stream started.
    pub elapsed: Duration,
    /// The stream has ended (the commit answer is still awaited).
    pub done: bool,
}

/// A progress callback.
#[derive(Clone)]
pub struct ProgressSink(pub std::sync::Arc<dyn Fn(&Progress) + Send + Sync>);

impl std::fmt::Debug for ProgressSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ProgressSink")
    }
}

/// One dataset to replicate.
#[derive(Debug, Clone)]
pub struct DatasetJob {
    /// The local dataset.
    pub source: DatasetName,
    /// Its name under this peer's root on the receiver.
    pub target: RelativeName,
    /// Prefix of zrep's snapshot names.
    pub prefix: String,
    /// `-I` rather than `-i`.
    pub intermediates: bool,
    /// Which of zrep's snapshots the source keeps; the newest common one is kept whatever it
    /// says.
    pub keep: KeepPolicy,
    /// Raw streams (`zfs send -w`): encrypted data stays encrypted, the receiver never needs the
    /// key.
    pub raw: bool,
}

/// What a stream carried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamShape {
    /// A full stream: the target did not exist.
    Full,
    /// An incremental stream from the named common snapshot (or bookmark).
    Incremental {
        /// Short name of the base.
        base: String,
        /// Whether intermediate snapshots travelled too.
        intermediates: bool,
        /// Whether the base was a bookmark (its snapshot is gone from the source).
        from_bookmark: bool,
    },
    /// Nothing to send: the target already had the newest snapshot.
    UpToDate,
}

/// A successful cycle.
#[derive(Debug, Clone)]
pub struct Replicated {
    /// The snapshot now common to both sides (the new base).
    pub snapshot: SnapshotName,
    /// Its GUID, as confirmed by the receiver.
    pub guid: Guid,
    /// What was sent.
    pub shape: StreamShape,
    /// Uncompressed stream bytes.
    pub stream_bytes: u64,
    /// Bytes of data frames on the wire (after compression).
    pub wire_bytes: u64,
    /// From snapshot to commit.
    pub elapsed: Duration,
    /// zrep snapshots destroyed on the source afterwards.
    pub pruned: Vec<SnapshotName>,
    /// An interrupted stream finished first: the snapshot's short name and the bytes sent to
    /// finish it.
    pub resumed: Option<(String, u64)>,
}

/// Runs one cycle for `job` over an established session. `now` names the new snapshot.
pub async fn replicate<Z, R, W>(
    zfs: &Z,
    conn: &mut Connection<SenderSide, R, W>,
    job: &DatasetJob,
    options: &SenderOptions,
    now: SystemTime,
) -> Result<Replicated, ReplicationError>
where
    Z: Zfs,
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let started = Instant::now();
    let source = &job.source;
    // ZFS work runs while the connection goes on: the peer sees heartbeats however long it takes.
    let (local, bookmarks, newest) = conn
        .drive_while(take_snapshot(zfs, source, &job.prefix, now))
        .await?;

    let mut state = request_state(conn, job.target.as_str()).await?;
    let mut resumed = None;
    if let Some(token) = state.resume_token.clone() {
        resumed = finish_interrupted(zfs, conn, job, options, &local, &token).await?;
        state = request_state(conn, job.target.as_str()).await?;
    }
    let mut plan = plan(job, &local, &bookmarks, &newest, &state)?;
    if let Plan::Send { request, offer, .. } = &mut plan {
        // An estimate only feeds progress and space checks; without one the transfer goes on.
        offer.size_estimate = conn
            .drive_while(zfs.send_estimate(request))
            .await
            .ok()
            .flatten();
    }
    debug!(dataset = %source, ?plan, "planned");

    let (shape, stream_bytes, wire_bytes) = match plan {
        Plan::UpToDate => (StreamShape::UpToDate, 0, 0),
        Plan::Send {
            request,
            shape,
            offer,
        } => {
            let (stream, wire) = transfer(zfs, conn, &request, *offer, options).await?;
            (shape, stream, wire)
        }
    };
    let pruned = conn
        .drive_while(settle(zfs, job, options, &newest, now))
        .await?;
    Ok(Replicated {
        snapshot: newest.name,
        guid: newest.guid,
        shape,
        stream_bytes,
        wire_bytes,
        elapsed: started.elapsed(),
        pruned,
        resumed,
    })
}

/// Takes this cycle's snapshot, named for `now` and never a name the source has (as snapshot or
/// bookmark): a snapshot of the same second taken by an earlier cycle predates writes this
/// cycle must carry. Returns the source's snapshots, its bookmarks and the new snapshot's entry.
async fn take_snapshot<Z: Zfs>(
    zfs: &Z,
    source: &DatasetName,
    prefix: &str,
    now: SystemTime,
) -> Result<(Vec<SnapshotInfo>, Vec<BookmarkInfo>, SnapshotInfo), ReplicationError> {
    let list = || async {
        zfs.list_snapshots(source, false)
            .await
            .map_err(ReplicationError::zfs(format!(
                "listing snapshots of {source}"
            )))
    };
    let before = list().await?;
    let bookmarks = zfs
        .list_bookmarks(source)
        .await
        .map_err(ReplicationError::zfs(format!(
            "listing bookmarks of {source}"
        )))?;
    let taken = before
        .iter()
        .map(|s| s.name.short_name())
        .chain(bookmarks.iter().map(|b| b.name.short_name()));
    let short = next_snapshot_short_name(prefix, now, taken);
    let snapshot = source.snapshot(&short)?;
    zfs.create_snapshot(&snapshot, false)
        .await
        .map_err(ReplicationError::zfs(format!("creating {snapshot}")))?;
    let local = list().await?;
    let newest = local
        .iter()
        .find(|s| s.name == snapshot)
        .cloned()
        .ok_or_else(|| {
            ReplicationError::Unexpected(format!("{snapshot} vanished after creation"))
        })?;
    Ok((local, bookmarks, newest))
}

/// The target holds a cut resumable receive: finish it (`zfs send -t`), or, when its snapshot is
/// gone from the source, ask the receiver to discard it so that planning starts afresh.
async fn finish_interrupted<Z, R, W>(
    zfs: &Z,
    conn: &mut Connection<SenderSide, R, W>,
    job: &DatasetJob,
    options: &SenderOptions,
    local: &[SnapshotInfo],
    token: &str,
) -> Result<Option<(String, u64)>, ReplicationError>
where
    Z: Zfs,
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let target = job.target.as_str();
    let negotiated = conn.session.negotiated().is_some_and(|n| n.resumable);
    if !negotiated || !zfs.capabilities().resumable_receive {
        return Err(ReplicationError::Diverged(format!(
            "target {target} holds an interrupted resumable receive, and this sender's ZFS ({}) \
             cannot resume it; discard it on the receiver (zfs receive -A) to start afresh",
            zfs.capabilities().dialect
        )));
    }
    let info = match zfs.resume_token_info(token).await {
        Ok(info) => Some(info),
        Err(ZfsError::NotFound { .. }) => None,
        Err(err) => {
            return Err(ReplicationError::zfs("reading the receiver's resume token")(err));
        }
    };
    let (snapshot, request, mut offer) = match plan_resume(job, local, token, info.as_ref()) {
        Resume::Finish {
            snapshot,
            request,
            offer,
        } => (snapshot, request, offer),
        Resume::Discard => {
            info!(
                target,
                "the interrupted stream's snapshot is gone; discarding the partial receive"
            );
            return match ask(conn, |session| session.abort_resume(target)).await? {
                SenderEvent::AbortResumeAnswered {
                    outcome: AbortResumeOutcome::Discarded | AbortResumeOutcome::NothingToDiscard,
                    ..
                } => Ok(None),
                SenderEvent::AbortResumeAnswered {
                    outcome: AbortResumeOutcome::Refused { code, message },
                    ..
                } => Err(ReplicationError::Refused { code, message }),
                other => Err(unexpected(other)),
            };
        }
    };
    let done = info.and_then(|info| info.bytes_done);
    info!(target, %snapshot, ?done, "resuming an interrupted stream");
    offer.size_estimate = zfs.send_estimate(&request).await.ok().flatten();
    let (bytes, _) = transfer(zfs, conn, &request, *offer, options).await?;
    Ok(Some((snapshot, bytes)))
}

async fn request_state<R, W>(
    conn: &mut Connection<SenderSide, R, W>,
    target: &str,
) -> Result<TargetState, ReplicationError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    match ask(conn, |session| session.request_state(target)).await? {
        SenderEvent::State(state) => Ok(state),
        other => Err(unexpected(other)),
    }
}

/// Makes a request and waits for its answer. What the connection produced while local work ran
/// comes first: after the peer's error frame the session takes no request.
async fn ask<R, W>(
    conn: &mut Connection<SenderSide, R, W>,
    request: impl FnOnce(&mut SenderSession) -> Result<(), zrep_proto::UsageError>,
) -> Result<SenderEvent, ReplicationError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    match conn.take_stashed() {
        Some(Ok(event)) => return Err(unexpected(event)),
        Some(Err(err)) => return Err(err.into()),
        None => {}
    }
    request(&mut conn.session)?;
    Ok(conn.next_event().await?)
}

fn unexpected(event: SenderEvent) -> ReplicationError {
    match event {
        SenderEvent::PeerError { code, message } => ReplicationError::PeerError { code, message },
        SenderEvent::Failed { code, message } => ReplicationError::Failed { code, message },
        SenderEvent::Refused { code, message } => ReplicationError::Refused { code, message },
        other => ReplicationError::Unexpected(format!("{other:?}")),
    }
}

/// Offers, streams and waits for the commit. Returns (stream bytes, wire bytes).
async fn transfer<Z, R, W>(
    zfs: &Z,
    conn: &mut Connection<SenderSide, R, W>,
    request: &SendRequest,
    offer: TransferOffer,
    options: &SenderOptions,
) -> Result<(u64, u64), ReplicationError>
where
    Z: Zfs,
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let snapshot = offer.snapshot.clone();
    let estimate = offer.size_estimate;
    let label = format!("{}@{snapshot}", request_dataset(request));
    let stream_started = Instant::now();
    let mut stream_bytes = 0u64;
    let report = |stream_bytes: u64, wire: u64, done: bool| {
        if let Some(sink) = &options.progress {
            (sink.0)(&Progress {
                snapshot: label.clone(),
                stream_bytes,
                wire_bytes: wire,
                estimate,
                elapsed: stream_started.elapsed(),
                done,
            });
        }
    };
    match ask(conn, |session| session.offer_transfer(offer)).await? {
        SenderEvent::Accepted => {}
        other => return Err(unexpected(other)),
    }
    let mut outgoing = conn.session.outgoing_stream()?;
    let mut send = zfs
        .send(request)
        .await
        .map_err(ReplicationError::zfs(format!(
            "starting zfs send of {snapshot}"
        )))?;
    let mut compressor = ChunkCompressor::new(options.compression_level)?;
    let chunk_size = options.chunk_size.clamp(4096, MAX_CHUNK);
    let mut buf = vec![0u8; chunk_size];
    let mut filled = 0;
    let mut wire = 0u64;
    let mut send_error: Option<SendFailure> = None;
    let mut pacer = options.bandwidth_limit.map(Pacer::new);
    loop {
        // One `read` per wait: it is cancel-safe, so an event arriving first loses no bytes.
        let read = conn
            .next_event_or(send.reader.read(&mut buf[filled..]))
            .await?;
        let n = match read {
            Either::Event(event) => {
                // Only a failure can arrive unasked while streaming; the session queued our
                // stream abort already.
                drop(send);
                conn.flush().await?;
                return Err(unexpected(event));
            }
            Either::Other(Ok(n)) => n,
            Either::Other(Err(err)) => {
                send_error = Some(SendFailure::Read(err));
                0
            }
        };
        filled += n;
        if filled > 0 && (n == 0 || filled == buf.len()) {
            let raw = &buf[..filled];
            let chunk = compressor.compress(raw)?;
            let bytes = outgoing.push(raw, chunk)?;
            wire += bytes.len() as u64;
            stream_bytes += raw.len() as u64;
            conn.write_raw(&bytes).await?;
            conn.session.data_sent(conn.now());
            report(stream_bytes, wire, false);
            if let Some(pacer) = pacer.as_mut() {
                pacer.sent(bytes.len()).await;
            }
            filled = 0;
        }
        if n == 0 {
            break;
        }
    }
    if let Err(err) = send.finish().await {
        send_error.get_or_insert(SendFailure::Zfs(err));
    }
    if let Some(failure) = send_error {
        conn.session.abort_stream(format!(
            "zfs send failed: {}",
            zrep_chain::one_line(&failure)
        ))?;
        conn.flush().await?;
        // The receiver answers the abort; its answer is secondary to the local cause.
        let _ = tokio::time::timeout(options.commit_timeout, conn.next_event()).await;
        return Err(ReplicationError::SendFailed(failure));
    }
    report(stream_bytes, wire, true);
    let summary = conn.session.finish_stream(outgoing.summary())?;
    conn.flush().await?;
    let answer = tokio::time::timeout(options.commit_timeout, conn.next_event())
        .await
        .map_err(|_| ReplicationError::CommitTimeout(options.commit_timeout))??;
    match answer {
        // The session checked that name and GUID are the offer's.
        SenderEvent::Committed { .. } => Ok((summary.bytes, wire)),
        other => Err(unexpected(other)),
    }
}

/// The dataset a send request reads, for progress labels.
fn request_dataset(request: &SendRequest) -> String {
    match &request.kind {
        SendKind::Full { snapshot } | SendKind::Incremental { to: snapshot, .. } => {
            snapshot.dataset().to_string()
        }
        SendKind::Resume { .. } => "resumed".to_owned(),
    }
}

/// After a commit (or when already up to date): hold the new base, release older holds, prune
/// by the job's keep policy (as of `now`). Only zrep's own snapshots are candidates, and never
/// the base or anything newer.
async fn settle<Z: Zfs>(
    zfs: &Z,
    job: &DatasetJob,
    options: &SenderOptions,
    base: &SnapshotInfo,
    now: SystemTime,
) -> Result<Vec<SnapshotName>, ReplicationError> {
    let tag = &options.hold_tag;
    match zfs.hold(tag, &base.name).await {
        Ok(()) => {}
        // Already held by us (a cycle that found the target up to date).
        Err(ZfsError::AlreadyExists { .. }) => {}
        Err(err) => return Err(ReplicationError::zfs(format!("holding {}", base.name))(err)),
    }
    let snapshots = zfs
        .list_snapshots(&job.source, false)
        .await
        .map_err(ReplicationError::zfs(format!(
            "listing snapshots of {}",
            job.source
        )))?;
    let settled = settlement(job, &snapshots, base.guid, now);
    for snap in settled.release {
        match zfs.release(tag, snap).await {
            Ok(()) => debug!(snapshot = %snap, "released the previous base"),
            Err(ZfsError::NoSuchHold { .. }) => {}
            Err(err) => {
                warn!(snapshot = %snap, cause = %zrep_chain::one_line(&err), "could not release hold")
            }
        }
    }
    if zfs.capabilities().bookmarks {
        bookmark_base(zfs, job, tag, base).await;
    }
    let mut pruned = Vec::new();
    for snap in settled.prune {
        match zfs.destroy_snapshot(snap).await {
            Ok(()) => {
                info!(snapshot = %snap, "pruned");
                pruned.push(snap.clone());
            }
            // Held by someone else (another receiver's base, an admin): not ours to force.
            // Held by something else: zrep-send says so once, not every cycle.
            Err(err @ ZfsError::Busy { .. }) => {
                debug!(snapshot = %snap, cause = %zrep_chain::one_line(&err), "not pruned: held");
            }
            Err(err) => warn!(snapshot = %snap, cause = %zrep_chain::one_line(&err), "not pruned"),
        }
    }
    Ok(pruned)
}

/// Bookmarks the new base for this receiver (so a later incremental can start from it even if
/// the snapshot is destroyed) and drops this receiver's older bookmarks; other receivers' stay.
/// Failures only cost that fallback: warn.
async fn bookmark_base<Z: Zfs>(zfs: &Z, job: &DatasetJob, tag: &HoldTag, base: &SnapshotInfo) {
    let short = bookmark_short_name(base.name.short_name(), tag);
    let mark = match job.source.bookmark(&short) {
        Ok(mark) => mark,
        Err(err) => {
            warn!(snapshot = %base.name, cause = %err, "cannot name a bookmark");
            return;
        }
    };
    match zfs.create_bookmark(&base.name, &mark).await {
        Ok(()) | Err(ZfsError::AlreadyExists { .. }) => {}
        Err(err) => {
            warn!(bookmark = %mark, cause = %zrep_chain::one_line(&err), "could not bookmark the base");
            return;
        }
    }
    let bookmarks = match zfs.list_bookmarks(&job.source).await {
        Ok(bookmarks) => bookmarks,
        Err(err) => {
            warn!(dataset = %job.source, cause = %zrep_chain::one_line(&err), "could not list bookmarks");
            return;
        }
    };
    for old in stale_bookmarks(&job.prefix, tag, &bookmarks, base.guid) {
        if let Err(err) = zfs.destroy_bookmark(old).await {
            warn!(bookmark = %old, cause = %zrep_chain::one_line(&err), "could not drop an old bookmark");
        }
    }
}
