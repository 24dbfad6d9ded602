//! `zrep-send once`: one pass of the [`Agent`] over every configured dataset (for cron). SIGTERM
//! or SIGINT stops it as it stops `run`: no dataset starts after it, a transfer in flight may
//! commit within `shutdown-grace`, a second signal aborts it.

use anyhow::Context;
use zrep_zfs::{SystemZfs, SystemZfsConfig};

pub use crate::agent::RunOutcome;
use crate::agent::{Agent, TlsConnect};
use crate::config::SendConfig;

/// Replicates every dataset once. Prints one line per dataset on stdout, and, when SIGTERM or
/// SIGINT stopped it, one saying what it was doing. Errors only for set-up failures (ZFS probe,
/// unusable certificate files, signals).
pub async fn run_once(config: &SendConfig) -> anyhow::Result<RunOutcome> {
    let zfs = SystemZfs::probe(SystemZfsConfig::default())
        .await
        .context("probing the local ZFS")?;
    let connector = TlsConnect::new(config);
    connector.check()?;
    let stop = crate::daemon::stop_signals()?;
    let agent = Agent::new(config.clone(), zfs, connector).with_progress(crate::progress::sink());
    Ok(agent.once_until(stop).await)
}
