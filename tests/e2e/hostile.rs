//! A hostile peer: a valid peer certificate, the protocol spoken by hand (not zrep-send), and
//! streams made with `zfs send` options of its own choosing.
//!
//! The receiver takes only a plain stream of the offered shape (anything else is answered
//! `stream-refused` before a byte reaches `zfs receive`), lands nothing it did not verify, and
//! keeps every dataset under a peer root read-only and unmounted. After each attempt these tests
//! check the whole receiving pool: no mount outside its mount tree at any moment, no dataset the
//! receiver did not name, everything under the roots read-only and unmounted, the other peer's
//! snapshots untouched, the target as it was, and the next honest replication working.
//!
//! Checks are collected per test and reported together at its end, so that one run shows every
//! way a receiver falls short, not only the first.

use std::collections::{BTreeSet, HashMap};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use zrep_e2e::{
    DatasetSpec, MountWatch, Receiver, SenderConfig, StreamEnding, TransferAnswer, capabilities,
    count_lines, exists, peer_session, push_stream, snapshots, time_scale, zfs_send,
};
use zrep_proto::{Compression, SenderEvent, StreamKind, TransferOffer};
use zrep_zfs::DatasetName;
use zrep_zfs::testbed::{TestPool, mountpoint_of, pseudo_random_bytes, write_file, zfs, zfs_get};

/// The failure code of a refused stream, by its wire text (so this compiles whether or not the
/// code is known to the proto crate it is built against).
const REFUSED: &str = "stream-refused";

/// What the hostile client must be answered.
#[derive(Debug, Clone, Copy)]
enum Expect {
    /// `Failed` with this code, and the session usable afterwards.
    Failed(&'static str),
    /// `Refused` with this code (the offer itself), and the session usable afterwards.
    Refused(&'static str),
    /// An error frame with this code (the session is over).
    PeerError(&'static str),
    /// Nothing: the client ended the session itself.
    NoAnswer,
    /// `Committed` with the offer's snapshot and GUID.
    Committed,
}

/// What the attempt may leave on the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lands {
    /// Nothing: the target is as it was (absent, or the same snapshots and GUIDs).
    Nothing,
    /// Either nothing, or the offered snapshot, committed (verified, read-only, unmounted): the
    /// receiver cannot tell a cut right after the verified end from a lost commit answer.
    NothingOrCommitted,
    /// The offered snapshot, with the offer's GUID.
    Committed,
}

/// One hand-made transfer by nas1.
struct Attempt<'a> {
    name: &'a str,
    offer: TransferOffer,
    stream: Vec<u8>,
    ending: StreamEnding,
    expect: Expect,
    lands: Lands,
    /// The source that the next honest replication sends to the offer's target.
    honest_source: &'a DatasetName,
}

/// A source pool, a receiving pool, and a receiver with two peers: nas1 (the hostile one, root
/// `backup/nas1`, holding an honest `base`) and nas2 (root `backup/nas2`, holding `other`).
struct Bed {
    receiver: Receiver,
    src: TestPool,
    dst: TestPool,
    nas1: DatasetName,
    nas2: DatasetName,
    /// Every dataset of the receiving pool the receiver was asked to create.
    expected: BTreeSet<String>,
    /// nas2's datasets and their snapshots (name, GUID), which nas1 must never change.
    nas2_state: Vec<(String, Vec<(String, u64)>)>,
    honest: HashMap<String, SenderConfig>,
    failures: Vec<String>,
    /// Hostile mountpoints; last, so they are removed after the pools are gone.
    paths: Vec<ForeignPath>,
}

impl Bed {
    fn new(tag: &str, env: &[(&str, &str)]) -> Bed {
        let src = TestPool::create(&format!("{tag}src"));
        let dst = TestPool::create(&format!("{tag}dst"));
        let nas1 = dst.dataset("backup/nas1");
        let nas2 = dst.dataset("backup/nas2");
        let receiver = Receiver::start(&[("nas1", &nas1), ("nas2", &nas2)], env);
        let other = src.create_dataset("other");
        write_file(&other, "f", b"nas2's data");
        let base = src.create_dataset("base");
        write_file(&base, "f", b"nas1's data");
        let mut bed = Bed {
            receiver,
            src,
            dst,
            nas1,
            nas2,
            expected: BTreeSet::new(),
            nas2_state: Vec::new(),
            honest: HashMap::new(),
            failures: Vec::new(),
            paths: Vec::new(),
        };
        assert!(bed.honest("nas2", &other, "other"), "{:?}", bed.failures);
        assert!(bed.honest("nas1", &base, "base"), "{:?}", bed.failures);
        let pool = bed.dst.name().to_owned();
        let names = [
            "",
            "/backup",
            "/backup/nas1",
            "/backup/nas1/base",
            "/backup/nas2",
            "/backup/nas2/other",
        ];
        assert_eq!(
            datasets(&pool),
            names
                .iter()
                .map(|n| format!("{pool}{n}"))
                .collect::<BTreeSet<_>>()
        );
        bed.expected = datasets(&pool);
        bed
    }

    /// A source dataset, created.
    fn source(&self, relative: &str) -> DatasetName {
        self.src.create_dataset(relative)
    }

    /// nas1's target `relative`.
    fn target(&self, relative: &str) -> DatasetName {
        self.dst.dataset(&format!("backup/nas1/{relative}"))
    }

    /// A unique path outside every pool, for a hostile mountpoint.
    fn foreign_path(&mut self, tag: &str) -> String {
        let path = ForeignPath::new(tag);
        let text = path.0.display().to_string();
        self.paths.push(path);
        text
    }

    fn fail(&mut self, what: String) {
        eprintln!("FAILED CHECK: {what}");
        self.failures.push(what);
    }

    /// Runs one hostile transfer and checks everything after it (and after the honest
    /// replication that follows).
    async fn attempt(&mut self, a: Attempt<'_>) {
        eprintln!("== {}", a.name);
        let target = self.target(&a.offer.target);
        let before = state_of(&target);
        let ended = count_lines(&self.receiver.log_text(), "session ended");
        let watch = MountWatch::start(self.dst.name(), self.dst.mountpoint());

        let conn = peer_session("nas1", self.receiver.port).await;
        let (conn, answer) = push_stream(conn, a.offer.clone(), &a.stream, a.ending).await;
        eprintln!("   answer: {answer:?}");
        let answered = match (a.expect, &answer) {
            (Expect::Failed(want), TransferAnswer::Failed { code, message })
            | (Expect::Refused(want), TransferAnswer::Refused { code, message })
            | (Expect::PeerError(want), TransferAnswer::PeerError { code, message }) => {
                code == want && !message.is_empty()
            }
            (Expect::NoAnswer, TransferAnswer::NoAnswer(_)) => true,
            (Expect::Committed, TransferAnswer::Committed { snapshot, guid }) => {
                *snapshot == a.offer.snapshot && *guid == a.offer.guid
            }
            _ => false,
        };
        if !answered {
            self.fail(format!(
                "{}: expected {:?}, the hostile client got {answer:?}",
                a.name, a.expect
            ));
        }
        if let Some(mut conn) = conn {
            // The session stays usable after a refusal or failure.
            if matches!(
                answer,
                TransferAnswer::Failed { .. } | TransferAnswer::Refused { .. }
            ) {
                conn.session.request_state(a.offer.target.clone()).unwrap();
                match conn.next_event().await {
                    Ok(SenderEvent::State(_)) => {}
                    other => self.fail(format!(
                        "{}: the session is not usable after {answer:?}: {other:?}",
                        a.name
                    )),
                }
            }
            if conn.session.is_ready() {
                conn.session.close().unwrap();
            }
            conn.shutdown().await;
        }
        self.wait_for_session_end(ended, a.name);

        if self.check_target(&a, &target, before.as_ref()) {
            self.expected.insert(target.to_string());
        }
        self.check_world(a.name);
        let honest = format!("{} (then the honest replication)", a.name);
        if self.honest("nas1", a.honest_source, &a.offer.target) {
            self.check_world(&honest);
        }
        for mount in watch.stop() {
            self.fail(format!(
                "{}: mounted outside {}: {mount}",
                a.name,
                self.dst.mountpoint().display()
            ));
        }
    }

    /// Waits until the receiver logged the end of one more session than `ended`.
    fn wait_for_session_end(&mut self, ended: usize, name: &str) {
        let deadline = Instant::now() + Duration::from_secs(30 * time_scale());
        while count_lines(&self.receiver.log_text(), "session ended") <= ended {
            if Instant::now() > deadline {
                let log = self.receiver.log_text();
                self.fail(format!(
                    "{name}: the receiver never ended the session:\n{log}"
                ));
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether the target now holds the offered snapshot, committed.
    fn check_target(
        &mut self,
        a: &Attempt<'_>,
        target: &DatasetName,
        before: Option<&Vec<(String, u64)>>,
    ) -> bool {
        let offered = (a.offer.snapshot.clone(), a.offer.guid);
        let committed = |now: &Option<Vec<(String, u64)>>| -> bool {
            let Some(now) = now else { return false };
            let old = before.map_or(&[][..], Vec::as_slice);
            now.starts_with(old) && now.last() == Some(&offered)
        };
        let fits = |now: &Option<Vec<(String, u64)>>| match a.lands {
            Lands::Nothing => now.as_ref() == before,
            Lands::NothingOrCommitted => now.as_ref() == before || committed(now),
            Lands::Committed => committed(now),
        };
        // zfs-fuse may still be discarding a cut receive for a moment.
        let deadline = Instant::now() + Duration::from_secs(5 * time_scale());
        let mut now = state_of(target);
        while !fits(&now) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
            now = state_of(target);
        }
        if !fits(&now) {
            let token = resume_token(target).map_or(String::new(), |t| {
                format!(" (a resumable receive state, token {})", shorten(&t))
            });
            self.fail(format!(
                "{}: {target} should be {:?} (before: {before:?}), it is {now:?}{token}",
                a.name, a.lands
            ));
            return false;
        }
        // Every attempt here sent its whole stream: nothing partial is worth keeping either
        // (OpenZFS hides an interrupted increment's state behind the target's token).
        if let Some(token) = resume_token(target) {
            self.fail(format!(
                "{}: {target} keeps a resumable receive state after its whole stream was sent (token {})",
                a.name,
                shorten(&token)
            ));
        }
        if now.as_ref() != before {
            eprintln!("   {target} committed the offered snapshot: {now:?}");
        }
        now.as_ref() != before
    }

    /// The invariants of the receiving pool, whatever happened.
    fn check_world(&mut self, name: &str) {
        let actual = datasets(self.dst.name());
        if actual != self.expected {
            let extra: Vec<_> = actual.difference(&self.expected).collect();
            let missing: Vec<_> = self.expected.difference(&actual).collect();
            self.fail(format!(
                "{name}: datasets the receiver did not name: {extra:?}; missing: {missing:?}"
            ));
            // Judge later steps against what is there now, not this step again.
            self.expected = actual;
        }
        for root in [self.nas1.clone(), self.nas2.clone()] {
            for (dataset, readonly, mounted) in protection(&root) {
                if readonly != "on" || mounted != "no" {
                    self.fail(format!(
                        "{name}: {dataset} under a peer root has readonly={readonly} mounted={mounted}"
                    ));
                }
            }
        }
        let nas2_now = self.nas2_snapshots();
        if nas2_now != self.nas2_state {
            self.fail(format!(
                "{name}: nas2's datasets changed: {:?} -> {nas2_now:?}",
                self.nas2_state
            ));
            self.nas2_state = nas2_now;
        }
    }

    fn nas2_snapshots(&self) -> Vec<(String, Vec<(String, u64)>)> {
        datasets(self.nas2.as_str())
            .into_iter()
            .map(|name| {
                let dataset = DatasetName::parse(&name).unwrap();
                (name, snapshots(&dataset))
            })
            .collect()
    }

    /// One `zrep-send once` of `source` to `target` as `identity`; whether it succeeded.
    fn honest(&mut self, identity: &str, source: &DatasetName, target: &str) -> bool {
        let port = self.receiver.port;
        let config = self
            .honest
            .entry(format!("{identity}:{source}:{target}"))
            .or_insert_with(|| {
                let mut spec = DatasetSpec::new(source);
                spec.target = Some(target.to_owned());
                // Several peers and targets share a source here: none prunes another's base.
                spec.extra = "keep-last = 1000\n".into();
                SenderConfig::new(port, identity, &[spec])
            });
        let run = config.once();
        let root = if identity == "nas2" {
            &self.nas2
        } else {
            &self.nas1
        };
        let dataset = DatasetName::parse(&format!("{root}/{target}")).unwrap();
        if run.code != Some(0) {
            self.fail(format!(
                "the honest replication of {source} to {dataset} failed: {}\n{}",
                run.stdout, run.stderr
            ));
            return false;
        }
        // The target's newest snapshot is one of the source's, by GUID.
        let newest = snapshots(&dataset).last().cloned();
        let ours = snapshots(source);
        if !newest.as_ref().is_some_and(|n| ours.contains(n)) {
            self.fail(format!(
                "after the honest replication of {source}, {dataset}'s newest is {newest:?}, not one of {ours:?}"
            ));
        }
        self.expected.insert(dataset.to_string());
        if identity == "nas2" {
            self.nas2_state = self.nas2_snapshots();
        }
        true
    }

    /// Ends the test: every failed check at once.
    fn finish(self) {
        assert!(
            self.failures.is_empty(),
            "{} failed checks:\n- {}\nreceiver log:\n{}",
            self.failures.len(),
            self.failures.join("\n- "),
            self.receiver.log_text()
        );
    }
}

/// A unique directory name under /tmp (never created by the test), removed if something
/// created it.
struct ForeignPath(PathBuf);

impl ForeignPath {
    fn new(tag: &str) -> ForeignPath {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        ForeignPath(PathBuf::from(format!(
            "/tmp/zrep-hostile-{}-{n}-{tag}",
            std::process::id()
        )))
    }
}

impl Drop for ForeignPath {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// Names of a dataset and everything below it.
fn datasets(top: &str) -> BTreeSet<String> {
    zfs(&["list", "-H", "-o", "name", "-r", top])
        .lines()
        .map(str::to_owned)
        .collect()
}

/// (dataset, readonly, mounted) of every filesystem from `root` down (none if it is absent).
fn protection(root: &DatasetName) -> Vec<(String, String, String)> {
    if !exists(root) {
        return Vec::new();
    }
    let mut rows: Vec<(String, String, String)> = Vec::new();
    let out = zfs(&[
        "get",
        "-H",
        "-o",
        "name,property,value",
        "-r",
        "readonly,mounted",
        root.as_str(),
    ]);
    for line in out.lines() {
        let fields: Vec<&str> = line.split('\t').collect();
        let [name, property, value] = fields[..] else {
            panic!("unexpected zfs get line {line:?}");
        };
        if name.contains('@') {
            continue;
        }
        if rows.last().is_none_or(|r| r.0 != name) {
            rows.push((name.to_owned(), String::new(), String::new()));
        }
        let row = rows.last_mut().unwrap();
        match property {
            "readonly" => row.1 = value.to_owned(),
            _ => row.2 = value.to_owned(),
        }
    }
    rows
}

/// The target's `receive_resume_token`, if it exists and has one (zfs-fuse has no such
/// property: never).
fn resume_token(target: &DatasetName) -> Option<String> {
    let out = std::process::Command::new("zfs")
        .args([
            "get",
            "-H",
            "-o",
            "value",
            "receive_resume_token",
            target.as_str(),
        ])
        .output()
        .ok()?;
    let value = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    (out.status.success() && value != "-" && !value.is_empty()).then_some(value)
}

fn shorten(text: &str) -> String {
    text.chars().take(24).chain("…".chars()).collect()
}

/// The target's snapshots, or `None` if it does not exist.
fn state_of(target: &DatasetName) -> Option<Vec<(String, u64)>> {
    exists(target).then(|| snapshots(target))
}

fn guid(snapshot: &str) -> u64 {
    zfs_get(snapshot, "guid").parse().unwrap()
}

fn offer(target: &str, snapshot: &str, guid: u64, kind: StreamKind) -> TransferOffer {
    TransferOffer {
        target: target.into(),
        snapshot: snapshot.into(),
        guid,
        kind,
        compression: Compression::None,
        raw: false,
        size_estimate: None,
    }
}

fn incremental(base_name: &str, base_guid: u64, intermediates: bool) -> StreamKind {
    StreamKind::Incremental {
        base_guid,
        base_name: base_name.into(),
        intermediates,
    }
}

/// The source snapshot (short name, GUID) that is the target's newest, by GUID.
fn newest_common(source: &DatasetName, target: &DatasetName) -> (String, u64) {
    let newest = snapshots(target).last().cloned().unwrap();
    assert!(
        snapshots(source).contains(&newest),
        "{newest:?} of {target} is not on {source}"
    );
    newest
}

/// The feature flags of a stream's first BEGIN record (`drr_versioninfo` above the header type),
/// in the byte order the magic says.
fn begin_features(stream: &[u8]) -> u64 {
    const MAGIC: u64 = 0x2F5B_ACBAC;
    let word = |at: usize, le: bool| {
        let bytes: [u8; 8] = stream[at..at + 8].try_into().unwrap();
        if le {
            u64::from_le_bytes(bytes)
        } else {
            u64::from_be_bytes(bytes)
        }
    };
    let le = word(8, true) == MAGIC;
    assert!(le || word(8, false) == MAGIC, "not a zfs send stream");
    word(16, le) >> 2
}

/// A filesystem whose properties a receiver must never adopt: mounted at a path outside the
/// pools, writable, setuid allowed, holding a mode-4755 root-owned file; snapshot `@h`. The
/// source itself is unmounted again, so only a receiver could mount something at that path.
fn hostile_filesystem(bed: &mut Bed, relative: &str) -> (DatasetName, String) {
    let source = bed.source(relative);
    let path = bed.foreign_path(relative);
    write_file(&source, "rootshell", b"#!/bin/sh\nexec /bin/sh -p\n");
    let file = mountpoint_of(&source).join("rootshell");
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o4755)).unwrap();
    for setting in [
        format!("mountpoint={path}"),
        "readonly=off".into(),
        "setuid=on".into(),
        "exec=on".into(),
        "devices=on".into(),
    ] {
        zfs(&["set", &setting, source.as_str()]);
    }
    zfs(&["snapshot", &format!("{source}@h")]);
    zfs(&["unmount", source.as_str()]);
    (source, path)
}

#[tokio::test]
async fn property_and_recursive_streams_are_refused() {
    let mut bed = Bed::new("hp", &[]);
    // 1. `zfs send -p`: the stream carries mountpoint, readonly=off and setuid=on.
    for (relative, ending, name) in [
        (
            "evilsum",
            StreamEnding::WrongChecksum,
            "-p stream (hostile mountpoint, setuid file), wrong checksum",
        ),
        (
            "evil",
            StreamEnding::Honest,
            "-p stream (hostile mountpoint, setuid file), honest checksum",
        ),
    ] {
        let (source, _path) = hostile_filesystem(&mut bed, relative);
        let snapshot = format!("{source}@h");
        bed.attempt(Attempt {
            name,
            offer: offer(relative, "h", guid(&snapshot), StreamKind::Full),
            stream: zfs_send(&["-p", &snapshot]),
            ending,
            expect: Expect::Failed(REFUSED),
            lands: Lands::Nothing,
            honest_source: &source,
        })
        .await;
    }

    // 2. `zfs send -R`: children come along, one of them with a hostile mountpoint.
    let tree = bed.source("tree");
    write_file(&tree, "f", b"parent");
    let kid = bed.source("tree/kid");
    let path = bed.foreign_path("kid");
    zfs(&["set", &format!("mountpoint={path}"), kid.as_str()]);
    bed.source("tree/plain");
    zfs(&["snapshot", "-r", &format!("{tree}@h")]);
    zfs(&["unmount", kid.as_str()]);
    let snapshot = format!("{tree}@h");
    bed.attempt(Attempt {
        name: "-R stream with children, one with a hostile mountpoint",
        offer: offer("tree", "h", guid(&snapshot), StreamKind::Full),
        stream: zfs_send(&["-R", &snapshot]),
        ending: StreamEnding::Honest,
        expect: Expect::Failed(REFUSED),
        lands: Lands::Nothing,
        honest_source: &tree,
    })
    .await;
    bed.finish();
}

#[tokio::test]
async fn clone_streams_are_refused() {
    let mut bed = Bed::new("hc", &[]);
    // nas2 replicates a dataset honestly: its snapshot's GUID now exists under nas2's root.
    let orig = bed.source("orig");
    write_file(&orig, "f", b"nas2's origin data");
    assert!(bed.honest("nas2", &orig, "orig"));
    let (first, _) = snapshots(&orig).last().cloned().unwrap();

    // 3a. A clone of that snapshot, sent as `zfs send -i orig@s clone@c` and offered as a full
    // stream: received, it would become a clone of nas2's snapshot (pinning it, sharing data).
    let clone = bed.src.dataset("clone");
    zfs(&["clone", &format!("{orig}@{first}"), clone.as_str()]);
    write_file(&clone, "g", b"nas1's change");
    zfs(&["snapshot", &format!("{clone}@c")]);
    let clone_stream = zfs_send(&["-i", &format!("{orig}@{first}"), &format!("{clone}@c")]);
    let clone_guid = guid(&format!("{clone}@c"));
    bed.attempt(Attempt {
        name: "clone stream of nas2's snapshot offered as full",
        offer: offer("clone", "c", clone_guid, StreamKind::Full),
        stream: clone_stream,
        ending: StreamEnding::Honest,
        expect: Expect::Failed(REFUSED),
        lands: Lands::Nothing,
        honest_source: &clone,
    })
    .await;

    // nas1 replicates the same origin, then nas2 again: a snapshot GUID that is nas1's newest
    // and also one of nas2's.
    assert!(bed.honest("nas1", &orig, "orig"));
    assert!(bed.honest("nas2", &orig, "orig"));
    let (shared, shared_guid) = newest_common(&orig, &bed.target("orig"));
    let clone2 = bed.src.dataset("clone2");
    zfs(&["clone", &format!("{orig}@{shared}"), clone2.as_str()]);
    write_file(&clone2, "g", b"nas1's other change");
    zfs(&["snapshot", &format!("{clone2}@c")]);
    let clone2_stream = zfs_send(&["-i", &format!("{orig}@{shared}"), &format!("{clone2}@c")]);
    let clone2_guid = guid(&format!("{clone2}@c"));

    // 3b. The clone stream offered as an increment of nas1's own copy of the origin (the base
    // GUID is right; the stream is a clone, not an increment of that dataset).
    bed.attempt(Attempt {
        name: "clone stream offered as an increment on the shared origin GUID",
        offer: offer(
            "orig",
            "c",
            clone2_guid,
            incremental(&shared, shared_guid, false),
        ),
        stream: clone2_stream.clone(),
        ending: StreamEnding::Honest,
        expect: Expect::Failed(REFUSED),
        lands: Lands::Nothing,
        honest_source: &orig,
    })
    .await;

    // 3c. The same clone stream offered as full, now that the origin's GUID is in both roots.
    bed.attempt(Attempt {
        name: "clone stream of a GUID in both roots offered as full",
        offer: offer("clone2", "c", clone2_guid, StreamKind::Full),
        stream: clone2_stream.clone(),
        ending: StreamEnding::Honest,
        expect: Expect::Failed(REFUSED),
        lands: Lands::Nothing,
        honest_source: &clone2,
    })
    .await;

    // 3d. As an increment of a target that does not exist: refused at the offer.
    bed.attempt(Attempt {
        name: "clone stream offered as an increment of a new target",
        offer: offer(
            "clone3",
            "c",
            clone2_guid,
            incremental(&shared, shared_guid, false),
        ),
        stream: clone2_stream,
        ending: StreamEnding::Honest,
        expect: Expect::Refused("base-mismatch"),
        lands: Lands::Nothing,
        honest_source: &clone2,
    })
    .await;
    bed.finish();
}

/// Endings after a whole, plain stream that must not leave anything behind, and what the
/// hostile client is answered.
const UNVERIFIED: [(StreamEnding, &str, Expect); 6] = [
    (
        StreamEnding::WrongChecksum,
        "wrong checksum",
        Expect::PeerError("stream-corrupt"),
    ),
    (
        StreamEnding::WrongLength,
        "wrong byte count",
        Expect::PeerError("stream-corrupt"),
    ),
    (
        StreamEnding::Abort,
        "stream abort after the whole stream",
        Expect::Failed("aborted"),
    ),
    (
        StreamEnding::CutBeforeEnd,
        "connection cut after the whole stream, before the end",
        Expect::NoAnswer,
    ),
    (
        StreamEnding::CutAfterEnd,
        "connection cut right after the end, before the answer",
        Expect::NoAnswer,
    ),
    (
        StreamEnding::ErrorFrame,
        "error frame after the whole stream",
        Expect::NoAnswer,
    ),
];

/// A verified end may have been committed before the cut; nothing else may land.
fn lands_after(ending: StreamEnding) -> Lands {
    if ending == StreamEnding::CutAfterEnd {
        Lands::NothingOrCommitted
    } else {
        Lands::Nothing
    }
}

#[tokio::test]
async fn unverified_full_streams_leave_no_dataset() {
    let mut bed = Bed::new("hf", &[]);
    let full = bed.source("full");
    write_file(&full, "data", &pseudo_random_bytes(3, 200 << 10));
    zfs(&["snapshot", &format!("{full}@f")]);
    let full_guid = guid(&format!("{full}@f"));
    let full_stream = zfs_send(&[&format!("{full}@f")]);
    for (i, (ending, slug, expect)) in UNVERIFIED.into_iter().enumerate() {
        // A full stream to a new target: afterwards the target must not exist.
        let name = format!("full stream, {slug}");
        bed.attempt(Attempt {
            name: &name,
            offer: offer(&format!("full{i}"), "f", full_guid, StreamKind::Full),
            stream: full_stream.clone(),
            ending,
            expect,
            lands: lands_after(ending),
            honest_source: &full,
        })
        .await;
    }
    bed.finish();
}

#[tokio::test]
async fn unverified_increments_leave_the_target_as_it_was() {
    let mut bed = Bed::new("hi", &[]);
    let base = bed.src.dataset("base");
    for (i, (ending, slug, expect)) in UNVERIFIED.into_iter().enumerate() {
        // A `-I` package of two new snapshots on the existing target: afterwards it has its
        // old snapshots only (both new ones destroyed, the base rolled back).
        let (from, from_guid) = newest_common(&base, &bed.target("base"));
        for part in ["a", "b"] {
            let data = pseudo_random_bytes(i as u64 + 10, 100 << 10);
            write_file(&base, part, &data);
            zfs(&["snapshot", &format!("{base}@h{i}{part}")]);
        }
        let snapshot = format!("h{i}b");
        let name = format!("-I increment, {slug}");
        bed.attempt(Attempt {
            name: &name,
            offer: offer(
                "base",
                &snapshot,
                guid(&format!("{base}@{snapshot}")),
                incremental(&from, from_guid, true),
            ),
            stream: zfs_send(&[
                "-I",
                &format!("{base}@{from}"),
                &format!("{base}@{snapshot}"),
            ]),
            ending,
            expect,
            lands: lands_after(ending),
            honest_source: &base,
        })
        .await;
    }
    bed.finish();
}

#[tokio::test]
async fn streams_of_another_shape_than_offered_are_refused() {
    let mut bed = Bed::new("hs", &[]);
    let base = bed.src.dataset("base");
    let x = bed.source("x");
    write_file(&x, "f", b"one");
    zfs(&["snapshot", &format!("{x}@1")]);
    write_file(&x, "f", b"two");
    zfs(&["snapshot", &format!("{x}@2")]);
    let (x1, x2) = (format!("{x}@1"), format!("{x}@2"));

    // A plain `-I` package (several snapshots) is what zrep-send sends: accepted.
    write_file(&base, "f", b"p1");
    zfs(&["snapshot", &format!("{base}@p1")]);
    write_file(&base, "f", b"p2");
    zfs(&["snapshot", &format!("{base}@p2")]);
    let (from, from_guid) = newest_common(&base, &bed.target("base"));
    bed.attempt(Attempt {
        name: "plain -I package of the offered shape (control: accepted)",
        offer: offer(
            "base",
            "p2",
            guid(&format!("{base}@p2")),
            incremental(&from, from_guid, true),
        ),
        stream: zfs_send(&["-I", &format!("{base}@{from}"), &format!("{base}@p2")]),
        ending: StreamEnding::Honest,
        expect: Expect::Committed,
        lands: Lands::Committed,
        honest_source: &base,
    })
    .await;

    // 5. The stream's BEGIN names another snapshot than the offer.
    bed.attempt(Attempt {
        name: "full stream whose GUID is not the offer's",
        offer: offer("guid", "1", guid(&x2), StreamKind::Full),
        stream: zfs_send(&[&x1]),
        ending: StreamEnding::Honest,
        expect: Expect::Failed(REFUSED),
        lands: Lands::Nothing,
        honest_source: &x,
    })
    .await;

    // The offered stream with another stream after it (zfs receive would stop after the first
    // and leave the rest unread, unchecked).
    let mut concatenated = zfs_send(&[&x1]);
    concatenated.extend(zfs_send(&["-i", &x1, &x2]));
    bed.attempt(Attempt {
        name: "full stream followed by a second stream",
        offer: offer("concat", "1", guid(&x1), StreamKind::Full),
        stream: concatenated,
        ending: StreamEnding::Honest,
        expect: Expect::Failed(REFUSED),
        lands: Lands::Nothing,
        honest_source: &x,
    })
    .await;

    // A full stream offered as an increment of the existing target.
    let (from, from_guid) = newest_common(&base, &bed.target("base"));
    bed.attempt(Attempt {
        name: "full stream offered as an increment",
        offer: offer("base", "2", guid(&x2), incremental(&from, from_guid, false)),
        stream: zfs_send(&[&x2]),
        ending: StreamEnding::Honest,
        expect: Expect::Failed(REFUSED),
        lands: Lands::Nothing,
        honest_source: &base,
    })
    .await;

    // An increment offered as a full stream of a new target.
    bed.attempt(Attempt {
        name: "increment offered as a full stream",
        offer: offer("incasfull", "2", guid(&x2), StreamKind::Full),
        stream: zfs_send(&["-i", &x1, &x2]),
        ending: StreamEnding::Honest,
        expect: Expect::Failed(REFUSED),
        lands: Lands::Nothing,
        honest_source: &x,
    })
    .await;

    // Another dataset's increment, offered on the target's newest snapshot.
    let (from, from_guid) = newest_common(&base, &bed.target("base"));
    bed.attempt(Attempt {
        name: "another dataset's increment offered on the target's newest",
        offer: offer("base", "2", guid(&x2), incremental(&from, from_guid, false)),
        stream: zfs_send(&["-i", &x1, &x2]),
        ending: StreamEnding::Honest,
        expect: Expect::Failed(REFUSED),
        lands: Lands::Nothing,
        honest_source: &base,
    })
    .await;

    // An increment of the target itself, but from an older snapshot than its newest.
    write_file(&base, "f", b"q");
    zfs(&["snapshot", &format!("{base}@q")]);
    let (from, from_guid) = newest_common(&base, &bed.target("base"));
    bed.attempt(Attempt {
        name: "increment from an older snapshot than the target's newest",
        offer: offer(
            "base",
            "q",
            guid(&format!("{base}@q")),
            incremental(&from, from_guid, false),
        ),
        stream: zfs_send(&["-i", &format!("{base}@p1"), &format!("{base}@q")]),
        ending: StreamEnding::Honest,
        expect: Expect::Failed(REFUSED),
        lands: Lands::Nothing,
        honest_source: &base,
    })
    .await;

    // A dedup stream (`zfs send -D`), where this ZFS still makes one.
    const DEDUP: u64 = 1;
    let dedup = zfs_send(&["-D", &x2]);
    if begin_features(&dedup) & DEDUP == 0 {
        let caps = tokio::task::spawn_blocking(capabilities).await.unwrap();
        eprintln!(
            "not applicable on {}: dedup streams (zfs send -D makes a plain stream)",
            caps.dialect
        );
    } else {
        bed.attempt(Attempt {
            name: "dedup stream (-D)",
            offer: offer("dedup", "2", guid(&x2), StreamKind::Full),
            stream: dedup,
            ending: StreamEnding::Honest,
            expect: Expect::Failed(REFUSED),
            lands: Lands::Nothing,
            honest_source: &x,
        })
        .await;
    }
    bed.finish();
}

#[tokio::test]
async fn properties_of_a_stream_that_slipped_through_are_forced() {
    // The probe runs its own runtime: off this one's thread.
    let caps = tokio::task::spawn_blocking(capabilities).await.unwrap();
    if !(caps.receive_set_property && caps.receive_exclude_property && caps.receive_no_mount) {
        eprintln!(
            "not applicable on {}: receive -o/-x/-u (forced and excluded properties); nothing else to check",
            caps.dialect
        );
        return;
    }
    // The stream inspector is off (debug builds only), so the -p stream reaches zfs receive.
    let mut bed = Bed::new("ho", &[("ZREP_DANGER_SKIP_STREAM_CHECK", "1")]);
    let (source, path) = hostile_filesystem(&mut bed, "evil");
    let snapshot = format!("{source}@h");
    bed.attempt(Attempt {
        name: "-p stream past a disabled inspector",
        offer: offer("evil", "h", guid(&snapshot), StreamKind::Full),
        stream: zfs_send(&["-p", &snapshot]),
        ending: StreamEnding::Honest,
        expect: Expect::Committed,
        lands: Lands::NothingOrCommitted,
        honest_source: &source,
    })
    .await;
    let target = bed.target("evil");
    if exists(&target) {
        let source_of = zfs(&["get", "-H", "-o", "source", "mountpoint", target.as_str()]);
        if !source_of.trim().starts_with("inherited") {
            bed.fail(format!(
                "{target}'s mountpoint is {} ({}), not inherited",
                zfs_get(target.as_str(), "mountpoint"),
                source_of.trim()
            ));
        }
        for (property, want) in [
            ("setuid", "off"),
            ("readonly", "on"),
            ("mounted", "no"),
            ("exec", "off"),
            ("devices", "off"),
            ("canmount", "noauto"),
        ] {
            let value = zfs_get(target.as_str(), property);
            if value != want {
                bed.fail(format!("{target} has {property}={value}, not {want}"));
            }
        }
    } else {
        bed.fail(format!("{target} did not land with the inspector off"));
    }
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
    if mounts
        .lines()
        .any(|l| l.split(' ').nth(1) == Some(path.as_str()))
    {
        bed.fail(format!("something is mounted at {path}"));
    }
    bed.finish();
}

#[test]
fn start_up_makes_everything_under_the_roots_read_only_and_unmounted() {
    let dst = TestPool::create("hudst");
    let root = dst.create_dataset("backup/nas1");
    let stray = dst.create_dataset("backup/nas1/stray");
    write_file(&stray, "f", b"written while nobody watched");
    dst.create_dataset("backup/nas1/stray/deeper");
    let local = dst.create_dataset("backup/local");
    assert_eq!(zfs_get(stray.as_str(), "mounted"), "yes");
    let receiver = Receiver::start(&[("nas1", &root)], &[]);
    let deadline = Instant::now() + Duration::from_secs(10 * time_scale());
    let mut rows = protection(&root);
    while rows.iter().any(|(_, ro, m)| ro != "on" || m != "no") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        rows = protection(&root);
    }
    let log = receiver.log_text();
    assert_eq!(rows.len(), 3, "{rows:?}");
    for (dataset, readonly, mounted) in &rows {
        assert_eq!(
            (readonly.as_str(), mounted.as_str()),
            ("on", "no"),
            "{dataset}\n{log}"
        );
    }
    assert!(log.contains(stray.as_str()), "the fix is logged:\n{log}");
    // Outside the roots the receiver changes nothing.
    assert_eq!(zfs_get(local.as_str(), "readonly"), "off");
    assert_eq!(zfs_get(local.as_str(), "mounted"), "yes");
}
