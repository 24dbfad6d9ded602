//! `zrep-send status`: every configured dataset's state file, judged against its `max-lag`,
//! and (where the caller asks ZFS, [`add_foreign_holds`]) zrep's snapshots that something other
//! than zrep holds, which keeps them from being pruned.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use serde::Serialize;

use zrep_repl::naming::parse_snapshot_time;
use zrep_zfs::{DatasetName, HoldTag, PropertyName, Zfs, ZfsError};

use crate::config::{DatasetConfig, SendConfig};
use crate::recursive::{is_excluded, member};
use crate::state::{DatasetState, StateDir, unix};

/// A monitoring verdict, ordered from good to bad.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    /// Replicated within the warning lag, last attempt fine.
    Ok,
    /// Lag above `max-lag.warn`, or the last attempt failed.
    Warn,
    /// Lag above `max-lag.crit`, never replicated, or the state is unreadable.
    Crit,
}

impl Health {
    /// The exit status of `status --check` (0 OK, 1 WARN, 2 CRIT, as monitoring plugins use).
    pub fn exit_code(self) -> u8 {
        match self {
            Self::Ok => 0,
            Self::Warn => 1,
            Self::Crit => 2,
        }
    }
}

/// One dataset's status.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct DatasetStatus {
    /// The source dataset.
    pub source: String,
    /// Its target.
    pub target: String,
    /// The verdict.
    pub health: Health,
    /// Why, in words.
    pub reason: String,
    /// Seconds since the newest replicated snapshot was taken.
    pub lag_secs: Option<u64>,
    /// The recorded state (`None`: never recorded).
    pub state: Option<DatasetState>,
    /// zrep's snapshots of this dataset held by something other than zrep (filled by
    /// [`add_foreign_holds`]).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub foreign_holds: Vec<ForeignHold>,
}

/// One of zrep's snapshots with holds that are not zrep's: it cannot be pruned until they are
/// released. A `zfs send -I` killed on zfs-fuse leaves such holds on every snapshot it sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct ForeignHold {
    /// The snapshot's full name.
    pub snapshot: String,
    /// How many of its holds are not zrep's.
    pub count: u64,
    /// Their tags, where this ZFS lists them (`zfs holds`, OpenZFS); `None` on zfs-fuse.
    pub tags: Option<Vec<String>>,
}

impl ForeignHold {
    /// What shows or clears the holds, for humans (names quoted as a shell would need them).
    pub fn remedy(&self) -> String {
        let snap = quoted(&self.snapshot);
        match &self.tags {
            Some(tags) => {
                let releases: Vec<String> = tags
                    .iter()
                    .map(|tag| format!("zfs release {} {snap}", quoted(tag)))
                    .collect();
                format!(
                    "`zfs holds {snap}` shows them; if nothing needs them: `{}`",
                    releases.join("; ")
                )
            }
            None => format!(
                "this ZFS has no `zfs holds`; a killed `zfs send -I` holds as `.send-PID-0` \
                 (its PID is in zrep's log line that killed it): `zfs release .send-PID-0 {snap}`; \
                 `zfs get userrefs {snap}` shows the count"
            ),
        }
    }

    /// One line for the log or the table.
    pub fn describe(&self) -> String {
        let tags = match &self.tags {
            Some(tags) => format!(" ({})", tags.join(", ")),
            None => String::new(),
        };
        format!(
            "{} has {} hold(s) not zrep's{tags}: {}",
            self.snapshot,
            self.count,
            self.remedy()
        )
    }
}

/// zrep's snapshots of `source` (named with `prefix`) held by something other than zrep. zrep
/// itself holds, with `own`, only the newest replicated snapshot (`base`, its short name), and
/// with other `zrep:` tags the bases of other receivers; where ZFS cannot list tags (zfs-fuse)
/// every hold beyond zrep's one on `base` counts.
pub async fn foreign_holds<Z: Zfs>(
    zfs: &Z,
    source: &DatasetName,
    prefix: &str,
    base: Option<&str>,
    own: &HoldTag,
) -> Result<Vec<ForeignHold>, ZfsError> {
    let userrefs = PropertyName::parse("userrefs")?;
    let mut held = Vec::new();
    for snap in zfs.list_snapshots(source, false).await? {
        if parse_snapshot_time(prefix, snap.name.short_name()).is_none() {
            continue;
        }
        let refs: u64 = match zfs.get_property(&snap.name, &userrefs).await? {
            Some(value) => value.value.parse().unwrap_or(0),
            None => 0,
        };
        if refs == 0 {
            continue;
        }
        if zfs.capabilities().holds_scriptable {
            let tags: Vec<String> = zfs
                .hold_tags(&snap.name)
                .await?
                .into_iter()
                .filter(|tag| tag != own.as_str() && !is_zreps(tag))
                .collect();
            if !tags.is_empty() {
                held.push(ForeignHold {
                    snapshot: snap.name.to_string(),
                    count: tags.len() as u64,
                    tags: Some(tags),
                });
            }
            continue;
        }
        let ours = u64::from(base == Some(snap.name.short_name()));
        if refs > ours {
            held.push(ForeignHold {
                snapshot: snap.name.to_string(),
                count: refs - ours,
                tags: None,
            });
        }
    }
    Ok(held)
}

/// zrep's tags: `zrep` and `zrep:<receiver>` (one per receiver a source replicates to).
fn is_zreps(tag: &str) -> bool {
    tag == "zrep" || tag.starts_with("zrep:")
}

/// Fills [`DatasetStatus::foreign_holds`] from ZFS and lets a held snapshot make the verdict at
/// least WARN: it will not be pruned and fills the source. A dataset ZFS cannot answer for keeps
/// its verdict and says so in its reason.
pub async fn add_foreign_holds<Z: Zfs>(
    statuses: &mut [DatasetStatus],
    config: &SendConfig,
    zfs: &Z,
) {
    let own = crate::agent::hold_tag(&config.server_name);
    for status in statuses.iter_mut() {
        let Ok(source) = DatasetName::parse(&status.source) else {
            continue;
        };
        let Some(dataset) = config
            .datasets
            .iter()
            .find(|ds| source == ds.source || source.is_within(&ds.source))
        else {
            continue;
        };
        let base = status
            .state
            .as_ref()
            .and_then(|state| state.last_snapshot.as_deref());
        match foreign_holds(zfs, &source, &dataset.prefix, base, &own).await {
            Ok(held) => {
                if !held.is_empty() {
                    status.health = status.health.max(Health::Warn);
                    status.reason = format!(
                        "{}; {} snapshot(s) held by something other than zrep, not pruned",
                        status.reason,
                        held.len()
                    );
                }
                status.foreign_holds = held;
            }
            Err(err) => {
                status.reason = format!(
                    "{}; holds unknown: {}",
                    status.reason,
                    zrep_cli::one_line(&err)
                );
            }
        }
    }
}

/// Which of zrep's snapshots were last reported as held by something else, per dataset, so that
/// a stuck hold is logged once (and again when the set changes), not every cycle.
#[derive(Debug, Default)]
pub struct HoldsSeen {
    reported: HashMap<DatasetName, Vec<String>>,
}

impl HoldsSeen {
    /// The lines to log for `source` now that `held` is what ZFS shows: one per newly held
    /// snapshot, and one when the last of them was released; nothing when nothing changed.
    pub fn news(&mut self, source: &DatasetName, held: &[ForeignHold]) -> Vec<String> {
        let now: Vec<String> = held.iter().map(|h| h.snapshot.clone()).collect();
        let before = self.reported.remove(source).unwrap_or_default();
        let mut lines: Vec<String> = held
            .iter()
            .filter(|h| !before.contains(&h.snapshot))
            .map(|h| format!("{}; it is not pruned until then", h.describe()))
            .collect();
        if now.is_empty() {
            if !before.is_empty() {
                lines.push(format!(
                    "{source}: no snapshot of zrep's is held by anything else any more"
                ));
            }
        } else {
            self.reported.insert(source.clone(), now);
        }
        lines
    }
}

/// A name as a shell would need it, for the commands shown to humans (never executed).
fn quoted(name: &str) -> String {
    if name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "_-.:/@%+=".contains(c))
    {
        name.to_owned()
    } else {
        format!("'{}'", name.replace('\'', "'\\''"))
    }
}

/// The status of every configured dataset as of `now`.
pub fn evaluate(config: &SendConfig, now: SystemTime) -> Vec<DatasetStatus> {
    let dir = StateDir::new(&config.state_dir);
    config
        .datasets
        .iter()
        .flat_map(|ds| recorded_members(config, ds))
        .map(|ds| {
            let loaded = dir.load(&ds.source);
            let state = loaded.as_ref().ok().cloned().flatten();
            let lag = state.as_ref().and_then(|s| s.lag(now));
            let (health, reason) = match (&loaded, &state, lag) {
                (Err(err), _, _) => (Health::Crit, format!("state unreadable: {err}")),
                (_, None, _) | (_, _, None) => (Health::Crit, "never replicated".to_owned()),
                (_, Some(state), Some(lag)) => judge(state, lag, ds.max_lag),
            };
            DatasetStatus {
                source: ds.source.to_string(),
                target: ds.target.to_string(),
                health,
                reason,
                lag_secs: lag.map(|l| l.as_secs()),
                state,
                foreign_holds: Vec::new(),
            }
        })
        .collect()
}

/// A dataset and, if recursive, the members below it that have a state file (members are
/// listed by ZFS only when replicating).
fn recorded_members(config: &SendConfig, dataset: &DatasetConfig) -> Vec<DatasetConfig> {
    let mut members = vec![dataset.clone()];
    if !dataset.recursive {
        return members;
    }
    members[0].recursive = false;
    let mut below: Vec<DatasetConfig> = std::fs::read_dir(&config.state_dir)
        .into_iter()
        .flatten()
        .filter_map(|entry| {
            let file = entry.ok()?.file_name().into_string().ok()?;
            let name = DatasetName::parse(&file.strip_suffix(".json")?.replace('%', "/")).ok()?;
            let inside = name.is_within(&dataset.source) && name != dataset.source;
            (inside && !is_excluded(dataset, &name))
                .then(|| member(dataset, &name))
                .flatten()
        })
        .collect();
    below.sort_by(|a, b| a.source.as_str().cmp(b.source.as_str()));
    members.extend(below);
    members
}

fn judge(state: &DatasetState, lag: Duration, max: crate::config::MaxLag) -> (Health, String) {
    let human = |d: Duration| humantime_serde::re::humantime::format_duration(d).to_string();
    let lag = Duration::from_secs(lag.as_secs());
    if lag > max.crit {
        return (
            Health::Crit,
            format!("lag {} above {}", human(lag), human(max.crit)),
        );
    }
    if lag > max.warn {
        return (
            Health::Warn,
            format!("lag {} above {}", human(lag), human(max.warn)),
        );
    }
    if let Some(error) = &state.last_error {
        return (Health::Warn, format!("last attempt failed: {error}"));
    }
    (Health::Ok, format!("lag {}", human(lag)))
}

/// The worst verdict (OK for no datasets).
pub fn overall(statuses: &[DatasetStatus]) -> Health {
    statuses
        .iter()
        .map(|s| s.health)
        .max()
        .unwrap_or(Health::Ok)
}

/// Prometheus exposition text of `statuses`.
pub fn prometheus(statuses: &[DatasetStatus]) -> String {
    type Field = fn(&DatasetStatus) -> Option<f64>;
    let families: [(&str, &str, Field); 8] = [
        (
            "zrep_send_health",
            "0 OK, 1 WARN, 2 CRIT, as `status --check`.",
            |s| Some(f64::from(s.health.exit_code())),
        ),
        (
            "zrep_send_lag_seconds",
            "Now minus the creation of the newest replicated snapshot.",
            |s| s.lag_secs.map(|l| l as f64),
        ),
        (
            "zrep_send_last_success_timestamp_seconds",
            "End of the last successful cycle.",
            |s| s.state.as_ref()?.last_success.map(|t| t as f64),
        ),
        (
            "zrep_send_last_attempt_timestamp_seconds",
            "End of the last cycle.",
            |s| s.state.as_ref()?.last_attempt.map(|t| t as f64),
        ),
        (
            "zrep_send_last_attempt_failed",
            "1 if the last cycle failed.",
            |s| {
                Some(if s.state.as_ref()?.last_error.is_some() {
                    1.0
                } else {
                    0.0
                })
            },
        ),
        (
            "zrep_send_last_stream_bytes",
            "Stream bytes of the last successful cycle.",
            |s| s.state.as_ref().map(|st| st.bytes as f64),
        ),
        (
            "zrep_send_last_wire_bytes",
            "Bytes on the wire in the last successful cycle.",
            |s| s.state.as_ref().map(|st| st.wire_bytes as f64),
        ),
        (
            "zrep_send_last_duration_seconds",
            "Duration of the last successful cycle.",
            |s| s.state.as_ref().map(|st| st.duration_secs),
        ),
    ];
    let mut out = zrep_cli::metrics::Exposition::default();
    for (name, help, field) in families {
        out.family(name, "gauge", help);
        for s in statuses {
            if let Some(value) = field(s) {
                out.sample(
                    name,
                    &[("dataset", &s.source), ("target", &s.target)],
                    value,
                );
            }
        }
    }
    out.finish()
}

/// A human table, one line per dataset.
pub fn table(statuses: &[DatasetStatus], now: SystemTime) -> String {
    let mut rows = vec![[
        "DATASET".to_owned(),
        "TARGET".to_owned(),
        "HEALTH".to_owned(),
        "LAST SUCCESS".to_owned(),
        "SNAPSHOT".to_owned(),
        "LAG".to_owned(),
        "BYTES".to_owned(),
        "RATE".to_owned(),
        "DETAIL".to_owned(),
    ]];
    use zrep_cli::human;
    let ago = |t: Option<u64>| match t {
        Some(t) => format!(
            "{} ago",
            human::duration(Duration::from_secs(unix(now).saturating_sub(t)))
        ),
        None => "never".to_owned(),
    };
    for s in statuses {
        let st = s.state.clone().unwrap_or_default();
        rows.push([
            s.source.clone(),
            s.target.clone(),
            format!("{:?}", s.health).to_uppercase(),
            ago(st.last_success),
            st.last_snapshot.unwrap_or_else(|| "-".into()),
            s.lag_secs
                .map_or("-".into(), |l| human::duration(Duration::from_secs(l))),
            human::bytes(st.bytes),
            human::rate(st.rate),
            s.reason.clone(),
        ]);
    }
    let mut out = zrep_cli::table(&rows);
    for s in statuses {
        for held in &s.foreign_holds {
            out.push_str(&format!("held: {}\n", held.describe()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::MaxLag;
    use zrep_zfs::Capabilities;
    use zrep_zfs::fake::FakeZfs;

    fn held(snapshot: &str) -> ForeignHold {
        ForeignHold {
            snapshot: snapshot.to_owned(),
            count: 1,
            tags: None,
        }
    }

    fn name<T>(parsed: Result<T, zrep_zfs::NameError>) -> T {
        parsed.unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn a_stuck_hold_is_reported_once_and_its_release_once() {
        let mut seen = HoldsSeen::default();
        let ds = name(DatasetName::parse("tank/vm"));
        let first = seen.news(&ds, &[held("tank/vm@zrep_1")]);
        assert_eq!(first.len(), 1, "{first:?}");
        assert!(
            first[0].starts_with("tank/vm@zrep_1 has 1 hold(s) not zrep's: "),
            "{first:?}"
        );
        assert!(
            first[0].contains("`zfs release .send-PID-0 tank/vm@zrep_1`"),
            "{first:?}"
        );
        // The next cycles see the same hold: nothing new to say.
        assert_eq!(
            seen.news(&ds, &[held("tank/vm@zrep_1")]),
            Vec::<String>::new()
        );
        // A second one: only it is reported.
        let second = seen.news(&ds, &[held("tank/vm@zrep_1"), held("tank/vm@zrep_2")]);
        assert_eq!(second.len(), 1, "{second:?}");
        assert!(second[0].starts_with("tank/vm@zrep_2 has"), "{second:?}");
        // Released: said once, then silence.
        assert_eq!(
            seen.news(&ds, &[]),
            ["tank/vm: no snapshot of zrep's is held by anything else any more"]
        );
        assert_eq!(seen.news(&ds, &[]), Vec::<String>::new());
    }

    /// A source with zrep's snapshots 1 to 3 (3 the base, held by zrep), a manual one, and
    /// `extra` holds placed on snapshot 2 and on the manual one.
    async fn held_source(caps: Capabilities, extra: &str) -> (FakeZfs, DatasetName, HoldTag) {
        let zfs = FakeZfs::new(caps);
        zfs.create_pool("tank");
        let ds = name(DatasetName::parse("tank/vm store"));
        zfs.create_dataset(&ds, &[], false)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let own = crate::agent::hold_tag("backup1");
        let snap = |short: &str| name(ds.snapshot(short));
        for short in [
            "zrep_20261201T100000Z",
            "zrep_20261201T110000Z",
            "manual",
            "zrep_20261201T120000Z",
        ] {
            zfs.create_snapshot(&snap(short), false)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
        }
        let hold = |tag: &str, short: &str| {
            let (zfs, tag, snap) = (zfs.clone(), name(HoldTag::parse(tag)), snap(short));
            async move {
                zfs.hold(&tag, &snap)
                    .await
                    .unwrap_or_else(|e| panic!("{e}"))
            }
        };
        hold(own.as_str(), "zrep_20261201T120000Z").await;
        // Another receiver's base: zrep's too.
        hold("zrep:backup2", "zrep_20261201T100000Z").await;
        hold(extra, "zrep_20261201T110000Z").await;
        hold(extra, "manual").await;
        (zfs, ds, own)
    }

    #[tokio::test]
    async fn foreign_holds_by_tag_where_zfs_lists_them() {
        let caps = Capabilities::openzfs("2.3.2");
        let (zfs, ds, own) = held_source(caps, "backup-tool").await;
        let held = foreign_holds(&zfs, &ds, "zrep", Some("zrep_20261201T120000Z"), &own)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        // The manual snapshot is not zrep's business; the other receiver's base is zrep's.
        assert_eq!(
            held,
            [ForeignHold {
                snapshot: "tank/vm store@zrep_20261201T110000Z".into(),
                count: 1,
                tags: Some(vec!["backup-tool".into()]),
            }]
        );
        assert_eq!(
            held[0].remedy(),
            "`zfs holds 'tank/vm store@zrep_20261201T110000Z'` shows them; if nothing needs \
             them: `zfs release backup-tool 'tank/vm store@zrep_20261201T110000Z'`"
        );
    }

    #[tokio::test]
    async fn foreign_holds_by_count_on_zfs_fuse() {
        let (zfs, ds, own) = held_source(Capabilities::legacy(), "admin").await;
        let held = foreign_holds(&zfs, &ds, "zrep", Some("zrep_20261201T120000Z"), &own)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let found: Vec<(&str, u64)> = held
            .iter()
            .map(|h| (h.snapshot.as_str(), h.count))
            .collect();
        // Without tags the other receiver's base cannot be told from a stray hold.
        assert_eq!(
            found,
            [
                ("tank/vm store@zrep_20261201T100000Z", 1),
                ("tank/vm store@zrep_20261201T110000Z", 1)
            ]
        );
        assert!(held.iter().all(|h| h.tags.is_none()));
    }

    #[test]
    fn judges_lag_and_errors() {
        let max = MaxLag {
            warn: Duration::from_secs(60),
            crit: Duration::from_secs(300),
        };
        let mut state = DatasetState::default();
        assert_eq!(judge(&state, Duration::from_secs(10), max).0, Health::Ok);
        assert_eq!(judge(&state, Duration::from_secs(61), max).0, Health::Warn);
        assert_eq!(judge(&state, Duration::from_secs(301), max).0, Health::Crit);
        state.last_error = Some("boom".into());
        let (health, reason) = judge(&state, Duration::from_secs(10), max);
        assert_eq!(health, Health::Warn);
        assert!(reason.contains("boom"));
        assert_eq!(Health::Crit.exit_code(), 2);
        assert!(Health::Crit > Health::Warn && Health::Warn > Health::Ok);
    }
}
