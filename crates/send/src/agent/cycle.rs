//! The dataset loop: a configured dataset's members, each locked, replicated over the session,
//! recorded and reported; and the session it runs over.

use std::fmt::Display;

use tracing::{info, warn};
use zrep_repl::ReplicationError;
use zrep_repl::sender::{DatasetJob, replicate};
use zrep_zfs::Zfs;

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

/// The task that replicates: the agent's dataset loop with its session.
pub(super) struct Worker<'a, Z, C: Connect> {
    pub(super) agent: &'a Agent<Z, C>,
    mode: Mode,
    pub(super) conn: Option<SenderConn<C::Stream>>,
    /// Whether a session of this run checked the certificate's renewal.
    renewal_checked: bool,
    pub(super) shutdown: Shutdown,
    failed: bool,
    _done: Done,
}

impl<'a, Z: Zfs, C: Connect> Worker<'a, Z, C> {
    pub(super) fn new(agent: &'a Agent<Z, C>, mode: Mode, shutdown: Shutdown, done: Done) -> Self {
        Self {
            agent,
            mode,
            conn: None,
            renewal_checked: false,
            shutdown,
            failed: false,
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
                info!("stopping");
            }
        }
        if let Some(mut conn) = self.conn.take()
            && conn.session.close().is_ok()
        {
            conn.shutdown().await;
        }
        if self.failed {
            RunOutcome::SomeFailed
        } else {
            RunOutcome::AllReplicated
        }
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
                    None => return Flow::Stop,
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

    /// Replicates one member over the open session.
    async fn member(&mut self, member: &DatasetConfig) -> Flow {
        let agent = self.agent;
        let Some(conn) = self.conn.as_mut() else {
            return Flow::Go;
        };
        let job = job(member);
        let now = (agent.clock)();
        let result = tokio::select! {
            result = replicate(&agent.zfs, conn, &job, &agent.options, now) => Some(result),
            () = self.shutdown.recv() => None,
        };
        let Some(result) = result else {
            // Dropping the cycle killed zfs send; dropping the session cuts the stream.
            warn!(dataset = %member.source, "stopping: transfer aborted");
            self.record(member, Err("aborted by shutdown"));
            self.fail(member, "aborted by shutdown");
            self.conn = None;
            return Flow::Stop;
        };
        match result {
            Ok(done) => {
                self.record(member, Ok::<_, &str>(&done));
                self.say(&success_line(&done, &agent.config.receiver));
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
