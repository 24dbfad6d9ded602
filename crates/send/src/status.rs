//! `zrep-send status`: every configured dataset's state file, judged against its `max-lag`.

use std::time::{Duration, SystemTime};

use serde::Serialize;

use zrep_zfs::DatasetName;

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
    let ago = |t: Option<u64>| match t {
        Some(t) => format!("{}s ago", unix(now).saturating_sub(t)),
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
            s.lag_secs.map_or("-".into(), |l| format!("{l}s")),
            st.bytes.to_string(),
            format!("{:.0} B/s", st.rate),
            s.reason.clone(),
        ]);
    }
    let widths: Vec<usize> = (0..9)
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::MaxLag;

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
