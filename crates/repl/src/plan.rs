//! The sender's decisions for one dataset, pure: what to send given both sides' snapshots
//! (matched by GUID), how to go on with an interrupted stream, and what a settled cycle releases,
//! prunes and unbookmarks. No IO and no async: `sender` gathers the facts from ZFS and the
//! receiver, asks here, and carries the answer out.

use std::time::SystemTime;

use zrep_proto::{
    Compression, SnapshotInfo as WireSnapshot, StreamKind, TargetState, TransferOffer, choose_base,
};
use zrep_zfs::{
    BookmarkInfo, BookmarkName, Guid, HoldTag, IncrementalBase, ResumeTokenInfo, SendKind,
    SendRequest, SnapshotInfo, SnapshotName,
};

use crate::error::ReplicationError;
use crate::naming::{parse_bookmark, parse_snapshot_time};
use crate::sender::{DatasetJob, StreamShape};

/// Bookmarks take part in planning under this prefix, which no snapshot name can carry.
const BOOKMARK_MARK: char = '#';

/// What to send for one dataset.
#[derive(Debug)]
pub(crate) enum Plan {
    /// The target has the newest snapshot already.
    UpToDate,
    /// One stream.
    Send {
        /// The `zfs send` to run.
        request: SendRequest,
        /// What it carries, for the report.
        shape: StreamShape,
        /// The offer to the receiver (without a size estimate).
        offer: Box<TransferOffer>,
    },
}

/// Plans the stream that brings the target (`state`) to `newest`, from the newest snapshot or
/// bookmark both sides have by GUID. `local` are the source's snapshots, `bookmarks` its
/// bookmarks (any receiver's: only one whose GUID the target has can be the base).
pub(crate) fn plan(
    job: &DatasetJob,
    local: &[SnapshotInfo],
    bookmarks: &[BookmarkInfo],
    newest: &SnapshotInfo,
    state: &TargetState,
) -> Result<Plan, ReplicationError> {
    let target = &job.target;
    let offer = |kind: StreamKind| TransferOffer {
        target: target.as_str().to_owned(),
        snapshot: newest.name.short_name().to_owned(),
        guid: newest.guid.0,
        kind,
        compression: Compression::Zstd,
        raw: job.raw,
        size_estimate: None,
    };
    let request = |kind: SendKind| SendRequest {
        raw: job.raw,
        ..SendRequest::new(kind)
    };
    if !state.exists {
        return Ok(Plan::Send {
            request: request(SendKind::Full {
                snapshot: newest.name.clone(),
            }),
            shape: StreamShape::Full,
            offer: Box::new(offer(StreamKind::Full)),
        });
    }
    let choice = choose_base(&candidates(local, bookmarks), &state.snapshots);
    let Some((base, _)) = &choice.common else {
        let what = if state.snapshots.is_empty() {
            "exists on the receiver without any snapshot".to_owned()
        } else {
            format!(
                "exists on the receiver with {} snapshot(s), none of which {} has (compared by GUID)",
                state.snapshots.len(),
                job.source
            )
        };
        return Err(ReplicationError::Diverged(format!(
            "target {target} {what}. zrep never destroys data on the receiver: rename or destroy \
             the target there, or replicate to another `target`"
        )));
    };
    if choice.diverged() {
        let names: Vec<&str> = choice.diverging.iter().map(|s| s.name.as_str()).collect();
        return Err(ReplicationError::Diverged(format!(
            "target {target} has snapshot(s) newer than the last common one ({}) that {} does not \
             have: {}. zrep never destroys data on the receiver. If they hold writes made there on \
             purpose (a failover), bring those back to {} first; if they are not needed, roll the \
             target back to @{} there (zfs rollback -r destroys them); or replicate to another \
             `target`",
            base.name,
            job.source,
            names.join(", "),
            job.source,
            base.name
        )));
    }
    if base.guid == newest.guid.0 {
        return Ok(Plan::UpToDate);
    }
    let (from, short, intermediates) = match base.name.strip_prefix(BOOKMARK_MARK) {
        // A bookmark holds no data, so nothing in between can travel: `-i` only.
        Some(mark) => (
            IncrementalBase::Bookmark(job.source.bookmark(mark)?),
            mark,
            false,
        ),
        None => (
            IncrementalBase::Snapshot(job.source.snapshot(&base.name)?),
            base.name.as_str(),
            job.intermediates,
        ),
    };
    Ok(Plan::Send {
        request: request(SendKind::Incremental {
            from: from.clone(),
            to: newest.name.clone(),
            intermediates,
        }),
        shape: StreamShape::Incremental {
            base: short.to_owned(),
            intermediates,
            from_bookmark: matches!(from, IncrementalBase::Bookmark(_)),
        },
        offer: Box::new(offer(StreamKind::Incremental {
            base_guid: base.guid,
            base_name: from.as_str().to_owned(),
            intermediates,
        })),
    })
}

/// What to do about the target's interrupted resumable receive.
#[derive(Debug)]
pub(crate) enum Resume {
    /// Send the rest (`zfs send -t`).
    Finish {
        /// The short name of the snapshot the stream ends at.
        snapshot: String,
        /// The `zfs send -t` to run.
        request: SendRequest,
        /// The offer to the receiver (without a size estimate).
        offer: Box<TransferOffer>,
    },
    /// The stream's snapshot is not this source's any more: have the receiver discard it.
    Discard,
}

/// Decides on the target's resume `token`, given what the token says (`None`: its snapshot is
/// gone) and the source's snapshots.
pub(crate) fn plan_resume(
    job: &DatasetJob,
    local: &[SnapshotInfo],
    token: &str,
    info: Option<&ResumeTokenInfo>,
) -> Resume {
    let Some(info) = info.filter(|info| {
        info.to_name.dataset() == job.source && local.iter().any(|s| s.guid == info.to_guid)
    }) else {
        return Resume::Discard;
    };
    let snapshot = info.to_name.short_name().to_owned();
    let offer = TransferOffer {
        target: job.target.as_str().to_owned(),
        snapshot: snapshot.clone(),
        guid: info.to_guid.0,
        kind: StreamKind::Resume {
            token: token.to_owned(),
        },
        compression: Compression::Zstd,
        raw: job.raw,
        size_estimate: None,
    };
    Resume::Finish {
        snapshot,
        request: SendRequest::new(SendKind::Resume {
            token: token.to_owned(),
        }),
        offer: Box::new(offer),
    }
}

/// What a cycle that left `base` common to both sides does to the source.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Settlement<'a> {
    /// zrep's snapshots older than the base: this receiver's hold comes off them.
    pub(crate) release: Vec<&'a SnapshotName>,
    /// zrep's snapshots the keep policy gives up (never the base or anything newer).
    pub(crate) prune: Vec<&'a SnapshotName>,
}

/// Settles the source's `snapshots` (creation order) around `base` by the job's keep policy as
/// of `now`. Only zrep's own snapshots (by name) are touched.
pub(crate) fn settlement<'a>(
    job: &DatasetJob,
    snapshots: &'a [SnapshotInfo],
    base: Guid,
    now: SystemTime,
) -> Settlement<'a> {
    let ours = |s: &SnapshotInfo| parse_snapshot_time(&job.prefix, s.name.short_name());
    let release = snapshots
        .iter()
        .take_while(|s| s.guid != base)
        .filter(|s| ours(s).is_some())
        .map(|s| &s.name)
        .collect();
    let timed: Vec<(&SnapshotInfo, SystemTime)> = snapshots
        .iter()
        .filter_map(|s| Some((s, ours(s)?)))
        .collect();
    // The base and anything newer are protected; a base not found protects everything.
    let protect_from = timed.iter().position(|(s, _)| s.guid == base).unwrap_or(0);
    let times: Vec<SystemTime> = timed.iter().map(|(_, t)| *t).collect();
    let prune = job
        .keep
        .doomed(&times, protect_from, now)
        .into_iter()
        .map(|i| &timed[i].0.name)
        .collect();
    Settlement { release, prune }
}

/// This receiver's (`tag`) bookmarks other than the base's: what a settled cycle drops. Other
/// receivers' bookmarks are theirs to drop, and bookmarks of the form before bookmarks were per
/// receiver may be another receiver's base: both stay.
pub(crate) fn stale_bookmarks<'a>(
    prefix: &str,
    tag: &HoldTag,
    bookmarks: &'a [BookmarkInfo],
    base: Guid,
) -> Vec<&'a BookmarkName> {
    bookmarks
        .iter()
        .filter(|b| b.guid != base)
        .filter(|b| {
            parse_bookmark(prefix, b.name.short_name())
                .is_some_and(|mark| mark.receiver == Some(tag.as_str()))
        })
        .map(|b| &b.name)
        .collect()
}

/// Snapshots as the protocol and its planning helper take them (the sender's own, and the
/// receiver's in its state answer).
pub(crate) fn to_wire(snapshots: &[SnapshotInfo]) -> Vec<WireSnapshot> {
    snapshots
        .iter()
        .map(|s| WireSnapshot {
            name: s.name.short_name().to_owned(),
            guid: s.guid.0,
            createtxg: s.order,
            creation: s.creation,
        })
        .collect()
}

/// Source candidates for the common base: snapshots, plus bookmarks whose snapshot is gone
/// (one per GUID: every receiver may have bookmarked the same snapshot), in creation order.
fn candidates(local: &[SnapshotInfo], bookmarks: &[BookmarkInfo]) -> Vec<WireSnapshot> {
    let mut all = to_wire(local);
    for mark in bookmarks {
        if all.iter().any(|s| s.guid == mark.guid.0) {
            continue;
        }
        all.push(WireSnapshot {
            name: format!("{BOOKMARK_MARK}{}", mark.name.short_name()),
            guid: mark.guid.0,
            createtxg: mark.order,
            creation: mark.creation,
        });
    }
    all.sort_by_key(|s| s.createtxg);
    all
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use zrep_zfs::{DatasetName, RelativeName};

    use super::*;
    use crate::naming::{bookmark_short_name, snapshot_short_name};
    use crate::retention::KeepPolicy;

    const T0: u64 = 1_795_000_000;

    fn job() -> DatasetJob {
        DatasetJob {
            source: DatasetName::parse("tank/data").unwrap(),
            target: RelativeName::parse("data").unwrap(),
            prefix: "zrep".into(),
            intermediates: true,
            keep: KeepPolicy::last(1),
            raw: false,
        }
    }

    /// zrep's snapshot of minute `minute`, with its GUID and txg derived from it.
    fn zrep(minute: u64) -> SnapshotInfo {
        let time = T0 + minute * 60;
        named(
            &snapshot_short_name("zrep", UNIX_EPOCH + Duration::from_secs(time)),
            minute,
        )
    }

    fn named(short: &str, n: u64) -> SnapshotInfo {
        SnapshotInfo {
            name: job().source.snapshot(short).unwrap(),
            guid: Guid(1000 + n),
            creation: T0 + n * 60,
            createtxg: Some(10 * n),
            order: 10 * n,
        }
    }

    fn bookmark(of: &SnapshotInfo, short: &str) -> BookmarkInfo {
        BookmarkInfo {
            name: job().source.bookmark(short).unwrap(),
            guid: of.guid,
            creation: of.creation,
            createtxg: of.createtxg,
            order: of.order,
        }
    }

    /// The target as the receiver reports it: its own txgs, unrelated to the source's.
    fn target(snapshots: &[(&str, Guid)]) -> TargetState {
        TargetState {
            target: "data".into(),
            exists: true,
            snapshots: (7..)
                .zip(snapshots)
                .map(|(txg, (name, guid))| WireSnapshot {
                    name: (*name).to_owned(),
                    guid: guid.0,
                    createtxg: txg,
                    creation: 0,
                })
                .collect(),
            ..TargetState::default()
        }
    }

    fn on_target(snapshot: &SnapshotInfo) -> (&str, Guid) {
        (snapshot.name.short_name(), snapshot.guid)
    }

    fn sent(plan: Result<Plan, ReplicationError>) -> (SendRequest, StreamShape, TransferOffer) {
        match plan.unwrap() {
            Plan::Send {
                request,
                shape,
                offer,
            } => (request, shape, *offer),
            Plan::UpToDate => panic!("expected a stream, planned nothing"),
        }
    }

    fn diverged(plan: Result<Plan, ReplicationError>) -> String {
        match plan {
            Err(ReplicationError::Diverged(message)) => message,
            other => panic!("expected divergence, got {other:?}"),
        }
    }

    #[test]
    fn absent_target_gets_a_full_stream() {
        let (a, b) = (zrep(1), zrep(2));
        let state = TargetState {
            exists: false,
            ..target(&[])
        };
        let (request, shape, offer) = sent(plan(&job(), &[a, b.clone()], &[], &b, &state));
        assert_eq!(
            request.kind,
            SendKind::Full {
                snapshot: b.name.clone()
            }
        );
        assert_eq!(shape, StreamShape::Full);
        assert_eq!(offer.kind, StreamKind::Full);
        assert_eq!((offer.snapshot.as_str(), Guid(offer.guid)), on_target(&b));
        assert_eq!(offer.target, "data");
    }

    #[test]
    fn newest_common_snapshot_by_guid_is_the_base_with_intermediates() {
        let (a, b, c, d) = (zrep(1), zrep(2), zrep(3), zrep(4));
        // The target knows b under another name: the GUID decides, not the name.
        let state = target(&[on_target(&a), ("renamed", b.guid)]);
        let local = [a, b.clone(), c, d.clone()];
        let (request, shape, offer) = sent(plan(&job(), &local, &[], &d, &state));
        assert_eq!(
            request.kind,
            SendKind::Incremental {
                from: IncrementalBase::Snapshot(b.name.clone()),
                to: d.name.clone(),
                intermediates: true
            }
        );
        assert_eq!(
            shape,
            StreamShape::Incremental {
                base: b.name.short_name().to_owned(),
                intermediates: true,
                from_bookmark: false
            }
        );
        assert_eq!(
            offer.kind,
            StreamKind::Incremental {
                base_guid: b.guid.0,
                base_name: b.name.as_str().to_owned(),
                intermediates: true
            }
        );
    }

    #[test]
    fn without_intermediates_the_increment_is_plain() {
        let (a, b, c) = (zrep(1), zrep(2), zrep(3));
        let state = target(&[on_target(&a)]);
        let job = DatasetJob {
            intermediates: false,
            ..job()
        };
        let (request, ..) = sent(plan(&job, &[a.clone(), b, c.clone()], &[], &c, &state));
        assert_eq!(
            request.kind,
            SendKind::Incremental {
                from: IncrementalBase::Snapshot(a.name),
                to: c.name,
                intermediates: false
            }
        );
    }

    #[test]
    fn same_name_with_another_guid_is_divergence() {
        let (a, b, c) = (zrep(1), zrep(2), zrep(3));
        // The target's b is not the source's b.
        let state = target(&[on_target(&a), (b.name.short_name(), Guid(99))]);
        let message = diverged(plan(
            &job(),
            &[a.clone(), b.clone(), c.clone()],
            &[],
            &c,
            &state,
        ));
        assert!(
            message.contains(&format!(
                "newer than the last common one ({}) that tank/data does not have: {}",
                a.name.short_name(),
                b.name.short_name()
            )),
            "{message}"
        );
        // And with nothing in common at all.
        let state = target(&[(a.name.short_name(), Guid(98))]);
        let message = diverged(plan(&job(), &[a, c.clone()], &[], &c, &state));
        assert!(
            message.contains("with 1 snapshot(s), none of which tank/data has"),
            "{message}"
        );
        let message = diverged(plan(
            &job(),
            std::slice::from_ref(&c),
            &[],
            &c,
            &target(&[]),
        ));
        assert!(message.contains("without any snapshot"), "{message}");
    }

    #[test]
    fn target_newer_than_the_source_is_divergence() {
        let (a, b) = (zrep(1), zrep(2));
        // The target has the source's newest and more the source never had.
        let state = target(&[on_target(&a), on_target(&b), ("later", Guid(77))]);
        let message = diverged(plan(&job(), &[a, b.clone()], &[], &b, &state));
        assert!(
            message.contains(&format!(
                "last common one ({0}) that tank/data does not have: later. zrep never destroys \
                 data on the receiver. If they hold writes made there on purpose (a failover), \
                 bring those back to tank/data first; if they are not needed, roll the target \
                 back to @{0} there (zfs rollback -r destroys them); or replicate to another \
                 `target`",
                b.name.short_name()
            )),
            "{message}"
        );
    }

    #[test]
    fn nothing_new_is_up_to_date() {
        let (a, b) = (zrep(1), zrep(2));
        let state = target(&[on_target(&a), on_target(&b)]);
        assert!(matches!(
            plan(&job(), &[a, b.clone()], &[], &b, &state).unwrap(),
            Plan::UpToDate
        ));
    }

    #[test]
    fn a_bookmark_stands_in_for_a_destroyed_base_with_plain_increments() {
        let (a, b, c) = (zrep(1), zrep(2), zrep(3));
        let tag = HoldTag::parse("zrep:backup1").unwrap();
        let other = HoldTag::parse("zrep:backup2").unwrap();
        // a and b are gone from the source; their bookmarks remain, b's for two receivers.
        let marks = [
            bookmark(&a, &bookmark_short_name(a.name.short_name(), &tag)),
            bookmark(&b, &bookmark_short_name(b.name.short_name(), &other)),
            bookmark(&b, &bookmark_short_name(b.name.short_name(), &tag)),
        ];
        let state = target(&[on_target(&a), on_target(&b)]);
        let (request, shape, offer) =
            sent(plan(&job(), std::slice::from_ref(&c), &marks, &c, &state));
        // Another receiver's bookmark serves: it is the same snapshot by GUID.
        assert_eq!(
            request.kind,
            SendKind::Incremental {
                from: IncrementalBase::Bookmark(marks[1].name.clone()),
                to: c.name.clone(),
                intermediates: false
            }
        );
        assert_eq!(
            shape,
            StreamShape::Incremental {
                base: marks[1].name.short_name().to_owned(),
                intermediates: false,
                from_bookmark: true
            }
        );
        assert!(matches!(
            offer.kind,
            StreamKind::Incremental { base_guid, intermediates: false, .. } if base_guid == b.guid.0
        ));
        // A snapshot still there wins over its bookmark.
        let (request, ..) = sent(plan(&job(), &[b.clone(), c.clone()], &marks, &c, &state));
        assert!(matches!(
            request.kind,
            SendKind::Incremental { from: IncrementalBase::Snapshot(from), intermediates: true, .. }
                if from == b.name
        ));
        // A bookmark whose GUID this receiver lacks is no base.
        let state = target(&[on_target(&a)]);
        let message = diverged(plan(
            &job(),
            std::slice::from_ref(&c),
            &marks[1..],
            &c,
            &state,
        ));
        assert!(message.contains("none of which tank/data has"), "{message}");
    }

    #[test]
    fn resume_token_finishes_the_stream_or_discards_it() {
        let (a, b) = (zrep(1), zrep(2));
        let info = ResumeTokenInfo {
            to_name: b.name.clone(),
            to_guid: b.guid,
            from_guid: Some(a.guid),
            bytes_done: Some(4096),
        };
        let local = [a.clone(), b.clone()];
        match plan_resume(&job(), &local, "1-abc", Some(&info)) {
            Resume::Finish {
                snapshot,
                request,
                offer,
            } => {
                assert_eq!(snapshot, b.name.short_name());
                assert_eq!(
                    request.kind,
                    SendKind::Resume {
                        token: "1-abc".into()
                    }
                );
                assert_eq!(
                    offer.kind,
                    StreamKind::Resume {
                        token: "1-abc".into()
                    }
                );
                assert_eq!((offer.snapshot.as_str(), Guid(offer.guid)), on_target(&b));
            }
            Resume::Discard => panic!("the stream's snapshot is there"),
        }
        // Its snapshot gone (by GUID), or the token of another dataset, or unreadable: discard.
        assert!(matches!(
            plan_resume(&job(), std::slice::from_ref(&a), "1-abc", Some(&info)),
            Resume::Discard
        ));
        let elsewhere = ResumeTokenInfo {
            to_name: SnapshotName::parse(&format!("tank/other@{}", b.name.short_name())).unwrap(),
            ..info
        };
        assert!(matches!(
            plan_resume(&job(), &local, "1-abc", Some(&elsewhere)),
            Resume::Discard
        ));
        assert!(matches!(
            plan_resume(&job(), &local, "1-abc", None),
            Resume::Discard
        ));
    }

    #[test]
    fn settling_releases_and_prunes_only_zreps_older_snapshots() {
        let (a, b, c, d) = (zrep(1), zrep(2), zrep(3), zrep(4));
        let manual = named("manual", 2);
        let snapshots = [a.clone(), manual, b.clone(), c.clone(), d];
        let now = UNIX_EPOCH + Duration::from_secs(T0 + 3600);
        let settled = settlement(&job(), &snapshots, c.guid, now);
        assert_eq!(settled.release, [&a.name, &b.name]);
        // keep-last 1, but the base and anything newer are never pruned.
        assert_eq!(settled.prune, [&a.name, &b.name]);
        let unknown = settlement(&job(), &snapshots, Guid(5), now);
        assert!(unknown.prune.is_empty());
    }

    #[test]
    fn only_this_receivers_older_bookmarks_are_dropped() {
        let (a, b) = (zrep(1), zrep(2));
        let mine = HoldTag::parse("zrep:backup1").unwrap();
        let theirs = HoldTag::parse("zrep:backup2").unwrap();
        let marks = [
            bookmark(&a, &bookmark_short_name(a.name.short_name(), &mine)),
            bookmark(&a, &bookmark_short_name(a.name.short_name(), &theirs)),
            bookmark(&a, a.name.short_name()),
            bookmark(&a, "by-hand"),
            bookmark(&b, &bookmark_short_name(b.name.short_name(), &mine)),
            bookmark(&b, &bookmark_short_name(b.name.short_name(), &theirs)),
        ];
        assert_eq!(
            stale_bookmarks("zrep", &mine, &marks, b.guid),
            [&marks[0].name]
        );
        assert_eq!(
            stale_bookmarks("zrep", &theirs, &marks, b.guid),
            [&marks[1].name]
        );
    }
}
