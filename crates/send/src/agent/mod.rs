//! The push agent behind `zrep-send once` and `zrep-send run`: one [`Agent`] owns the dataset
//! loop (expand recursive datasets, take each member's lock, replicate over the session, record
//! its state and print its line), the session (connect, renew the certificate, heartbeats
//! between cycles, `Bye` at the end), the schedule (one pass, or each dataset every
//! `interval`), the reconnect backoff and shutdown.
//!
//! Shutdown follows mini-redis's server: the caller's stop requests are broadcast to every task
//! (the dataset loop, the metrics endpoint), each holds a completion guard, and the agent
//! returns once all guards are dropped. The first request is graceful: no new cycle or dataset
//! starts, an idle session ends with `Bye` at once, and a transfer in flight may go on for
//! `shutdown-grace` to its commit (then the session ends with `Bye`). Past the grace, or on a
//! second request, the transfer is aborted (the connection is dropped and `zfs send`'s pipe
//! closed) and recorded, and the next start resumes or replicates from the last common
//! snapshot. `once` then prints one line saying what it was doing.
//!
//! The agent is generic over the ZFS ([`Zfs`]) and over how it reaches the receiver
//! ([`Connect`]; [`TlsConnect`] in production), so it runs in tests against `FakeZfs` and an
//! in-memory receiver with paused time.

mod backoff;
mod connect;
mod cycle;
mod error;
mod report;
mod schedule;
mod shutdown;

use std::sync::Arc;
use std::time::SystemTime;

use tokio::net::TcpListener;
use zrep_proto::MAX_CHUNK;
use zrep_repl::sender::{ProgressSink, SenderOptions};
use zrep_zfs::{HoldTag, Zfs};

pub use backoff::{BACKOFF_MAX, BACKOFF_START, delay as backoff_delay};
pub use connect::{Connect, SenderConn, TlsConnect};
pub use error::ConnectError;
pub use report::{failure_line, renewal_line, success_line};
pub use shutdown::{StopRequests, StopSender};

use crate::config::SendConfig;
use cycle::Worker;
use shutdown::{Done, Shutdown, Stopper};

/// Where the agent's lines go (stdout in the program).
pub type Output = Arc<dyn Fn(&str) + Send + Sync>;

/// The wall clock, for snapshot names and state files.
pub type Clock = Arc<dyn Fn() -> SystemTime + Send + Sync>;

/// How a pass ended, for the exit status of `once`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunOutcome {
    /// Every dataset replicated.
    AllReplicated,
    /// At least one dataset failed.
    SomeFailed,
    /// A stop request ended the pass before it was through: a transfer was aborted, or a
    /// dataset was not started.
    Stopped,
}

/// When datasets are replicated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// One pass over all datasets, in order; a connection failure fails the dataset it was
    /// for, and the next dataset tries again. Renewal is checked on the first session.
    Once,
    /// Each dataset every `interval`, until shutdown; a connection failure backs off. Renewal is
    /// checked on every new session.
    Run,
}

/// The push agent; see the module documentation.
pub struct Agent<Z, C> {
    config: SendConfig,
    zfs: Z,
    connector: C,
    options: SenderOptions,
    clock: Clock,
    output: Output,
    /// Snapshots held by something other than zrep, as last logged (each is said once).
    holds_seen: std::sync::Mutex<crate::status::HoldsSeen>,
}

impl<Z, C> std::fmt::Debug for Agent<Z, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("receiver", &self.config.receiver)
            .field("datasets", &self.config.datasets.len())
            .finish_non_exhaustive()
    }
}

impl<Z: Zfs, C: Connect> Agent<Z, C> {
    /// An agent for `config`'s datasets on `zfs`, reaching the receiver through `connector`.
    /// Lines go to stdout, the clock is the system's, no progress is reported.
    pub fn new(config: SendConfig, zfs: Z, connector: C) -> Self {
        let options = SenderOptions {
            compression_level: config.compression_level,
            chunk_size: MAX_CHUNK,
            commit_timeout: config.commit_timeout,
            hold_tag: hold_tag(&config.server_name),
            bandwidth_limit: config.bandwidth_limit,
            progress: None,
        };
        Self {
            config,
            zfs,
            connector,
            options,
            clock: Arc::new(SystemTime::now),
            output: Arc::new(|line| println!("{line}")),
            holds_seen: std::sync::Mutex::default(),
        }
    }

    /// Reports transfer progress to `sink`.
    #[must_use]
    pub fn with_progress(mut self, sink: ProgressSink) -> Self {
        self.options.progress = Some(sink);
        self
    }

    /// Takes snapshot names and state times from `clock`.
    #[must_use]
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// Sends the lines to `output` instead of stdout.
    #[must_use]
    pub fn with_output(mut self, output: Output) -> Self {
        self.output = output;
        self
    }

    /// The configuration.
    pub fn config(&self) -> &SendConfig {
        &self.config
    }

    /// Replicates every dataset once over one session (reconnecting for the next dataset when
    /// it breaks), then closes it with `Bye`.
    pub async fn once(&self) -> RunOutcome {
        self.once_until(StopRequests::never()).await
    }

    /// [`Agent::once`], stopped by `stop` (see the module documentation); stopped, it prints
    /// what it was doing in one line.
    pub async fn once_until(&self, stop: StopRequests) -> RunOutcome {
        self.serve(Mode::Once, stop, None).await
    }

    /// Replicates each dataset every `interval` until `stop` asks for it; serves metrics on
    /// `metrics` meanwhile.
    pub async fn run(&self, stop: StopRequests, metrics: Option<TcpListener>) {
        self.serve(Mode::Run, stop, metrics).await;
    }

    async fn serve(
        &self,
        mode: Mode,
        mut stop: StopRequests,
        metrics: Option<TcpListener>,
    ) -> RunOutcome {
        let stopper = Stopper::new();
        if let Some(listener) = metrics {
            let (shutdown, done) = stopper.task();
            tokio::spawn(serve_metrics(listener, self.config.clone(), shutdown, done));
        }
        let (shutdown, done) = stopper.task();
        let mut work = std::pin::pin!(Worker::new(self, mode, shutdown, done).run());
        let mut requests = 0u32;
        let outcome = loop {
            tokio::select! {
                // A request that came is heard before any more work is done.
                biased;
                cause = stop.next() => {
                    requests += 1;
                    // The worker logs what each request made it do.
                    match requests {
                        1 => stopper.announce(cause),
                        _ => stopper.abort(),
                    }
                }
                outcome = &mut work => break outcome,
            }
        };
        stopper.stop().await;
        outcome
    }
}

/// One hold tag per receiver, so replicating to two receivers keeps both bases.
pub fn hold_tag(server_name: &str) -> HoldTag {
    HoldTag::parse(&format!("zrep:{server_name}"))
        .or_else(|_| HoldTag::parse("zrep"))
        .unwrap_or_else(|_| unreachable!("`zrep` is a valid hold tag"))
}

/// Serves the datasets' state (as `status` shows it) as Prometheus metrics until shutdown.
async fn serve_metrics(
    listener: TcpListener,
    config: SendConfig,
    mut shutdown: Shutdown,
    _done: Done,
) {
    let render =
        move || crate::status::prometheus(&crate::status::evaluate(&config, SystemTime::now()));
    tokio::select! {
        () = zrep_cli::metrics::serve_metrics(listener, render) => {}
        () = shutdown.recv() => {}
    }
}
