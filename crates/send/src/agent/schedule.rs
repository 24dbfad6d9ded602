//! `run`'s schedule: each dataset every `interval`, measured from the start of one cycle to the
//! next (an overrun starts the next cycle at once, never two cycles of one dataset together).
//! All cycles go one after the other over one session, kept alive with heartbeats between
//! cycles and re-established with backoff when it breaks. A stop request ends it at once when
//! idle; a cycle under way stops before its next dataset.

use tokio::time::{Instant, sleep_until};
use tracing::{info, warn};
use zrep_repl::transport::Either;
use zrep_zfs::Zfs;

use super::backoff::Backoff;
use super::connect::Connect;
use super::cycle::{Flow, Worker};

impl<Z: Zfs, C: Connect> Worker<'_, Z, C> {
    /// Runs cycles as they fall due until shutdown.
    pub(super) async fn schedule(&mut self) {
        let agent = self.agent;
        let config = &agent.config;
        let mut next_due = vec![Instant::now(); config.datasets.len()];
        let mut backoff = Backoff::default();
        info!(datasets = config.datasets.len(), receiver = %config.receiver, "zrep-send run started");
        while let Some((i, due)) = next_due.iter().copied().enumerate().min_by_key(|(_, d)| *d) {
            // After a stop request no cycle starts, even one overdue.
            if self.shutdown.requested() {
                return;
            }
            // Idle until the next cycle is due, answering heartbeats on the open session.
            let idle = async {
                match self.conn.as_mut() {
                    Some(session) => session
                        .next_event_or(sleep_until(due))
                        .await
                        .map(|e| matches!(e, Either::Other(()))),
                    None => {
                        sleep_until(due).await;
                        Ok(true)
                    }
                }
            };
            let idled = tokio::select! {
                idled = idle => idled,
                () = self.shutdown.recv() => return,
            };
            match idled {
                Ok(true) => {}
                Ok(false) => {
                    warn!("unexpected message from the receiver between cycles; reconnecting");
                    self.conn = None;
                    continue;
                }
                Err(err) => {
                    info!(cause = %zrep_cli::one_line(&err), "session ended between cycles; reconnecting when due");
                    self.conn = None;
                    continue;
                }
            }
            if self.conn.is_none() {
                match self.connect().await {
                    None => return,
                    Some(Ok(())) => backoff.reset(),
                    Some(Err(err)) => {
                        let delay = backoff.fail();
                        let why = zrep_cli::one_line(&err);
                        warn!(cause = %why, retry_in = ?delay, "cannot reach the receiver");
                        // Every dataset due before the retry waits for it.
                        let now = Instant::now();
                        let retry = now + delay;
                        for (d, due) in next_due.iter_mut().enumerate() {
                            if *due <= retry {
                                if *due <= now {
                                    self.record(&config.datasets[d], Err(&why));
                                }
                                *due = retry;
                            }
                        }
                        continue;
                    }
                }
            }
            let dataset = &config.datasets[i];
            next_due[i] = Instant::now() + dataset.interval;
            if self.dataset(dataset).await == Flow::Stop {
                return;
            }
        }
    }
}
