//! Sender and receiver logic against two in-memory ZFSs over an in-memory pipe: fast, and able
//! to inject faults the real tests reach only with difficulty. The same behaviours are proven
//! on real ZFS by the end-to-end tests.

// A failed unwrap is a failed test, with the value in the message.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, UNIX_EPOCH};

use tokio::io::{DuplexStream, ReadHalf, WriteHalf};
use tokio::task::JoinHandle;
use zrep_proto::{
    ErrorCode, ReceiverSession, RefusalCode, SenderEvent, SenderSession, SenderSide, SessionConfig,
};
use zrep_repl::ReplicationError;
use zrep_repl::receiver::{ReceiverPolicy, Retention, ServeError, TargetLocks, serve};
use zrep_repl::sender::{DatasetJob, Replicated, SenderOptions, StreamShape, replicate};
use zrep_repl::transport::{Connection, TransportError};
use zrep_zfs::fake::{FakeOp, FakeZfs};
use zrep_zfs::{
    Capabilities, DatasetName, Guid, HoldTag, PropertyName, RelativeName, SnapshotName, Zfs,
};

type SenderConn = Connection<SenderSide, ReadHalf<DuplexStream>, WriteHalf<DuplexStream>>;

struct Bed {
    src: FakeZfs,
    dst: FakeZfs,
    source: DatasetName,
    root: DatasetName,
    locks: TargetLocks,
    drop_commit: Arc<AtomicBool>,
    clock: u64,
    /// The receiver's retention for nas1.
    retention: Option<Retention>,
    commit_timeout: Duration,
    /// Ends the receiver's sessions from outside, as a revocation does.
    stop: Arc<tokio::sync::Notify>,
}

impl Bed {
    async fn new() -> Self {
        let src = FakeZfs::new(Capabilities::legacy());
        let dst = FakeZfs::new(Capabilities::legacy());
        let pool = src.create_pool("tank");
        let source = pool.child("vm store").unwrap();
        src.create_dataset(&source, &[], true).await.unwrap();
        let backup = dst.create_pool("backup");
        Self {
            src,
            dst,
            source,
            root: backup.child("nas1").unwrap(),
            locks: TargetLocks::default(),
            drop_commit: Arc::new(AtomicBool::new(false)),
            clock: 1_795_000_000,
            retention: None,
            commit_timeout: Duration::from_secs(10),
            stop: Arc::default(),
        }
    }

    fn job(&self) -> DatasetJob {
        DatasetJob {
            source: self.source.clone(),
            target: RelativeName::parse("vm/store").unwrap(),
            prefix: "zrep".into(),
            intermediates: true,
            keep: zrep_repl::retention::KeepPolicy::last(1),
            raw: false,
        }
    }

    fn target(&self) -> DatasetName {
        self.root
            .join(&RelativeName::parse("vm/store").unwrap())
            .unwrap()
    }

    fn options(&self) -> SenderOptions {
        SenderOptions {
            compression_level: 3,
            chunk_size: 64 * 1024,
            commit_timeout: self.commit_timeout,
            hold_tag: HoldTag::parse("zrep:backup1").unwrap(),
            bandwidth_limit: None,
            progress: None,
        }
    }

    /// A connected, negotiated sender and the receiver task serving it.
    async fn connect(&self) -> (SenderConn, JoinHandle<Result<(), ServeError>>) {
        let (a, b) = tokio::io::duplex(256 * 1024);
        let (ra, wa) = tokio::io::split(a);
        let (rb, wb) = tokio::io::split(b);
        let policy = ReceiverPolicy {
            write_timeout: Duration::from_secs(10),
            locks: self.locks.clone(),
            drop_next_commit_answer: self.drop_commit.clone(),
            retention: self.retention.clone(),
            ..ReceiverPolicy::new("nas1", self.root.clone())
        };
        let dst = self.dst.clone();
        let stop = self.stop.clone();
        let receiver = tokio::spawn(async move {
            let epoch = Instant::now();
            let session = ReceiverSession::new(SessionConfig::default(), Duration::ZERO);
            let mut conn = Connection::new(session, rb, wb, epoch, Duration::from_secs(10));
            conn.stop_on(async move {
                stop.notified().await;
                (ErrorCode::NotAuthorized, "certificate revoked".to_owned())
            });
            serve(&dst, &mut conn, &policy).await
        });
        let session = SenderSession::new(SessionConfig::default(), Duration::ZERO);
        let mut conn = Connection::new(session, ra, wa, Instant::now(), Duration::from_secs(10));
        match conn.next_event().await.unwrap() {
            SenderEvent::Negotiated(_) => {}
            other => panic!("expected negotiation, got {other:?}"),
        }
        (conn, receiver)
    }

    async fn cycle(&mut self, conn: &mut SenderConn) -> Result<Replicated, ReplicationError> {
        self.clock += 60;
        let now = UNIX_EPOCH + Duration::from_secs(self.clock);
        replicate(&self.src, conn, &self.job(), &self.options(), now).await
    }

    async fn guids(zfs: &FakeZfs, dataset: &DatasetName) -> Vec<(String, Guid)> {
        zfs.list_snapshots(dataset, false)
            .await
            .unwrap()
            .into_iter()
            .map(|s| (s.name.short_name().to_owned(), s.guid))
            .collect()
    }
}

async fn bye(mut conn: SenderConn, receiver: JoinHandle<Result<(), ServeError>>) {
    conn.session.close().unwrap();
    conn.flush().await.unwrap();
    drop(conn);
    receiver.await.unwrap().unwrap();
}

#[tokio::test]
async fn full_then_incrementals_match_by_guid_and_content() {
    let mut bed = Bed::new().await;
    let (mut conn, receiver) = bed.connect().await;
    bed.src.write_file(&bed.source, "disk.img", b"version 1");
    let first = bed.cycle(&mut conn).await.unwrap();
    assert_eq!(first.shape, StreamShape::Full);
    assert!(first.stream_bytes > 0 && first.wire_bytes > 0);

    // A manual snapshot between cycles travels with -I; zrep never prunes it.
    bed.src.write_file(&bed.source, "disk.img", b"version 2");
    bed.src
        .create_snapshot(&bed.source.snapshot("manual").unwrap(), false)
        .await
        .unwrap();
    bed.src.write_file(&bed.source, "disk.img", b"version 3");
    let second = bed.cycle(&mut conn).await.unwrap();
    assert_eq!(
        second.shape,
        StreamShape::Incremental {
            base: first.snapshot.short_name().to_owned(),
            intermediates: true,
            from_bookmark: false
        }
    );
    bed.src.write_file(&bed.source, "other", b"x");
    let third = bed.cycle(&mut conn).await.unwrap();
    bye(conn, receiver).await;

    let target = bed.target();
    assert_eq!(bed.dst.files(&target), bed.src.files(&bed.source));
    let on_target = Bed::guids(&bed.dst, &target).await;
    let shorts: Vec<&str> = on_target.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        shorts,
        [
            first.snapshot.short_name(),
            "manual",
            second.snapshot.short_name(),
            third.snapshot.short_name()
        ]
    );
    let on_source = Bed::guids(&bed.src, &bed.source).await;
    let manual = on_source.iter().find(|(n, _)| n == "manual").unwrap();
    let guids: Vec<Guid> = on_target.iter().map(|(_, g)| *g).collect();
    assert_eq!(guids, [first.guid, manual.1, second.guid, third.guid]);
    // Pruned to keep-last = 1: only the newest zrep snapshot and the manual one remain.
    let source_names: Vec<&str> = on_source.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(source_names, ["manual", third.snapshot.short_name()]);
    assert_eq!(bed.src.holds_of(&third.snapshot), ["zrep:backup1"]);
    let readonly = bed
        .dst
        .get_property(&target, &PropertyName::parse("readonly").unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(readonly.value, "on");
    // Parents were created as placeholders: not mounted, read-only.
    let parent = target.parent().unwrap();
    let canmount = bed
        .dst
        .get_property(&parent, &PropertyName::parse("canmount").unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(canmount.value, "off");
}

#[tokio::test]
async fn lost_commit_answer_is_reconciled_by_guid() {
    let mut bed = Bed::new().await;
    let (mut conn, receiver) = bed.connect().await;
    bed.src.write_file(&bed.source, "f", b"1");
    let first = bed.cycle(&mut conn).await.unwrap();
    bed.src.write_file(&bed.source, "f", b"2");
    bed.drop_commit.store(true, Ordering::SeqCst);
    let lost = bed.cycle(&mut conn).await.unwrap_err();
    assert!(matches!(lost, ReplicationError::Transport(_)), "{lost:?}");
    assert!(matches!(
        receiver.await.unwrap(),
        Err(ServeError::DroppedCommitAnswer)
    ));
    // The snapshot landed although the answer was lost.
    let landed = Bed::guids(&bed.dst, &bed.target()).await;
    assert_eq!(landed.len(), 2);
    let (lost_name, lost_guid) = landed[1].clone();
    // The first base is still held: the hold moves only on a confirmed commit.
    assert_eq!(bed.src.holds_of(&first.snapshot), ["zrep:backup1"]);

    let (mut conn, receiver) = bed.connect().await;
    bed.src.write_file(&bed.source, "f", b"3");
    let next = bed.cycle(&mut conn).await.unwrap();
    bye(conn, receiver).await;
    // Not sent again: the next stream starts from the snapshot whose answer was lost.
    assert_eq!(
        next.shape,
        StreamShape::Incremental {
            base: lost_name.clone(),
            intermediates: true,
            from_bookmark: false
        }
    );
    let on_target = Bed::guids(&bed.dst, &bed.target()).await;
    assert_eq!(on_target.len(), 3);
    assert_eq!(on_target[1], (lost_name, lost_guid));
    assert_eq!(bed.dst.files(&bed.target())["f"], b"3");
    // The hold moved to the new base and the old bases were pruned.
    assert_eq!(bed.src.holds_of(&next.snapshot), ["zrep:backup1"]);
    let left = Bed::guids(&bed.src, &bed.source).await;
    assert_eq!(left, [(next.snapshot.short_name().to_owned(), next.guid)]);
}

#[tokio::test]
async fn diverged_target_is_refused_and_nothing_is_destroyed() {
    let mut bed = Bed::new().await;
    let (mut conn, receiver) = bed.connect().await;
    bed.src.write_file(&bed.source, "f", b"1");
    bed.cycle(&mut conn).await.unwrap();
    // Someone snapshots the backup directly.
    bed.dst
        .create_snapshot(&bed.target().snapshot("local-on-backup").unwrap(), false)
        .await
        .unwrap();
    let before_target = Bed::guids(&bed.dst, &bed.target()).await;
    let err = bed.cycle(&mut conn).await.unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, ReplicationError::Diverged(_)), "{err:?}");
    assert!(
        text.contains("local-on-backup") && text.contains("never destroys"),
        "{text}"
    );
    assert_eq!(Bed::guids(&bed.dst, &bed.target()).await, before_target);
    bye(conn, receiver).await;
}

#[tokio::test]
async fn modified_target_fails_with_zfs_message_and_loses_nothing() {
    let mut bed = Bed::new().await;
    let (mut conn, receiver) = bed.connect().await;
    bed.src.write_file(&bed.source, "f", b"1");
    bed.cycle(&mut conn).await.unwrap();
    bed.dst.write_file(&bed.target(), "intruder", b"x");
    bed.src.write_file(&bed.source, "f", b"2");
    let err = bed.cycle(&mut conn).await.unwrap_err();
    assert!(err.to_string().contains("has been modified"), "{err}");
    assert!(bed.dst.files(&bed.target()).contains_key("intruder"));
    assert_eq!(Bed::guids(&bed.dst, &bed.target()).await.len(), 1);
    bye(conn, receiver).await;
}

#[tokio::test]
async fn busy_target_is_refused() {
    let mut bed = Bed::new().await;
    let (mut conn, receiver) = bed.connect().await;
    let target = bed.target();
    let _held = bed.locks.try_lock(&target).unwrap();
    bed.src.write_file(&bed.source, "f", b"1");
    let err = bed.cycle(&mut conn).await.unwrap_err();
    assert!(
        matches!(
            err,
            ReplicationError::Refused {
                code: RefusalCode::Busy,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(!bed.dst.exists(&target).await.unwrap());
    bye(conn, receiver).await;
}

#[tokio::test]
async fn escaping_target_names_close_the_session() {
    let bed = Bed::new().await;
    for bad in [
        "../nas2/x",
        "/abs",
        "a@b",
        "a#b",
        "a%b",
        "",
        "a//b",
        "a\u{1}b",
    ] {
        let (mut conn, receiver) = bed.connect().await;
        conn.session.request_state(bad).unwrap();
        match conn.next_event().await.unwrap() {
            SenderEvent::PeerError { code, message } => {
                assert_eq!(code, ErrorCode::NotAuthorized);
                assert!(message.contains("refused"), "{message}");
            }
            other => panic!("{bad:?}: expected refusal, got {other:?}"),
        }
        // The receiver lingers until the peer closes (or 2 s pass).
        drop(conn);
        assert!(matches!(
            receiver.await.unwrap(),
            Err(ServeError::InvalidTarget { .. })
        ));
    }
    assert_eq!(
        bed.dst
            .list_datasets(&DatasetName::parse("backup").unwrap())
            .await
            .unwrap()
            .len(),
        1
    );
}

#[tokio::test]
async fn without_intermediates_only_the_newest_snapshot_travels() {
    let mut bed = Bed::new().await;
    let (mut conn, receiver) = bed.connect().await;
    bed.src.write_file(&bed.source, "f", b"1");
    let first = bed.cycle(&mut conn).await.unwrap();
    bed.src
        .create_snapshot(&bed.source.snapshot("manual").unwrap(), false)
        .await
        .unwrap();
    bed.src.write_file(&bed.source, "f", b"2");
    bed.clock += 60;
    let mut job = bed.job();
    job.intermediates = false;
    let now = UNIX_EPOCH + Duration::from_secs(bed.clock);
    let second = replicate(&bed.src, &mut conn, &job, &bed.options(), now)
        .await
        .unwrap();
    bye(conn, receiver).await;
    assert_eq!(
        second.shape,
        StreamShape::Incremental {
            base: first.snapshot.short_name().to_owned(),
            intermediates: false,
            from_bookmark: false
        }
    );
    let on_target = Bed::guids(&bed.dst, &bed.target()).await;
    assert_eq!(
        on_target,
        [
            (first.snapshot.short_name().to_owned(), first.guid),
            (second.snapshot.short_name().to_owned(), second.guid)
        ]
    );
    assert_eq!(bed.dst.files(&bed.target())["f"], b"2");
}

/// A peer that sends streams of its own choosing, past zrep-send's planning: the stream guard
/// refuses each before `zfs receive` sees it, the target stays as it was, and the session goes
/// on to an honest cycle.
#[tokio::test]
async fn streams_of_another_shape_are_refused_and_the_session_goes_on() {
    use zrep_proto::{ChunkCompressor, Compression, FailureCode, StreamKind, TransferOffer};
    use zrep_zfs::{IncrementalBase, SendKind, SendRequest};

    let mut bed = Bed::new().await;
    let (mut conn, receiver) = bed.connect().await;
    bed.src.write_file(&bed.source, "f", b"1");
    let first = bed.cycle(&mut conn).await.unwrap();
    let before = Bed::guids(&bed.dst, &bed.target()).await;

    // Another dataset with two snapshots, and a new snapshot of the source.
    let other = bed.source.parent().unwrap().child("other").unwrap();
    bed.src.create_dataset(&other, &[], false).await.unwrap();
    let (a, b) = (other.snapshot("a").unwrap(), other.snapshot("b").unwrap());
    bed.src.write_file(&other, "g", b"a");
    bed.src.create_snapshot(&a, false).await.unwrap();
    bed.src.write_file(&other, "g", b"b");
    bed.src.create_snapshot(&b, false).await.unwrap();
    let fresh = bed.source.snapshot("fresh").unwrap();
    bed.src.write_file(&bed.source, "f", b"2");
    bed.src.create_snapshot(&fresh, false).await.unwrap();
    let guid = |snapshot: &SnapshotName| {
        let (src, snapshot) = (bed.src.clone(), snapshot.clone());
        async move {
            let all = src
                .list_snapshots(&snapshot.dataset(), false)
                .await
                .unwrap();
            all.into_iter().find(|s| s.name == snapshot).unwrap().guid.0
        }
    };
    let incremental = StreamKind::Incremental {
        base_guid: first.guid.0,
        base_name: first.snapshot.short_name().to_owned(),
        intermediates: false,
    };
    let cases = [
        (
            "another dataset's increment as the target's",
            SendKind::Incremental {
                from: IncrementalBase::Snapshot(a.clone()),
                to: b.clone(),
                intermediates: false,
            },
            "b",
            guid(&b).await,
            incremental.clone(),
        ),
        (
            "a full stream offered as an increment",
            SendKind::Full {
                snapshot: fresh.clone(),
            },
            "fresh",
            guid(&fresh).await,
            incremental.clone(),
        ),
        (
            "the right increment under another GUID",
            SendKind::Incremental {
                from: IncrementalBase::Snapshot(first.snapshot.clone()),
                to: fresh.clone(),
                intermediates: false,
            },
            "fresh",
            guid(&fresh).await ^ 1,
            incremental,
        ),
    ];
    for (case, kind, snapshot, guid, offered) in cases {
        let mut stream = bed.src.send(&SendRequest::new(kind)).await.unwrap();
        let mut bytes = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut stream.reader, &mut bytes)
            .await
            .unwrap();
        conn.session
            .offer_transfer(TransferOffer {
                target: "vm/store".into(),
                snapshot: snapshot.into(),
                guid,
                kind: offered,
                compression: Compression::Zstd,
                raw: false,
                size_estimate: None,
            })
            .unwrap();
        match conn.next_event().await.unwrap() {
            SenderEvent::Accepted => {}
            other => panic!("{case}: offer answered {other:?}"),
        }
        let chunk = ChunkCompressor::new(3).unwrap().compress(&bytes).unwrap();
        let mut outgoing = conn.session.outgoing_stream().unwrap();
        let frame = outgoing.push(&bytes, chunk).unwrap();
        conn.write_raw(&frame).await.unwrap();
        conn.session.finish_stream(outgoing.summary()).unwrap();
        conn.flush().await.unwrap();
        match conn.next_event().await.unwrap() {
            SenderEvent::Failed { code, message } => {
                assert_eq!(code, FailureCode::StreamRefused, "{case}: {message}");
            }
            other => panic!("{case}: answered {other:?}"),
        }
        assert_eq!(Bed::guids(&bed.dst, &bed.target()).await, before, "{case}");
    }
    bed.src.write_file(&bed.source, "f", b"3");
    bed.cycle(&mut conn).await.unwrap();
    assert_eq!(bed.dst.files(&bed.target())["f"], b"3");
    bye(conn, receiver).await;
}

/// ZFS slower than every timeout on both sides (the idle timeout of 60 s, three heartbeats, the
/// write timeout): `zfs receive`, sealing, the receiver's pruning, and the sender's snapshot,
/// hold and pruning each take five minutes. Both sessions live on heartbeats throughout; paused
/// time runs the minutes at once.
#[tokio::test(start_paused = true)]
async fn zfs_slower_than_every_timeout_keeps_both_sessions_alive() {
    const SLOW: Duration = Duration::from_secs(300);
    let mut bed = Bed::new().await;
    bed.commit_timeout = Duration::from_secs(3600);
    bed.retention = Some(Retention {
        prefix: "zrep".into(),
        keep: zrep_repl::retention::KeepPolicy::last(1),
    });
    for op in [
        FakeOp::Receive,
        FakeOp::SetProperty,
        FakeOp::DestroySnapshot,
    ] {
        bed.dst.set_latency(op, SLOW);
    }
    for op in [
        FakeOp::CreateSnapshot,
        FakeOp::Hold,
        FakeOp::DestroySnapshot,
    ] {
        bed.src.set_latency(op, SLOW);
    }
    let started = tokio::time::Instant::now();
    let (mut conn, receiver) = bed.connect().await;
    bed.src.write_file(&bed.source, "f", b"1");
    bed.cycle(&mut conn).await.unwrap();
    bed.src.write_file(&bed.source, "f", b"2");
    let second = bed.cycle(&mut conn).await.unwrap();
    bye(conn, receiver).await;
    // The slow calls really ran, each far beyond every timeout (partly at once: the receiver
    // prunes while the sender settles).
    assert!(started.elapsed() >= SLOW * 6, "{:?}", started.elapsed());
    let on_target = Bed::guids(&bed.dst, &bed.target()).await;
    assert_eq!(
        on_target,
        [(second.snapshot.short_name().to_owned(), second.guid)]
    );
    assert_eq!(bed.dst.files(&bed.target())["f"], b"2");
    let on_source = Bed::guids(&bed.src, &bed.source).await;
    assert_eq!(
        on_source,
        [(second.snapshot.short_name().to_owned(), second.guid)]
    );
}

/// A session ended from outside while `zfs receive` works (a revocation): the sender reads a
/// whole error frame with the reason (never half a frame, never "bad magic"), and the transfer
/// is undone, though `zfs receive` finished.
#[tokio::test(start_paused = true)]
async fn a_session_stopped_mid_transfer_says_why_and_leaves_nothing() {
    let mut bed = Bed::new().await;
    bed.commit_timeout = Duration::from_secs(3600);
    bed.dst
        .set_latency(FakeOp::Receive, Duration::from_secs(60));
    let (mut conn, receiver) = bed.connect().await;
    bed.src.write_file(&bed.source, "f", b"1");
    let stop = bed.stop.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(30)).await;
        stop.notify_one();
    });
    match bed.cycle(&mut conn).await.unwrap_err() {
        ReplicationError::PeerError { code, message } => {
            assert_eq!(code, ErrorCode::NotAuthorized);
            assert_eq!(message, "certificate revoked");
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        receiver.await.unwrap(),
        Err(ServeError::Transport(TransportError::Stopped { .. }))
    ));
    assert!(!bed.dst.exists(&bed.target()).await.unwrap());
}

/// One source replicating to two receivers (OpenZFS fakes, so bookmarks exist): each receiver
/// has its own target host, hold tag and bookmarks, the source is shared.
struct TwoReceivers {
    a: Bed,
    b: Bed,
}

impl TwoReceivers {
    const TAG_A: &str = "zrep:backup1";
    const TAG_B: &str = "zrep:backup2";

    async fn new() -> Self {
        let mut a = Bed::new().await;
        a.src = FakeZfs::new(Capabilities::openzfs("2.3.2"));
        a.dst = FakeZfs::new(Capabilities::openzfs("2.3.2"));
        a.src.create_pool("tank");
        a.src.create_dataset(&a.source, &[], true).await.unwrap();
        a.dst.create_pool("backup");
        let mut b = Bed::new().await;
        b.src = a.src.clone();
        b.dst = FakeZfs::new(Capabilities::openzfs("2.3.2"));
        b.dst.create_pool("backup");
        Self { a, b }
    }

    /// One cycle to receiver A or B, each a minute after the last of either.
    async fn cycle(&mut self, to_b: bool) -> Replicated {
        let clock = self.a.clock.max(self.b.clock) + 60;
        let (bed, tag) = if to_b {
            (&mut self.b, Self::TAG_B)
        } else {
            (&mut self.a, Self::TAG_A)
        };
        bed.clock = clock;
        let options = SenderOptions {
            hold_tag: HoldTag::parse(tag).unwrap(),
            ..bed.options()
        };
        let now = UNIX_EPOCH + Duration::from_secs(clock);
        let (mut conn, receiver) = bed.connect().await;
        let done = replicate(&bed.src, &mut conn, &bed.job(), &options, now)
            .await
            .unwrap();
        bye(conn, receiver).await;
        done
    }

    async fn bookmarks(&self) -> Vec<String> {
        self.a
            .src
            .list_bookmarks(&self.a.source)
            .await
            .unwrap()
            .into_iter()
            .map(|b| b.name.short_name().to_owned())
            .collect()
    }
}

fn bookmark_of(done: &Replicated, tag: &str) -> String {
    format!("{}.{tag}", done.snapshot.short_name())
}

/// Issue 11: with several receivers, a cycle to one dropped the others' bookmarks. Each
/// receiver's cycle now moves only its own bookmark; the other's stays and still serves as its
/// base once the snapshot it marks is gone.
#[tokio::test]
async fn each_receiver_keeps_its_own_bookmark() {
    let (a_tag, b_tag) = (TwoReceivers::TAG_A, TwoReceivers::TAG_B);
    let mut two = TwoReceivers::new().await;
    two.a.src.write_file(&two.a.source, "f", b"1");
    let a1 = two.cycle(false).await;
    assert_eq!(two.bookmarks().await, [bookmark_of(&a1, a_tag)]);
    let b1 = two.cycle(true).await;
    assert_eq!(
        two.bookmarks().await,
        [bookmark_of(&a1, a_tag), bookmark_of(&b1, b_tag)]
    );
    two.a.src.write_file(&two.a.source, "f", b"2");
    let a2 = two.cycle(false).await;
    assert_eq!(
        a2.shape,
        StreamShape::Incremental {
            base: a1.snapshot.short_name().to_owned(),
            intermediates: true,
            from_bookmark: false
        }
    );
    // A's bookmark moved; B's stayed, and so did B's base (held by B's tag).
    assert_eq!(
        two.bookmarks().await,
        [bookmark_of(&b1, b_tag), bookmark_of(&a2, a_tag)]
    );
    assert_eq!(two.a.src.holds_of(&b1.snapshot), [b_tag]);
    two.a.src.write_file(&two.a.source, "f", b"3");
    let b2 = two.cycle(true).await;
    assert_eq!(
        two.bookmarks().await,
        [bookmark_of(&a2, a_tag), bookmark_of(&b2, b_tag)]
    );

    // B's base snapshot is destroyed by hand: A's cycle leaves B's bookmark, which then
    // carries B's next increment (-i from the bookmark).
    two.a
        .src
        .release(&HoldTag::parse(b_tag).unwrap(), &b2.snapshot)
        .await
        .unwrap();
    two.a.src.destroy_snapshot(&b2.snapshot).await.unwrap();
    two.a.src.write_file(&two.a.source, "f", b"4");
    let a3 = two.cycle(false).await;
    assert_eq!(
        two.bookmarks().await,
        [bookmark_of(&b2, b_tag), bookmark_of(&a3, a_tag)]
    );
    let b3 = two.cycle(true).await;
    assert_eq!(
        b3.shape,
        StreamShape::Incremental {
            base: bookmark_of(&b2, b_tag),
            intermediates: false,
            from_bookmark: true
        }
    );
    assert_eq!(
        two.bookmarks().await,
        [bookmark_of(&a3, a_tag), bookmark_of(&b3, b_tag)]
    );
    for bed in [&two.a, &two.b] {
        assert_eq!(bed.dst.files(&bed.target())["f"], b"4");
        let newest = Bed::guids(&bed.dst, &bed.target()).await.pop().unwrap();
        let sent = if std::ptr::eq(bed, &two.a) { &a3 } else { &b3 };
        assert_eq!(newest, (sent.snapshot.short_name().to_owned(), sent.guid));
    }
}

/// A bookmark of the form before bookmarks were per receiver (the snapshot's name alone) still
/// serves as a base after an upgrade, and is never dropped: it may be another receiver's.
#[tokio::test]
async fn an_old_form_bookmark_is_a_base_and_stays() {
    let mut two = TwoReceivers::new().await;
    two.a.src.write_file(&two.a.source, "f", b"1");
    let a1 = two.cycle(false).await;
    // As an older zrep left it: only the old form.
    let mine = two.bookmarks().await;
    let source = two.a.source.clone();
    let old = a1.snapshot.short_name().to_owned();
    two.a
        .src
        .create_bookmark(&a1.snapshot, &source.bookmark(&old).unwrap())
        .await
        .unwrap();
    two.a
        .src
        .destroy_bookmark(&source.bookmark(&mine[0]).unwrap())
        .await
        .unwrap();
    two.a
        .src
        .release(&HoldTag::parse(TwoReceivers::TAG_A).unwrap(), &a1.snapshot)
        .await
        .unwrap();
    two.a.src.destroy_snapshot(&a1.snapshot).await.unwrap();
    two.a.src.write_file(&two.a.source, "f", b"2");
    let a2 = two.cycle(false).await;
    assert_eq!(
        a2.shape,
        StreamShape::Incremental {
            base: old.clone(),
            intermediates: false,
            from_bookmark: true
        }
    );
    assert_eq!(
        two.bookmarks().await,
        [old, bookmark_of(&a2, TwoReceivers::TAG_A)]
    );
    assert_eq!(two.a.dst.files(&two.a.target())["f"], b"2");
}

/// Issue 14: two cycles within one second reused that second's snapshot, so the second
/// replicated nothing ("already on the target") although data was written in between. Each
/// cycle now takes a snapshot of its own, numbered after the second's first, and the names sort
/// in creation order; retention on both sides counts the numbered ones as zrep's.
#[tokio::test]
async fn cycles_in_one_second_each_take_their_own_snapshot() {
    let mut bed = Bed::new().await;
    bed.retention = Some(Retention {
        prefix: "zrep".into(),
        keep: zrep_repl::retention::KeepPolicy::last(2),
    });
    let (mut conn, receiver) = bed.connect().await;
    // The sender's clock stands still: every cycle below is in the same second.
    let now = UNIX_EPOCH + Duration::from_secs(1_795_758_550); // 2026-11-27T05:49:10Z
    let mut cycles = Vec::new();
    for version in [b"1", b"2", b"3"] {
        bed.src.write_file(&bed.source, "f", version);
        let done = replicate(&bed.src, &mut conn, &bed.job(), &bed.options(), now)
            .await
            .unwrap();
        assert_eq!(bed.dst.files(&bed.target())["f"], version);
        cycles.push(done);
    }
    bye(conn, receiver).await;

    let names: Vec<&str> = cycles.iter().map(|c| c.snapshot.short_name()).collect();
    assert_eq!(
        names,
        [
            "zrep_20261127T054910Z",
            "zrep_20261127T054910Z-02",
            "zrep_20261127T054910Z-03"
        ]
    );
    assert_eq!(cycles[0].shape, StreamShape::Full);
    for pair in cycles.windows(2) {
        assert_eq!(
            pair[1].shape,
            StreamShape::Incremental {
                base: pair[0].snapshot.short_name().to_owned(),
                intermediates: true,
                from_bookmark: false
            }
        );
        assert!(pair[1].stream_bytes > 0);
        assert_ne!(pair[1].guid, pair[0].guid);
    }
    // The source keeps its newest (keep-last 1), pruned by name like any other; the receiver
    // keeps its last two, the oldest of the second pruned.
    assert_eq!(
        Bed::guids(&bed.src, &bed.source).await,
        [(names[2].to_owned(), cycles[2].guid)]
    );
    assert_eq!(cycles[1].pruned, [cycles[0].snapshot.clone()]);
    assert_eq!(cycles[2].pruned, [cycles[1].snapshot.clone()]);
    assert_eq!(
        Bed::guids(&bed.dst, &bed.target()).await,
        [
            (names[1].to_owned(), cycles[1].guid),
            (names[2].to_owned(), cycles[2].guid)
        ]
    );
    assert_eq!(bed.src.holds_of(&cycles[2].snapshot), ["zrep:backup1"]);
}

/// A base destroyed on the source within its second: its bookmark still holds the name (and the
/// target the snapshot), so the next cycle of that second numbers its own and sends from the
/// bookmark rather than colliding with the target's copy.
#[tokio::test]
async fn a_bookmarked_name_is_not_taken_again_in_its_second() {
    let mut two = TwoReceivers::new().await;
    let bed = &mut two.a;
    let now = UNIX_EPOCH + Duration::from_secs(1_795_758_550);
    let (mut conn, receiver) = bed.connect().await;
    bed.src.write_file(&bed.source, "f", b"1");
    let first = replicate(&bed.src, &mut conn, &bed.job(), &bed.options(), now)
        .await
        .unwrap();
    let tag = HoldTag::parse(TwoReceivers::TAG_A).unwrap();
    bed.src.release(&tag, &first.snapshot).await.unwrap();
    bed.src.destroy_snapshot(&first.snapshot).await.unwrap();
    bed.src.write_file(&bed.source, "f", b"2");
    let second = replicate(&bed.src, &mut conn, &bed.job(), &bed.options(), now)
        .await
        .unwrap();
    bye(conn, receiver).await;
    assert_eq!(first.snapshot.short_name(), "zrep_20261127T054910Z");
    assert_eq!(second.snapshot.short_name(), "zrep_20261127T054910Z-02");
    assert_eq!(
        second.shape,
        StreamShape::Incremental {
            base: bookmark_of(&first, TwoReceivers::TAG_A),
            intermediates: false,
            from_bookmark: true
        }
    );
    assert_eq!(bed.dst.files(&bed.target())["f"], b"2");
}
