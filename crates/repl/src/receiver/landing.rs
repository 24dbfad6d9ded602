//! What a transfer leaves on the target: sealed and verified before `committed`, or nothing at
//! all. A transfer that does not commit leaves the target as it was: a dataset it created is
//! destroyed, snapshots it added are destroyed and the target rolled back to the base it came
//! from. Only what the transfer created is touched: the target's lock is held from the offer's
//! check to here, so every snapshot newer than the recorded base is the transfer's own.

use tracing::{info, warn};
use zrep_proto::FailureCode;
use zrep_zfs::received::{is_read_only, resume_token, seal};
use zrep_zfs::stream::{ObjectKind, StreamSummary};
use zrep_zfs::{DatasetKind, DatasetName, SnapshotName, Zfs, ZfsError};

/// The target's newest snapshot before the transfer (its base), `None` if it had none.
#[derive(Debug, Clone)]
pub(super) struct Before {
    pub newest: Option<(SnapshotName, u64)>,
}

/// Seals the target (read-only, unmounted, not mounted automatically), then checks that the
/// offered snapshot and every snapshot the stream announced exist with their GUIDs.
pub(super) async fn finalize<Z: Zfs>(
    zfs: &Z,
    dataset: &DatasetName,
    snapshot: &SnapshotName,
    guid: u64,
    summary: Option<&StreamSummary>,
) -> Result<(), (FailureCode, String)> {
    let internal = |what: &str, err: ZfsError| {
        (
            FailureCode::Internal,
            format!("{what}: {}", zrep_chain::one_line(&err)),
        )
    };
    let kind = match summary.map(|s| s.kind) {
        Some(ObjectKind::Volume) => DatasetKind::Volume,
        _ => DatasetKind::Filesystem,
    };
    seal(zfs, dataset, kind)
        .await
        .map_err(|e| internal("sealing the target", e))?;
    let snapshots = zfs
        .list_snapshots(dataset, false)
        .await
        .map_err(|e| internal("listing snapshots", e))?;
    let mut expected = vec![(snapshot.short_name().to_owned(), guid)];
    if let Some(summary) = summary {
        expected.extend(summary.snapshots.iter().cloned());
    }
    for (name, guid) in expected {
        match snapshots.iter().find(|s| s.name.short_name() == name) {
            Some(found) if found.guid.0 == guid => {}
            Some(found) => {
                return Err((
                    FailureCode::GuidMismatch,
                    format!(
                        "{dataset}@{name} has GUID {}, the stream announced {guid}",
                        found.guid
                    ),
                ));
            }
            None => {
                return Err((
                    FailureCode::GuidMismatch,
                    format!("{dataset}@{name} is missing after zfs receive"),
                ));
            }
        }
    }
    if !is_read_only(zfs, dataset)
        .await
        .map_err(|e| internal("reading readonly", e))?
    {
        return Err((
            FailureCode::Internal,
            format!("{dataset} does not read back as readonly=on"),
        ));
    }
    Ok(())
}

/// Whether an interrupted resumable receive may stay for the sender to resume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Partial {
    /// The link was cut or the sender aborted: keep a resumable state (and what it builds on).
    Keep,
    /// The stream was refused or failed verification: discard everything.
    Discard,
}

impl Partial {
    /// [`Partial::Keep`], unless the whole stream had arrived.
    pub(super) fn unless(whole: bool) -> Self {
        if whole { Self::Discard } else { Self::Keep }
    }
}

/// Puts the target back as it was before a transfer that did not commit. Failures are logged:
/// the transfer has failed already, and the next offer's checks see whatever is left.
pub(super) async fn undo<Z: Zfs>(
    zfs: &Z,
    peer: &str,
    dataset: &DatasetName,
    before: &Before,
    partial: Partial,
) {
    if let Err(err) = try_undo(zfs, peer, dataset, before, partial).await {
        warn!(%peer, target = %dataset, cause = %zrep_chain::one_line(&err), "cannot undo the failed transfer: what it left on the target is unverified; destroy it (or roll back to the base) by hand");
    }
}

/// Why a failed transfer could not be undone.
#[derive(Debug, thiserror::Error)]
enum UndoError {
    #[error(transparent)]
    Zfs(#[from] ZfsError),
    /// Nothing destroys it while the target is locked: somebody did so by hand.
    #[error("its base {0} is gone")]
    BaseGone(SnapshotName),
}

async fn try_undo<Z: Zfs>(
    zfs: &Z,
    peer: &str,
    dataset: &DatasetName,
    before: &Before,
    partial: Partial,
) -> Result<(), UndoError> {
    if !zfs.exists(dataset).await? {
        return Ok(());
    }
    let token = resume_token(zfs, dataset).await?;
    if token.is_some() && partial == Partial::Keep {
        info!(%peer, target = %dataset, "kept the interrupted receive for resuming");
        return Ok(());
    }
    let Some((base, base_guid)) = &before.newest else {
        // The transfer created the dataset (or resumed one that never completed).
        zfs.destroy_dataset(dataset).await?;
        warn!(%peer, target = %dataset, "failed transfer undone: removed the dataset it created");
        return Ok(());
    };
    if token.is_some() {
        zfs.abort_resumable_receive(dataset).await?;
    }
    let snapshots = zfs.list_snapshots(dataset, false).await?;
    let Some(at) = snapshots.iter().position(|s| s.guid.0 == *base_guid) else {
        return Err(UndoError::BaseGone(base.clone()));
    };
    let added = &snapshots[at + 1..];
    if added.is_empty() {
        // zfs receive applied nothing (it lands whole snapshots or nothing): whatever the
        // target holds is not this transfer's, and stays.
        return Ok(());
    }
    for snapshot in added.iter().rev() {
        zfs.destroy_snapshot(&snapshot.name).await?;
    }
    zfs.rollback(base).await?;
    seal(zfs, dataset, DatasetKind::Filesystem).await?;
    warn!(%peer, target = %dataset, destroyed = added.len(), base = %base, "failed transfer undone: rolled back to its base");
    Ok(())
}
