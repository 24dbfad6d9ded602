//! `zrep-send run`: the daemon. Each dataset is replicated every `interval` (measured from the
//! start of one cycle to the next; an overrun starts the next cycle at once, never two cycles
//! of one dataset together). All cycles go one after the other over one session, kept alive with
//! heartbeats between cycles and re-established with exponential backoff and jitter when it
//! breaks. Each cycle takes the dataset's lock, so a `zrep-send once` from cron never collides.
//!
//! SIGTERM or SIGINT stops it: between cycles the session is closed with `Bye`; during a cycle
//! the transfer is aborted (the connection is dropped and `zfs send` killed). The receiver then
//! discards the cut stream (or keeps it resumable on OpenZFS), the source keeps the snapshot
//! without moving its hold, and the next start replicates from the last common snapshot (or
//! resumes) with no manual repair.
//!
//! With `metrics-listen`, it serves the datasets' state (as `status` shows it) as Prometheus
//! metrics.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use tokio::time::sleep_until;
use tracing::{info, warn};
use zrep_proto::MAX_CHUNK;
use zrep_repl::sender::{SenderOptions, replicate};
use zrep_repl::transport::Either;
use zrep_tls::Connector;
use zrep_zfs::{SystemZfs, SystemZfsConfig, Zfs};

use crate::config::SendConfig;
use crate::once::{SenderConn, connect, hold_tag, job, renew, session_is_broken, success_line};

/// First reconnect delay; doubled per failure up to [`BACKOFF_MAX`], with ±25 % jitter.
const BACKOFF_START: Duration = Duration::from_secs(1);
/// Longest reconnect delay.
const BACKOFF_MAX: Duration = Duration::from_secs(60);

/// Runs until SIGTERM or SIGINT. Errors only for set-up failures (ZFS probe, signals).
pub async fn run_daemon(config: &SendConfig) -> anyhow::Result<()> {
    let zfs = SystemZfs::probe(SystemZfsConfig::default())
        .await
        .context("probing the local ZFS")?;
    let options = SenderOptions {
        compression_level: config.compression_level,
        chunk_size: MAX_CHUNK,
        commit_timeout: config.commit_timeout,
        hold_tag: hold_tag(&config.server_name),
        bandwidth_limit: config.bandwidth_limit,
        progress: Some(crate::progress::log()),
    };
    let mut shutdown = std::pin::pin!(shutdown_signal()?);
    if let Some(addr) = config.metrics_listen {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("metrics-listen {addr}"))?;
        info!(addr = %listener.local_addr()?, "metrics listening");
        let config = config.clone();
        tokio::spawn(zrep_repl::metrics::serve_metrics(listener, move || {
            crate::status::prometheus(&crate::status::evaluate(&config, SystemTime::now()))
        }));
    }
    let start = Instant::now();
    let mut next_due = vec![start; config.datasets.len()];
    let mut conn: Option<SenderConn> = None;
    let mut failures = 0u32;
    info!(datasets = config.datasets.len(), receiver = %config.receiver, "zrep-send run started");
    while let Some((i, due)) = next_due.iter().copied().enumerate().min_by_key(|(_, d)| *d) {
        // Idle until the next cycle is due, answering heartbeats on the open session.
        let idle = async {
            match conn.as_mut() {
                Some(session) => session
                    .next_event_or(sleep_until(due.into()))
                    .await
                    .map(|e| matches!(e, Either::Other(()))),
                None => {
                    sleep_until(due.into()).await;
                    Ok(true)
                }
            }
        };
        let idled = tokio::select! {
            idled = idle => idled,
            () = &mut shutdown => break,
        };
        match idled {
            Ok(true) => {}
            Ok(false) => {
                warn!("unexpected message from the receiver between cycles; reconnecting");
                conn = None;
                continue;
            }
            Err(err) => {
                info!(cause = %err, "session ended between cycles; reconnecting when due");
                conn = None;
                continue;
            }
        }
        let dataset = &config.datasets[i];
        if conn.is_none() {
            let connected = tokio::select! {
                connected = connect_fresh(config, &zfs) => connected,
                () = &mut shutdown => break,
            };
            match connected {
                Ok(mut fresh) => {
                    failures = 0;
                    renew(config, &mut fresh).await;
                    conn = Some(fresh);
                }
                Err(err) => {
                    failures = failures.saturating_add(1);
                    let delay = backoff(failures);
                    warn!(cause = %format!("{err:#}"), retry_in = ?delay, "cannot reach the receiver");
                    // Every dataset due before the retry waits for it.
                    let retry = Instant::now() + delay;
                    for (d, due) in next_due.iter_mut().enumerate() {
                        if *due <= retry {
                            if *due <= Instant::now() {
                                crate::state::record(
                                    config,
                                    &config.datasets[d],
                                    Err(format!("{err:#}")),
                                );
                            }
                            *due = retry;
                        }
                    }
                    continue;
                }
            }
        }
        let started = Instant::now();
        next_due[i] = started + dataset.interval;
        // A recursive dataset: its members as they are now, one after the other.
        let members = match crate::recursive::expand(&zfs, dataset).await {
            Ok(members) => members,
            Err(err) => {
                println!(
                    "{} NOT replicated to {}: listing the datasets below it: {err}",
                    dataset.source, config.receiver
                );
                crate::state::record(config, dataset, Err(&err));
                continue;
            }
        };
        let mut stopping = false;
        for member in &members {
            let Some(_lock) = crate::state::lock(config, member) else {
                continue;
            };
            let Some(session) = conn.as_mut() else {
                break;
            };
            let job = job(member);
            let result = tokio::select! {
                result = replicate(&zfs, session, &job, &options, SystemTime::now()) => result,
                () = &mut shutdown => {
                    // Dropping the cycle killed zfs send; dropping the session cuts the stream.
                    warn!(dataset = %member.source, "stopping: transfer aborted");
                    crate::state::record(config, member, Err("aborted by shutdown"));
                    println!(
                        "{} NOT replicated to {}: aborted by shutdown",
                        member.source, config.receiver
                    );
                    conn = None;
                    stopping = true;
                    break;
                }
            };
            crate::state::record(config, member, result.as_ref());
            match result {
                Ok(done) => println!("{}", success_line(&done, &config.receiver)),
                Err(err) => {
                    println!(
                        "{} NOT replicated to {}: {err}",
                        member.source, config.receiver
                    );
                    if session_is_broken(&err) {
                        conn = None;
                    }
                }
            }
        }
        if stopping {
            break;
        }
    }
    info!("stopping");
    if let Some(mut conn) = conn
        && conn.session.close().is_ok()
    {
        conn.shutdown().await;
    }
    Ok(())
}

/// Connects with certificates read afresh, so a renewal (maybe with a new key) takes effect on
/// the next session.
async fn connect_fresh(config: &SendConfig, zfs: &SystemZfs) -> anyhow::Result<SenderConn> {
    let tls = zrep_tls::client_config_from_files(&config.ca, &config.cert, &config.key)
        .context("loading the TLS certificate, key and CA")?;
    connect(config, &Connector::new(tls), zfs.capabilities()).await
}

/// The delay before reconnect attempt `failures` (1-based): doubling from [`BACKOFF_START`] up to
/// [`BACKOFF_MAX`], times a jitter factor in [0.75, 1.25) so that many senders restarted together
/// do not reconnect in step.
fn backoff(failures: u32) -> Duration {
    let base = BACKOFF_START
        .saturating_mul(1 << failures.saturating_sub(1).min(16))
        .min(BACKOFF_MAX);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .subsec_nanos();
    base.mul_f64(0.75 + 0.5 * f64::from(nanos) / 1e9)
}

/// Resolves on the first SIGTERM or SIGINT.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => info!("SIGTERM"),
            _ = int.recv() => info!("SIGINT"),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_and_caps() {
        for (failures, base) in [(1, 1), (2, 2), (3, 4), (7, 60), (40, 60)] {
            let d = backoff(failures).as_secs_f64();
            assert!(
                d >= 0.75 * base as f64 && d < 1.25 * base as f64,
                "{failures}: {d}"
            );
        }
    }
}
