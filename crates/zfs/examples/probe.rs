//! Prints what the local ZFS supports and the snapshots (with exact GUIDs) under a dataset.
//!
//! `cargo run -p zrep-zfs --example probe -- [DATASET]`

use std::process::ExitCode;

use zrep_zfs::{DatasetName, SystemZfs, SystemZfsConfig, Zfs};

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let zfs = match SystemZfs::probe(SystemZfsConfig::default()).await {
        Ok(zfs) => zfs,
        Err(err) => {
            eprintln!("probe failed: {err}");
            return ExitCode::FAILURE;
        }
    };
    println!("dialect: {}", zfs.capabilities().dialect);
    println!("{:#?}", zfs.capabilities());
    let Some(arg) = std::env::args().nth(1) else {
        return ExitCode::SUCCESS;
    };
    let dataset = match DatasetName::parse(&arg) {
        Ok(dataset) => dataset,
        Err(err) => {
            eprintln!("{err}");
            return ExitCode::from(2);
        }
    };
    match zfs.list_snapshots(&dataset, true).await {
        Ok(snapshots) => {
            for snap in snapshots {
                println!("{}\t{}\t{}", snap.name, snap.guid, snap.creation);
            }
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("{err}");
            ExitCode::FAILURE
        }
    }
}
