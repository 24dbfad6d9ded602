//! zrep's snapshot names: `<prefix>_<yyyymmddTHHMMSSZ>` in UTC, so that names sort by time and an
//! admin reads the age at a glance. Only snapshots of this form are ever pruned by zrep.
//!
//! zrep's bookmarks (OpenZFS) are per receiver: `<snapshot name>.<hold tag>`, the receiver named
//! by the hold tag it keeps on the source (`zrep_20261127T054910Z.zrep:backup1`), so that a
//! cycle to one receiver drops only that receiver's older bookmarks. A bookmark named like a
//! snapshot alone is the form before bookmarks were per receiver: still a base, never dropped.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use zrep_zfs::HoldTag;

/// The default prefix.
pub const DEFAULT_PREFIX: &str = "zrep";

/// The short snapshot name for `time` (`zrep_20261127T054910Z`).
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

/// The time encoded in a zrep snapshot name of this prefix, or `None` if the name is not one of
/// zrep's (so it is never pruned).
pub fn parse_snapshot_time(prefix: &str, short: &str) -> Option<SystemTime> {
    let stamp = short.strip_prefix(prefix)?.strip_prefix('_')?;
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
/// names; the stamp's fixed length makes the split unambiguous).
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
    /// The receiver's hold tag; `None` for a bookmark of the form before bookmarks were per
    /// receiver (the snapshot's name alone).
    pub receiver: Option<&'a str>,
}

/// What the bookmark short name `short` says if it is one of zrep's of this prefix, or `None`.
pub fn parse_bookmark<'a>(prefix: &str, short: &'a str) -> Option<ZrepBookmark<'a>> {
    // `<prefix>_` and the 16-byte stamp.
    let (snapshot, rest) = short.split_at_checked(prefix.len() + 1 + 16)?;
    let time = parse_snapshot_time(prefix, snapshot)?;
    let receiver = match rest {
        "" => None,
        tagged => Some(
            tagged
                .strip_prefix(RECEIVER_SEPARATOR)
                .filter(|tag| HoldTag::parse(tag).is_ok())?,
        ),
    };
    Some(ZrepBookmark { time, receiver })
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
                receiver: Some("zrep:backup1")
            })
        );
        // The form before bookmarks were per receiver.
        assert_eq!(
            parse_bookmark("zrep", "zrep_20261127T054910Z"),
            Some(ZrepBookmark {
                time: t,
                receiver: None
            })
        );
        for foreign in [
            "zrep_20261127T054910Z.",
            "zrep_20261127T054910Z.-x",
            "zrep_20261127T054910Zbackup1",
            "zrep_20261127T054910",
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
            "manual",
        ] {
            assert_eq!(parse_snapshot_time("zrep", name), None, "{name}");
        }
    }
}
