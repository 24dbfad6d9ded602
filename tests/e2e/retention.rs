//! Retention on real pools: the sender's `keep` for its own snapshots, the receiver's per-peer
//! `keep` after commits; the newest common (sender) and newest received (receiver) snapshot
//! survive any policy, and snapshots zrep did not make are never touched.

use std::time::{Duration, SystemTime};

use zrep_e2e::{DatasetSpec, Receiver, SenderConfig, snapshots};
use zrep_repl::naming::snapshot_short_name;
use zrep_zfs::testbed::{TestPool, write_file, zfs, zfs_get};

const DAY: u64 = 86_400;

/// The start of the UTC day `days` before today, plus `offset` seconds.
fn day_start(days_ago: u64, offset: u64) -> SystemTime {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    SystemTime::UNIX_EPOCH + Duration::from_secs((now / DAY - days_ago) * DAY + offset)
}

fn names(snaps: &[(String, u64)]) -> Vec<&str> {
    snaps.iter().map(|(n, _)| n.as_str()).collect()
}

#[test]
fn sender_keep_grid_prunes_only_zreps_own_and_keeps_the_base() {
    let src = TestPool::create("rtsrc");
    let dst = TestPool::create("rtdst");
    let source = src.create_dataset("data");
    let root = dst.dataset("nas1");
    let receiver = Receiver::start(&[("nas1", &root)], &[]);
    write_file(&source, "f", b"one");
    // Older zrep snapshots (named for their time) and one an admin made.
    let old = |t| snapshot_short_name("zrep", t);
    let a = old(day_start(3, 3600));
    let b1 = old(day_start(2, 1));
    let b2 = old(day_start(2, 12 * 3600));
    let c = old(day_start(1, 3600));
    for name in [&a, &b1, "manual keep", &b2, &c] {
        zfs(&["snapshot", &format!("{source}@{name}")]);
    }
    let mut spec = DatasetSpec::new(&source);
    spec.extra = "keep = { last = 1, grid = \"1d:3\" }\n".into();
    let config = SenderConfig::new(receiver.port, "nas1", &[spec]);
    config.once().expect_code(0);
    let newest = snapshots(&source).last().unwrap().0.clone();
    // The grid keeps the oldest of each of the last three UTC days (b1, c, the new one); `last`
    // keeps the new one; a and b2 go; the admin's snapshot stays.
    assert_eq!(
        names(&snapshots(&source)),
        [b1.as_str(), "manual keep", c.as_str(), newest.as_str()]
    );
}

#[test]
fn sender_policy_that_would_delete_the_base_keeps_it() {
    let src = TestPool::create("rbsrc");
    let dst = TestPool::create("rbdst");
    let source = src.create_dataset("data");
    let root = dst.dataset("nas1");
    let receiver = Receiver::start(&[("nas1", &root)], &[]);
    let mut spec = DatasetSpec::new(&source);
    // Keep nothing: the newest common snapshot stays all the same.
    spec.extra = "keep = { last = 0 }\n".into();
    let config = SenderConfig::new(receiver.port, "nas1", &[spec]);
    for round in 0..3u8 {
        write_file(&source, "f", &[round; 100]);
        config.once().expect_code(0);
        let left = snapshots(&source);
        assert_eq!(left.len(), 1, "{left:?}");
        let target = snapshots(&dst.dataset("nas1/data"));
        assert_eq!(left.last(), target.last(), "the base is common");
        let base = format!("{source}@{}", left[0].0);
        assert_eq!(zfs_get(&base, "userrefs"), "1");
    }
    // The sender's pruning never reaches the receiver, which keeps all three.
    assert_eq!(snapshots(&dst.dataset("nas1/data")).len(), 3);
}

#[test]
fn receiver_keep_prunes_after_commits_never_the_newest_or_foreign() {
    let src = TestPool::create("rrsrc");
    let dst = TestPool::create("rrdst");
    let source = src.create_dataset("data");
    let root = dst.dataset("nas1");
    let other_root = dst.dataset("nas2");
    // nas1: keep nothing (the policy would delete the newest received); nas2: no keep at all.
    let receiver = Receiver::start_with(
        &[
            ("nas1", &root, "keep = { last = 0 }"),
            ("nas2", &other_root, ""),
        ],
        &[],
    );
    let config = SenderConfig::new(receiver.port, "nas1", &[DatasetSpec::new(&source)]);
    let unpruned = SenderConfig::new(receiver.port, "nas2", &[DatasetSpec::new(&source)]);
    let target = dst.dataset("nas1/data");
    for round in 0..4u8 {
        write_file(&source, "f", &[round; 100]);
        if round == 1 {
            zfs(&["snapshot", &format!("{source}@manual {round}")]);
        }
        config.once().expect_code(0);
        let newest = snapshots(&source).last().unwrap().clone();
        let on_target = snapshots(&target);
        // Only the newest received zrep snapshot, plus the admin's, carried along by -I.
        let mut want = Vec::new();
        if round >= 1 {
            want.push("manual 1");
        }
        want.push(newest.0.as_str());
        assert_eq!(names(&on_target), want, "round {round}");
        assert_eq!(on_target.last(), Some(&newest));
    }
    assert!(
        receiver.log_text().contains("retention: pruned"),
        "{}",
        receiver.log_text()
    );
    // A peer without `keep`: its target keeps everything it received.
    unpruned.once().expect_code(0);
    unpruned.once().expect_code(0);
    assert_eq!(snapshots(&dst.dataset("nas2/data")).len(), 2);
}
