//! Pure planning helpers: choosing the incremental base by GUID, detecting divergence, and a
//! light syntactic check of names as they appear on the wire.
//!
//! Snapshots are matched by GUID only: names can be reused or renamed, and `createtxg` is
//! per pool, so neither identifies "the same snapshot" across two pools.

use std::collections::HashSet;

use crate::message::SnapshotInfo;

/// Longest dataset name ZFS accepts (`ZFS_MAX_DATASET_NAME_LEN - 1`).
pub const MAX_NAME_LEN: usize = 255;

/// The result of comparing source and target snapshot lists.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct BaseChoice {
    /// The newest snapshot present on both sides (same GUID), as `(source, target)` entries.
    /// `None` if they share no snapshot.
    pub common: Option<(SnapshotInfo, SnapshotInfo)>,
    /// Target snapshots the source does not have (by GUID) that are newer than the common one
    /// (all such target snapshots when there is no common one), oldest first. Non-empty means
    /// the target has diverged: an incremental receive on top of the common snapshot would need
    /// to destroy them, which zrep never asks for.
    pub diverging: Vec<SnapshotInfo>,
}

impl BaseChoice {
    /// Whether the target has snapshots after the common base that the source lacks.
    pub fn diverged(&self) -> bool {
        !self.diverging.is_empty()
    }

    /// The GUID of the common base, if any.
    pub fn base_guid(&self) -> Option<u64> {
        self.common.as_ref().map(|(s, _)| s.guid)
    }
}

/// Finds the newest common snapshot by GUID and the target's diverging snapshots.
///
/// "Newest" is by the source's `createtxg`; divergence is judged by the target's `createtxg`
/// (each side's txgs only order that side's snapshots). The inputs need not be sorted.
pub fn choose_base(source: &[SnapshotInfo], target: &[SnapshotInfo]) -> BaseChoice {
    let source_guids: HashSet<u64> = source.iter().map(|s| s.guid).collect();
    let common = newest_common_by_guid(source, target);
    let after_txg = common.map(|(_, t)| t.createtxg);
    let mut diverging: Vec<SnapshotInfo> = target
        .iter()
        .filter(|t| !source_guids.contains(&t.guid))
        .filter(|t| after_txg.is_none_or(|txg| t.createtxg > txg))
        .cloned()
        .collect();
    diverging.sort_by_key(|t| t.createtxg);
    BaseChoice {
        common: common.map(|(s, t)| (s.clone(), t.clone())),
        diverging,
    }
}

/// The newest snapshot (by source `createtxg`) whose GUID appears in both lists, as
/// `(source entry, target entry)`.
pub fn newest_common_by_guid<'a>(
    source: &'a [SnapshotInfo],
    target: &'a [SnapshotInfo],
) -> Option<(&'a SnapshotInfo, &'a SnapshotInfo)> {
    source
        .iter()
        .filter_map(|s| target.iter().find(|t| t.guid == s.guid).map(|t| (s, t)))
        .max_by_key(|(s, _)| s.createtxg)
}

/// Why a name fails the light syntactic check.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NameError {
    /// The name is empty.
    #[error("name is empty")]
    Empty,
    /// The name is longer than [`MAX_NAME_LEN`] bytes.
    #[error("name is {0} bytes long, more than {MAX_NAME_LEN}")]
    TooLong(usize),
    /// A path component is empty (leading, trailing or doubled `/`), `.` or `..`.
    #[error("empty, '.' or '..' path component")]
    BadComponent,
    /// A character ZFS does not allow in a name (or `/` in a snapshot name).
    #[error("character {0:?} not allowed")]
    BadChar(char),
}

/// Light check of a relative dataset path as carried on the wire (`a/b/c`, no pool, no `@`).
///
/// Allowed: ASCII letters and digits, `_ - : .` and space, components separated by single `/`.
/// The ZFS crate owns the authoritative name types; this only rejects what can never be valid.
pub fn check_relative_dataset(name: &str) -> Result<(), NameError> {
    check_len(name)?;
    for component in name.split('/') {
        check_component(component)?;
    }
    Ok(())
}

/// Light check of a snapshot short name (the part after `@`).
pub fn check_snapshot_name(name: &str) -> Result<(), NameError> {
    check_len(name)?;
    check_component(name)
}

fn check_len(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > MAX_NAME_LEN {
        return Err(NameError::TooLong(name.len()));
    }
    Ok(())
}

fn check_component(component: &str) -> Result<(), NameError> {
    if component.is_empty() || component == "." || component == ".." {
        return Err(NameError::BadComponent);
    }
    match component
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | ':' | '.' | ' ')))
    {
        Some(c) => Err(NameError::BadChar(c)),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(name: &str, guid: u64, txg: u64) -> SnapshotInfo {
        SnapshotInfo {
            name: name.into(),
            guid,
            createtxg: txg,
            creation: txg * 10,
        }
    }

    #[test]
    fn newest_common_is_found_by_guid_not_name() {
        let source = [snap("a", 1, 10), snap("b", 2, 20), snap("c", 3, 30)];
        // Target has b under another name, and a same-named "c" with another GUID.
        let target = [snap("a", 1, 5), snap("renamed", 2, 6), snap("c", 99, 7)];
        let choice = choose_base(&source, &target);
        let (s, t) = choice.common.clone().unwrap();
        assert_eq!((s.name.as_str(), t.name.as_str()), ("b", "renamed"));
        assert_eq!(choice.base_guid(), Some(2));
        assert_eq!(choice.diverging, vec![snap("c", 99, 7)]);
        assert!(choice.diverged());
    }

    #[test]
    fn up_to_date_and_behind_targets_do_not_diverge() {
        let source = [snap("a", 1, 10), snap("b", 2, 20)];
        let behind = choose_base(&source, &[snap("a", 1, 100)]);
        assert_eq!(behind.base_guid(), Some(1));
        assert!(!behind.diverged());
        let same = choose_base(&source, &[snap("a", 1, 100), snap("b", 2, 101)]);
        assert_eq!(same.base_guid(), Some(2));
        assert!(!same.diverged());
    }

    #[test]
    fn older_foreign_snapshots_are_not_divergence() {
        // A target-only snapshot older than the common base does not block an incremental.
        let source = [snap("b", 2, 20)];
        let target = [snap("local", 50, 1), snap("b", 2, 2)];
        let choice = choose_base(&source, &target);
        assert_eq!(choice.base_guid(), Some(2));
        assert!(!choice.diverged());
    }

    #[test]
    fn no_common_snapshot() {
        let source = [snap("a", 1, 10)];
        let empty = choose_base(&source, &[]);
        assert_eq!(empty.common, None);
        assert!(!empty.diverged());
        let foreign = choose_base(&source, &[snap("x", 7, 3), snap("y", 8, 2)]);
        assert_eq!(foreign.common, None);
        assert_eq!(foreign.diverging, vec![snap("y", 8, 2), snap("x", 7, 3)]);
    }

    #[test]
    fn unsorted_input_is_fine() {
        let source = [snap("c", 3, 30), snap("a", 1, 10), snap("b", 2, 20)];
        let target = [snap("b", 2, 2), snap("a", 1, 1)];
        assert_eq!(choose_base(&source, &target).base_guid(), Some(2));
    }

    #[test]
    fn name_checks() {
        assert!(check_relative_dataset("backup/host1/tank-home").is_ok());
        assert!(check_relative_dataset("a b:c.d_e").is_ok());
        assert_eq!(check_relative_dataset(""), Err(NameError::Empty));
        assert_eq!(check_relative_dataset("/a"), Err(NameError::BadComponent));
        assert_eq!(check_relative_dataset("a//b"), Err(NameError::BadComponent));
        assert_eq!(
            check_relative_dataset("a/../b"),
            Err(NameError::BadComponent)
        );
        assert_eq!(check_relative_dataset("a@b"), Err(NameError::BadChar('@')));
        assert_eq!(
            check_relative_dataset(&"a".repeat(256)),
            Err(NameError::TooLong(256))
        );
        assert!(check_snapshot_name("zrep-2026-01-01T00:00:00").is_ok());
        assert_eq!(check_snapshot_name("a/b"), Err(NameError::BadChar('/')));
    }
}
