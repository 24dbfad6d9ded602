//! Whether an offer is taken: its names, the target's lock, the target's state, and the one
//! stream shape it lets through.

use tokio::io::{AsyncRead, AsyncWrite};
use tracing::debug;
use zrep_proto::{ReceiverSide, RefusalCode, StreamKind, TransferOffer};
use zrep_zfs::received::resume_token;
use zrep_zfs::stream::StreamExpectation;
use zrep_zfs::{DatasetName, SnapshotName, Zfs, ZfsError};

use super::landing::Before;
use super::shared::TargetGuard;
use super::{ReceiverPolicy, target_dataset};
use crate::transport::Connection;

/// An offer the receiver takes: its target, locked until the transfer is answered.
pub(super) struct Accepted {
    pub dataset: DatasetName,
    pub snapshot: SnapshotName,
    /// The target before the transfer, to undo it by.
    pub before: Before,
    pub _guard: TargetGuard,
}

/// Checks an offer against the names, the lock and the target, and creates missing parents.
pub(super) async fn accept<Z, R, W>(
    zfs: &Z,
    conn: &mut Connection<ReceiverSide, R, W>,
    policy: &ReceiverPolicy,
    offer: &TransferOffer,
) -> Result<Accepted, (RefusalCode, String)>
where
    Z: Zfs,
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let dataset = target_dataset(&policy.root, &offer.target)
        .map_err(|reason| (RefusalCode::InvalidName, reason))?;
    let snapshot = dataset
        .snapshot(&offer.snapshot)
        .map_err(|err| (RefusalCode::InvalidName, err.to_string()))?;
    let guard = policy.locks.try_lock(&dataset).ok_or_else(|| {
        (
            RefusalCode::Busy,
            format!("another transfer to {} is running", offer.target),
        )
    })?;
    let before = conn.drive_while(check_offer(zfs, &dataset, offer)).await?;
    conn.drive_while(ensure_parents(zfs, &policy.root, &dataset))
        .await
        .map_err(|err| {
            (
                RefusalCode::NotPermitted,
                format!("cannot create parents: {}", zrep_chain::one_line(&err)),
            )
        })?;
    Ok(Accepted {
        dataset,
        snapshot,
        before,
        _guard: guard,
    })
}

/// The only stream the offer, as checked against the target, lets through.
pub(super) fn expectation(offer: &TransferOffer, before: &Before) -> StreamExpectation {
    let (from_guid, intermediates, resuming) = match &offer.kind {
        StreamKind::Full => (None, false, false),
        StreamKind::Incremental {
            base_guid,
            intermediates,
            ..
        } => (Some(*base_guid), *intermediates, false),
        // A resumed stream continues the interrupted one: from the target's newest snapshot,
        // or a full stream if it has none; `zfs receive` matches it to the partial state.
        StreamKind::Resume { .. } => (before.newest.as_ref().map(|(_, guid)| *guid), false, true),
    };
    StreamExpectation {
        from_guid,
        to_guid: offer.guid,
        to_snapshot: offer.snapshot.clone(),
        raw: offer.raw,
        resuming,
        intermediates,
    }
}

/// Whether the offer fits the target as it is now; if so, the target as it is.
async fn check_offer<Z: Zfs>(
    zfs: &Z,
    dataset: &DatasetName,
    offer: &TransferOffer,
) -> Result<Before, (RefusalCode, String)> {
    let caps = zfs.capabilities();
    if offer.raw && !caps.raw_send {
        return Err((
            RefusalCode::Unsupported,
            format!(
                "raw streams need OpenZFS; this receiver runs {}",
                caps.dialect
            ),
        ));
    }
    let internal = |err: ZfsError| (RefusalCode::NotPermitted, zrep_chain::one_line(&err));
    let exists = zfs.exists(dataset).await.map_err(internal)?;
    let (pending, newest) = if exists {
        let token = resume_token(zfs, dataset).await.map_err(internal)?;
        let mut snapshots = zfs.list_snapshots(dataset, false).await.map_err(internal)?;
        (token, snapshots.pop())
    } else {
        (None, None)
    };
    // The target as the transfer finds it, to undo a failed transfer by.
    let before = Before {
        newest: newest.as_ref().map(|s| (s.name.clone(), s.guid.0)),
    };
    match (&offer.kind, &pending) {
        (StreamKind::Resume { token }, Some(current)) if token == current => return Ok(before),
        (StreamKind::Resume { .. }, _) => {
            return Err((
                RefusalCode::ResumeMismatch,
                format!(
                    "{} has no interrupted receive with that token; plan again",
                    offer.target
                ),
            ));
        }
        (_, Some(_)) => {
            return Err((
                RefusalCode::ResumePending,
                format!(
                    "{} holds an interrupted receive: resume it or ask to discard it first",
                    offer.target
                ),
            ));
        }
        (_, None) => {}
    }
    match &offer.kind {
        StreamKind::Full if exists => Err((
            RefusalCode::TargetExists,
            format!(
                "{} already exists on the receiver; a full stream would need to overwrite it, which zrep never does",
                offer.target
            ),
        )),
        StreamKind::Full => Ok(before),
        StreamKind::Incremental {
            base_guid,
            base_name,
            ..
        } => {
            if !exists {
                return Err((
                    RefusalCode::BaseMismatch,
                    format!(
                        "{} does not exist on the receiver; send a full stream",
                        offer.target
                    ),
                ));
            }
            match &newest {
                Some(newest) if newest.guid.0 == *base_guid => Ok(before),
                Some(newest) => Err((
                    RefusalCode::BaseMismatch,
                    format!(
                        "the newest snapshot of {} is @{} (GUID {}), not the base @{base_name} (GUID {base_guid})",
                        offer.target,
                        newest.name.short_name(),
                        newest.guid
                    ),
                )),
                None => Err((
                    RefusalCode::BaseMismatch,
                    format!(
                        "{} has no snapshot to apply an incremental stream to",
                        offer.target
                    ),
                )),
            }
        }
        StreamKind::Resume { .. } => {
            if caps.resumable_receive {
                Ok(before)
            } else {
                Err((
                    RefusalCode::Unsupported,
                    format!(
                        "resumable receive needs OpenZFS; this receiver runs {}",
                        caps.dialect
                    ),
                ))
            }
        }
    }
}

/// Creates missing datasets between the pool and the target's parent as placeholders: not
/// mounted, read-only, holding no data.
async fn ensure_parents<Z: Zfs>(
    zfs: &Z,
    root: &DatasetName,
    dataset: &DatasetName,
) -> Result<(), ZfsError> {
    let mut missing = Vec::new();
    let mut parent = dataset.parent();
    while let Some(p) = parent {
        if zfs.exists(&p).await? {
            break;
        }
        parent = p.parent();
        missing.push(p);
    }
    for p in missing.into_iter().rev() {
        debug!(dataset = %p, within = %root, "creating placeholder");
        zrep_zfs::received::create_placeholder(zfs, &p).await?;
    }
    Ok(())
}
