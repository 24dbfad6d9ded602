//! One state file per dataset, for `zrep-send status` and monitoring: the last attempt, the last
//! success with its snapshot, GUID, bytes, duration and rate, and the last error. Written
//! atomically (a temporary file in the same directory, fsynced, renamed over the old one), so a
//! reader sees the previous or the new state, never half of one.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tracing::warn;
use zrep_repl::naming::parse_snapshot_time;
use zrep_repl::sender::Replicated;
use zrep_zfs::DatasetName;

use crate::config::{DatasetConfig, SendConfig};

/// What is known about one dataset's replication. Times are seconds since the Unix epoch.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct DatasetState {
    /// The source dataset.
    pub source: String,
    /// Its target under the peer's root.
    pub target: String,
    /// When the last cycle ended, successful or not.
    pub last_attempt: Option<u64>,
    /// When the last successful cycle ended.
    pub last_success: Option<u64>,
    /// Short name of the newest replicated snapshot.
    pub last_snapshot: Option<String>,
    /// Its GUID (a decimal string in JSON).
    #[serde(with = "zrep_cli::guid_json", default)]
    pub last_guid: Option<u64>,
    /// When that snapshot was taken (the time in its name): lag is measured from here.
    pub last_snapshot_time: Option<u64>,
    /// Uncompressed stream bytes of the last successful cycle.
    pub bytes: u64,
    /// Bytes of data frames on the wire in the last successful cycle.
    pub wire_bytes: u64,
    /// Duration of the last successful cycle, in seconds.
    pub duration_secs: f64,
    /// Stream bytes per second of the last successful cycle.
    pub rate: f64,
    /// Why the last attempt failed; `None` after a success.
    pub last_error: Option<String>,
}

impl DatasetState {
    /// Seconds from the newest replicated snapshot's creation to `now`.
    pub fn lag(&self, now: SystemTime) -> Option<Duration> {
        let taken = UNIX_EPOCH + Duration::from_secs(self.last_snapshot_time?);
        Some(now.duration_since(taken).unwrap_or(Duration::ZERO))
    }
}

/// The directory of the state files.
#[derive(Debug, Clone)]
pub struct StateDir {
    dir: PathBuf,
}

impl StateDir {
    /// State files live in `dir` (created on the first write).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The file for `source`: its name with `/` as `%` (which no dataset name contains).
    pub fn path_for(&self, source: &DatasetName) -> PathBuf {
        self.dir
            .join(format!("{}.json", source.as_str().replace('/', "%")))
    }

    /// Takes the lock of `source` (an exclusive `flock` on `<state file>.lock`), or `None` if
    /// another process (a `zrep-send run`, or a `once` from cron) holds it. Held until the file
    /// is dropped; the kernel drops it with the process.
    pub fn try_lock(&self, source: &DatasetName) -> std::io::Result<Option<std::fs::File>> {
        std::fs::create_dir_all(&self.dir)?;
        let mut path = self.path_for(source).into_os_string();
        path.push(".lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)?;
        match file.try_lock() {
            Ok(()) => Ok(Some(file)),
            Err(std::fs::TryLockError::WouldBlock) => Ok(None),
            Err(std::fs::TryLockError::Error(err)) => Err(err),
        }
    }

    /// The state of `source`, or `None` if it was never recorded.
    pub fn load(&self, source: &DatasetName) -> std::io::Result<Option<DatasetState>> {
        match std::fs::read(self.path_for(source)) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(std::io::Error::other),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(err) => Err(err),
        }
    }

    /// Replaces the state of `state.source` atomically.
    pub fn store(&self, source: &DatasetName, state: &DatasetState) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        let path = self.path_for(source);
        let json = serde_json::to_vec_pretty(state).map_err(std::io::Error::other)?;
        write_atomically(&path, &json)
    }

    /// Records a successful cycle that ended at `now`.
    pub fn record_success(
        &self,
        source: &DatasetName,
        target: &str,
        prefix: &str,
        done: &Replicated,
        now: SystemTime,
    ) -> std::io::Result<()> {
        let mut state = self.load(source).ok().flatten().unwrap_or_default();
        let secs = done.elapsed.as_secs_f64();
        state.source = source.to_string();
        state.target = target.to_owned();
        state.last_attempt = Some(unix(now));
        state.last_success = Some(unix(now));
        state.last_snapshot = Some(done.snapshot.short_name().to_owned());
        state.last_guid = Some(done.guid.0);
        state.last_snapshot_time =
            parse_snapshot_time(prefix, done.snapshot.short_name()).map(unix);
        state.bytes = done.stream_bytes;
        state.wire_bytes = done.wire_bytes;
        state.duration_secs = secs;
        state.rate = if secs > 0.0 {
            done.stream_bytes as f64 / secs
        } else {
            0.0
        };
        state.last_error = None;
        self.store(source, &state)
    }

    /// Records a failed attempt at `now`; what the last success achieved stays.
    pub fn record_failure(
        &self,
        source: &DatasetName,
        target: &str,
        error: &str,
        now: SystemTime,
    ) -> std::io::Result<()> {
        let mut state = self.load(source).ok().flatten().unwrap_or_default();
        state.source = source.to_string();
        state.target = target.to_owned();
        state.last_attempt = Some(unix(now));
        state.last_error = Some(error.to_owned());
        self.store(source, &state)
    }
}

/// Records the outcome of one dataset's cycle, ended at `now`, in the state directory of
/// `config`. A state file that cannot be written costs monitoring, not the replication: warn.
pub fn record<E: std::fmt::Display>(
    config: &SendConfig,
    dataset: &DatasetConfig,
    outcome: Result<&Replicated, E>,
    now: SystemTime,
) {
    let dir = StateDir::new(&config.state_dir);
    let target = dataset.target.as_str();
    let written = match outcome {
        Ok(done) => dir.record_success(&dataset.source, target, &dataset.prefix, done, now),
        Err(error) => dir.record_failure(&dataset.source, target, &error.to_string(), now),
    };
    if let Err(err) = written {
        warn!(dataset = %dataset.source, path = %dir.path_for(&dataset.source).display(), cause = %zrep_cli::one_line(&err), "cannot write the state file");
    }
}

/// Takes the lock of `dataset`, or says why not (for its `NOT replicated` line).
pub fn try_lock(config: &SendConfig, dataset: &DatasetConfig) -> Result<std::fs::File, String> {
    let dir = StateDir::new(&config.state_dir);
    match dir.try_lock(&dataset.source) {
        Ok(Some(lock)) => Ok(lock),
        Ok(None) => Err(
            "another zrep-send (a running `zrep-send run`, or `once`) is replicating it".to_owned(),
        ),
        Err(err) => Err(format!(
            "cannot take its lock in {}: {err}",
            config.state_dir.display()
        )),
    }
}

/// Seconds since the Unix epoch.
pub fn unix(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs()
}

/// Writes `path` through a temporary file in the same directory and a rename.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use zrep_repl::sender::StreamShape;
    use zrep_zfs::Guid;

    fn done(short: &str) -> Replicated {
        Replicated {
            snapshot: DatasetName::parse("tank/a b")
                .unwrap()
                .snapshot(short)
                .unwrap(),
            guid: Guid(42),
            shape: StreamShape::Full,
            stream_bytes: 1000,
            wire_bytes: 500,
            elapsed: Duration::from_secs(2),
            pruned: Vec::new(),
            resumed: None,
        }
    }

    #[test]
    fn success_then_failure_keeps_the_success() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::new(tmp.path().join("state"));
        let source = DatasetName::parse("tank/a b").unwrap();
        assert_eq!(dir.load(&source).unwrap(), None);
        let now = UNIX_EPOCH + Duration::from_secs(1_795_758_560);
        dir.record_success(&source, "a b", "zrep", &done("zrep_20261127T054910Z"), now)
            .unwrap();
        let state = dir.load(&source).unwrap().unwrap();
        assert_eq!(state.last_guid, Some(42));
        assert_eq!(state.rate, 500.0);
        assert_eq!(state.lag(now), Some(Duration::from_secs(10)));
        let later = now + Duration::from_secs(60);
        dir.record_failure(&source, "a b", "connection refused", later)
            .unwrap();
        let state = dir.load(&source).unwrap().unwrap();
        assert_eq!(state.last_success, Some(unix(now)));
        assert_eq!(state.last_attempt, Some(unix(later)));
        assert_eq!(state.last_error.as_deref(), Some("connection refused"));
        assert_eq!(state.lag(later), Some(Duration::from_secs(70)));
        assert!(dir.path_for(&source).ends_with("tank%a b.json"));
        let lock = dir.try_lock(&source).unwrap().unwrap();
        assert!(dir.try_lock(&source).unwrap().is_none(), "exclusive");
        drop(lock);
        assert!(dir.try_lock(&source).unwrap().is_some());
        std::fs::remove_file(tmp.path().join("state/tank%a b.json.lock")).unwrap();
        // Only the state file is left: the temporary one was renamed.
        assert_eq!(
            std::fs::read_dir(tmp.path().join("state")).unwrap().count(),
            1
        );
    }
}
