//! The receiver's own retention: after a commit, the zrep-named snapshots of the target that
//! its policy for the peer lets go are destroyed, never the target's newest one.

use std::time::SystemTime;

use tracing::{info, warn};
use zrep_zfs::{DatasetName, SnapshotName, Zfs};

use super::ReceiverPolicy;
use crate::naming::parse_snapshot_time;
use crate::retention::KeepPolicy;

/// The receiver's own retention for one peer: which snapshots of a target it keeps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retention {
    /// Only snapshots named `<prefix>_<UTC time>` are candidates; others are never touched.
    pub prefix: String,
    /// What to keep of those; the target's newest snapshot is kept whatever it says.
    pub keep: KeepPolicy,
}

/// Applies the receiver's retention to one target: destroys the zrep-named snapshots its policy
/// lets go, never the target's newest snapshot. Failures are logged; the commit stands.
pub async fn prune_target<Z: Zfs>(
    zfs: &Z,
    policy: &ReceiverPolicy,
    retention: &Retention,
    dataset: &DatasetName,
    now: SystemTime,
) -> Vec<SnapshotName> {
    let snapshots = match zfs.list_snapshots(dataset, false).await {
        Ok(snapshots) => snapshots,
        Err(err) => {
            warn!(peer = %policy.peer, target = %dataset, cause = %zrep_chain::one_line(&err), "retention: cannot list snapshots");
            return Vec::new();
        }
    };
    let Some(newest) = snapshots.last() else {
        return Vec::new();
    };
    let ours: Vec<(&SnapshotName, SystemTime)> = snapshots
        .iter()
        .filter_map(|s| {
            Some((
                &s.name,
                parse_snapshot_time(&retention.prefix, s.name.short_name())?,
            ))
        })
        .collect();
    // The newest received snapshot is the base of the next increment: protected.
    let protect_from = match ours.last() {
        Some((name, _)) if **name == newest.name => ours.len() - 1,
        _ => ours.len(),
    };
    let times: Vec<SystemTime> = ours.iter().map(|(_, t)| *t).collect();
    let mut pruned = Vec::new();
    for i in retention.keep.doomed(&times, protect_from, now) {
        let name = ours[i].0;
        match zfs.destroy_snapshot(name).await {
            Ok(()) => {
                info!(peer = %policy.peer, snapshot = %name, "retention: pruned");
                pruned.push(name.clone());
                // Keyed like the rest: the target relative to the peer's root.
                let root = format!("{}/", policy.root);
                let relative = dataset
                    .as_str()
                    .strip_prefix(&root)
                    .unwrap_or(dataset.as_str());
                policy.metrics.pruned(&policy.peer, relative);
            }
            Err(err) => {
                warn!(peer = %policy.peer, snapshot = %name, cause = %zrep_chain::one_line(&err), "retention: not pruned");
            }
        }
    }
    pruned
}
