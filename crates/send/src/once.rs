//! `zrep-send once`: one pass of the [`Agent`] over every configured dataset (for cron).

use anyhow::Context;
use zrep_zfs::{SystemZfs, SystemZfsConfig};

pub use crate::agent::RunOutcome;
use crate::agent::{Agent, TlsConnect};
use crate::config::SendConfig;

/// Replicates every dataset once. Prints one line per dataset on stdout. Errors only for set-up
/// failures (ZFS probe, unusable certificate files).
pub async fn run_once(config: &SendConfig) -> anyhow::Result<RunOutcome> {
    let zfs = SystemZfs::probe(SystemZfsConfig::default())
        .await
        .context("probing the local ZFS")?;
    let connector = TlsConnect::new(config);
    connector.check()?;
    let agent = Agent::new(config.clone(), zfs, connector).with_progress(crate::progress::sink());
    Ok(agent.once().await)
}
