//! `zrep-send run`: the daemon, the [`Agent`] on its schedule. Each dataset is replicated every
//! `interval` over one session, re-established with backoff when it breaks; each cycle takes
//! the dataset's lock, so a `zrep-send once` from cron never collides.
//!
//! SIGTERM or SIGINT stops it: between cycles the session is closed with `Bye` at once; during a
//! cycle no further dataset starts and the transfer in flight may commit within
//! `shutdown-grace`, after which the session ends with `Bye`. Past the grace, or on a second
//! signal, the transfer is aborted (the connection is dropped and `zfs send`'s pipe closed). The
//! receiver then discards the cut stream (or keeps it resumable on OpenZFS), the source keeps
//! the snapshot without moving its hold, and the next start replicates from the last common
//! snapshot (or resumes) with no manual repair.
//!
//! With `metrics-listen`, it serves the datasets' state (as `status` shows it) as Prometheus
//! metrics.

use anyhow::Context;
use tracing::info;
use zrep_zfs::{SystemZfs, SystemZfsConfig};

use crate::agent::{Agent, StopRequests, TlsConnect};
use crate::config::SendConfig;

/// Runs until SIGTERM or SIGINT. Errors only for set-up failures (ZFS probe, signals, the
/// metrics address).
pub async fn run_daemon(config: &SendConfig) -> anyhow::Result<()> {
    let zfs = SystemZfs::probe(SystemZfsConfig::default())
        .await
        .context("probing the local ZFS")?;
    let stop = stop_signals()?;
    let metrics = match config.metrics_listen {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("metrics-listen {addr}"))?;
            info!(addr = %listener.local_addr()?, "metrics listening");
            Some(listener)
        }
        None => None,
    };
    let agent = Agent::new(config.clone(), zfs, TlsConnect::new(config))
        .with_progress(crate::progress::log());
    agent.run(stop, metrics).await;
    Ok(())
}

/// Every SIGTERM and SIGINT from now on, as stop requests (the first graceful, the second
/// immediate). Needs the runtime.
pub(crate) fn stop_signals() -> anyhow::Result<StopRequests> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let (tx, requests) = StopRequests::channel();
    tokio::spawn(async move {
        loop {
            let cause = tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
            };
            // The agent logs what each request makes it do.
            if tx.send(cause).is_err() {
                return;
            }
        }
    });
    Ok(requests)
}
