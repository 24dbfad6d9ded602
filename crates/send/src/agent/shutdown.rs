//! Shutdown as in mini-redis's server: a broadcast tells every task to stop, and a completion
//! guard (an mpsc whose senders every task holds) tells the agent when the last one has.

use tokio::sync::{broadcast, mpsc};

/// A task's view of the shutdown broadcast.
#[derive(Debug)]
pub(crate) struct Shutdown {
    stopped: bool,
    notify: broadcast::Receiver<()>,
}

impl Shutdown {
    pub(crate) fn new(notify: broadcast::Receiver<()>) -> Self {
        Self {
            stopped: false,
            notify,
        }
    }

    /// Resolves once shutdown was announced (a message or the sender dropped), and at once ever
    /// after. Cancel-safe: a select that drops it loses nothing.
    pub(crate) async fn recv(&mut self) {
        if self.stopped {
            return;
        }
        let _ = self.notify.recv().await;
        self.stopped = true;
    }
}

/// Announces shutdown and waits until every task holding a [`Done`] has ended.
#[derive(Debug)]
pub(crate) struct Stopper {
    notify: broadcast::Sender<()>,
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
        let (done_tx, done_rx) = mpsc::channel(1);
        Self {
            notify,
            done_tx,
            done_rx,
        }
    }

    /// A new task's shutdown signal and completion guard.
    pub(crate) fn task(&self) -> (Shutdown, Done) {
        (
            Shutdown::new(self.notify.subscribe()),
            Done {
                _guard: self.done_tx.clone(),
            },
        )
    }

    /// Tells every task to stop without waiting.
    pub(crate) fn announce(&self) {
        let _ = self.notify.send(());
    }

    /// Tells every task to stop and waits until all have ended.
    pub(crate) async fn stop(self) {
        let Self {
            notify,
            done_tx,
            mut done_rx,
        } = self;
        drop(notify);
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
        stopper.announce();
        tokio::time::timeout(Duration::from_secs(1), shutdown.recv())
            .await
            .unwrap_or_else(|_| panic!("the announcement was lost"));
    }
}
