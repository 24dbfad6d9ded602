//! One replication cycle of one dataset, on the sending side: snapshot, plan by GUID, stream,
//! wait for the commit, then move the hold and prune zrep's older snapshots — never the newest
//! common one.

use std::time::{Duration, Instant, SystemTime};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tracing::{debug, info, warn};
use zrep_proto::{
    ChunkCompressor, Compression, MAX_CHUNK, SenderEvent, SenderSession,
    SnapshotInfo as WireSnapshot, StreamKind, TargetState, TransferOffer, choose_base,
};
use zrep_zfs::{
    DatasetName, Guid, HoldTag, IncrementalBase, RelativeName, SendKind, SendRequest, SnapshotInfo,
    SnapshotName, Zfs, ZfsError,
};

use crate::error::ReplicationError;
use crate::naming::{parse_snapshot_time, snapshot_short_name};
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
    /// zrep snapshots to keep on the source, the newest common one included.
    pub keep_last: usize,
}

/// What a stream carried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamShape {
    /// A full stream: the target did not exist.
    Full,
    /// An incremental stream from the named common snapshot.
    Incremental {
        /// Short name of the base.
        base: String,
        /// Whether intermediate snapshots travelled too.
        intermediates: bool,
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
}

/// Runs one cycle for `job` over an established session. `now` names the new snapshot.
pub async fn replicate<Z, R, W>(
    zfs: &Z,
    conn: &mut Connection<SenderSession, R, W>,
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
    let snapshot = source.snapshot(&snapshot_short_name(&job.prefix, now))?;
    let mut local = zfs
        .list_snapshots(source, false)
        .await
        .map_err(ReplicationError::zfs(format!(
            "listing snapshots of {source}"
        )))?;
    if !local.iter().any(|s| s.name == snapshot) {
        zfs.create_snapshot(&snapshot, false)
            .await
            .map_err(ReplicationError::zfs(format!("creating {snapshot}")))?;
        local = zfs
            .list_snapshots(source, false)
            .await
            .map_err(ReplicationError::zfs(format!(
                "listing snapshots of {source}"
            )))?;
    }
    let newest = local
        .iter()
        .find(|s| s.name == snapshot)
        .cloned()
        .ok_or_else(|| {
            ReplicationError::Unexpected(format!("{snapshot} vanished after creation"))
        })?;

    let state = request_state(conn, job.target.as_str()).await?;
    let plan = plan(job, &local, &newest, &state)?;
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
    let pruned = settle(zfs, job, options, &newest).await?;
    Ok(Replicated {
        snapshot: newest.name,
        guid: newest.guid,
        shape,
        stream_bytes,
        wire_bytes,
        elapsed: started.elapsed(),
        pruned,
    })
}

/// What to do for one dataset.
#[derive(Debug)]
enum Plan {
    UpToDate,
    Send {
        request: SendRequest,
        shape: StreamShape,
        offer: Box<TransferOffer>,
    },
}

fn to_wire(snapshots: &[SnapshotInfo]) -> Vec<WireSnapshot> {
    snapshots
        .iter()
        .enumerate()
        .map(|(i, s)| WireSnapshot {
            name: s.name.short_name().to_owned(),
            guid: s.guid.0,
            // Where the dialect lacks createtxg, list order is creation order.
            createtxg: s.createtxg.unwrap_or(i as u64),
            creation: s.creation,
        })
        .collect()
}

fn plan(
    job: &DatasetJob,
    local: &[SnapshotInfo],
    newest: &SnapshotInfo,
    state: &TargetState,
) -> Result<Plan, ReplicationError> {
    let target = &job.target;
    let offer = |kind: StreamKind| TransferOffer {
        target: target.as_str().to_owned(),
        snapshot: newest.name.short_name().to_owned(),
        guid: newest.guid.0,
        kind,
        compression: Compression::Zstd,
        raw: false,
        size_estimate: None,
    };
    if !state.exists {
        return Ok(Plan::Send {
            request: SendRequest::new(SendKind::Full {
                snapshot: newest.name.clone(),
            }),
            shape: StreamShape::Full,
            offer: Box::new(offer(StreamKind::Full)),
        });
    }
    let choice = choose_base(&to_wire(local), &state.snapshots);
    let Some((base, _)) = &choice.common else {
        let what = if state.snapshots.is_empty() {
            "exists on the receiver without any snapshot".to_owned()
        } else {
            format!(
                "exists on the receiver with {} snapshot(s), none of which {} has (compared by GUID)",
                state.snapshots.len(),
                job.source
            )
        };
        return Err(ReplicationError::Diverged(format!(
            "target {target} {what}. zrep never destroys data on the receiver: rename or destroy \
             the target there, or replicate to another `target`"
        )));
    };
    if choice.diverged() {
        let names: Vec<&str> = choice.diverging.iter().map(|s| s.name.as_str()).collect();
        return Err(ReplicationError::Diverged(format!(
            "target {target} has snapshot(s) newer than the last common one ({}) that {} does not \
             have: {}. zrep never destroys data on the receiver: if they are not needed, roll the \
             target back to @{} there (zfs rollback -r), or replicate to another `target`",
            base.name,
            job.source,
            names.join(", "),
            base.name
        )));
    }
    if base.guid == newest.guid.0 {
        return Ok(Plan::UpToDate);
    }
    let base_name = job.source.snapshot(&base.name)?;
    Ok(Plan::Send {
        request: SendRequest::new(SendKind::Incremental {
            from: IncrementalBase::Snapshot(base_name),
            to: newest.name.clone(),
            intermediates: job.intermediates,
        }),
        shape: StreamShape::Incremental {
            base: base.name.clone(),
            intermediates: job.intermediates,
        },
        offer: Box::new(offer(StreamKind::Incremental {
            base_guid: base.guid,
            base_name: base.name.clone(),
            intermediates: job.intermediates,
        })),
    })
}

async fn request_state<R, W>(
    conn: &mut Connection<SenderSession, R, W>,
    target: &str,
) -> Result<TargetState, ReplicationError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    conn.session.request_state(target)?;
    match conn.next_event().await? {
        SenderEvent::State(state) => Ok(state),
        other => Err(unexpected(other)),
    }
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
    conn: &mut Connection<SenderSession, R, W>,
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
    conn.session.offer_transfer(offer)?;
    match conn.next_event().await? {
        SenderEvent::Accepted => {}
        other => return Err(unexpected(other)),
    }
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
    let mut send_error: Option<String> = None;
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
                send_error = Some(format!("reading zfs send output: {err}"));
                0
            }
        };
        filled += n;
        if filled > 0 && (n == 0 || filled == buf.len()) {
            let raw = &buf[..filled];
            let chunk = compressor.compress(raw)?;
            let bytes = conn.session.send_data(raw, chunk, conn.now())?;
            wire += bytes.len() as u64;
            conn.write_raw(&bytes).await?;
            filled = 0;
        }
        if n == 0 {
            break;
        }
    }
    if let Err(err) = send.finish().await {
        send_error.get_or_insert(err.to_string());
    }
    if let Some(message) = send_error {
        conn.session.abort_stream(message.clone())?;
        conn.flush().await?;
        // The receiver answers the abort; its answer is secondary to the local cause.
        let _ = tokio::time::timeout(options.commit_timeout, conn.next_event()).await;
        return Err(ReplicationError::Unexpected(format!(
            "zfs send failed, stream aborted: {message}"
        )));
    }
    let summary = conn.session.finish_stream()?;
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

/// After a commit (or when already up to date): hold the new base, release older holds, prune.
async fn settle<Z: Zfs>(
    zfs: &Z,
    job: &DatasetJob,
    options: &SenderOptions,
    base: &SnapshotInfo,
) -> Result<Vec<SnapshotName>, ReplicationError> {
    let tag = &options.hold_tag;
    match zfs.hold(tag, &base.name).await {
        Ok(()) => {}
        // Already held by us (a cycle that found the target up to date).
        Err(err) if is_duplicate_hold(&err) => {}
        Err(err) => return Err(ReplicationError::zfs(format!("holding {}", base.name))(err)),
    }
    let snapshots = zfs
        .list_snapshots(&job.source, false)
        .await
        .map_err(ReplicationError::zfs(format!(
            "listing snapshots of {}",
            job.source
        )))?;
    let older: Vec<&SnapshotInfo> = snapshots
        .iter()
        .take_while(|s| s.guid != base.guid)
        .filter(|s| parse_snapshot_time(&job.prefix, s.name.short_name()).is_some())
        .collect();
    for snap in &older {
        match zfs.release(tag, &snap.name).await {
            Ok(()) => debug!(snapshot = %snap.name, "released the previous base"),
            Err(err) if is_missing_hold(&err) => {}
            Err(err) => warn!(snapshot = %snap.name, cause = %err, "could not release hold"),
        }
    }
    let keep_older = job.keep_last.saturating_sub(1);
    let doomed = &older[..older.len().saturating_sub(keep_older)];
    let mut pruned = Vec::new();
    for snap in doomed {
        match zfs.destroy_snapshot(&snap.name).await {
            Ok(()) => {
                info!(snapshot = %snap.name, "pruned");
                pruned.push(snap.name.clone());
            }
            // Held by someone else (another receiver's base, an admin): not ours to force.
            Err(err) => warn!(snapshot = %snap.name, cause = %err, "not pruned"),
        }
    }
    Ok(pruned)
}

fn is_duplicate_hold(err: &ZfsError) -> bool {
    err.failure()
        .is_some_and(|f| f.stderr.contains("tag already exists"))
}

fn is_missing_hold(err: &ZfsError) -> bool {
    err.failure().is_some_and(|f| {
        f.stderr.contains("no such tag") || f.stderr.contains("reference not found")
    })
}
