//! The agent of `once` and `run` against FakeZfs and an in-memory receiver
//! (`zrep_repl::receiver::serve` over `tokio::io::duplex`), with paused time: schedules,
//! backoff and shutdown are checked in virtual seconds, without sockets or processes.

// A failed unwrap is a failed test, with the value in the message.
#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use tokio::io::DuplexStream;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep};
use zrep_proto::{ReceiverSession, SessionConfig};
use zrep_repl::receiver::{ReceiverPolicy, ServeError, TargetLocks, serve};
use zrep_repl::sender::{Progress, ProgressSink};
use zrep_repl::transport::Connection;
use zrep_send::agent::{
    Agent, BACKOFF_MAX, Connect, ConnectError, RunOutcome, StopRequests, StopSender,
};
use zrep_send::config::SendConfig;
use zrep_send::state::{DatasetState, StateDir};
use zrep_tls::{CertificateAuthority, DEFAULT_CA_TTL, write_cert_file};
use zrep_zfs::fake::{FakeOp, FakeZfs};
use zrep_zfs::{Capabilities, DatasetName, Guid, RelativeName, Zfs};

const RECEIVER: &str = "backup.test:7711";
/// The wall clock at virtual time zero.
const EPOCH_SECS: u64 = 1_795_000_000;

/// A receiver session's task.
type Served = JoinHandle<Result<(), ServeError>>;

/// A receiver in memory: each connection is a duplex pipe served by `serve` on its own task.
#[derive(Clone)]
struct MemReceiver {
    dst: FakeZfs,
    root: DatasetName,
    locks: TargetLocks,
    /// This many more connection attempts are refused.
    refuse: Arc<AtomicUsize>,
    /// Connection attempts hang (an unanswered SYN).
    hang: Arc<std::sync::atomic::AtomicBool>,
    /// When each attempt was made (virtual time).
    attempts: Arc<Mutex<Vec<Instant>>>,
    sessions: Arc<Mutex<Vec<Served>>>,
}

impl Connect for MemReceiver {
    type Stream = DuplexStream;

    async fn connect(&self) -> Result<DuplexStream, ConnectError> {
        self.attempts.lock().unwrap().push(Instant::now());
        if self.hang.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        let refused = self
            .refuse
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if refused {
            return Err(ConnectError::Tcp {
                receiver: RECEIVER.into(),
                source: std::io::Error::from_raw_os_error(111),
            });
        }
        let (ours, theirs) = tokio::io::duplex(256 * 1024);
        let (reader, writer) = tokio::io::split(theirs);
        let policy = ReceiverPolicy {
            write_timeout: Duration::from_secs(10),
            locks: self.locks.clone(),
            ..ReceiverPolicy::new("nas1", self.root.clone())
        };
        let dst = self.dst.clone();
        let session = tokio::spawn(async move {
            let session = ReceiverSession::new(SessionConfig::default(), Duration::ZERO);
            let mut conn = Connection::new(
                session,
                reader,
                writer,
                std::time::Instant::now(),
                Duration::from_secs(10),
            );
            serve(&dst, &mut conn, &policy).await
        });
        self.sessions.lock().unwrap().push(session);
        Ok(ours)
    }
}

impl MemReceiver {
    fn attempts(&self) -> Vec<Instant> {
        self.attempts.lock().unwrap().clone()
    }

    /// How each session served so far ended (all must have ended).
    async fn ended(&self) -> Vec<Result<(), ServeError>> {
        let sessions: Vec<_> = self.sessions.lock().unwrap().drain(..).collect();
        let mut ends = Vec::new();
        for session in sessions {
            ends.push(session.await.unwrap());
        }
        ends
    }
}

struct Bed {
    dir: tempfile::TempDir,
    src: FakeZfs,
    receiver: MemReceiver,
    lines: Arc<Mutex<Vec<String>>>,
    start: Instant,
}

impl Bed {
    /// Datasets `tank/<name>` with a file each; a receiver with root `backup/nas1`.
    async fn new(names: &[&str]) -> Self {
        let src = FakeZfs::new(Capabilities::legacy());
        let dst = FakeZfs::new(Capabilities::legacy());
        let pool = src.create_pool("tank");
        for name in names {
            let dataset = pool.child(name).unwrap();
            src.create_dataset(&dataset, &[], true).await.unwrap();
            src.write_file(&dataset, "data", name.as_bytes());
        }
        let backup = dst.create_pool("backup");
        let dir = tempfile::tempdir().unwrap();
        // A certificate far from renewal: renewal is checked and not due.
        let ca = CertificateAuthority::generate("zrep CA", DEFAULT_CA_TTL).unwrap();
        let cert = ca
            .issue_peer_cert(&"nas1".parse().unwrap(), Duration::from_secs(365 * 86_400))
            .unwrap();
        write_cert_file(&dir.path().join("sender.pem"), cert.cert_pem()).unwrap();
        Self {
            dir,
            src,
            receiver: MemReceiver {
                dst,
                root: backup.child("nas1").unwrap(),
                locks: TargetLocks::default(),
                refuse: Arc::default(),
                hang: Arc::default(),
                attempts: Arc::default(),
                sessions: Arc::default(),
            },
            lines: Arc::default(),
            start: Instant::now(),
        }
    }

    fn config(&self, interval: &str, names: &[&str]) -> SendConfig {
        self.config_with(interval, names, "")
    }

    /// With `extra` top-level settings.
    fn config_with(&self, interval: &str, names: &[&str], extra: &str) -> SendConfig {
        let mut text = format!(
            "receiver = \"{RECEIVER}\"\nserver-name = \"backup1\"\ncert = \"sender.pem\"\n\
             key = \"sender.key\"\nca = \"ca.pem\"\ninterval = \"{interval}\"\n{extra}\n"
        );
        for name in names {
            text.push_str(&format!("[[dataset]]\nsource = \"tank/{name}\"\n"));
        }
        SendConfig::parse(&text, &self.dir.path().join("send.toml")).unwrap()
    }

    fn agent(&self, config: SendConfig) -> Agent<FakeZfs, MemReceiver> {
        let lines = self.lines.clone();
        let start = self.start;
        Agent::new(config, self.src.clone(), self.receiver.clone())
            .with_output(Arc::new(move |line| {
                lines.lock().unwrap().push(line.to_owned())
            }))
            .with_clock(Arc::new(move || {
                UNIX_EPOCH + Duration::from_secs(EPOCH_SECS) + start.elapsed()
            }))
    }

    fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    fn state(&self, name: &str) -> DatasetState {
        StateDir::new(self.dir.path())
            .load(&source(name))
            .unwrap()
            .unwrap_or_else(|| panic!("no state recorded for {name}"))
    }

    fn target(&self, name: &str) -> DatasetName {
        self.receiver
            .root
            .join(&RelativeName::parse(name).unwrap())
            .unwrap()
    }

    /// Short names and GUIDs of the snapshots of `tank/<name>` on the receiver (none if the
    /// target does not exist).
    async fn received(&self, name: &str) -> Vec<(String, Guid)> {
        snapshots(&self.receiver.dst, &self.target(name)).await
    }

    fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }
}

/// What a refused connection says (the system's words for ECONNREFUSED).
fn refused() -> String {
    format!(
        "connecting to {RECEIVER}: {}",
        std::io::Error::from_raw_os_error(111)
    )
}

fn source(name: &str) -> DatasetName {
    DatasetName::parse(&format!("tank/{name}")).unwrap()
}

async fn snapshots(zfs: &FakeZfs, dataset: &DatasetName) -> Vec<(String, Guid)> {
    if !zfs.exists(dataset).await.unwrap() {
        return Vec::new();
    }
    zfs.list_snapshots(dataset, false)
        .await
        .unwrap()
        .into_iter()
        .map(|s| (s.name.short_name().to_owned(), s.guid))
        .collect()
}

/// One stop request after `after` (virtual time).
fn stop_after(after: Duration) -> StopRequests {
    let (tx, requests) = StopRequests::channel();
    tokio::spawn(async move {
        sleep(after).await;
        let _ = tx.send("test");
    });
    requests
}

/// The newest progress report (stream bytes, stream ended), to stop on what a transfer did rather
/// than at a guessed time.
fn progress_watch() -> (ProgressSink, watch::Receiver<(u64, bool)>) {
    let (tx, rx) = watch::channel((0, false));
    let sink = ProgressSink(Arc::new(move |p: &Progress| {
        tx.send_replace((p.stream_bytes, p.done));
    }));
    (sink, rx)
}

/// A condition on the newest progress report (stream bytes, stream ended).
type OnProgress = Box<dyn Fn(&(u64, bool)) -> bool + Send + Sync>;

/// Sends one stop request per `when` condition on the progress, each after the one before,
/// and records the virtual time of each.
fn stop_on_progress(
    mut progress: watch::Receiver<(u64, bool)>,
    when: Vec<OnProgress>,
) -> (StopRequests, Arc<Mutex<Vec<Instant>>>) {
    let (tx, requests): (StopSender, _) = StopRequests::channel();
    let sent = Arc::new(Mutex::new(Vec::new()));
    let times = sent.clone();
    tokio::spawn(async move {
        for condition in when {
            if progress.wait_for(|p| condition(p)).await.is_err() {
                return;
            }
            times.lock().unwrap().push(Instant::now());
            let _ = tx.send("test");
        }
    });
    (requests, sent)
}

/// 4 MiB that do not compress: at `bandwidth-limit = "100kB/s"` about 40 s of stream.
fn noise() -> Vec<u8> {
    let mut x = 0x9e37_79b9_7f4a_7c15_u64;
    (0..4 << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// The name zrep gives the snapshot of a cycle at virtual second `t`.
fn snapshot_at(t: u64) -> String {
    zrep_repl::naming::snapshot_short_name("zrep", UNIX_EPOCH + Duration::from_secs(EPOCH_SECS + t))
}

#[tokio::test(start_paused = true)]
async fn once_over_two_datasets_replicates_both_and_records_state() {
    let bed = Bed::new(&["a", "b"]).await;
    let agent = bed.agent(bed.config("1h", &["a", "b"]));
    assert_eq!(agent.once().await, RunOutcome::AllReplicated);

    let snapshot = snapshot_at(0);
    let lines = bed.lines();
    assert_eq!(lines.len(), 2, "{lines:?}");
    for (line, name) in lines.iter().zip(["a", "b"]) {
        let head = format!("tank/{name}@{snapshot} replicated to {RECEIVER} (");
        assert!(line.starts_with(&head), "{line}");
        assert!(line.contains(", full, "), "{line}");
    }
    for name in ["a", "b"] {
        let sent = snapshots(&bed.src, &source(name)).await;
        assert_eq!(bed.received(name).await, sent);
        assert_eq!(sent.len(), 1);
        assert_eq!(
            bed.receiver.dst.files(&bed.target(name)),
            bed.src.files(&source(name))
        );
        let state = bed.state(name);
        assert_eq!(state.source, format!("tank/{name}"));
        assert_eq!(state.target, name);
        assert_eq!(state.last_snapshot.as_deref(), Some(snapshot.as_str()));
        assert_eq!(state.last_guid, Some(sent[0].1.0));
        assert_eq!(state.last_success, Some(EPOCH_SECS));
        assert_eq!(state.last_snapshot_time, Some(EPOCH_SECS));
        assert_eq!(state.last_error, None);
        assert!(state.bytes > 0 && state.wire_bytes > 0, "{state:?}");
    }
    // Both over one session, ended with Bye (the receiver's serve returns Ok only then).
    assert_eq!(bed.receiver.attempts().len(), 1);
    let ends = bed.receiver.ended().await;
    assert!(matches!(ends[..], [Ok(())]), "{ends:?}");
}

#[tokio::test(start_paused = true)]
async fn once_reports_a_receiver_that_is_gone_per_dataset() {
    let bed = Bed::new(&["a", "b"]).await;
    bed.receiver.refuse.store(usize::MAX, Ordering::SeqCst);
    let agent = bed.agent(bed.config("1h", &["a", "b"]));
    assert_eq!(agent.once().await, RunOutcome::SomeFailed);
    let why = refused();
    assert_eq!(
        bed.lines(),
        [
            format!("tank/a NOT replicated to {RECEIVER}: {why}"),
            format!("tank/b NOT replicated to {RECEIVER}: {why}"),
        ]
    );
    // Each dataset tried once, no backoff in `once`.
    assert_eq!(bed.receiver.attempts().len(), 2);
    assert_eq!(bed.elapsed(), Duration::ZERO);
    for name in ["a", "b"] {
        let state = bed.state(name);
        assert_eq!(state.last_error.as_deref(), Some(why.as_str()));
        assert_eq!(state.last_attempt, Some(EPOCH_SECS));
        assert_eq!(state.last_success, None);
    }
}

#[tokio::test(start_paused = true)]
async fn run_at_an_interval_does_n_cycles_in_n_intervals_over_one_session() {
    // 150 s between cycles is more than the receiver's 60 s idle limit: the session survives
    // only on the heartbeats sent while idle.
    const INTERVAL: u64 = 150;
    const CYCLES: u64 = 4;
    let bed = Bed::new(&["a"]).await;
    let agent = bed.agent(bed.config(&format!("{INTERVAL}s"), &["a"]));
    let stop = Duration::from_secs(CYCLES * INTERVAL - 1);
    agent.run(stop_after(stop), None).await;
    assert_eq!(bed.elapsed(), stop, "stops when told");

    let expected: Vec<String> = (0..CYCLES).map(|i| snapshot_at(i * INTERVAL)).collect();
    let received = bed.received("a").await;
    let names: Vec<&str> = received.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, expected);
    let lines = bed.lines();
    assert_eq!(lines.len(), CYCLES as usize, "{lines:?}");
    assert!(
        lines[1].contains(&format!("-I from @{}", expected[0])),
        "{lines:?}"
    );
    let state = bed.state("a");
    assert_eq!(
        state.last_snapshot.as_deref(),
        expected.last().map(String::as_str)
    );
    assert_eq!(
        state.last_success,
        Some(EPOCH_SECS + (CYCLES - 1) * INTERVAL)
    );
    assert_eq!(state.last_guid, Some(received.last().unwrap().1.0));
    assert_eq!(
        bed.receiver.attempts().len(),
        1,
        "one session for all cycles"
    );
    let ends = bed.receiver.ended().await;
    assert!(matches!(ends[..], [Ok(())]), "{ends:?}");
}

#[tokio::test(start_paused = true)]
async fn run_backs_off_while_the_receiver_is_gone_and_reconnects_when_it_returns() {
    const REFUSED: usize = 9;
    let bed = Bed::new(&["a"]).await;
    bed.receiver.refuse.store(REFUSED, Ordering::SeqCst);
    let agent = bed.agent(bed.config("1h", &["a"]));
    let while_gone = async {
        sleep(Duration::from_secs(100)).await;
        let state = bed.state("a");
        assert_eq!(state.last_error.as_deref(), Some(refused().as_str()));
        assert_eq!(state.last_success, None);
        assert!(bed.received("a").await.is_empty());
    };
    tokio::join!(
        agent.run(stop_after(Duration::from_secs(600)), None),
        while_gone
    );

    let attempts = bed.receiver.attempts();
    assert_eq!(attempts.len(), REFUSED + 1, "{attempts:?}");
    assert_eq!(attempts[0], bed.start, "the first attempt at once");
    for (i, pair) in attempts.windows(2).enumerate() {
        let base = Duration::from_secs(1 << i).min(BACKOFF_MAX).as_secs_f64();
        let gap = (pair[1] - pair[0]).as_secs_f64();
        assert!(
            gap >= 0.75 * base && gap < 1.25 * base,
            "retry {}: {gap} s, expected {base} s ± 25 %",
            i + 1
        );
    }
    // Reconnected: the cycle ran at once, and the next one is an hour later.
    let back = attempts[REFUSED] - bed.start;
    let received = bed.received("a").await;
    assert_eq!(received.len(), 1, "{received:?}");
    assert_eq!(received[0].0, snapshot_at(back.as_secs()));
    let state = bed.state("a");
    assert_eq!(state.last_error, None);
    assert_eq!(state.last_guid, Some(received[0].1.0));
    let ends = bed.receiver.ended().await;
    assert!(matches!(ends[..], [Ok(())]), "{ends:?}");
}

#[tokio::test(start_paused = true)]
async fn shutdown_between_cycles_ends_the_session_with_bye() {
    let bed = Bed::new(&["a"]).await;
    let agent = bed.agent(bed.config("60s", &["a"]));
    agent.run(stop_after(Duration::from_secs(30)), None).await;
    // At once: no linger, since the receiver closes on our Bye.
    assert_eq!(bed.elapsed(), Duration::from_secs(30));
    assert_eq!(bed.received("a").await.len(), 1);
    assert_eq!(bed.lines().len(), 1);
    assert_eq!(bed.state("a").last_error, None);
    let ends = bed.receiver.ended().await;
    assert!(matches!(ends[..], [Ok(())]), "{ends:?}");
}

#[tokio::test(start_paused = true)]
async fn a_stop_while_the_receiver_commits_lets_the_commit_land_within_the_grace() {
    // The receiver's `zfs receive` takes 30 s to finish after the stream: the stop comes while
    // the sender waits for the commit, and the grace (60 s) outlasts it.
    const COMMIT: Duration = Duration::from_secs(30);
    let bed = Bed::new(&["a"]).await;
    bed.receiver.dst.set_latency(FakeOp::Receive, COMMIT);
    let (sink, progress) = progress_watch();
    let (stop, sent) = stop_on_progress(progress, vec![Box::new(|&(_, done)| done)]);
    let agent = bed
        .agent(bed.config_with("1h", &["a"], "shutdown-grace = \"60s\""))
        .with_progress(sink);
    agent.run(stop, None).await;
    let stopped_at = sent.lock().unwrap()[0] - bed.start;
    let took = bed.elapsed() - stopped_at;
    assert!(
        took >= COMMIT.mul_f64(0.99) && took < Duration::from_secs(60),
        "ended {took:?} after the stop, the commit took {COMMIT:?}"
    );
    let lines = bed.lines();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].starts_with(&format!(
            "tank/a@{} replicated to {RECEIVER} (",
            snapshot_at(0)
        )),
        "{lines:?}"
    );
    // Committed with the source's GUID, recorded, and the session ended with Bye.
    let received = bed.received("a").await;
    assert_eq!(received, snapshots(&bed.src, &source("a")).await);
    assert_eq!(received.len(), 1);
    let state = bed.state("a");
    assert_eq!(state.last_error, None);
    assert_eq!(state.last_guid, Some(received[0].1.0));
    let ends = bed.receiver.ended().await;
    assert!(matches!(ends[..], [Ok(())]), "{ends:?}");
}

#[tokio::test(start_paused = true)]
async fn a_stop_mid_stream_lets_the_transfer_finish_and_starts_nothing_after_it() {
    let bed = Bed::new(&["a", "b"]).await;
    bed.src.write_file(&source("a"), "noise", &noise());
    let (sink, progress) = progress_watch();
    let (stop, sent) = stop_on_progress(progress, vec![Box::new(|&(bytes, _)| bytes > 0)]);
    let agent = bed
        .agent(bed.config_with(
            "1h",
            &["a", "b"],
            "bandwidth-limit = \"100kB/s\"\nshutdown-grace = \"10m\"",
        ))
        .with_progress(sink);
    assert_eq!(agent.once_until(stop).await, RunOutcome::Stopped);
    let stopped_at = sent.lock().unwrap()[0] - bed.start;
    // The stream takes about 40 s at the limit: the stop came early in it, the end after it.
    assert!(stopped_at < Duration::from_secs(20), "{stopped_at:?}");
    assert!(
        bed.elapsed() > Duration::from_secs(30),
        "{:?}",
        bed.elapsed()
    );
    let received = bed.received("a").await;
    assert_eq!(received, snapshots(&bed.src, &source("a")).await);
    assert_eq!(
        bed.receiver.dst.files(&bed.target("a")),
        bed.src.files(&source("a"))
    );
    // tank/b did not start: no snapshot, no state, nothing sent.
    assert!(snapshots(&bed.src, &source("b")).await.is_empty());
    assert!(bed.received("b").await.is_empty());
    let state = bed.state("a");
    let snapshot = format!("tank/a@{}", snapshot_at(0));
    let lines = bed.lines();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(
        lines[0].starts_with(&format!("{snapshot} replicated to ")),
        "{lines:?}"
    );
    assert_eq!(
        lines[1],
        format!(
            "stopped by test while replicating {snapshot} ({} stream bytes sent): finished; tank/b not started",
            state.bytes
        )
    );
    let ends = bed.receiver.ended().await;
    assert!(matches!(ends[..], [Ok(())]), "{ends:?}");
}

#[tokio::test(start_paused = true)]
async fn a_grace_shorter_than_the_transfer_aborts_it_when_it_passes() {
    const GRACE: Duration = Duration::from_secs(5);
    let bed = Bed::new(&["a"]).await;
    bed.src.write_file(&source("a"), "noise", &noise());
    let (sink, progress) = progress_watch();
    let (stop, sent) = stop_on_progress(progress, vec![Box::new(|&(bytes, _)| bytes > 0)]);
    let agent = bed
        .agent(bed.config_with(
            "1h",
            &["a"],
            "bandwidth-limit = \"100kB/s\"\nshutdown-grace = \"5s\"",
        ))
        .with_progress(sink);
    agent.run(stop, None).await;
    let stopped_at = sent.lock().unwrap()[0] - bed.start;
    assert_eq!(
        bed.elapsed(),
        stopped_at + GRACE,
        "aborted when the grace passed"
    );
    let why = "aborted by shutdown: shutdown-grace 5s passed";
    assert_eq!(
        bed.lines(),
        [format!("tank/a NOT replicated to {RECEIVER}: {why}")]
    );
    let state = bed.state("a");
    assert_eq!(state.last_error.as_deref(), Some(why));
    assert_eq!(
        state.last_attempt,
        Some(EPOCH_SECS + bed.elapsed().as_secs())
    );
    assert_eq!(state.last_success, None);
    // The receiver saw the connection cut (no Bye) and kept nothing of the stream.
    let ends = bed.receiver.ended().await;
    assert!(matches!(ends[..], [Err(_)]), "{ends:?}");
    assert!(bed.received("a").await.is_empty());
    // The source keeps the cycle's snapshot for the next start.
    assert_eq!(snapshots(&bed.src, &source("a")).await.len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_second_stop_aborts_at_once() {
    let bed = Bed::new(&["a", "b"]).await;
    bed.src.write_file(&source("a"), "noise", &noise());
    let (sink, progress) = progress_watch();
    // The second request once the stream went on after the first: it was not aborted by that.
    let (stop, sent) = stop_on_progress(
        progress,
        vec![
            Box::new(|&(bytes, _)| bytes > 0),
            Box::new(|&(bytes, _)| bytes > 1 << 20),
        ],
    );
    let agent = bed
        .agent(bed.config_with(
            "1h",
            &["a", "b"],
            "bandwidth-limit = \"100kB/s\"\nshutdown-grace = \"10m\"",
        ))
        .with_progress(sink);
    assert_eq!(agent.once_until(stop).await, RunOutcome::Stopped);
    let sent = sent.lock().unwrap().clone();
    assert_eq!(sent.len(), 2);
    assert_eq!(
        bed.elapsed(),
        sent[1] - bed.start,
        "aborted at the second request"
    );
    let lines = bed.lines();
    let why = "aborted by shutdown: a second stop request came";
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert_eq!(
        lines[0],
        format!("tank/a NOT replicated to {RECEIVER}: {why}")
    );
    let head = format!(
        "stopped by test while replicating tank/a@{} (",
        snapshot_at(0)
    );
    let bytes: u64 = lines[1]
        .strip_prefix(&head)
        .and_then(|rest| {
            rest.strip_suffix(" stream bytes sent): aborted, a second stop request came")
        })
        .unwrap_or_else(|| panic!("{lines:?}"))
        .parse()
        .unwrap();
    assert!(bytes > 1 << 20 && bytes < 4 << 20, "{bytes}");
    assert_eq!(bed.state("a").last_error.as_deref(), Some(why));
    let ends = bed.receiver.ended().await;
    assert!(matches!(ends[..], [Err(_)]), "{ends:?}");
    assert!(bed.received("a").await.is_empty());
    assert!(snapshots(&bed.src, &source("b")).await.is_empty());
}

#[tokio::test(start_paused = true)]
async fn once_stopped_before_or_while_connecting_says_so() {
    let bed = Bed::new(&["a"]).await;
    let agent = bed.agent(bed.config("1h", &["a"]));
    // A request that came before the pass: nothing starts.
    let (tx, stop) = StopRequests::channel();
    tx.send("SIGTERM").unwrap();
    assert_eq!(agent.once_until(stop).await, RunOutcome::Stopped);
    assert_eq!(bed.lines(), ["stopped by SIGTERM before tank/a"]);
    assert!(snapshots(&bed.src, &source("a")).await.is_empty());
    assert_eq!(bed.elapsed(), Duration::ZERO);

    // While the receiver does not answer: at once, not after connect-timeout (15 s).
    bed.receiver.hang.store(true, Ordering::SeqCst);
    bed.lines.lock().unwrap().clear();
    let after = Duration::from_secs(1);
    assert_eq!(
        agent.once_until(stop_after(after)).await,
        RunOutcome::Stopped
    );
    assert_eq!(
        bed.lines(),
        [format!(
            "stopped by test while connecting to {RECEIVER} for tank/a"
        )]
    );
    assert_eq!(bed.elapsed(), after);
    assert!(snapshots(&bed.src, &source("a")).await.is_empty());
}

#[tokio::test(start_paused = true)]
async fn shutdown_while_backing_off_stops_at_once() {
    let bed = Bed::new(&["a"]).await;
    bed.receiver.refuse.store(usize::MAX, Ordering::SeqCst);
    let agent = bed.agent(bed.config("1h", &["a"]));
    // Attempts at about 0, 1, 3, 7 and 15 s; the shutdown at 20 s falls in the wait for the next.
    agent.run(stop_after(Duration::from_secs(20)), None).await;
    assert_eq!(bed.elapsed(), Duration::from_secs(20));
    let attempts = bed.receiver.attempts().len();
    assert!((4..=6).contains(&attempts), "{attempts} attempts");
    // Nothing on stdout in `run` while the receiver is away: the log says it, the state file
    // records it.
    assert_eq!(bed.lines(), Vec::<String>::new());
    assert_eq!(bed.state("a").last_error, Some(refused()));
}

#[tokio::test(start_paused = true)]
async fn once_expands_recursive_datasets_and_skips_a_locked_member() {
    let bed = Bed::new(&["a"]).await;
    let child = source("a").child("c").unwrap();
    bed.src.create_dataset(&child, &[], true).await.unwrap();
    bed.src.write_file(&child, "data", b"child");
    let mut config = bed.config("1h", &["a"]);
    config.datasets[0].recursive = true;
    let agent = bed.agent(config);
    let held = StateDir::new(bed.dir.path())
        .try_lock(&child)
        .unwrap()
        .unwrap();
    assert_eq!(agent.once().await, RunOutcome::SomeFailed);
    drop(held);
    let lines = bed.lines();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(
        lines[0].starts_with(&format!("tank/a@{} replicated to ", snapshot_at(0))),
        "{lines:?}"
    );
    assert_eq!(
        lines[1],
        format!(
            "tank/a/c NOT replicated to {RECEIVER}: another zrep-send (a running `zrep-send run`, or `once`) is replicating it"
        )
    );
    assert_eq!(bed.received("a").await.len(), 1);
    assert!(bed.received("a/c").await.is_empty());
    assert!(
        bed.src
            .list_snapshots(&child, false)
            .await
            .unwrap()
            .is_empty()
    );
    // Now free: the next pass replicates the member to the path below the target.
    assert_eq!(agent.once().await, RunOutcome::AllReplicated);
    assert_eq!(bed.received("a/c").await, snapshots(&bed.src, &child).await);
}
