//! What the agent says on stdout, one line per dataset and cycle (cron mails and the daemon's
//! journal show them as they are).

use std::fmt::Display;

use zrep_repl::sender::{Replicated, StreamShape};
use zrep_zfs::DatasetName;

use crate::renew::Renewed;

/// `<snapshot> replicated to <receiver> (...)`, or `already on` when nothing was sent.
pub fn success_line(done: &Replicated, receiver: &str) -> String {
    use zrep_cli::human;
    let resumed = match &done.resumed {
        Some((snapshot, bytes)) => format!(
            "; first finished the interrupted stream of @{snapshot} ({})",
            human::bytes(*bytes)
        ),
        None => String::new(),
    };
    let kind = match &done.shape {
        StreamShape::UpToDate => {
            return format!(
                "{} already on {receiver} (nothing to send{resumed})",
                done.snapshot
            );
        }
        StreamShape::Full => "full".to_owned(),
        StreamShape::Incremental {
            base,
            intermediates,
            from_bookmark,
        } => {
            let flag = if *intermediates { "-I" } else { "-i" };
            let mark = if *from_bookmark { '#' } else { '@' };
            format!("{flag} from {mark}{base}")
        }
    };
    let secs = done.elapsed.as_secs_f64();
    let rate = if secs > 0.0 {
        done.stream_bytes as f64 / secs
    } else {
        0.0
    };
    format!(
        "{} replicated to {receiver} ({} in {}, {}, {kind}, {} on the wire{resumed})",
        done.snapshot,
        human::bytes(done.stream_bytes),
        human::duration(done.elapsed),
        human::rate(rate),
        human::bytes(done.wire_bytes)
    )
}

/// `<source> NOT replicated to <receiver>: <why>`.
pub fn failure_line(source: &DatasetName, receiver: &str, why: impl Display) -> String {
    format!("{source} NOT replicated to {receiver}: {why}")
}

/// What renewal did, if it is worth a line (nothing when it was not due).
pub fn renewal_line(outcome: &anyhow::Result<Renewed>, receiver: &str) -> Option<String> {
    match outcome {
        Ok(Renewed::NotDue) => None,
        Ok(Renewed::Renewed { not_after, rotated }) => Some(format!(
            "certificate renewed{} by {receiver}, valid until {}",
            if *rotated { " with a new key" } else { "" },
            humantime_serde::re::humantime::format_rfc3339_seconds(*not_after)
        )),
        Ok(Renewed::Refused(reason)) => {
            Some(format!("certificate NOT renewed by {receiver}: {reason}"))
        }
        Err(err) => Some(format!(
            "certificate NOT renewed by {receiver}: {}",
            zrep_cli::one_line(err.as_ref())
        )),
    }
}
