//! `recursive = true`: a configured dataset stands for itself and every filesystem and volume
//! below it, minus `exclude`d subtrees, listed afresh at every cycle (so new children are picked
//! up by the next one). Each member is replicated as its own job (own snapshot, plan, lock and
//! state file) to `<target>/<path below the source>`.

use zrep_zfs::{DatasetName, RelativeName, Zfs, ZfsError};

use crate::config::DatasetConfig;

/// The jobs `dataset` stands for now: itself if not recursive, else it and its descendants
/// that no `exclude` covers, parents first.
pub async fn expand<Z: Zfs>(
    zfs: &Z,
    dataset: &DatasetConfig,
) -> Result<Vec<DatasetConfig>, ZfsError> {
    if !dataset.recursive {
        return Ok(vec![dataset.clone()]);
    }
    let listed = zfs.list_datasets(&dataset.source).await?;
    Ok(listed
        .into_iter()
        .filter(|d| !is_excluded(dataset, &d.name))
        .filter_map(|d| member(dataset, &d.name))
        .collect())
}

/// Whether `name` lies in an excluded subtree of `dataset`.
pub fn is_excluded(dataset: &DatasetConfig, name: &DatasetName) -> bool {
    dataset.exclude.iter().any(|x| name.is_within(x))
}

/// The job for `name` (the source itself or a descendant) of a recursive `dataset`.
pub fn member(dataset: &DatasetConfig, name: &DatasetName) -> Option<DatasetConfig> {
    let target = if *name == dataset.source {
        dataset.target.clone()
    } else {
        let below = name.relative_to(&dataset.source)?;
        RelativeName::parse(&format!("{}/{}", dataset.target.as_str(), below.as_str())).ok()?
    };
    Some(DatasetConfig {
        source: name.clone(),
        target,
        recursive: false,
        exclude: Vec::new(),
        ..dataset.clone()
    })
}

/// Expands every configured dataset. A dataset whose members cannot be listed comes back as
/// `Err` with the configured entry, to be reported as not replicated.
pub async fn expand_all<Z: Zfs>(
    zfs: &Z,
    datasets: &[DatasetConfig],
) -> Vec<Result<DatasetConfig, (DatasetConfig, ZfsError)>> {
    let mut all = Vec::new();
    for dataset in datasets {
        match expand(zfs, dataset).await {
            Ok(members) => all.extend(members.into_iter().map(Ok)),
            Err(err) => all.push(Err((dataset.clone(), err))),
        }
    }
    all
}
