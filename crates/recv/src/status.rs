//! `zrep-recv status`: per peer and target, what this receiver holds: the newest received
//! snapshot, its age, how many snapshots, whether an interrupted receive waits, and the peer's
//! retention.

use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use serde::Serialize;
use zrep_zfs::{DatasetName, Zfs};

use crate::config::RecvConfig;
use crate::registry::RegistryFile;

/// One target of one peer.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct TargetStatus {
    /// The peer's name.
    pub peer: String,
    /// The target, relative to the peer's root.
    pub target: String,
    /// The dataset on this host.
    pub dataset: String,
    /// How many snapshots it has.
    pub snapshots: usize,
    /// Short name of its newest snapshot (the base of the next increment).
    pub newest: Option<String>,
    /// Its GUID (a decimal string in JSON).
    #[serde(with = "zrep_cli::guid_json", default)]
    pub newest_guid: Option<u64>,
    /// Its `creation` (Unix seconds).
    pub newest_created: Option<u64>,
    /// Seconds since then.
    pub age_secs: Option<u64>,
    /// An interrupted resumable receive waits for its sender.
    pub resume_pending: bool,
    /// The peer's retention (`keep`), if any.
    pub keep: Option<String>,
}

/// Every target below every peer's root (static and registered peers), in name order.
pub async fn collect<Z: Zfs>(zfs: &Z, config: &RecvConfig) -> anyhow::Result<Vec<TargetStatus>> {
    let mut roots: Vec<(String, DatasetName)> = config
        .peers
        .iter()
        .map(|(name, root)| (name.to_string(), root.clone()))
        .collect();
    let registry = RegistryFile::new(&config.state_dir)
        .load()
        .context("loading the peers registry")?;
    for peer in registry.peers.iter().filter(|p| !p.revoked) {
        if let Ok(root) = DatasetName::parse(&peer.root)
            && !roots.iter().any(|(n, _)| *n == peer.name.to_string())
        {
            roots.push((peer.name.to_string(), root));
        }
    }
    roots.sort_by(|a, b| a.0.cmp(&b.0));
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut out = Vec::new();
    for (peer, root) in roots {
        if !zfs.exists(&root).await? {
            continue;
        }
        let keep = config
            .retention
            .iter()
            .find(|(n, _)| n.to_string() == peer)
            .map(|(_, r)| r.keep.to_string());
        for dataset in zfs.list_datasets(&root).await? {
            let Some(target) = dataset.name.relative_to(&root) else {
                continue; // the root itself
            };
            let snapshots = zfs.list_snapshots(&dataset.name, false).await?;
            if snapshots.is_empty() {
                continue; // a placeholder parent
            }
            let newest = snapshots.last();
            let resume_pending = zrep_zfs::received::resume_token(zfs, &dataset.name)
                .await?
                .is_some();
            let created = newest.map(|s| s.creation);
            out.push(TargetStatus {
                peer: peer.clone(),
                target: target.as_str().to_owned(),
                dataset: dataset.name.to_string(),
                snapshots: snapshots.len(),
                newest: newest.map(|s| s.name.short_name().to_owned()),
                newest_guid: newest.map(|s| s.guid.0),
                newest_created: created,
                age_secs: created.map(|c| now.saturating_sub(c)),
                resume_pending,
                keep: keep.clone(),
            });
        }
    }
    Ok(out)
}

/// A human table.
pub fn table(targets: &[TargetStatus]) -> String {
    let mut rows = vec![[
        "PEER".to_owned(),
        "TARGET".to_owned(),
        "SNAPSHOTS".to_owned(),
        "NEWEST".to_owned(),
        "AGE".to_owned(),
        "RESUME".to_owned(),
        "KEEP".to_owned(),
    ]];
    for t in targets {
        rows.push([
            t.peer.clone(),
            t.target.clone(),
            t.snapshots.to_string(),
            t.newest.clone().unwrap_or_else(|| "-".into()),
            t.age_secs.map_or("-".into(), |a| format!("{a}s")),
            if t.resume_pending { "pending" } else { "-" }.to_owned(),
            t.keep.clone().unwrap_or_else(|| "all".into()),
        ]);
    }
    zrep_cli::table(&rows)
}
