//! The driver against real ZFS (zfs-fuse here; OpenZFS in the OpenZFS tier). Every assertion is
//! checked against ZFS's own answers (`zfs get -Hp`) or file contents on the target.

// A failed unwrap is a failed test, with the value in the message.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use zrep_zfs::testbed::{
    TestPool, guid_of, mountpoint_of, pseudo_random_bytes, read_file, write_file, zfs as zfs_cmd,
    zfs_get,
};
use zrep_zfs::{
    Capabilities, DatasetKind, Dialect, Guid, HoldTag, IncrementalBase, PropertyName,
    ReceiveRequest, SendKind, SendRequest, SnapshotName, SystemZfs, SystemZfsConfig, Zfs, ZfsError,
};

async fn driver() -> SystemZfs {
    SystemZfs::probe(SystemZfsConfig::default())
        .await
        .expect("probe the local zfs")
}

fn prop(name: &str) -> PropertyName {
    PropertyName::parse(name).unwrap()
}

/// Pipes `send` into a receive of `target`, returning the receive's outcome.
async fn transfer(
    zfs: &SystemZfs,
    request: SendRequest,
    target: &zrep_zfs::DatasetName,
) -> Result<u64, ZfsError> {
    let mut stream = zfs.send(&request).await?;
    let mut sink = zfs.receive(&ReceiveRequest::new(target.clone())).await?;
    let copied = tokio::io::copy(&mut stream.reader, &mut sink.writer).await;
    let sent = stream.finish().await;
    let received = sink.finish().await;
    // A receive that refuses the stream closes the pipe, so the send dies of SIGPIPE: the
    // receive's error is the cause.
    received?;
    sent?;
    Ok(copied.expect("copy between zfs send and receive"))
}

#[tokio::test]
async fn probe_matches_dialect() {
    // zfs-fuse does not list `createtxg`; the probe asks a pool, so there must be one.
    let _pool = TestPool::create("probe");
    let zfs = driver().await;
    let caps = zfs.capabilities();
    match &caps.dialect {
        Dialect::Legacy => {
            // zfs-fuse 0.7: none of the OpenZFS extras, but createtxg answers.
            assert_eq!(
                caps,
                &Capabilities {
                    createtxg: true,
                    ..Capabilities::legacy()
                }
            );
        }
        Dialect::OpenZfs { version } => {
            // Every OpenZFS from 2.0 on has all of the extras.
            assert!(version.starts_with("2."), "unexpected OpenZFS {version}");
            assert_eq!(caps, &Capabilities::openzfs(version));
        }
        other => panic!("unexpected dialect {other:?}"),
    }
    eprintln!("probed dialect: {}", caps.dialect);
}

#[tokio::test]
async fn lists_datasets_and_snapshots_with_spaces_and_exact_guids() {
    let pool = TestPool::create("list");
    let zfs = driver().await;
    let parent = pool.create_dataset("nfs share");
    let child = pool.create_dataset("nfs share/vm 1");

    let datasets = zfs.list_datasets(&pool.root()).await.unwrap();
    let names: Vec<_> = datasets
        .iter()
        .map(|d| d.name.as_str().to_owned())
        .collect();
    assert_eq!(
        names,
        [
            pool.name().to_owned(),
            parent.to_string(),
            child.to_string()
        ]
    );
    assert!(datasets.iter().all(|d| d.kind == DatasetKind::Filesystem));

    // Several snapshots within one second, named out of alphabetical order: creation order wins.
    let shorts = ["2012-01-09 08:39:41", "zz", "aa", "m m"];
    for short in shorts {
        zfs.create_snapshot(&parent.snapshot(short).unwrap(), false)
            .await
            .unwrap();
    }
    zfs.create_snapshot(&parent.snapshot("tree").unwrap(), true)
        .await
        .unwrap();

    let own = zfs.list_snapshots(&parent, false).await.unwrap();
    let own_names: Vec<_> = own.iter().map(|s| s.name.short_name().to_owned()).collect();
    assert_eq!(
        own_names,
        ["2012-01-09 08:39:41", "zz", "aa", "m m", "tree"]
    );
    for snap in &own {
        assert_eq!(snap.guid, Guid(guid_of(&snap.name)), "{}", snap.name);
        assert_eq!(
            snap.creation.to_string(),
            zfs_get(snap.name.as_str(), "creation")
        );
        if zfs.capabilities().createtxg {
            assert_eq!(
                snap.createtxg.unwrap().to_string(),
                zfs_get(snap.name.as_str(), "createtxg")
            );
        }
    }

    let tree = zfs.list_snapshots(&pool.root(), true).await.unwrap();
    let tree_names: Vec<_> = tree.iter().map(|s| s.name.to_string()).collect();
    assert_eq!(tree.len(), 6, "{tree_names:?}");
    assert_eq!(tree_names.last().unwrap(), &format!("{child}@tree"));
    assert_eq!(
        tree.last().unwrap().guid,
        Guid(guid_of(&child.snapshot("tree").unwrap()))
    );

    assert!(zfs.list_snapshots(&child, false).await.unwrap().len() == 1);
}

#[tokio::test]
async fn destroy_respects_holds() {
    let pool = TestPool::create("hold");
    let zfs = driver().await;
    let ds = pool.create_dataset("data");
    let snap = ds.snapshot("held one").unwrap();
    zfs.create_snapshot(&snap, false).await.unwrap();
    let tag = HoldTag::parse("zrep").unwrap();

    zfs.hold(&tag, &snap).await.unwrap();
    assert_eq!(zfs_get(snap.as_str(), "userrefs"), "1");
    if zfs.capabilities().holds_scriptable {
        assert_eq!(zfs.holds(&snap).await.unwrap(), std::slice::from_ref(&tag));
    } else {
        assert!(matches!(
            zfs.holds(&snap).await,
            Err(ZfsError::Unsupported { .. })
        ));
    }
    let refused = zfs.destroy_snapshot(&snap).await.unwrap_err();
    assert!(matches!(refused, ZfsError::Busy { .. }), "{refused:?}");
    // zfs-fuse and OpenZFS 2.1 say "dataset is busy"; later OpenZFS names the reason:
    // "cannot destroy snapshot p/a@s: it's being held. Run 'zfs holds -r p/a@s' to see holders."
    let message = refused.to_string();
    assert!(
        message.contains("dataset is busy") || message.contains("it's being held"),
        "{refused}"
    );
    assert_eq!(zfs.list_snapshots(&ds, false).await.unwrap().len(), 1);

    zfs.release(&tag, &snap).await.unwrap();
    assert_eq!(zfs_get(snap.as_str(), "userrefs"), "0");
    zfs.destroy_snapshot(&snap).await.unwrap();
    assert!(zfs.list_snapshots(&ds, false).await.unwrap().is_empty());
}

#[tokio::test]
async fn properties_and_dataset_creation() {
    let pool = TestPool::create("props");
    let zfs = driver().await;
    let ds = pool.dataset("made/by driver");
    zfs.create_dataset(
        &ds,
        &[
            (prop("readonly"), "on".into()),
            (prop("com.example:note"), "a b=c".into()),
        ],
        true,
    )
    .await
    .unwrap();
    assert!(zfs.exists(&ds).await.unwrap());
    assert!(zfs.exists(&pool.dataset("made")).await.unwrap());
    assert!(!zfs.exists(&pool.dataset("absent")).await.unwrap());

    let readonly = zfs
        .get_property(&ds, &prop("readonly"))
        .await
        .unwrap()
        .unwrap();
    let readonly = (readonly.value.as_str(), readonly.source.as_str());
    if zfs.capabilities().dialect == Dialect::Legacy {
        // zfs-fuse quirk: a mounted read-only filesystem reports `off temporary`; the mount is
        // read-only all the same, and unmounted it reports the local value.
        assert_eq!(readonly, ("off", "temporary"));
        let write = std::fs::write(mountpoint_of(&ds).join("x"), b"x").unwrap_err();
        assert_eq!(
            write.raw_os_error(),
            Some(30),
            "expected EROFS, got {write}"
        );
        zfs_cmd(&["unmount", ds.as_str()]);
        let unmounted = zfs
            .get_property(&ds, &prop("readonly"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (unmounted.value.as_str(), unmounted.source.as_str()),
            ("on", "local")
        );
        zfs_cmd(&["mount", ds.as_str()]);
    } else {
        assert_eq!(readonly, ("on", "local"));
    }
    let note = zfs
        .get_property(&ds, &prop("com.example:note"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(note.value, "a b=c");

    zfs.set_property(&ds, &prop("readonly"), "off")
        .await
        .unwrap();
    assert_eq!(zfs_get(ds.as_str(), "readonly"), "off");

    let snap = ds.snapshot("s").unwrap();
    zfs.create_snapshot(&snap, false).await.unwrap();
    let guid = zfs
        .get_property(&snap, &prop("guid"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(guid.value, guid_of(&snap).to_string());

    let missing = zfs
        .get_property(&pool.dataset("absent"), &prop("readonly"))
        .await
        .unwrap_err();
    assert!(matches!(missing, ZfsError::NotFound { .. }), "{missing:?}");
    let failure = missing.failure().unwrap();
    assert_eq!(failure.status, Some(1));
    assert!(
        failure.stderr.contains("dataset does not exist"),
        "{failure}"
    );
}

#[tokio::test]
async fn full_and_incremental_sends_reproduce_contents_and_guids() {
    let src_pool = TestPool::create("src");
    let dst_pool = TestPool::create("dst");
    let zfs = driver().await;
    let src = src_pool.create_dataset("vm store");
    let dst = dst_pool.dataset("copy of vm");

    let first = pseudo_random_bytes(1, 300_000);
    write_file(&src, "disk 1.img", &first);
    let s1 = src.snapshot("zrep 1").unwrap();
    zfs.create_snapshot(&s1, false).await.unwrap();
    let bytes = transfer(
        &zfs,
        SendRequest::new(SendKind::Full {
            snapshot: s1.clone(),
        }),
        &dst,
    )
    .await
    .unwrap();
    // As zrep-recv does: without it, reading files updates atime and the target counts as
    // modified, which refuses the next incremental.
    zfs.set_property(&dst, &prop("readonly"), "on")
        .await
        .unwrap();
    assert!(bytes > 300_000, "full stream of {bytes} bytes");
    assert_eq!(read_file(&dst, "disk 1.img"), first);
    assert_eq!(guid_of(&s1.on_dataset(&dst).unwrap()), guid_of(&s1));

    // -i: only the newest snapshot arrives.
    write_file(&src, "b", b"second");
    let s2 = src.snapshot("zrep 2").unwrap();
    zfs.create_snapshot(&s2, false).await.unwrap();
    write_file(&src, "c", b"third");
    let s3 = src.snapshot("zrep 3").unwrap();
    zfs.create_snapshot(&s3, false).await.unwrap();
    let incremental = SendKind::Incremental {
        from: IncrementalBase::Snapshot(s1.clone()),
        to: s3.clone(),
        intermediates: false,
    };
    transfer(&zfs, SendRequest::new(incremental), &dst)
        .await
        .unwrap();
    let on_target: Vec<_> = zfs.list_snapshots(&dst, false).await.unwrap();
    let shorts: Vec<_> = on_target.iter().map(|s| s.name.short_name()).collect();
    assert_eq!(shorts, ["zrep 1", "zrep 3"]);
    assert_eq!(read_file(&dst, "c"), b"third");

    // -I: every snapshot in between travels too.
    for (n, text) in [(4, "four"), (5, "five"), (6, "six")] {
        write_file(&src, "c", text.as_bytes());
        zfs.create_snapshot(&src.snapshot(&format!("zrep {n}")).unwrap(), false)
            .await
            .unwrap();
    }
    let s6 = src.snapshot("zrep 6").unwrap();
    let with_intermediates = SendKind::Incremental {
        from: IncrementalBase::Snapshot(s3.clone()),
        to: s6.clone(),
        intermediates: true,
    };
    transfer(&zfs, SendRequest::new(with_intermediates), &dst)
        .await
        .unwrap();
    let on_target = zfs.list_snapshots(&dst, false).await.unwrap();
    let shorts: Vec<_> = on_target.iter().map(|s| s.name.short_name()).collect();
    assert_eq!(shorts, ["zrep 1", "zrep 3", "zrep 4", "zrep 5", "zrep 6"]);
    for snap in &on_target {
        let source = snap.name.on_dataset(&src).unwrap();
        assert_eq!(snap.guid, Guid(guid_of(&source)), "{}", snap.name);
    }
    assert_eq!(read_file(&dst, "c"), b"six");
    assert_eq!(read_file(&dst, "disk 1.img"), first);
}

#[tokio::test]
async fn receive_failures_are_typed() {
    let src_pool = TestPool::create("esrc");
    let dst_pool = TestPool::create("edst");
    let zfs = driver().await;
    let src = src_pool.create_dataset("data");
    let dst = dst_pool.dataset("data");
    let snap = |n: u32| src.snapshot(&format!("s{n}")).unwrap();
    for n in 1..=3 {
        write_file(&src, "f", format!("v{n}").as_bytes());
        zfs.create_snapshot(&snap(n), false).await.unwrap();
    }
    let full = |s: SnapshotName| SendRequest::new(SendKind::Full { snapshot: s });
    let incr = |from: SnapshotName, to: SnapshotName| {
        SendRequest::new(SendKind::Incremental {
            from: IncrementalBase::Snapshot(from),
            to,
            intermediates: false,
        })
    };
    transfer(&zfs, full(snap(1)), &dst).await.unwrap();

    // A full stream into an existing dataset.
    let exists = transfer(&zfs, full(snap(2)), &dst).await.unwrap_err();
    assert!(
        matches!(exists, ZfsError::DestinationExists { .. }),
        "{exists:?}"
    );

    // An incremental whose base is not the target's newest snapshot.
    let mismatch = transfer(&zfs, incr(snap(2), snap(3)), &dst)
        .await
        .unwrap_err();
    assert!(
        matches!(mismatch, ZfsError::IncrementalMismatch { .. }),
        "{mismatch:?}"
    );

    // The target written to since its newest snapshot.
    write_file(&dst, "intruder", b"changed on the backup");
    let modified = transfer(&zfs, incr(snap(1), snap(2)), &dst)
        .await
        .unwrap_err();
    assert!(
        matches!(modified, ZfsError::DestinationModified { .. }),
        "{modified:?}"
    );
    assert!(modified.to_string().contains("modified"), "{modified}");

    // Rollback discards the change; then the same incremental lands.
    zfs.rollback(&snap(1).on_dataset(&dst).unwrap())
        .await
        .unwrap();
    transfer(&zfs, incr(snap(1), snap(2)), &dst).await.unwrap();
    assert_eq!(read_file(&dst, "f"), b"v2");

    // A truncated stream: the receive fails and leaves no dataset behind.
    let mut stream = zfs.send(&full(snap(3))).await.unwrap();
    let mut head = vec![0u8; 4096];
    tokio::io::AsyncReadExt::read_exact(&mut stream.reader, &mut head)
        .await
        .unwrap();
    drop(stream);
    let cut = dst_pool.dataset("cut");
    let mut sink = zfs
        .receive(&ReceiveRequest::new(cut.clone()))
        .await
        .unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut sink.writer, &head)
        .await
        .unwrap();
    let truncated = sink.finish().await.unwrap_err();
    assert!(
        matches!(truncated, ZfsError::InvalidStream { .. }),
        "{truncated:?}"
    );
    assert!(!zfs.exists(&cut).await.unwrap());

    // A send of a snapshot that does not exist.
    let missing = zfs
        .send(&full(src.snapshot("nope").unwrap()))
        .await
        .unwrap();
    let missing = missing.finish().await.unwrap_err();
    assert!(matches!(missing, ZfsError::NotFound { .. }), "{missing:?}");
}

#[tokio::test]
async fn openzfs_only_operations_report_unsupported_or_work() {
    let pool = TestPool::create("caps");
    let zfs = driver().await;
    let ds = pool.create_dataset("data");
    let snap = ds.snapshot("s").unwrap();
    zfs.create_snapshot(&snap, false).await.unwrap();
    let mark = ds.bookmark("b").unwrap();
    let caps = zfs.capabilities().clone();

    let bookmark = zfs.create_bookmark(&snap, &mark).await;
    let listed = zfs.list_bookmarks(&ds).await.unwrap();
    if caps.bookmarks {
        bookmark.unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].guid, Guid(guid_of(&snap)));
        zfs.destroy_bookmark(&mark).await.unwrap();
    } else {
        eprintln!("bookmarks: not in {}, checking the refusal", caps.dialect);
        assert!(matches!(
            bookmark,
            Err(ZfsError::Unsupported {
                feature: "bookmarks",
                ..
            })
        ));
        assert!(listed.is_empty());
    }

    let mut resumable = ReceiveRequest::new(pool.dataset("r"));
    resumable.resumable = true;
    resumable.no_mount = true;
    resumable
        .set_properties
        .push((prop("readonly"), "on".into()));
    let sink = zfs.receive(&resumable).await;
    if caps.resumable_receive && caps.receive_no_mount && caps.receive_set_property {
        let mut stream = zfs
            .send(&SendRequest::new(SendKind::Full {
                snapshot: snap.clone(),
            }))
            .await
            .unwrap();
        let mut sink = sink.unwrap();
        tokio::io::copy(&mut stream.reader, &mut sink.writer)
            .await
            .unwrap();
        stream.finish().await.unwrap();
        sink.finish().await.unwrap();
        assert_eq!(zfs_get(pool.dataset("r").as_str(), "readonly"), "on");
        assert_eq!(zfs_get(pool.dataset("r").as_str(), "mounted"), "no");
    } else {
        eprintln!(
            "receive -s/-u/-o: not in {}, checking the refusal",
            caps.dialect
        );
        assert!(matches!(sink, Err(ZfsError::Unsupported { .. })));
        assert!(!zfs.exists(&pool.dataset("r")).await.unwrap());
    }

    let abort = zfs.abort_resumable_receive(&ds).await;
    if !caps.resumable_receive {
        assert!(matches!(abort, Err(ZfsError::Unsupported { .. })));
    }
}

#[tokio::test]
async fn every_command_is_time_limited() {
    let dir = tempfile::tempdir().unwrap();
    let slow = dir.path().join("zfs");
    std::fs::write(&slow, "#!/bin/sh\nexec sleep 30\n").unwrap();
    std::fs::set_permissions(&slow, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let config = SystemZfsConfig {
        zfs: slow,
        command_timeout: Duration::from_millis(300),
        finish_timeout: Duration::from_millis(300),
        abort_timeout: Duration::from_millis(300),
    };
    let zfs = SystemZfs::with_capabilities(config, Capabilities::legacy());
    let name = zrep_zfs::DatasetName::parse("p/a").unwrap();
    // Another test thread forking while the script was open for writing makes exec fail with
    // ETXTBSY for a moment; that is the test's race, not the driver's.
    let (err, elapsed) = loop {
        let started = std::time::Instant::now();
        let err = zfs.exists(&name).await.unwrap_err();
        match &err {
            ZfsError::Spawn { source, .. } if source.raw_os_error() == Some(26) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            _ => break (err, started.elapsed()),
        }
    };
    assert!(matches!(err, ZfsError::Timeout { .. }), "{err:?}");
    assert!(elapsed < Duration::from_secs(5), "{elapsed:?}");
    assert!(err.to_string().contains("did not finish within"), "{err}");
}

/// Whether an OpenZFS-only test applies; if not, says so in the test's output (shown by the
/// tiers' `--show-output`), so a dialect without the feature never passes silently.
fn applies(zfs: &SystemZfs, present: bool, feature: &str) -> bool {
    if !present {
        eprintln!(
            "not applicable: {} lacks {feature}; checked that the driver refuses it instead",
            zfs.capabilities().dialect
        );
    }
    present
}

/// Starts a send and a resumable receive, copies only the first `cut_after` bytes, then ends
/// both as a dropped connection would; returns the receive's error.
async fn cut_transfer(
    zfs: &SystemZfs,
    request: SendRequest,
    target: &zrep_zfs::DatasetName,
    cut_after: u64,
) -> ZfsError {
    let mut stream = zfs.send(&request).await.unwrap();
    let mut resumable = ReceiveRequest::new(target.clone());
    resumable.resumable = true;
    let mut sink = zfs.receive(&resumable).await.unwrap();
    let mut head = tokio::io::AsyncReadExt::take(&mut stream.reader, cut_after);
    let copied = tokio::io::copy(&mut head, &mut sink.writer).await.unwrap();
    assert_eq!(copied, cut_after, "the stream is longer than the cut");
    drop(stream);
    sink.finish()
        .await
        .expect_err("a cut stream must not be committed")
}

/// The target's resume token, if a resumable receive was cut.
async fn resume_token(zfs: &SystemZfs, target: &zrep_zfs::DatasetName) -> Option<String> {
    zfs.get_property(target, &prop("receive_resume_token"))
        .await
        .unwrap()
        .map(|token| token.value)
}

#[tokio::test]
async fn cut_resumable_receive_resumes_from_its_token() {
    let src_pool = TestPool::create("rsrc");
    let dst_pool = TestPool::create("rdst");
    let zfs = driver().await;
    let src = src_pool.create_dataset("data");
    let dst = dst_pool.dataset("data");
    let data = pseudo_random_bytes(7, 3 << 20);
    write_file(&src, "big file", &data);
    let snap = src.snapshot("s1").unwrap();
    zfs.create_snapshot(&snap, false).await.unwrap();
    let full = SendRequest::new(SendKind::Full {
        snapshot: snap.clone(),
    });

    if !applies(
        &zfs,
        zfs.capabilities().resumable_receive,
        "resumable receive",
    ) {
        let mut resumable = ReceiveRequest::new(dst.clone());
        resumable.resumable = true;
        assert!(matches!(
            zfs.receive(&resumable).await,
            Err(ZfsError::Unsupported { .. })
        ));
        let resume = SendRequest::new(SendKind::Resume {
            token: "1-abc".into(),
        });
        assert!(matches!(
            zfs.send(&resume).await,
            Err(ZfsError::Unsupported { .. })
        ));
        return;
    }

    let cut = cut_transfer(&zfs, full, &dst, 1 << 20).await;
    assert!(matches!(cut, ZfsError::InvalidStream { .. }), "{cut:?}");
    let token = resume_token(&zfs, &dst)
        .await
        .expect("a cut resumable receive leaves a resume token");
    assert!(token.starts_with("1-"), "{token}");
    assert!(zfs.list_snapshots(&dst, false).await.unwrap().is_empty());

    let mut resumed = zfs
        .send(&SendRequest::new(SendKind::Resume {
            token: token.clone(),
        }))
        .await
        .unwrap();
    let mut resumable = ReceiveRequest::new(dst.clone());
    resumable.resumable = true;
    let mut sink = zfs.receive(&resumable).await.unwrap();
    let rest = tokio::io::copy(&mut resumed.reader, &mut sink.writer)
        .await
        .unwrap();
    resumed.finish().await.unwrap();
    sink.finish().await.unwrap();
    // The resumed stream carries only what was missing, not the whole snapshot again.
    assert!(rest < data.len() as u64, "resumed stream of {rest} bytes");

    assert_eq!(resume_token(&zfs, &dst).await, None);
    let on_target = zfs.list_snapshots(&dst, false).await.unwrap();
    assert_eq!(on_target.len(), 1);
    assert_eq!(on_target[0].guid, Guid(guid_of(&snap)));
    assert_eq!(read_file(&dst, "big file"), data);
}

#[tokio::test]
async fn abort_discards_a_cut_resumable_receive() {
    let src_pool = TestPool::create("asrc");
    let dst_pool = TestPool::create("adst");
    let zfs = driver().await;
    let src = src_pool.create_dataset("data");
    let dst = dst_pool.dataset("data");
    write_file(&src, "f", b"one");
    let s1 = src.snapshot("s1").unwrap();
    zfs.create_snapshot(&s1, false).await.unwrap();

    if !applies(
        &zfs,
        zfs.capabilities().resumable_receive,
        "`zfs receive -A`",
    ) {
        assert!(matches!(
            zfs.abort_resumable_receive(&src).await,
            Err(ZfsError::Unsupported { .. })
        ));
        return;
    }

    let full = SendRequest::new(SendKind::Full {
        snapshot: s1.clone(),
    });
    transfer(&zfs, full, &dst).await.unwrap();
    zfs.set_property(&dst, &prop("readonly"), "on")
        .await
        .unwrap();
    let data = pseudo_random_bytes(8, 3 << 20);
    write_file(&src, "big file", &data);
    let s2 = src.snapshot("s2").unwrap();
    zfs.create_snapshot(&s2, false).await.unwrap();
    let incremental = SendRequest::new(SendKind::Incremental {
        from: IncrementalBase::Snapshot(s1.clone()),
        to: s2.clone(),
        intermediates: false,
    });

    cut_transfer(&zfs, incremental.clone(), &dst, 1 << 20).await;
    assert!(resume_token(&zfs, &dst).await.is_some());
    // A partial incremental blocks a plain one until it is resumed or aborted.
    let blocked = transfer(&zfs, incremental.clone(), &dst).await.unwrap_err();
    assert!(
        matches!(blocked, ZfsError::PartialReceive { .. }),
        "{blocked:?}"
    );

    zfs.abort_resumable_receive(&dst).await.unwrap();
    assert_eq!(resume_token(&zfs, &dst).await, None);
    let shorts: Vec<_> = zfs
        .list_snapshots(&dst, false)
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.name.short_name().to_owned())
        .collect();
    assert_eq!(shorts, ["s1"]);
    assert_eq!(read_file(&dst, "f"), b"one");

    // Nothing is left to abort: that is an error, not a silent success.
    let nothing = zfs.abort_resumable_receive(&dst).await;
    assert!(nothing.is_err(), "{nothing:?}");

    // The target is as before the cut: the same incremental now lands whole.
    transfer(&zfs, incremental, &dst).await.unwrap();
    assert_eq!(read_file(&dst, "big file"), data);
    let on_target = zfs.list_snapshots(&dst, false).await.unwrap();
    assert_eq!(on_target.last().unwrap().guid, Guid(guid_of(&s2)));
}

#[tokio::test]
async fn bookmark_is_an_incremental_base_after_its_snapshot_is_gone() {
    let src_pool = TestPool::create("bsrc");
    let dst_pool = TestPool::create("bdst");
    let zfs = driver().await;
    let src = src_pool.create_dataset("vm store");
    let dst = dst_pool.dataset("vm store");
    write_file(&src, "f", b"one");
    let s1 = src.snapshot("zrep 1").unwrap();
    zfs.create_snapshot(&s1, false).await.unwrap();
    let mark = src.bookmark("zrep 1").unwrap();

    if !applies(&zfs, zfs.capabilities().bookmarks, "bookmarks") {
        assert!(matches!(
            zfs.create_bookmark(&s1, &mark).await,
            Err(ZfsError::Unsupported { .. })
        ));
        return;
    }

    transfer(
        &zfs,
        SendRequest::new(SendKind::Full {
            snapshot: s1.clone(),
        }),
        &dst,
    )
    .await
    .unwrap();
    zfs.set_property(&dst, &prop("readonly"), "on")
        .await
        .unwrap();
    let s1_guid = guid_of(&s1);
    zfs.create_bookmark(&s1, &mark).await.unwrap();
    zfs.destroy_snapshot(&s1).await.unwrap();
    assert!(zfs.list_snapshots(&src, false).await.unwrap().is_empty());

    let marks = zfs.list_bookmarks(&src).await.unwrap();
    assert_eq!(marks.len(), 1);
    assert_eq!(marks[0].name, mark);
    assert_eq!(marks[0].guid, Guid(s1_guid));
    assert_eq!(
        marks[0].createtxg.map(|txg| txg.to_string()),
        Some(zfs_get(mark.as_str(), "createtxg"))
    );

    write_file(&src, "f", b"two");
    let s2 = src.snapshot("zrep 2").unwrap();
    zfs.create_snapshot(&s2, false).await.unwrap();
    let with_intermediates = SendRequest::new(SendKind::Incremental {
        from: IncrementalBase::Bookmark(mark.clone()),
        to: s2.clone(),
        intermediates: true,
    });
    assert!(matches!(
        zfs.send(&with_intermediates).await,
        Err(ZfsError::Unsupported { .. })
    ));
    let from_mark = SendRequest::new(SendKind::Incremental {
        from: IncrementalBase::Bookmark(mark.clone()),
        to: s2.clone(),
        intermediates: false,
    });
    transfer(&zfs, from_mark, &dst).await.unwrap();

    let on_target = zfs.list_snapshots(&dst, false).await.unwrap();
    let guids: Vec<_> = on_target.iter().map(|s| s.guid).collect();
    assert_eq!(guids, [Guid(s1_guid), Guid(guid_of(&s2))]);
    assert_eq!(read_file(&dst, "f"), b"two");

    zfs.destroy_bookmark(&mark).await.unwrap();
    assert!(zfs.list_bookmarks(&src).await.unwrap().is_empty());
}

#[tokio::test]
async fn holds_lists_every_tag() {
    let pool = TestPool::create("holds");
    let zfs = driver().await;
    let ds = pool.create_dataset("data");
    let snap = ds.snapshot("kept one").unwrap();
    zfs.create_snapshot(&snap, false).await.unwrap();
    let tags = [
        HoldTag::parse("zrep").unwrap(),
        HoldTag::parse("zrep:peer-1.example").unwrap(),
    ];
    for tag in &tags {
        zfs.hold(tag, &snap).await.unwrap();
    }
    assert_eq!(zfs_get(snap.as_str(), "userrefs"), "2");

    if applies(&zfs, zfs.capabilities().holds_scriptable, "`zfs holds -H`") {
        let mut held = zfs.holds(&snap).await.unwrap();
        held.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        assert_eq!(held, tags);
        zfs.release(&tags[0], &snap).await.unwrap();
        assert_eq!(zfs.holds(&snap).await.unwrap(), tags[1..]);
    } else {
        assert!(matches!(
            zfs.holds(&snap).await,
            Err(ZfsError::Unsupported { .. })
        ));
        zfs.release(&tags[0], &snap).await.unwrap();
    }
    zfs.release(&tags[1], &snap).await.unwrap();
    assert_eq!(zfs_get(snap.as_str(), "userrefs"), "0");
}

/// This process's children whose command line contains `needle`: (pid, state letter, command
/// line with spaces for NULs).
fn children_with(needle: &str) -> Vec<(u32, char, String)> {
    let me = std::process::id();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // `pid (comm) state ppid ...`; comm may contain spaces and parentheses.
        let Some(after) = stat.rfind(')').map(|at| &stat[at + 2..]) else {
            continue;
        };
        let mut fields = after.split(' ');
        let state = fields.next().and_then(|s| s.chars().next()).unwrap_or('?');
        let ppid: u32 = fields.next().and_then(|p| p.parse().ok()).unwrap_or(0);
        if ppid != me {
            continue;
        }
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))
            .map(|raw| String::from_utf8_lossy(&raw).replace('\0', " "))
            .unwrap_or_default();
        if cmdline.contains(needle) {
            found.push((pid, state, cmdline));
        }
    }
    found
}

/// This process's `zfs send` children of `snapshot`'s dataset. (zfs-fuse's `zfs` overwrites the
/// `@` of its arguments with a NUL, shown as a space; OpenZFS's leaves it.)
fn sends_of(snapshot: &SnapshotName) -> Vec<(u32, char, String)> {
    let dataset = snapshot.dataset().to_string();
    let mut sends = children_with(&dataset);
    sends.retain(|(_, _, cmdline)| {
        cmdline.starts_with("zfs send ")
            && (cmdline.contains(&format!("{dataset}@"))
                || cmdline.contains(&format!("{dataset} ")))
    });
    sends
}

/// Whether a process exists at all, zombies included.
fn process_exists(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// Three snapshots a, b, c of one dataset with enough data between them that a `-I` stream
/// cannot fit in a pipe: reading a little of it leaves `zfs send` blocked mid-stream.
async fn three_snapshots(zfs: &SystemZfs, pool: &TestPool) -> [SnapshotName; 3] {
    let ds = pool.create_dataset("held");
    let snaps = ["a", "b", "c"].map(|short| ds.snapshot(short).unwrap());
    zfs.create_snapshot(&snaps[0], false).await.unwrap();
    write_file(&ds, "one", &pseudo_random_bytes(1, 8 << 20));
    zfs.create_snapshot(&snaps[1], false).await.unwrap();
    write_file(&ds, "two", &pseudo_random_bytes(2, 8 << 20));
    zfs.create_snapshot(&snaps[2], false).await.unwrap();
    snaps
}

/// No hold of any kind on any of `snaps`: `userrefs` 0 and, where `zfs holds` works, no tag.
async fn assert_no_holds(zfs: &SystemZfs, snaps: &[SnapshotName]) {
    for snap in snaps {
        assert_eq!(zfs_get(snap.as_str(), "userrefs"), "0", "{snap} is held");
        if zfs.capabilities().holds_scriptable {
            assert_eq!(zfs.holds(snap).await.unwrap(), [], "{snap}");
        }
    }
}

/// Starts `zfs send -I a c`, reads 64 KiB of it and returns the stream with its process id.
async fn started_send(zfs: &SystemZfs, snaps: &[SnapshotName; 3]) -> (zrep_zfs::SendStream, u32) {
    let request = SendRequest::new(SendKind::Incremental {
        from: IncrementalBase::Snapshot(snaps[0].clone()),
        to: snaps[2].clone(),
        intermediates: true,
    });
    let mut stream = zfs.send(&request).await.unwrap();
    let mut head = vec![0u8; 64 << 10];
    tokio::io::AsyncReadExt::read_exact(&mut stream.reader, &mut head)
        .await
        .unwrap();
    let running = sends_of(&snaps[2]);
    assert_eq!(running.len(), 1, "one zfs send: {running:?}");
    let (pid, state, _) = running[0];
    assert_ne!(state, 'Z', "zfs send ended before the stream did");
    // zfs-fuse holds every snapshot of the range while it sends; OpenZFS holds them with a
    // temporary hold. Shown for the record, not asserted: only what is left afterwards counts.
    let refs: Vec<String> = snaps
        .iter()
        .map(|s| zfs_get(s.as_str(), "userrefs"))
        .collect();
    eprintln!("userrefs while zfs send -I runs: {refs:?}");
    (stream, pid)
}

/// Issue 13: an aborted `-I` send used to be killed, and zfs-fuse's `zfs send` then kept its
/// holds on every snapshot of the range for good. Ending it by closing its pipe lets it release
/// them; `finish` before the end of the stream waits until the process is reaped.
#[tokio::test]
async fn aborted_send_leaves_no_hold_and_no_process() {
    let pool = TestPool::create("abortsend");
    let zfs = driver().await;
    let snaps = three_snapshots(&zfs, &pool).await;
    let (stream, pid) = started_send(&zfs, &snaps).await;
    let started = std::time::Instant::now();
    let err = stream
        .finish()
        .await
        .expect_err("a cut stream is not a success");
    let took = started.elapsed();
    eprintln!("zfs send exited {took:?} after its pipe was closed: {err}");
    // Killed after the abort limit it would report a timeout, and zfs-fuse would keep its holds.
    assert!(!matches!(err, ZfsError::Timeout { .. }), "{err:?}");
    assert!(took < SystemZfsConfig::default().abort_timeout, "{took:?}");
    assert!(!process_exists(pid), "zfs send {pid} was not reaped");
    assert_no_holds(&zfs, &snaps).await;
}

/// As above for a plain drop, as a sender's error path does: the process ends and is reaped in
/// the background, within the abort limit, and releases its holds.
#[tokio::test]
async fn dropped_send_leaves_no_hold_and_no_process() {
    let pool = TestPool::create("dropsend");
    let zfs = driver().await;
    let snaps = three_snapshots(&zfs, &pool).await;
    let (stream, pid) = started_send(&zfs, &snaps).await;
    let started = std::time::Instant::now();
    drop(stream);
    let limit = SystemZfsConfig::default().abort_timeout;
    while process_exists(pid) {
        assert!(
            started.elapsed() < limit,
            "zfs send {pid} still there after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    eprintln!(
        "dropped zfs send was gone {:?} after the drop",
        started.elapsed()
    );
    assert_no_holds(&zfs, &snaps).await;
    // The receive side: dropping a sink mid-stream ends zfs receive as a truncated stream, and
    // the target is as it was (no partial dataset), with the process reaped.
    let target = pool.dataset("copy");
    let mut sink = zfs
        .receive(&ReceiveRequest::new(target.clone()))
        .await
        .unwrap();
    let full = SendRequest::new(SendKind::Full {
        snapshot: snaps[2].clone(),
    });
    let mut stream = zfs.send(&full).await.unwrap();
    let mut head = tokio::io::AsyncReadExt::take(&mut stream.reader, 1 << 20);
    tokio::io::copy(&mut head, &mut sink.writer).await.unwrap();
    let receiving = children_with(&format!("receive {target}"));
    assert_eq!(receiving.len(), 1, "{receiving:?}");
    drop(sink);
    drop(stream);
    let started = std::time::Instant::now();
    while process_exists(receiving[0].0) || !sends_of(&snaps[2]).is_empty() {
        assert!(
            started.elapsed() < limit,
            "zfs receive or send still there after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Gone from /proc means reaped: a zombie keeps its entry.
    assert!(
        !zfs.exists(&target).await.unwrap(),
        "partial receive left {target}"
    );
}

/// A stream process that ignores its closed pipe is killed after the abort limit and reaped,
/// and the stream reports the limit.
#[tokio::test]
async fn stream_process_ignoring_its_closed_pipe_is_killed_and_reaped() {
    let dir = tempfile::tempdir().unwrap();
    let stuck = dir.path().join("zfs");
    // Writes nothing, so it never sees the broken pipe.
    std::fs::write(&stuck, "#!/bin/sh\nexec sleep 37\n").unwrap();
    std::fs::set_permissions(&stuck, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let abort = Duration::from_millis(300);
    let config = SystemZfsConfig {
        zfs: stuck,
        abort_timeout: abort,
        ..SystemZfsConfig::default()
    };
    let zfs = SystemZfs::with_capabilities(config, Capabilities::legacy());
    let request = SendRequest::new(SendKind::Full {
        snapshot: SnapshotName::parse("p/a@s").unwrap(),
    });
    // ETXTBSY from another thread's fork while the script was open for writing: retry.
    let stream = loop {
        match zfs.send(&request).await {
            Err(ZfsError::Spawn { source, .. }) if source.raw_os_error() == Some(26) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            other => break other.unwrap(),
        }
    };
    let started = std::time::Instant::now();
    let sleeping = loop {
        let found = children_with("sleep 37");
        if !found.is_empty() {
            break found;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the script did not start"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let started = std::time::Instant::now();
    let err = stream.finish().await.unwrap_err();
    let took = started.elapsed();
    assert!(
        matches!(err, ZfsError::Timeout { after, .. } if after == abort),
        "{err:?}"
    );
    assert!(took >= abort, "{took:?}");
    assert!(!process_exists(sleeping[0].0), "killed but not reaped");
}

/// `hold_tags` lists every tag ZFS shows, also those zrep could not place itself, so that
/// `zrep-send status` can name what holds a snapshot (issue 13).
#[tokio::test]
async fn hold_tags_lists_tags_zrep_does_not_make() {
    let pool = TestPool::create("tags");
    let zfs = driver().await;
    let ds = pool.create_dataset("d");
    let snap = ds.snapshot("s").unwrap();
    zfs.create_snapshot(&snap, false).await.unwrap();
    zfs_cmd(&["hold", "keep me", snap.as_str()]);
    zfs.hold(&HoldTag::parse("zrep:b1").unwrap(), &snap)
        .await
        .unwrap();
    assert_eq!(zfs_get(snap.as_str(), "userrefs"), "2");
    if applies(&zfs, zfs.capabilities().holds_scriptable, "`zfs holds -H`") {
        let mut tags = zfs.hold_tags(&snap).await.unwrap();
        tags.sort();
        assert_eq!(tags, ["keep me", "zrep:b1"]);
        // The typed listing cannot hold such a tag.
        assert!(matches!(zfs.holds(&snap).await, Err(ZfsError::Name(_))));
    } else {
        assert!(matches!(
            zfs.hold_tags(&snap).await,
            Err(ZfsError::Unsupported { .. })
        ));
    }
    zfs_cmd(&["release", "keep me", snap.as_str()]);
}
