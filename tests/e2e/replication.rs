//! Replication outcomes: bytes and GUIDs on the target, exit codes and the lines zrep prints.

use zrep_e2e::{DatasetSpec, Receiver, SenderConfig, exists, snapshots};
use zrep_zfs::testbed::{TestPool, pseudo_random_bytes, read_file, write_file, zfs, zfs_get};

/// Mounts a replicated target (zrep keeps them unmounted), runs `check`, unmounts it.
fn with_mounted(dataset: &zrep_zfs::DatasetName, check: impl FnOnce()) {
    zfs(&["mount", dataset.as_str()]);
    check();
    zfs(&["unmount", dataset.as_str()]);
}

#[test]
fn full_then_incrementals_with_spaces_guids_and_intermediates() {
    let src = TestPool::create("e2esrc");
    let dst = TestPool::create("e2edst");
    let source = src.create_dataset("nfs/vm store");
    let root = dst.dataset("backup/nas1");
    zfs(&["create", dst.dataset("backup").as_str()]);
    let receiver = Receiver::start(&[("nas1", &root)], &[]);
    let config = SenderConfig::new(receiver.port, "nas1", &[DatasetSpec::new(&source)]);
    let target = dst.dataset("backup/nas1/nfs/vm store");

    let disk = pseudo_random_bytes(7, 2 << 20);
    write_file(&source, "disk 1.img", &disk);
    let newest = || snapshots(&source).last().unwrap().clone();
    let first = config.once();
    first.expect_code(0);
    let first_snapshot = newest();
    assert!(
        first.stdout.contains(&format!("{source}@zrep_")),
        "{}",
        first.stdout
    );
    assert!(
        first.stdout.contains(" replicated to 127.0.0.1:"),
        "{}",
        first.stdout
    );
    assert!(first.stdout.contains(", full,"), "{}", first.stdout);

    // A manual snapshot with spaces in between: `-I` carries it along.
    write_file(&source, "notes.txt", b"second version");
    zfs(&["snapshot", &format!("{source}@before upgrade 1")]);
    write_file(&source, "notes.txt", b"third version");
    config.once().expect_code(0);
    let second_snapshot = newest();
    let manual = snapshots(&source)
        .into_iter()
        .find(|(n, _)| n == "before upgrade 1")
        .unwrap();
    write_file(&source, "disk 1.img", &pseudo_random_bytes(8, 1 << 20));
    let third = config.once();
    third.expect_code(0);
    assert!(
        third.stdout.contains(", -I from @zrep_"),
        "{}",
        third.stdout
    );

    let third_snapshot = newest();
    // Every snapshot on the target is the source's, by name and exact GUID, in order.
    assert_eq!(
        snapshots(&target),
        [
            first_snapshot,
            manual.clone(),
            second_snapshot,
            third_snapshot.clone()
        ]
    );
    // keep-last = 1: the source keeps the newest common snapshot and what zrep did not make.
    assert_eq!(snapshots(&source), [manual, third_snapshot]);
    // Read-only by property and by behaviour; the contents match the source.
    assert_eq!(zfs_get(target.as_str(), "readonly"), "on");
    assert_eq!(zfs_get(target.as_str(), "mounted"), "no");
    with_mounted(&target, || {
        assert_eq!(
            read_file(&target, "disk 1.img"),
            read_file(&source, "disk 1.img")
        );
        assert_eq!(read_file(&target, "notes.txt"), b"third version");
        let mountpoint = zrep_zfs::testbed::mountpoint_of(&target);
        let err = std::fs::write(mountpoint.join("x"), b"x").unwrap_err();
        assert_eq!(err.raw_os_error(), Some(30), "expected EROFS: {err}");
    });
    // Parents were made as empty, unmounted placeholders.
    let parent = dst.dataset("backup/nas1/nfs");
    assert_eq!(zfs_get(parent.as_str(), "canmount"), "off");
    assert!(exists(&root));
}

#[test]
fn prune_keeps_the_newest_common_snapshot_and_moves_the_hold() {
    let src = TestPool::create("prsrc");
    let dst = TestPool::create("prdst");
    let source = src.create_dataset("data");
    let root = dst.dataset("nas1");
    let receiver = Receiver::start(&[("nas1", &root)], &[]);
    let mut spec = DatasetSpec::new(&source);
    spec.extra = "keep-last = 2\n".into();
    let config = SenderConfig::new(receiver.port, "nas1", &[spec]);
    let mut bases = Vec::new();
    for round in 0..4u8 {
        write_file(&source, "f", &[round; 1000]);
        config.once().expect_code(0);
        let newest = snapshots(&source).last().unwrap().clone();
        bases.push(newest);
    }
    // keep-last = 2: the newest common snapshot and the one before it.
    let left = snapshots(&source);
    assert_eq!(left, bases[2..].to_vec());
    let base = format!("{source}@{}", bases[3].0);
    let previous = format!("{source}@{}", bases[2].0);
    assert_eq!(zfs_get(&base, "userrefs"), "1");
    assert_eq!(zfs_get(&previous, "userrefs"), "0");
    // The hold is zrep's, per receiver, and stops anyone destroying the base.
    let destroy = std::process::Command::new("zfs")
        .args(["destroy", &base])
        .output()
        .unwrap();
    assert!(!destroy.status.success());
    // zfs-fuse and OpenZFS 2.1 say "dataset is busy", OpenZFS 2.2+ "it's being held".
    let stderr = String::from_utf8_lossy(&destroy.stderr);
    assert!(
        stderr.contains("busy") || stderr.contains("being held"),
        "{stderr}"
    );
    zfs(&["release", "zrep:backup1", &base]);
    zfs(&["hold", "zrep:backup1", &base]);
    // The target keeps everything it received: retention there is the receiver's.
    let target = dst.dataset("nas1/data");
    assert_eq!(snapshots(&target).len(), 4);
}

#[test]
fn lost_commit_answer_is_reconciled_without_resending() {
    let src = TestPool::create("lcsrc");
    let dst = TestPool::create("lcdst");
    let source = src.create_dataset("data");
    let root = dst.dataset("nas1");
    let receiver = Receiver::start(&[("nas1", &root)], &[("ZREP_TEST_DROP_COMMIT_ANSWER", "1")]);
    let config = SenderConfig::new(receiver.port, "nas1", &[DatasetSpec::new(&source)]);
    write_file(&source, "f", &pseudo_random_bytes(3, 500_000));

    let lost = config.once();
    lost.expect_code(1);
    assert!(lost.stdout.contains("NOT replicated"), "{}", lost.stdout);
    let target = dst.dataset("nas1/data");
    let landed = snapshots(&target);
    assert_eq!(landed.len(), 1, "the receive itself succeeded");
    assert_eq!(
        landed,
        snapshots(&source),
        "same name and GUID as the source's"
    );

    write_file(&source, "g", b"more");
    let next = config.once();
    next.expect_code(0);
    // Incremental from the snapshot whose answer was lost: nothing is sent twice.
    assert!(
        next.stdout.contains(&format!("-I from @{}", landed[0].0)),
        "{}",
        next.stdout
    );
    let on_target = snapshots(&target);
    assert_eq!(on_target.len(), 2);
    assert_eq!(on_target[0], landed[0]);
    assert!(
        receiver
            .log_text()
            .contains("test hook: dropping the commit answer")
    );
}

#[test]
fn diverged_or_modified_target_is_refused_and_nothing_destroyed() {
    let src = TestPool::create("dvsrc");
    let dst = TestPool::create("dvdst");
    let source = src.create_dataset("data");
    let root = dst.dataset("nas1");
    let receiver = Receiver::start(&[("nas1", &root)], &[]);
    let config = SenderConfig::new(receiver.port, "nas1", &[DatasetSpec::new(&source)]);
    write_file(&source, "f", b"one");
    config.once().expect_code(0);
    let target = dst.dataset("nas1/data");

    // Someone snapshots the backup copy directly.
    zfs(&["snapshot", &format!("{target}@rogue snap")]);
    let before = snapshots(&target);
    let diverged = config.once();
    diverged.expect_code(1);
    assert!(
        diverged.stdout.contains("rogue snap"),
        "{}",
        diverged.stdout
    );
    assert!(
        diverged.stdout.contains("never destroys"),
        "{}",
        diverged.stdout
    );
    assert_eq!(snapshots(&target), before);
    zfs(&["destroy", &format!("{target}@rogue snap")]);

    // Someone writes into the backup copy.
    zfs(&["set", "readonly=off", target.as_str()]);
    zfs(&["mount", target.as_str()]);
    write_file(&target, "intruder", b"changed on the backup");
    let before = snapshots(&target);
    write_file(&source, "f", b"two");
    let modified = config.once();
    modified.expect_code(1);
    assert!(modified.stdout.contains("modified"), "{}", modified.stdout);
    assert_eq!(snapshots(&target), before);
    assert_eq!(read_file(&target, "intruder"), b"changed on the backup");
    // The source kept every snapshot it needs: the newest common one is still there.
    let common = &before.last().unwrap().0;
    assert!(snapshots(&source).iter().any(|(n, _)| n == common));
}

#[test]
fn bandwidth_limit_paces_the_wire() {
    let src = TestPool::create("bwsrc");
    let dst = TestPool::create("bwdst");
    let source = src.create_dataset("data");
    let root = dst.dataset("nas1");
    let receiver = Receiver::start(&[("nas1", &root)], &[]);
    let config = SenderConfig::new(receiver.port, "nas1", &[DatasetSpec::new(&source)]);
    let text = std::fs::read_to_string(&config.path).unwrap();
    std::fs::write(
        &config.path,
        format!("bandwidth-limit = \"1MiB/s\"\n{text}"),
    )
    .unwrap();
    // Random data: compression leaves the wire bytes about the stream bytes.
    write_file(&source, "f", &pseudo_random_bytes(5, 3 << 20));
    let started = std::time::Instant::now();
    let out = config.once();
    out.expect_code(0);
    let elapsed = started.elapsed().as_secs_f64();
    // The exact count is in the state file (the line rounds it for people).
    let state = config
        .dir()
        .join(format!("{}.json", source.as_str().replace('/', "%")));
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(state).unwrap()).unwrap();
    let wire = state["wire-bytes"].as_u64().unwrap() as f64;
    assert!(wire > 3e6, "{}", out.stdout);
    assert!(out.stdout.contains(" MiB on the wire"), "{}", out.stdout);
    // Paced from the first data frame: at most 1 MiB/s on average, so the transfer needs at
    // least wire/1MiB seconds (minus the first frame's burst).
    let floor = (wire - 1024.0 * 1024.0) / (1024.0 * 1024.0);
    assert!(
        elapsed >= floor,
        "{wire} bytes on the wire in {elapsed:.1} s: faster than 1 MiB/s"
    );
}

#[test]
fn recursive_replicates_children_with_exclusions_and_picks_up_new_ones() {
    let src = TestPool::create("rcsrc");
    let dst = TestPool::create("rcdst");
    let source = src.create_dataset("data");
    let a = src.create_dataset("data/a");
    let deep = src.create_dataset("data/a/deep");
    let tmp = src.create_dataset("data/tmp");
    src.create_dataset("data/tmp/x");
    let root = dst.dataset("nas1");
    let receiver = Receiver::start(&[("nas1", &root)], &[]);
    let mut spec = DatasetSpec::new(&source);
    spec.extra = format!("recursive = true\nexclude = [\"{tmp}\"]\n");
    let config = SenderConfig::new(receiver.port, "nas1", &[spec]);
    write_file(&deep, "f", b"deep");
    let first = config.once();
    first.expect_code(0);
    assert_eq!(
        first.stdout.matches(" replicated to ").count(),
        3,
        "{}",
        first.stdout
    );
    for (src_ds, rel) in [(&source, "data"), (&a, "data/a"), (&deep, "data/a/deep")] {
        let target = dst.dataset(&format!("nas1/{rel}"));
        assert_eq!(snapshots(&target), snapshots(src_ds), "{rel}");
    }
    assert!(!exists(&dst.dataset("nas1/data/tmp")), "excluded");
    assert!(
        snapshots(&tmp).is_empty(),
        "nothing done to an excluded dataset"
    );

    // A new child is picked up by the next cycle.
    let b = src.create_dataset("data/b");
    write_file(&b, "g", b"new");
    let second = config.once();
    second.expect_code(0);
    assert_eq!(
        second.stdout.matches(" replicated to ").count(),
        4,
        "{}",
        second.stdout
    );
    assert!(
        second.stdout.contains(", -I from @zrep_"),
        "{}",
        second.stdout
    );
    assert_eq!(snapshots(&dst.dataset("nas1/data/b")), snapshots(&b));
    // status shows every member that has a state file.
    let status = config.run("status", &["--json"]);
    status.expect_code(0);
    let json: serde_json::Value = serde_json::from_str(&status.stdout).unwrap();
    let listed: Vec<&str> = json
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["target"].as_str().unwrap())
        .collect();
    assert_eq!(listed, ["data", "data/a", "data/a/deep", "data/b"]);
}

/// A target that spells out the receiver's root (a newcomer's `target = "<root>/data"`) would
/// land in a second copy at `<root>/<root>/data`: it is refused with the target to write instead,
/// and nothing is created.
#[test]
fn a_target_repeating_the_root_is_refused_with_the_fix() {
    let src = TestPool::create("rtsrc");
    let dst = TestPool::create("rtdst");
    let source = src.create_dataset("data");
    let root = dst.dataset("nas1");
    let receiver = Receiver::start(&[("nas1", &root)], &[]);
    let mut spec = DatasetSpec::new(&source);
    spec.target = Some(format!("{root}/data"));
    let config = SenderConfig::new(receiver.port, "nas1", &[spec]);
    write_file(&source, "f", b"data");
    let out = config.once();
    out.expect_code(1);
    assert_eq!(
        out.stdout,
        format!(
            "{source} NOT replicated to 127.0.0.1:{}: the receiver ended the session \
             (not-authorized): target \"{root}/data\" refused: it repeats this peer's root {root}; \
             targets are relative to the root: target = \"data\"\n",
            receiver.port
        )
    );
    assert!(!exists(&root), "{root} was created");
}
