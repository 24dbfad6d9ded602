//! What all sessions of a receiver share: one transfer per target, and the metrics counters.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use zrep_zfs::DatasetName;

/// Targets with a receive in progress, shared by all connections: one receive per target.
#[derive(Debug, Clone, Default)]
pub struct TargetLocks(Arc<Mutex<HashSet<DatasetName>>>);

/// Holds a target until dropped.
#[derive(Debug)]
pub struct TargetGuard {
    locks: TargetLocks,
    target: DatasetName,
}

impl TargetLocks {
    /// Takes the target, or `None` if another session has it.
    pub fn try_lock(&self, target: &DatasetName) -> Option<TargetGuard> {
        let mut held = self.0.lock().unwrap_or_else(|p| p.into_inner());
        held.insert(target.clone()).then(|| TargetGuard {
            locks: self.clone(),
            target: target.clone(),
        })
    }
}

impl Drop for TargetGuard {
    fn drop(&mut self) {
        let mut held = self.locks.0.lock().unwrap_or_else(|p| p.into_inner());
        held.remove(&self.target);
    }
}

/// Per peer and target: commits, received bytes, failures, refusals, prunes, last commit time.
#[derive(Debug, Clone, Default)]
pub struct ReceiverMetrics(Arc<Mutex<BTreeMap<(String, String), TargetCounters>>>);

/// The counters of one target of one peer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TargetCounters {
    /// Transfers committed.
    pub commits: u64,
    /// Stream bytes of committed transfers.
    pub received_bytes: u64,
    /// Accepted transfers that did not commit.
    pub failures: u64,
    /// Offers refused.
    pub refusals: u64,
    /// Snapshots destroyed by the receiver's retention.
    pub pruned: u64,
    /// Unix seconds of the last commit.
    pub last_commit: Option<u64>,
}

impl ReceiverMetrics {
    pub(super) fn update(&self, peer: &str, target: &str, f: impl FnOnce(&mut TargetCounters)) {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        f(map.entry((peer.to_owned(), target.to_owned())).or_default());
    }

    pub(super) fn committed(&self, peer: &str, target: &str, bytes: u64) {
        let now = SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.update(peer, target, |c| {
            c.commits += 1;
            c.received_bytes += bytes;
            c.last_commit = Some(now);
        });
    }

    pub(super) fn failed(&self, peer: &str, target: &str) {
        self.update(peer, target, |c| c.failures += 1);
    }

    pub(super) fn refused(&self, peer: &str, target: &str) {
        self.update(peer, target, |c| c.refusals += 1);
    }

    pub(super) fn pruned(&self, peer: &str, target: &str) {
        self.update(peer, target, |c| c.pruned += 1);
    }

    /// A copy of every counter, by (peer, target).
    pub fn snapshot(&self) -> BTreeMap<(String, String), TargetCounters> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}
