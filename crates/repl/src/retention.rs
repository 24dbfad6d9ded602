//! Retention of zrep's own snapshots: keep the last N plus a time grid, decided purely from the
//! snapshots' times and "now". The same policy type serves the sender (its source snapshots) and
//! the receiver (each peer's targets).
//!
//! A grid is a list of `PERIOD:COUNT` rules, e.g. `"1h:24, 1d:30"`: for each rule, the oldest
//! snapshot of each of the `COUNT` most recent periods of length `PERIOD` (aligned to the Unix
//! epoch, so UTC hours and days) is kept. Taking the oldest one of a period means a kept snapshot
//! stays kept as newer ones arrive, until its period falls off the grid. Everything the rules and
//! `last` do not keep goes, except what the caller protects (the newest common or newest
//! received snapshot and anything newer).

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// What to keep of zrep's snapshots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeepPolicy {
    /// The newest `last` snapshots are kept.
    pub last: usize,
    /// Time-grid rules, kept in addition to `last`.
    pub grid: Vec<GridRule>,
}

/// One grid rule: the oldest snapshot of each of the `count` most recent `period`s.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GridRule {
    /// Length of a period (at least one second).
    pub period: Duration,
    /// How many periods, counting back from the one that contains "now".
    pub count: u32,
}

/// Why a grid specification is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "grid {spec:?}: {reason} (expected e.g. \"1h:24, 1d:30\": PERIOD:COUNT with units s m h d w)"
)]
pub struct GridError {
    /// The specification as given.
    pub spec: String,
    /// What is wrong.
    pub reason: String,
}

impl KeepPolicy {
    /// Keep the newest `last` only.
    pub fn last(last: usize) -> Self {
        Self {
            last,
            grid: Vec::new(),
        }
    }

    /// The snapshots to destroy, as indices into `times` (the times of zrep's own snapshots,
    /// oldest first), in ascending order. Index `protect_from` and everything after it are never
    /// among them, whatever the policy says; pass `times.len() - 1` to protect the newest.
    pub fn doomed(&self, times: &[SystemTime], protect_from: usize, now: SystemTime) -> Vec<usize> {
        let mut keep = vec![false; times.len()];
        for flag in keep.iter_mut().rev().take(self.last) {
            *flag = true;
        }
        for flag in keep.iter_mut().skip(protect_from) {
            *flag = true;
        }
        let now_secs = secs(now);
        for rule in &self.grid {
            let period = rule.period.as_secs().max(1);
            if rule.count == 0 {
                continue;
            }
            let current = now_secs / period;
            let oldest_bucket = current.saturating_sub(u64::from(rule.count) - 1);
            let mut seen = std::collections::HashSet::new();
            for (i, time) in times.iter().enumerate() {
                let bucket = secs(*time) / period;
                // Times in the future (clock skew) count as the current period.
                let bucket = bucket.min(current);
                if bucket >= oldest_bucket && seen.insert(bucket) {
                    keep[i] = true; // the first seen is the oldest of its period
                }
            }
        }
        keep.iter()
            .enumerate()
            .filter(|(_, kept)| !**kept)
            .map(|(i, _)| i)
            .collect()
    }
}

impl Default for KeepPolicy {
    /// The newest common snapshot only.
    fn default() -> Self {
        Self::last(1)
    }
}

impl fmt::Display for KeepPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "last {}", self.last)?;
        if !self.grid.is_empty() {
            let rules: Vec<String> = self.grid.iter().map(GridRule::to_string).collect();
            write!(f, ", grid {}", rules.join(", "))?;
        }
        Ok(())
    }
}

impl fmt::Display for GridRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.period.as_secs();
        let (n, unit) = [(604_800, 'w'), (86_400, 'd'), (3600, 'h'), (60, 'm')]
            .into_iter()
            .find(|(u, _)| s.is_multiple_of(*u))
            .map_or((s, 's'), |(u, c)| (s / u, c));
        write!(f, "{n}{unit}:{}", self.count)
    }
}

/// Parses a grid: comma-separated `PERIOD:COUNT` rules; empty means no grid.
pub fn parse_grid(spec: &str) -> Result<Vec<GridRule>, GridError> {
    let err = |reason: String| GridError {
        spec: spec.to_owned(),
        reason,
    };
    let mut rules = Vec::new();
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (period, count) = part
            .split_once(':')
            .ok_or_else(|| err(format!("{part:?} lacks ':'")))?;
        let period = parse_period(period.trim()).map_err(|r| err(format!("{part:?}: {r}")))?;
        let count: u32 = count
            .trim()
            .parse()
            .map_err(|_| err(format!("{part:?}: COUNT must be a whole number")))?;
        if count == 0 {
            return Err(err(format!("{part:?}: COUNT must be at least 1")));
        }
        rules.push(GridRule { period, count });
    }
    Ok(rules)
}

impl FromStr for GridRule {
    type Err = GridError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match parse_grid(s)?.as_slice() {
            [rule] => Ok(*rule),
            _ => Err(GridError {
                spec: s.to_owned(),
                reason: "expected exactly one rule".into(),
            }),
        }
    }
}

fn parse_period(text: &str) -> Result<Duration, String> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or("PERIOD needs a unit")?;
    let (number, unit) = text.split_at(split);
    let n: u64 = number.parse().map_err(|_| "PERIOD needs a number")?;
    let unit_secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 604_800,
        other => return Err(format!("unknown unit {other:?}")),
    };
    match n.checked_mul(unit_secs) {
        Some(0) => Err("PERIOD must be positive".into()),
        Some(s) => Ok(Duration::from_secs(s)),
        None => Err("PERIOD too large".into()),
    }
}

fn secs(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs()
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: u64 = 3600;
    const DAY: u64 = 86_400;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn parses_grids_and_refuses_nonsense() {
        let grid = parse_grid("1h:24, 1d:30,2w:4").unwrap();
        assert_eq!(
            grid,
            [
                GridRule {
                    period: Duration::from_secs(HOUR),
                    count: 24
                },
                GridRule {
                    period: Duration::from_secs(DAY),
                    count: 30
                },
                GridRule {
                    period: Duration::from_secs(14 * DAY),
                    count: 4
                },
            ]
        );
        assert_eq!(parse_grid("").unwrap(), []);
        let policy = KeepPolicy { last: 3, grid };
        assert_eq!(policy.to_string(), "last 3, grid 1h:24, 1d:30, 2w:4");
        for bad in ["1h", "h:3", "1x:3", "0h:3", "1h:0", "1h:-1", "1h:a"] {
            assert!(parse_grid(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn keep_last_keeps_the_newest() {
        let times: Vec<_> = (0..5).map(|i| at(i * 10)).collect();
        assert_eq!(KeepPolicy::last(2).doomed(&times, 4, at(100)), [0, 1, 2]);
        assert_eq!(
            KeepPolicy::last(10).doomed(&times, 4, at(100)),
            Vec::<usize>::new()
        );
    }

    #[test]
    fn the_protected_snapshot_survives_any_policy() {
        // "The policy would delete the base": last = 0 and no grid still keeps it.
        let times: Vec<_> = (0..4).map(|i| at(i * 10)).collect();
        let none = KeepPolicy::last(0);
        assert_eq!(none.doomed(&times, 3, at(100)), [0, 1, 2]);
        // The base is not the newest (newer, unreplicated snapshots exist): all of those stay.
        assert_eq!(none.doomed(&times, 1, at(100)), [0]);
        assert_eq!(none.doomed(&[], 0, at(100)), Vec::<usize>::new());
    }

    #[test]
    fn grid_keeps_the_oldest_of_each_recent_period() {
        let now = at(10 * DAY + 5 * HOUR + 30 * 60);
        // Every 20 minutes over the last 30 hours.
        let times: Vec<_> = (0..90)
            .map(|i| at(10 * DAY + 5 * HOUR + 30 * 60 - (89 - i) * 20 * 60))
            .collect();
        let policy = KeepPolicy {
            last: 1,
            grid: parse_grid("1h:3").unwrap(),
        };
        let doomed = policy.doomed(&times, times.len() - 1, now);
        let kept: Vec<u64> = (0..times.len())
            .filter(|i| !doomed.contains(i))
            .map(|i| secs(times[i]))
            .collect();
        // The oldest of hours 3, 4 and 5 of day 10, plus the newest.
        assert_eq!(
            kept,
            [
                10 * DAY + 3 * HOUR + 10 * 60,
                10 * DAY + 4 * HOUR + 10 * 60,
                10 * DAY + 5 * HOUR + 10 * 60,
                10 * DAY + 5 * HOUR + 30 * 60,
            ]
        );
        // Stable: a new snapshot later in the hour changes nothing for the older ones.
        let mut later = times.clone();
        later.push(at(10 * DAY + 5 * HOUR + 50 * 60));
        let doomed_later =
            policy.doomed(&later, later.len() - 1, at(10 * DAY + 5 * HOUR + 55 * 60));
        for i in [82, 85, 88] {
            assert!(!doomed.contains(&i) && !doomed_later.contains(&i), "{i}");
        }
    }

    #[test]
    fn grid_rules_combine() {
        let now = at(40 * DAY - 1);
        // One snapshot per 6 hours over 40 days.
        let times: Vec<_> = (0..160).map(|i| at(i * 6 * HOUR)).collect();
        let policy = KeepPolicy {
            last: 2,
            grid: parse_grid("6h:4, 1d:7").unwrap(),
        };
        let doomed = policy.doomed(&times, times.len() - 1, now);
        let kept = times.len() - doomed.len();
        // The last day's four from the 6h rule (the newest two among them; its oldest is also
        // that day's 1d pick), and six earlier days from the 1d rule.
        assert_eq!(kept, 4 + 6);
    }
}
