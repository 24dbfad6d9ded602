//! zrep's snapshot names: `<prefix>_<yyyymmddTHHMMSSZ>` in UTC, so that names sort by time and an
//! admin reads the age at a glance. A cycle that finds a snapshot of its second on the source
//! already (two `once` runs, or `run` at a short interval, within one second) numbers its own:
//! `<prefix>_<yyyymmddTHHMMSSZ>-02`, `-03`, … — one past the highest of that second, so every
//! cycle has a snapshot of its own, taken after it started, and names still sort in creation
//! order (the first of a second has no number, and `Z` sorts before `Z-`). Only snapshots of this
//! form are ever pruned by zrep.
//!
//! zrep's bookmarks (OpenZFS) are per receiver: `<snapshot name>.<hold tag>`, the receiver named
//! by the hold tag it keeps on the source (`zrep_20261127T054910Z.zrep:backup1`), so that a
//! cycle to one receiver drops only that receiver's older bookmarks. A bookmark named like a
//! snapshot alone is the form before bookmarks were per receiver: still a base, never dropped.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use zrep_zfs::HoldTag;

/// The default prefix.
pub const DEFAULT_PREFIX: &str = "zrep";

/// Before the number of a second's second and later snapshots.
const SEQUENCE_SEPARATOR: char = '-';

/// The number the first snapshot of a second has (not written).
const FIRST_OF_SECOND: u32 = 1;

/// The short snapshot name for `time` (`zrep_20261127T054910Z`): the first of its second.
pub fn snapshot_short_name(prefix: &str, time: SystemTime) -> String {
    let secs = time
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs();
    let (year, month, day) = civil_from_days(secs / 86_400);
    let rem = secs % 86_400;
    format!(
        "{prefix}_{year:04}{month:02}{day:02}T{:02}{:02}{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The short name of a new snapshot taken at `time`, given the short names of the source's
/// snapshots and bookmarks (`existing`): the name of `time`'s second, or, if zrep snapshots of
/// that second exist or are bookmarked, numbered one past the highest of them (not the first
/// gap: a gap left by a destroyed snapshot would sort the new name before older ones, and a
/// bookmarked base destroyed on the source still exists on the target under its name).
pub fn next_snapshot_short_name<'a>(
    prefix: &str,
    time: SystemTime,
    existing: impl IntoIterator<Item = &'a str>,
) -> String {
    let second = snapshot_short_name(prefix, time);
    let highest = existing
        .into_iter()
        .filter(|name| name.starts_with(second.as_str()))
        .filter_map(|name| {
            parse_snapshot(prefix, name)
                .map(|snap| snap.sequence)
                .or_else(|| parse_bookmark(prefix, name).map(|mark| mark.sequence))
        })
        .max();
    match highest {
        None => second,
        Some(n) => sequenced(&second, n.saturating_add(1)),
    }
}

/// `second` (a first-of-second name) numbered `n`.
fn sequenced(second: &str, n: u32) -> String {
    if n <= FIRST_OF_SECOND {
        second.to_owned()
    } else {
        format!("{second}{SEQUENCE_SEPARATOR}{n:02}")
    }
}

/// One of zrep's snapshots, as its name tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ZrepSnapshot {
    /// The second in the name.
    pub time: SystemTime,
    /// Which of that second's snapshots: 1 for the unnumbered first, then 2, 3, …
    pub sequence: u32,
}

/// What the snapshot short name `short` says if it is one of zrep's of this prefix (either form:
/// with or without a number), or `None` (so it is never pruned).
pub fn parse_snapshot(prefix: &str, short: &str) -> Option<ZrepSnapshot> {
    match split_name(prefix, short)? {
        (snapshot, "") => Some(snapshot),
        _ => None,
    }
}

/// The time encoded in a zrep snapshot name of this prefix, or `None` if the name is not one of
/// zrep's (so it is never pruned).
pub fn parse_snapshot_time(prefix: &str, short: &str) -> Option<SystemTime> {
    parse_snapshot(prefix, short).map(|snapshot| snapshot.time)
}

/// Splits `short` into the zrep snapshot name it starts with and what follows.
fn split_name<'a>(prefix: &str, short: &'a str) -> Option<(ZrepSnapshot, &'a str)> {
    let rest = short.strip_prefix(prefix)?.strip_prefix('_')?;
    let (stamp, rest) = rest.split_at_checked(16)?;
    let time = parse_stamp(stamp)?;
    let Some(numbered) = rest.strip_prefix(SEQUENCE_SEPARATOR) else {
        return Some((
            ZrepSnapshot {
                time,
                sequence: FIRST_OF_SECOND,
            },
            rest,
        ));
    };
    let digits = numbered
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(numbered.len());
    let (number, rest) = numbered.split_at(digits);
    let sequence: u32 = number.parse().ok()?;
    // One spelling per number, so that a name says one thing and sorts where it belongs.
    if sequence <= FIRST_OF_SECOND || format!("{sequence:02}") != number {
        return None;
    }
    Some((ZrepSnapshot { time, sequence }, rest))
}

/// `yyyymmddTHHMMSSZ` as a time.
fn parse_stamp(stamp: &str) -> Option<SystemTime> {
    let bytes = stamp.as_bytes();
    if bytes.len() != 16 || bytes[8] != b'T' || bytes[15] != b'Z' {
        return None;
    }
    let digits = |range: std::ops::Range<usize>| -> Option<u64> {
        let part = stamp.get(range)?;
        part.bytes()
            .all(|b| b.is_ascii_digit())
            .then(|| part.parse().ok())?
    };
    let (year, month, day) = (digits(0..4)?, digits(4..6)?, digits(6..8)?);
    let (hour, minute, second) = (digits(9..11)?, digits(11..13)?, digits(13..15)?);
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 59
    {
        return None;
    }
    let days = days_from_civil(year, month, day)?;
    if civil_from_days(days) != (year, month, day) {
        return None; // 31 February and friends
    }
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second;
    Some(UNIX_EPOCH + Duration::from_secs(secs))
}

/// Between the snapshot name and the receiver's hold tag in a bookmark name (allowed in ZFS
/// names; the stamp's fixed length and the number's digits make the split unambiguous).
const RECEIVER_SEPARATOR: char = '.';

/// The short name of the bookmark zrep keeps of `snapshot` (a short name) for the receiver whose
/// hold tag is `receiver`.
pub fn bookmark_short_name(snapshot: &str, receiver: &HoldTag) -> String {
    format!("{snapshot}{RECEIVER_SEPARATOR}{}", receiver.as_str())
}

/// One of zrep's bookmarks, as its name tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ZrepBookmark<'a> {
    /// The time in the bookmarked snapshot's name.
    pub time: SystemTime,
    /// Which of that second's snapshots it marks (1 for the unnumbered first).
    pub sequence: u32,
    /// The receiver's hold tag; `None` for a bookmark of the form before bookmarks were per
    /// receiver (the snapshot's name alone).
    pub receiver: Option<&'a str>,
}

/// What the bookmark short name `short` says if it is one of zrep's of this prefix, or `None`.
pub fn parse_bookmark<'a>(prefix: &str, short: &'a str) -> Option<ZrepBookmark<'a>> {
    let (snapshot, rest) = split_name(prefix, short)?;
    let receiver = match rest {
        "" => None,
        tagged => Some(
            tagged
                .strip_prefix(RECEIVER_SEPARATOR)
                .filter(|tag| HoldTag::parse(tag).is_ok())?,
        ),
    };
    Some(ZrepBookmark {
        time: snapshot.time,
        sequence: snapshot.sequence,
        receiver,
    })
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (Howard Hinnant's algorithm).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

fn days_from_civil(year: u64, month: u64, day: u64) -> Option<u64> {
    let year = if month <= 2 {
        year.checked_sub(1)?
    } else {
        year
    };
    let era = year / 400;
    let yoe = year - era * 400;
    let mp = if month > 2 { month - 3 } else { month + 9 };
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    (era * 146_097 + doe).checked_sub(719_468)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_utc_and_round_trips() {
        let t = UNIX_EPOCH + Duration::from_secs(1_795_758_550); // 2026-11-27T05:49:10Z
        let name = snapshot_short_name("zrep", t);
        assert_eq!(name, "zrep_20261127T054910Z");
        assert_eq!(parse_snapshot_time("zrep", &name), Some(t));
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29T00:00:00Z
        assert_eq!(snapshot_short_name("p", leap), "p_20000229T000000Z");
        assert_eq!(parse_snapshot_time("p", "p_20000229T000000Z"), Some(leap));
    }

    #[test]
    fn names_sort_by_time() {
        let a = snapshot_short_name("zrep", UNIX_EPOCH + Duration::from_secs(1_000_000_000));
        let b = snapshot_short_name("zrep", UNIX_EPOCH + Duration::from_secs(1_000_000_001));
        assert!(a < b);
    }

    #[test]
    fn bookmarks_name_their_receiver() {
        let t = UNIX_EPOCH + Duration::from_secs(1_795_758_550);
        let tag = HoldTag::parse("zrep:backup1").unwrap();
        let short = bookmark_short_name(&snapshot_short_name("zrep", t), &tag);
        assert_eq!(short, "zrep_20261127T054910Z.zrep:backup1");
        assert_eq!(
            parse_bookmark("zrep", &short),
            Some(ZrepBookmark {
                time: t,
                sequence: 1,
                receiver: Some("zrep:backup1")
            })
        );
        // The form before bookmarks were per receiver.
        assert_eq!(
            parse_bookmark("zrep", "zrep_20261127T054910Z"),
            Some(ZrepBookmark {
                time: t,
                sequence: 1,
                receiver: None
            })
        );
        // A numbered snapshot's bookmark.
        assert_eq!(
            parse_bookmark("zrep", "zrep_20261127T054910Z-02.zrep:backup1"),
            Some(ZrepBookmark {
                time: t,
                sequence: 2,
                receiver: Some("zrep:backup1")
            })
        );
        for foreign in [
            "zrep_20261127T054910Z.",
            "zrep_20261127T054910Z.-x",
            "zrep_20261127T054910Zbackup1",
            "zrep_20261127T054910",
            "zrep_20261127T054910Z-1.zrep:backup1",
            "zrep_20261127T054910Z-.zrep:backup1",
            "other_20261127T054910Z.zrep:backup1",
            "manual.zrep:backup1",
        ] {
            assert_eq!(parse_bookmark("zrep", foreign), None, "{foreign}");
        }
    }

    #[test]
    fn foreign_names_are_not_zreps() {
        for name in [
            "zrep_20261127T054910",
            "zrep_20261127T054910Zx",
            "zrepx_20261127T054910Z",
            "other_20261127T054910Z",
            "zrep_20260230T000000Z",
            "zrep_20261327T000000Z",
            "zrep_2026112+T054910Z",
            // Numbers have one spelling: two digits at least, no leading zero beyond, from 2.
            "zrep_20261127T054910Z-",
            "zrep_20261127T054910Z-1",
            "zrep_20261127T054910Z-01",
            "zrep_20261127T054910Z-2",
            "zrep_20261127T054910Z-002",
            "zrep_20261127T054910Z-+2",
            "zrep_20261127T054910Z-02x",
            "zrep_20261127T054910Z-99999999999",
            "zrep_20261127T054910Z_02",
            "manual",
        ] {
            assert_eq!(parse_snapshot_time("zrep", name), None, "{name}");
        }
    }

    const T: u64 = 1_795_758_550; // 2026-11-27T05:49:10Z

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn a_second_taken_gets_the_next_number() {
        let now = at(T);
        assert_eq!(
            next_snapshot_short_name("zrep", now, []),
            "zrep_20261127T054910Z"
        );
        // Other seconds, other prefixes and foreign names do not count.
        let others = [
            "zrep_20261127T054909Z-05",
            "zrep_20261127T054911Z",
            "other_20261127T054910Z",
            "zrep_20261127T054910Zx",
            "manual",
        ];
        assert_eq!(
            next_snapshot_short_name("zrep", now, others),
            "zrep_20261127T054910Z"
        );
        assert_eq!(
            next_snapshot_short_name("zrep", now, ["zrep_20261127T054910Z"]),
            "zrep_20261127T054910Z-02"
        );
        // One past the highest, not into a gap a destroyed snapshot left.
        assert_eq!(
            next_snapshot_short_name("zrep", now, ["zrep_20261127T054910Z-03"]),
            "zrep_20261127T054910Z-04"
        );
        // A bookmark's name counts: its snapshot, gone from the source, is on the target.
        assert_eq!(
            next_snapshot_short_name("zrep", now, ["zrep_20261127T054910Z.zrep:backup1"]),
            "zrep_20261127T054910Z-02"
        );
        let mut taken = vec!["zrep_20261127T054910Z".to_owned()];
        for _ in 0..120 {
            let next = next_snapshot_short_name("zrep", now, taken.iter().map(String::as_str));
            taken.push(next);
        }
        assert_eq!(taken[9], "zrep_20261127T054910Z-10");
        assert_eq!(taken[120], "zrep_20261127T054910Z-121");
        // Up to 99 in one second (far more than ZFS creates) the names sort in creation order,
        // and before the next second's.
        let mut sorted = taken[..99].to_vec();
        sorted.push(snapshot_short_name("zrep", at(T + 1)));
        let mut by_name = sorted.clone();
        by_name.sort();
        assert_eq!(by_name, sorted);
        // Every one is zrep's, of that second, numbered in order: retention and pruning see it.
        for (i, name) in taken.iter().enumerate() {
            assert_eq!(
                parse_snapshot("zrep", name),
                Some(ZrepSnapshot {
                    time: now,
                    sequence: u32::try_from(i).unwrap() + 1
                }),
                "{name}"
            );
            assert_eq!(parse_snapshot_time("zrep", name), Some(now));
        }
    }
}
