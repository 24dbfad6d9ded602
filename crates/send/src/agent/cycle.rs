//! The dataset loop: a configured dataset's members, each locked, replicated over the session,
//! recorded and reported; and the session it runs over.

use std::fmt::Display;
use std::sync::{Arc, Mutex, PoisonError};

use humantime_serde::re::humantime::format_duration;
use tracing::{debug, info, warn};
use zrep_repl::ReplicationError;
use zrep_repl::sender::{DatasetJob, Progress, ProgressSink, Replicated, SenderOptions, replicate};
use zrep_zfs::{DatasetName, Zfs};

use super::connect::{Connect, SenderConn, open};
use super::error::ConnectError;
use super::report::{failure_line, renewal_line, success_line};
use super::shutdown::{Done, Shutdown};
use super::{Agent, Mode, RunOutcome};
use crate::config::DatasetConfig;

/// Whether to go on after a dataset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Flow {
    /// On to the next dataset.
    Go,
    /// Shutdown: stop at once.
    Stop,
}

/// Why a transfer in flight was given up after a stop request.
#[derive(Debug, Clone, Copy)]
enum Abort {
    /// `shutdown-grace` passed first.
    Grace,
    /// A second stop request came first.
    Second,
}

/// The newest progress of the current member's stream: its label (`pool/ds@snap`) and stream
/// bytes so far.
type Seen = Arc<Mutex<Option<(String, u64)>>>;

/// The task that replicates: the agent's dataset loop with its session.
pub(super) struct Worker<'a, Z, C: Connect> {
    pub(super) agent: &'a Agent<Z, C>,
    mode: Mode,
    pub(super) conn: Option<SenderConn<C::Stream>>,
    /// Whether a session of this run checked the certificate's renewal.
    renewal_checked: bool,
    pub(super) shutdown: Shutdown,
    failed: bool,
    /// The agent's options, with a progress sink that also keeps the newest progress in `seen`.
    options: SenderOptions,
    seen: Seen,
    /// What the worker was doing when it heard the stop request, for `once`'s line.
    stop_note: Option<String>,
    /// A stop request aborted a transfer or kept a dataset from starting.
    interrupted: bool,
    _done: Done,
}

impl<'a, Z: Zfs, C: Connect> Worker<'a, Z, C> {
    pub(super) fn new(agent: &'a Agent<Z, C>, mode: Mode, shutdown: Shutdown, done: Done) -> Self {
        let seen = Seen::default();
        let mut options = agent.options.clone();
        let inner = options.progress.take();
        let keep = seen.clone();
        options.progress = Some(ProgressSink(Arc::new(move |p: &Progress| {
            *keep.lock().unwrap_or_else(PoisonError::into_inner) =
                Some((p.snapshot.clone(), p.stream_bytes));
            if let Some(inner) = &inner {
                (inner.0)(p);
            }
        })));
        Self {
            agent,
            mode,
            conn: None,
            renewal_checked: false,
            shutdown,
            failed: false,
            options,
            seen,
            stop_note: None,
            interrupted: false,
            _done: done,
        }
    }

    /// Runs the schedule to its end (or shutdown), then closes the session with `Bye`.
    pub(super) async fn run(mut self) -> RunOutcome {
        match self.mode {
            Mode::Once => {
                for dataset in &self.agent.config.datasets {
                    if self.dataset(dataset).await == Flow::Stop {
                        break;
                    }
                }
            }
            Mode::Run => {
                self.schedule().await;
                info!(cause = self.shutdown.cause().unwrap_or("-"), "stopping");
            }
        }
        if let Some(mut conn) = self.conn.take()
            && conn.session.close().is_ok()
        {
            tokio::select! {
                () = conn.shutdown() => {}
                () = self.shutdown.aborted() => {}
            }
        }
        if self.mode == Mode::Once
            && let (Some(cause), Some(note)) = (self.shutdown.cause(), &self.stop_note)
        {
            self.say(&format!("stopped by {cause} {note}"));
        }
        if self.interrupted {
            RunOutcome::Stopped
        } else if self.failed {
            RunOutcome::SomeFailed
        } else {
            RunOutcome::AllReplicated
        }
    }

    /// Whether a stop request came, in which case `next` does not start (and `once`'s line says
    /// so).
    fn stop_before(&mut self, next: &DatasetName) -> bool {
        if !self.shutdown.requested() {
            return false;
        }
        self.interrupted = true;
        match &mut self.stop_note {
            Some(note) => note.push_str(&format!("; {next} not started")),
            None => self.stop_note = Some(format!("before {next}")),
        }
        true
    }

    /// Connects a new session (renewing the certificate when due), or says why not. `None`:
    /// shutdown came first.
    pub(super) async fn connect(&mut self) -> Option<Result<(), ConnectError>> {
        let agent = self.agent;
        let config = &agent.config;
        let features = zrep_repl::session_features(agent.zfs.capabilities()).with_renew(true);
        let opened = tokio::select! {
            opened = open(
                &agent.connector,
                &config.receiver,
                config.connect_timeout,
                config.liveness,
                features,
            ) => opened,
            () = self.shutdown.recv() => return None,
        };
        let mut conn = match opened {
            Ok(conn) => conn,
            Err(err) => return Some(Err(err)),
        };
        if self.mode == Mode::Run || !self.renewal_checked {
            self.renewal_checked = true;
            let renewed = crate::renew::renew_if_due(
                &mut conn,
                &config.cert,
                &config.key,
                config.renew_before,
                config.rotate_key,
            )
            .await;
            if let Some(line) = renewal_line(&renewed, &config.receiver) {
                self.say(&line);
            }
        }
        self.conn = Some(conn);
        Some(Ok(()))
    }

    /// One cycle of a configured dataset: each of its members as they are now, one after the
    /// other. In `once`, a member connects when no session is open; in `run` the schedule
    /// connected before, and the members after a broken session wait for the next cycle.
    pub(super) async fn dataset(&mut self, dataset: &DatasetConfig) -> Flow {
        let agent = self.agent;
        if self.stop_before(&dataset.source) {
            return Flow::Stop;
        }
        let members = match crate::recursive::expand(&agent.zfs, dataset).await {
            Ok(members) => members,
            Err(err) => {
                let why = zrep_cli::one_line(&err);
                self.fail(
                    dataset,
                    format_args!("listing the datasets below it: {why}"),
                );
                self.record(dataset, Err(&why));
                return Flow::Go;
            }
        };
        for member in &members {
            if self.stop_before(&member.source) {
                return Flow::Stop;
            }
            let _lock = match crate::state::try_lock(&agent.config, member) {
                Ok(lock) => lock,
                Err(why) => {
                    self.fail(member, why);
                    continue;
                }
            };
            if self.conn.is_none() {
                if self.mode == Mode::Run {
                    break;
                }
                match self.connect().await {
                    None => {
                        self.interrupted = true;
                        self.stop_note = Some(format!(
                            "while connecting to {} for {}",
                            agent.config.receiver, member.source
                        ));
                        return Flow::Stop;
                    }
                    Some(Ok(())) => {}
                    Some(Err(err)) => {
                        let why = zrep_cli::one_line(&err);
                        self.fail(member, &why);
                        self.record(member, Err(why));
                        continue;
                    }
                }
            }
            if self.member(member).await == Flow::Stop {
                return Flow::Stop;
            }
        }
        Flow::Go
    }

    /// Replicates one member over the open session. A stop request meanwhile lets it go on for
    /// `shutdown-grace` (or until a second request) before it is aborted.
    async fn member(&mut self, member: &DatasetConfig) -> Flow {
        let agent = self.agent;
        let Some(conn) = self.conn.as_mut() else {
            return Flow::Go;
        };
        let job = job(member);
        let now = (agent.clock)();
        *lock(&self.seen) = None;
        // The cycle borrows the session until it ends or is given up.
        let (heard, result) = {
            let mut work = std::pin::pin!(replicate(&agent.zfs, conn, &job, &self.options, now));
            let first = tokio::select! {
                biased;
                result = &mut work => Some(result),
                () = self.shutdown.recv() => None,
            };
            let heard = first.is_none();
            let result = match first {
                Some(result) => Ok(result),
                None => {
                    let grace = agent.config.shutdown_grace;
                    let (stream, bytes) = sent(&self.seen, member);
                    info!(
                        dataset = %member.source,
                        %stream,
                        stream_bytes = bytes,
                        cause = self.shutdown.cause().unwrap_or("-"),
                        grace = %format_duration(grace),
                        "stop requested: letting the transfer in flight finish"
                    );
                    tokio::select! {
                        biased;
                        result = &mut work => Ok(result),
                        () = self.shutdown.aborted() => Err(Abort::Second),
                        () = tokio::time::sleep(grace) => Err(Abort::Grace),
                    }
                }
            };
            (heard, result)
        };
        let result = match result {
            Ok(result) => result,
            Err(abort) => {
                // Dropping the cycle closed zfs send's pipe; dropping the session cuts the
                // stream, and the receiver undoes it.
                let reason = match abort {
                    Abort::Grace => format!(
                        "shutdown-grace {} passed",
                        format_duration(agent.config.shutdown_grace)
                    ),
                    Abort::Second => "a second stop request came".to_owned(),
                };
                let (stream, bytes) = sent(&self.seen, member);
                warn!(
                    dataset = %member.source,
                    %stream,
                    stream_bytes = bytes,
                    %reason,
                    "stopping: transfer aborted"
                );
                let why = format!("aborted by shutdown: {reason}");
                self.record(member, Err(&why));
                self.fail(member, &why);
                self.conn = None;
                self.interrupted = true;
                self.stop_note = Some(format!(
                    "while replicating {stream} ({bytes} stream bytes sent): aborted, {reason}"
                ));
                return Flow::Stop;
            }
        };
        let finished = result.is_ok();
        match result {
            Ok(done) => {
                self.record(member, Ok::<_, &str>(&done));
                self.say(&success_line(&done, &agent.config.receiver));
                self.report_foreign_holds(member, &done).await;
            }
            Err(err) => {
                let why = zrep_cli::one_line(&err);
                self.record(member, Err(&why));
                self.fail(member, &why);
                if session_is_broken(&err) {
                    self.conn = None;
                }
            }
        }
        if heard {
            let (stream, bytes) = sent(&self.seen, member);
            let end = if finished {
                "finished"
            } else {
                "failed (see its line)"
            };
            info!(dataset = %member.source, %stream, stream_bytes = bytes, end, "stopping: the transfer in flight ended");
            self.stop_note = Some(format!(
                "while replicating {stream} ({bytes} stream bytes sent): {end}"
            ));
        }
        // After a stop request the next dataset, or the schedule, stops before anything new.
        Flow::Go
    }

    /// Records `dataset`'s outcome in its state file.
    pub(super) fn record<E: Display>(
        &self,
        dataset: &DatasetConfig,
        outcome: Result<&zrep_repl::sender::Replicated, E>,
    ) {
        crate::state::record(&self.agent.config, dataset, outcome, (self.agent.clock)());
    }

    /// Reports `dataset` as not replicated.
    fn fail(&mut self, dataset: &DatasetConfig, why: impl Display) {
        self.failed = true;
        self.say(&failure_line(
            &dataset.source,
            &self.agent.config.receiver,
            why,
        ));
    }

    fn say(&self, line: &str) {
        (self.agent.output)(line);
    }
}

/// What the current member's stream is and how far it got: its label and stream bytes, or the
/// dataset when no stream started yet.
fn sent(seen: &Seen, member: &DatasetConfig) -> (String, u64) {
    lock(seen)
        .clone()
        .unwrap_or_else(|| (format!("{} (no stream started)", member.source), 0))
}

fn lock(seen: &Seen) -> std::sync::MutexGuard<'_, Option<(String, u64)>> {
    // The sink only stores a value: a panic elsewhere cannot leave it half-written.
    seen.lock().unwrap_or_else(PoisonError::into_inner)
}

fn job(dataset: &DatasetConfig) -> DatasetJob {
    DatasetJob {
        source: dataset.source.clone(),
        target: dataset.target.clone(),
        prefix: dataset.prefix.clone(),
        intermediates: dataset.intermediates,
        keep: dataset.keep.clone(),
        raw: dataset.raw,
    }
}

impl<Z: Zfs, C: Connect> Worker<'_, Z, C> {
    /// Logs zrep snapshots that something other than zrep holds (so they are never pruned),
    /// each once while it stays held and once when it is released; best effort.
    async fn report_foreign_holds(&self, member: &DatasetConfig, done: &Replicated) {
        let agent = self.agent;
        let held = match crate::status::foreign_holds(
            &agent.zfs,
            &member.source,
            &member.prefix,
            Some(done.snapshot.short_name()),
            &self.options.hold_tag,
        )
        .await
        {
            Ok(held) => held,
            Err(err) => {
                debug!(dataset = %member.source, cause = %zrep_cli::one_line(&err), "cannot look for foreign holds");
                return;
            }
        };
        // Only a list of names: a panic elsewhere cannot leave it half-written.
        let news = agent
            .holds_seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .news(&member.source, &held);
        for line in news {
            warn!(dataset = %member.source, "{line}");
        }
    }
}

/// Whether a failed cycle left the session unusable (the next cycle needs a new one).
fn session_is_broken(err: &ReplicationError) -> bool {
    matches!(
        err,
        ReplicationError::Transport(_)
            | ReplicationError::PeerError { .. }
            | ReplicationError::CommitTimeout(_)
            | ReplicationError::Usage(_)
            | ReplicationError::Unexpected(_)
            // The stream was aborted; the receiver's answer to that may not have come.
            | ReplicationError::SendFailed(_)
    )
}
