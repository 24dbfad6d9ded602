//! Shutdown as in mini-redis's server: a broadcast tells every task to stop, and a completion
//! guard (an mpsc whose senders every task holds) tells the agent when the last one has.
//!
//! Stopping has two steps. The first stop request (SIGTERM, SIGINT) is graceful: no new work
//! starts, and a transfer in flight may finish within `shutdown-grace`. A second request aborts
//! whatever is still running.

use tokio::sync::{broadcast, mpsc};

/// Where an agent's stop requests come from; each carries its cause (`"SIGTERM"`), for the log
/// and for the line `once` prints. The first asks for a graceful stop, the second for an
/// immediate one; later ones change nothing.
#[derive(Debug)]
pub struct StopRequests {
    rx: Option<mpsc::UnboundedReceiver<&'static str>>,
}

/// Makes stop requests for a [`StopRequests`]; dropping it makes none.
pub type StopSender = mpsc::UnboundedSender<&'static str>;

impl StopRequests {
    /// Requests made through the sender.
    pub fn channel() -> (StopSender, Self) {
        let (tx, rx) = mpsc::unbounded_channel();
        (tx, Self { rx: Some(rx) })
    }

    /// No request, ever.
    pub fn never() -> Self {
        Self { rx: None }
    }

    /// The next request's cause; never resolves once the senders are gone.
    pub(crate) async fn next(&mut self) -> &'static str {
        match self.rx.as_mut() {
            Some(rx) => match rx.recv().await {
                Some(cause) => cause,
                None => {
                    self.rx = None;
                    std::future::pending().await
                }
            },
            None => std::future::pending().await,
        }
    }
}

/// A task's view of the shutdown broadcasts.
#[derive(Debug)]
pub(crate) struct Shutdown {
    /// The first request's cause, once it came (or `"shutdown"` when the agent ended).
    cause: Option<&'static str>,
    aborted: bool,
    notify: broadcast::Receiver<&'static str>,
    abort: broadcast::Receiver<()>,
}

impl Shutdown {
    fn new(notify: broadcast::Receiver<&'static str>, abort: broadcast::Receiver<()>) -> Self {
        Self {
            cause: None,
            aborted: false,
            notify,
            abort,
        }
    }

    /// Resolves once a (graceful) stop was requested, or the agent ended, and at once ever
    /// after. Cancel-safe: a select that drops it loses nothing.
    pub(crate) async fn recv(&mut self) {
        if self.cause.is_some() {
            return;
        }
        let cause = self.notify.recv().await.unwrap_or("shutdown");
        self.cause = Some(cause);
    }

    /// Whether a stop was requested, without waiting.
    pub(crate) fn requested(&mut self) -> bool {
        if self.cause.is_none() {
            self.cause = match self.notify.try_recv() {
                Ok(cause) => Some(cause),
                Err(broadcast::error::TryRecvError::Empty) => None,
                Err(_) => Some("shutdown"),
            };
        }
        self.cause.is_some()
    }

    /// What asked for the stop (`"SIGTERM"`), once it was.
    pub(crate) fn cause(&self) -> Option<&'static str> {
        self.cause
    }

    /// Resolves once an immediate stop was requested (a second request, or the agent ended).
    /// Cancel-safe.
    pub(crate) async fn aborted(&mut self) {
        if self.aborted {
            return;
        }
        let _ = self.abort.recv().await;
        self.aborted = true;
    }
}

/// Announces shutdown and waits until every task holding a [`Done`] has ended.
#[derive(Debug)]
pub(crate) struct Stopper {
    notify: broadcast::Sender<&'static str>,
    abort: broadcast::Sender<()>,
    done_tx: mpsc::Sender<()>,
    done_rx: mpsc::Receiver<()>,
}

/// Held by a task until it ends; the agent waits for all of them.
#[derive(Debug, Clone)]
pub(crate) struct Done {
    _guard: mpsc::Sender<()>,
}

impl Stopper {
    pub(crate) fn new() -> Self {
        let (notify, _) = broadcast::channel(1);
        let (abort, _) = broadcast::channel(1);
        let (done_tx, done_rx) = mpsc::channel(1);
        Self {
            notify,
            abort,
            done_tx,
            done_rx,
        }
    }

    /// A new task's shutdown signal and completion guard.
    pub(crate) fn task(&self) -> (Shutdown, Done) {
        (
            Shutdown::new(self.notify.subscribe(), self.abort.subscribe()),
            Done {
                _guard: self.done_tx.clone(),
            },
        )
    }

    /// Asks every task to stop gracefully, for `cause`, without waiting.
    pub(crate) fn announce(&self, cause: &'static str) {
        let _ = self.notify.send(cause);
    }

    /// Tells every task to abort what it is doing, without waiting.
    pub(crate) fn abort(&self) {
        let _ = self.abort.send(());
    }

    /// Tells every task to stop and waits until all have ended.
    pub(crate) async fn stop(self) {
        let Self {
            notify,
            abort,
            done_tx,
            mut done_rx,
        } = self;
        drop(notify);
        drop(abort);
        drop(done_tx);
        // `None` once the last task dropped its guard.
        let _ = done_rx.recv().await;
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::time::{Instant, sleep};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn stop_waits_for_every_task_to_finish_its_cleanup() {
        let stopper = Stopper::new();
        let start = Instant::now();
        for cleanup in [3, 7] {
            let (mut shutdown, done) = stopper.task();
            tokio::spawn(async move {
                shutdown.recv().await;
                // Told at most once, then at once every time.
                shutdown.recv().await;
                sleep(Duration::from_secs(cleanup)).await;
                drop(done);
            });
        }
        sleep(Duration::from_secs(10)).await;
        stopper.stop().await;
        assert_eq!(start.elapsed(), Duration::from_secs(17));
    }

    #[tokio::test(start_paused = true)]
    async fn a_task_told_before_it_listens_still_hears_it() {
        let stopper = Stopper::new();
        let (mut shutdown, _done) = stopper.task();
        stopper.announce("SIGTERM");
        tokio::time::timeout(Duration::from_secs(1), shutdown.recv())
            .await
            .unwrap_or_else(|_| panic!("the announcement was lost"));
        assert_eq!(shutdown.cause(), Some("SIGTERM"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_graceful_stop_is_not_an_abort() {
        let stopper = Stopper::new();
        let (mut shutdown, _done) = stopper.task();
        assert!(!shutdown.requested());
        stopper.announce("SIGINT");
        assert!(shutdown.requested());
        assert_eq!(shutdown.cause(), Some("SIGINT"));
        let waited = tokio::time::timeout(Duration::from_secs(1), shutdown.aborted()).await;
        assert!(waited.is_err(), "aborted without being told");
        stopper.abort();
        tokio::time::timeout(Duration::from_secs(1), shutdown.aborted())
            .await
            .unwrap_or_else(|_| panic!("the abort was lost"));
    }

    #[tokio::test(start_paused = true)]
    async fn stop_requests_come_in_order_and_end_quietly() {
        let (tx, mut requests) = StopRequests::channel();
        tx.send("SIGTERM")
            .unwrap_or_else(|_| panic!("receiver gone"));
        tx.send("SIGINT")
            .unwrap_or_else(|_| panic!("receiver gone"));
        drop(tx);
        assert_eq!(requests.next().await, "SIGTERM");
        assert_eq!(requests.next().await, "SIGINT");
        let after = tokio::time::timeout(Duration::from_secs(1), requests.next()).await;
        assert!(after.is_err(), "a closed channel is not a request");
    }
}
