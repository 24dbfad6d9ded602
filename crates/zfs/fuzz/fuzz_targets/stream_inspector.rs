//! Stream inspector: arbitrary bytes, fed in arbitrary pieces, against an expectation drawn from
//! the input. Must never panic; the cleared count must be monotonic, never pass the bytes fed,
//! and hold back at most one record header; a refusal must be sticky; and the verdict must not
//! depend on how the stream was split.
//!
//! Input: byte 0 picks the expectation flags, byte 1 the piece size, then the stream. Seed the
//! corpus with crates/zfs/tests/data/streams/*/*.zstream (prefixed by two bytes or not: the
//! fuzzer finds its way).

#![no_main]

use libfuzzer_sys::fuzz_target;
use zrep_zfs::stream::{RECORD_LEN, StreamExpectation, StreamInspector};

fuzz_target!(|data: &[u8]| {
    let [flags, piece, stream @ ..] = data else {
        return;
    };
    // GUIDs and the snapshot name taken from the stream's first BEGIN when there is one, so
    // recorded streams get past their BEGIN and the fuzzer reaches the record checks.
    let guid = |at: usize| {
        stream
            .get(at..at + 8)
            .map_or(1, |b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
    };
    let name = stream.get(56..RECORD_LEN.min(stream.len())).unwrap_or(&[]);
    let name = &name[..name.iter().position(|&b| b == 0).unwrap_or(name.len())];
    let short = name
        .iter()
        .position(|&b| b == b'@')
        .map_or(&[][..], |at| &name[at + 1..]);
    let expect = StreamExpectation {
        from_guid: (flags & 1 != 0).then(|| guid(48)),
        to_guid: guid(40),
        to_snapshot: String::from_utf8_lossy(short).into_owned(),
        raw: flags & 2 != 0,
        resuming: flags & 4 != 0,
        intermediates: flags & 8 != 0,
    };
    let piece = usize::from(*piece).max(1);

    let mut whole = StreamInspector::new(expect.clone());
    let whole = whole.feed(stream).and_then(|_| whole.finish());

    let mut split = StreamInspector::new(expect);
    let mut fed = 0u64;
    let mut cleared = 0u64;
    let mut verdict = None;
    for part in stream.chunks(piece) {
        fed += part.len() as u64;
        match split.feed(part) {
            Ok(now) => {
                assert!(now >= cleared, "cleared count fell");
                assert!(now <= fed, "cleared more than fed");
                assert!(
                    fed - now < RECORD_LEN as u64,
                    "held back more than a header"
                );
                cleared = now;
            }
            Err(e) => {
                assert_eq!(split.feed(b"more"), Err(e.clone()), "refusal not sticky");
                assert_eq!(split.finish(), Err(e.clone()), "finish forgot the refusal");
                verdict = Some(Err(e));
                break;
            }
        }
    }
    let split = verdict.unwrap_or_else(|| split.finish());
    assert_eq!(whole, split, "verdict depends on the split");
});
