//! What a received dataset must be on a backup host, whatever the stream from an untrusted peer
//! carried: the `zfs receive` options that keep a stream's properties out where the dialect
//! allows it, sealing (read-only, not mounted, not mounted again by `zfs mount -a`), and the
//! partial-receive state.
//!
//! zfs-fuse has no `receive -u/-o/-x`: there the receiver's stream inspection (which refuses
//! streams carrying properties) and sealing right after the receive are the barrier.

use std::fmt;

use crate::caps::Capabilities;
use crate::driver::{DatasetKind, ReceiveRequest, Zfs};
use crate::error::ZfsError;
use crate::name::{DatasetName, PropertyName};

/// Forced on every received filesystem (OpenZFS `-o`): nothing on a backup is writable,
/// mounted by itself, or honours setuid bits, device nodes or executables.
const FILESYSTEM_OVERRIDES: &[(&str, &str)] = &[
    ("readonly", "on"),
    ("canmount", "noauto"),
    ("setuid", "off"),
    ("devices", "off"),
    ("exec", "off"),
];
/// Forced on every received volume: read-only, and no device nodes on the backup host (udev
/// would otherwise probe the peer's partition tables and filesystems).
const VOLUME_OVERRIDES: &[(&str, &str)] = &[("readonly", "on"), ("volmode", "none")];
/// Received values ignored (OpenZFS `-x`): they reach outside the dataset (its place in the
/// mount tree, shares, zones).
const FILESYSTEM_EXCLUDED: &[&str] = &["mountpoint", "sharenfs", "sharesmb", "zoned"];

/// The `zfs receive` request for a stream from an untrusted peer into `target`: never `-F`;
/// `-s` where resumable receives exist; on OpenZFS `-u` and the overrides and exclusions above
/// for the stream's kind of dataset.
pub fn untrusted_receive(
    caps: &Capabilities,
    target: DatasetName,
    kind: DatasetKind,
) -> ReceiveRequest {
    let mut request = ReceiveRequest::new(target);
    request.resumable = caps.resumable_receive;
    request.no_mount = caps.receive_no_mount;
    let (overrides, excluded) = match kind {
        DatasetKind::Filesystem => (FILESYSTEM_OVERRIDES, FILESYSTEM_EXCLUDED),
        DatasetKind::Volume => (VOLUME_OVERRIDES, &[][..]),
    };
    if caps.receive_set_property {
        request.set_properties = overrides
            .iter()
            .map(|(name, value)| (property(name), (*value).to_owned()))
            .collect();
    }
    if caps.receive_exclude_property {
        request.exclude_properties = excluded.iter().map(|name| property(name)).collect();
    }
    request
}

/// One change [`seal`] made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SealFix {
    /// It was mounted; now it is not.
    Unmounted,
    /// It had `canmount=on` (mounted again by `zfs mount -a` or at boot); now `noauto`.
    NoAutomount,
    /// It was writable; now `readonly=on`.
    ReadOnly,
}

impl fmt::Display for SealFix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Unmounted => "unmounted",
            Self::NoAutomount => "canmount=on -> noauto",
            Self::ReadOnly => "readonly=off -> on",
        })
    }
}

/// Makes one dataset read-only and, for a filesystem, unmounted and not mounted automatically;
/// returns what it had to change (empty: it was sealed already). Unmounting comes first:
/// zfs-fuse reports a mounted read-only filesystem as `readonly=off`.
pub async fn seal<Z: Zfs>(
    zfs: &Z,
    dataset: &DatasetName,
    kind: DatasetKind,
) -> Result<Vec<SealFix>, ZfsError> {
    let mut fixes = Vec::new();
    if kind == DatasetKind::Filesystem {
        if value(zfs, dataset, "canmount").await?.as_deref() == Some("on") {
            zfs.set_property(dataset, &property("canmount"), "noauto")
                .await?;
            fixes.push(SealFix::NoAutomount);
        }
        if value(zfs, dataset, "mounted").await?.as_deref() == Some("yes") {
            zfs.unmount(dataset).await?;
            fixes.push(SealFix::Unmounted);
        }
    }
    if !is_read_only(zfs, dataset).await? {
        zfs.set_property(dataset, &property("readonly"), "on")
            .await?;
        fixes.push(SealFix::ReadOnly);
    }
    Ok(fixes)
}

/// [`seal`] for `root` and every filesystem and volume below it; `root` absent: nothing to do.
/// Returns each dataset that needed a change, with the changes.
pub async fn seal_tree<Z: Zfs>(
    zfs: &Z,
    root: &DatasetName,
) -> Result<Vec<(DatasetName, Vec<SealFix>)>, ZfsError> {
    if !zfs.exists(root).await? {
        return Ok(Vec::new());
    }
    let mut changed = Vec::new();
    for dataset in zfs.list_datasets(root).await? {
        let fixes = seal(zfs, &dataset.name, dataset.kind).await?;
        if !fixes.is_empty() {
            changed.push((dataset.name, fixes));
        }
    }
    Ok(changed)
}

/// Creates `dataset` as an empty placeholder parent of received targets: never mounted and
/// read-only, so nothing can be written into the tree above what a peer sends.
pub async fn create_placeholder<Z: Zfs>(zfs: &Z, dataset: &DatasetName) -> Result<(), ZfsError> {
    let props = [
        (property("canmount"), "off".to_owned()),
        (property("readonly"), "on".to_owned()),
    ];
    zfs.create_dataset(dataset, &props, false).await
}

/// Whether `readonly` reads `on`.
pub async fn is_read_only<Z: Zfs>(zfs: &Z, dataset: &DatasetName) -> Result<bool, ZfsError> {
    Ok(value(zfs, dataset, "readonly").await?.as_deref() == Some("on"))
}

/// The token of an interrupted resumable receive into `dataset`, if there is one (`None` where
/// the dialect has no resumable receive).
pub async fn resume_token<Z: Zfs>(
    zfs: &Z,
    dataset: &DatasetName,
) -> Result<Option<String>, ZfsError> {
    if !zfs.capabilities().resumable_receive {
        return Ok(None);
    }
    // ZFS shows `-` for "no token".
    Ok(value(zfs, dataset, "receive_resume_token")
        .await?
        .filter(|token| token != "-"))
}

async fn value<Z: Zfs>(
    zfs: &Z,
    dataset: &DatasetName,
    name: &'static str,
) -> Result<Option<String>, ZfsError> {
    Ok(zfs
        .get_property(dataset, &property(name))
        .await?
        .map(|v| v.value))
}

fn property(name: &'static str) -> PropertyName {
    // Constant, valid names.
    PropertyName::parse(name).unwrap_or_else(|_| unreachable!("{name} is a valid property name"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::caps::Dialect;

    fn caps(openzfs: bool) -> Capabilities {
        let mut caps = Capabilities::from_probe("", "", "");
        if openzfs {
            caps.dialect = Dialect::OpenZfs {
                version: "2.3.2".into(),
            };
            caps.resumable_receive = true;
            caps.receive_no_mount = true;
            caps.receive_set_property = true;
            caps.receive_exclude_property = true;
        }
        caps
    }

    fn target() -> DatasetName {
        DatasetName::parse("backup/nas1/data").unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn openzfs_receives_force_safety_and_drop_reaching_properties() {
        let fs = untrusted_receive(&caps(true), target(), DatasetKind::Filesystem);
        assert!(fs.no_mount && fs.resumable);
        let set: Vec<String> = fs
            .set_properties
            .iter()
            .map(|(p, v)| format!("{p}={v}"))
            .collect();
        assert_eq!(
            set,
            [
                "readonly=on",
                "canmount=noauto",
                "setuid=off",
                "devices=off",
                "exec=off"
            ]
        );
        let excluded: Vec<&str> = fs.exclude_properties.iter().map(|p| p.as_str()).collect();
        assert_eq!(excluded, ["mountpoint", "sharenfs", "sharesmb", "zoned"]);
        let vol = untrusted_receive(&caps(true), target(), DatasetKind::Volume);
        let set: Vec<String> = vol
            .set_properties
            .iter()
            .map(|(p, v)| format!("{p}={v}"))
            .collect();
        assert_eq!(set, ["readonly=on", "volmode=none"]);
        assert!(vol.exclude_properties.is_empty());
    }

    #[test]
    fn legacy_receives_use_no_option_it_lacks() {
        let fs = untrusted_receive(&caps(false), target(), DatasetKind::Filesystem);
        assert_eq!(fs, ReceiveRequest::new(target()));
    }
}
