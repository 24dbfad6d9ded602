//! The stream inspector on send streams recorded from real ZFS (zfs-fuse 0.7, OpenZFS 2.3 and
//! 2.1; `scripts/record-streams` regenerates them): each parses to the verdict the receiver needs.

use std::collections::BTreeMap;
use std::path::PathBuf;

use zrep_zfs::stream::{
    BeginRecord, FeatureFlags, HeaderType, ObjectKind, RECORD_LEN, StreamExpectation,
    StreamInspector, StreamRefusal, StreamSummary,
};

/// One dialect's recorded streams and the GUIDs of their snapshots.
struct Fixtures {
    dir: PathBuf,
    /// `fs@s1` (pool prefix dropped) -> GUID.
    guids: BTreeMap<String, u64>,
    pool: String,
}

impl Fixtures {
    fn load(dialect: &str) -> Fixtures {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data/streams")
            .join(dialect);
        let text = |name: &str| {
            std::fs::read_to_string(dir.join(name))
                .unwrap_or_else(|e| panic!("read {}/{name}: {e}", dir.display()))
        };
        let pool = text("pool").trim().to_owned();
        let guids = text("guids")
            .lines()
            .map(|line| {
                let (name, guid) = line.split_once('\t').expect("name<TAB>guid");
                let name = name
                    .strip_prefix(&format!("{pool}/"))
                    .expect("names start with the pool");
                (name.to_owned(), guid.parse().expect("decimal GUID"))
            })
            .collect();
        Fixtures { dir, guids, pool }
    }

    fn stream(&self, name: &str) -> Vec<u8> {
        let path = self.dir.join(format!("{name}.zstream"));
        std::fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
    }

    fn guid(&self, snapshot: &str) -> u64 {
        *self
            .guids
            .get(snapshot)
            .unwrap_or_else(|| panic!("no GUID recorded for {snapshot}"))
    }

    /// An expectation from `from` (None: full) to `to` (`fs@s2`).
    fn expect(&self, from: Option<&str>, to: &str) -> StreamExpectation {
        StreamExpectation {
            from_guid: from.map(|f| self.guid(f)),
            to_guid: self.guid(to),
            to_snapshot: to.split_once('@').expect("snapshot").1.to_owned(),
            raw: false,
            resuming: false,
            intermediates: false,
        }
    }

    fn snapshots(&self, names: &[&str]) -> Vec<(String, u64)> {
        names
            .iter()
            .map(|n| {
                (
                    n.split_once('@').expect("snapshot").1.to_owned(),
                    self.guid(n),
                )
            })
            .collect()
    }
}

/// Feeds `stream` whole, then in one-byte steps, then in uneven splits, and checks the three
/// agree; returns the verdict.
fn inspect(stream: &[u8], expect: &StreamExpectation) -> Result<StreamSummary, StreamRefusal> {
    let whole = run_split(stream, expect, &[stream.len().max(1)]);
    let bytewise = run_split(stream, expect, &[1]);
    let uneven = run_split(stream, expect, &[1, 311, 313, 7, 4096, 2]);
    assert_eq!(whole, bytewise, "one-byte feeding changes the verdict");
    assert_eq!(whole, uneven, "uneven feeding changes the verdict");
    whole
}

/// Feeds `stream` in chunks of the given sizes (cycled), checking the cleared-bytes rule: the
/// cleared count never falls, never passes the bytes fed, and never covers a byte of a record
/// header that is still incomplete.
fn run_split(
    stream: &[u8],
    expect: &StreamExpectation,
    sizes: &[usize],
) -> Result<StreamSummary, StreamRefusal> {
    let mut inspector = StreamInspector::new(expect.clone());
    let mut fed = 0usize;
    let mut cleared = 0u64;
    let mut size = sizes.iter().cycle();
    while fed < stream.len() {
        let n = (*size.next().expect("cycle")).min(stream.len() - fed);
        match inspector.feed(&stream[fed..fed + n]) {
            Ok(now) => {
                assert!(now >= cleared, "cleared count fell from {cleared} to {now}");
                assert!(
                    now <= (fed + n) as u64,
                    "cleared {now} of {} bytes",
                    fed + n
                );
                assert!(
                    (fed + n) as u64 - now < RECORD_LEN as u64,
                    "held back a whole record"
                );
                cleared = now;
            }
            Err(e) => {
                assert_eq!(inspector.feed(b"x"), Err(e.clone()), "errors are sticky");
                assert_eq!(
                    inspector.finish(),
                    Err(e.clone()),
                    "finish repeats the error"
                );
                return Err(e);
            }
        }
        fed += n;
    }
    inspector.finish()
}

fn assert_refused(result: Result<StreamSummary, StreamRefusal>) -> StreamRefusal {
    match result {
        Ok(summary) => panic!("stream accepted: {summary:?}"),
        Err(e) => {
            let text = e.to_string();
            assert!(!text.contains('\n'), "one-line message: {text}");
            e
        }
    }
}

fn ok(result: Result<StreamSummary, StreamRefusal>) -> StreamSummary {
    result.unwrap_or_else(|e| panic!("stream refused: {e}"))
}

/// What every dialect's plain streams must give.
fn check_plain_streams(fx: &Fixtures) {
    let full = ok(inspect(&fx.stream("full"), &fx.expect(None, "fs@s1")));
    assert_eq!(full.snapshots, fx.snapshots(&["fs@s1"]));
    assert_eq!(full.kind, ObjectKind::Filesystem);

    let incr = ok(inspect(
        &fx.stream("incr"),
        &fx.expect(Some("fs@s1"), "fs@s2"),
    ));
    assert_eq!(incr.snapshots, fx.snapshots(&["fs@s2"]));

    // -I s1 s3: a package of s2 and s3.
    let mut with_intermediates = fx.expect(Some("fs@s1"), "fs@s3");
    with_intermediates.intermediates = true;
    let package = ok(inspect(&fx.stream("incr-I"), &with_intermediates));
    assert_eq!(package.snapshots, fx.snapshots(&["fs@s2", "fs@s3"]));
    let refusal = assert_refused(inspect(
        &fx.stream("incr-I"),
        &fx.expect(Some("fs@s1"), "fs@s3"),
    ));
    assert!(
        matches!(refusal, StreamRefusal::PackageNotAllowed { .. }),
        "{refusal:?}"
    );
    // A -i stream where -I is allowed is still fine.
    let mut incr_allowing = fx.expect(Some("fs@s1"), "fs@s2");
    incr_allowing.intermediates = true;
    ok(inspect(&fx.stream("incr"), &incr_allowing));

    // The right stream against the wrong expectation.
    let refusal = assert_refused(inspect(
        &fx.stream("incr"),
        &fx.expect(Some("fs@s2"), "fs@s3"),
    ));
    assert_eq!(
        refusal,
        StreamRefusal::WrongOrigin {
            snapshot: format!("{}/fs@s2", fx.pool),
            expected: fx.guid("fs@s2"),
            found: fx.guid("fs@s1"),
        }
    );
    let refusal = assert_refused(inspect(&fx.stream("incr"), &fx.expect(None, "fs@s2")));
    assert!(
        matches!(refusal, StreamRefusal::WrongOrigin { expected: 0, .. }),
        "{refusal:?}"
    );
    let refusal = assert_refused(inspect(&fx.stream("full"), &fx.expect(None, "fs@s2")));
    assert!(
        matches!(refusal, StreamRefusal::WrongTarget { .. }),
        "{refusal:?}"
    );
    let mut to_s2 = with_intermediates.clone();
    to_s2.to_guid = fx.guid("fs@s2");
    to_s2.to_snapshot = "s2".into();
    let refusal = assert_refused(inspect(&fx.stream("incr-I"), &to_s2));
    assert!(
        matches!(refusal, StreamRefusal::WrongTarget { .. }),
        "{refusal:?}"
    );

    // -p and -R: packages with an nvlist.
    for (name, to) in [("props", "fs@s1"), ("replicate", "fs@r1")] {
        for from in [None, Some("fs@s1")] {
            let mut e = fx.expect(from, to);
            e.intermediates = true;
            let refusal = assert_refused(inspect(&fx.stream(name), &e));
            assert!(
                matches!(refusal, StreamRefusal::PackageWithPayload { payload_len } if payload_len > 0),
                "{name}: {refusal:?}"
            );
        }
    }

    // A clone's incremental from its origin.
    let mut clone = fx.expect(Some("fs@s2"), "clone@c1");
    clone.intermediates = true;
    let refusal = assert_refused(inspect(&fx.stream("clone"), &clone));
    assert_eq!(
        refusal,
        StreamRefusal::Clone {
            offset: 0,
            snapshot: format!("{}/clone@c1", fx.pool),
        }
    );
}

#[test]
fn zfs_fuse_streams() {
    let fx = Fixtures::load("zfs-fuse");
    check_plain_streams(&fx);
    // zfs-fuse sets no feature at all.
    let begin = BeginRecord::parse(&fx.stream("full")).expect("BEGIN");
    assert_eq!(begin.header, HeaderType::Substream);
    assert_eq!(begin.features, FeatureFlags::NONE);
    assert_eq!(begin.to_name, format!("{}/fs@s1", fx.pool));
    assert_eq!(begin.to_guid, fx.guid("fs@s1"));
    assert_eq!(begin.from_guid, 0);
    assert_eq!(begin.payload_len, 0);
    // -D: DEDUP and DEDUPPROPS.
    let refusal = assert_refused(inspect(&fx.stream("dedup"), &fx.expect(None, "fs@s1")));
    assert_eq!(
        refusal,
        StreamRefusal::FeatureNotAllowed {
            snapshot: format!("{}/fs@s1", fx.pool),
            refused: FeatureFlags::DEDUP | FeatureFlags::DEDUPPROPS,
            allowed: FeatureFlags::SA_SPILL | FeatureFlags::LARGE_DNODE | FeatureFlags::LONGNAME,
        }
    );
    assert_eq!(
        refusal.to_string(),
        format!(
            "stream of {}/fs@s1 uses features DEDUP|DEDUPPROPS that this offer does not allow \
             (allowed: SA_SPILL|LARGE_DNODE|LONGNAME)",
            fx.pool
        )
    );
}
