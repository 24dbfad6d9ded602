//! Transfer progress: a bar redrawn on stderr when it is a terminal, plain log lines otherwise.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tracing::info;
use zrep_repl::sender::{Progress, ProgressSink};

/// Redraws at most this often on a terminal.
const REDRAW: Duration = Duration::from_millis(200);
/// Logs at most this often otherwise.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// A bar on stderr if it is a terminal, else an `info` line every ten seconds.
pub fn sink() -> ProgressSink {
    if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        terminal()
    } else {
        log()
    }
}

/// Progress as `info` log lines, at most every ten seconds per stream and once at its end.
pub fn log() -> ProgressSink {
    let last = Mutex::new(None::<Instant>);
    ProgressSink(Arc::new(move |p: &Progress| {
        let mut last = last.lock().unwrap_or_else(|e| e.into_inner());
        let due = last.is_none_or(|t| t.elapsed() >= LOG_EVERY);
        if p.done || due {
            info!(progress = %render(p, 0), "transfer");
            *last = if p.done { None } else { Some(Instant::now()) };
        }
    }))
}

/// A progress bar on stderr, redrawn in place and ended with a newline.
pub fn terminal() -> ProgressSink {
    let last = Mutex::new(None::<Instant>);
    ProgressSink(Arc::new(move |p: &Progress| {
        let mut last = last.lock().unwrap_or_else(|e| e.into_inner());
        if !p.done && last.is_some_and(|t| t.elapsed() < REDRAW) {
            return;
        }
        *last = Some(Instant::now());
        let mut err = std::io::stderr().lock();
        let _ = write!(err, "\r\x1b[2K{}", render(p, 30));
        if p.done {
            let _ = writeln!(err);
            *last = None;
        }
        let _ = err.flush();
    }))
}

/// One line: label, a bar of `width` cells when the size is known (none for 0), amounts, rate.
pub fn render(p: &Progress, width: usize) -> String {
    use zrep_cli::human;
    let secs = p.elapsed.as_secs_f64().max(0.001);
    let rate = human::rate(p.stream_bytes as f64 / secs);
    let amount = match p.estimate {
        Some(total) if total > 0 => {
            let fraction = (p.stream_bytes as f64 / total as f64).min(1.0);
            let bar = if width > 0 {
                let full = (fraction * width as f64).round() as usize;
                format!("[{}{}] ", "#".repeat(full), ".".repeat(width - full))
            } else {
                String::new()
            };
            format!(
                "{bar}{:>3.0}% {} / {}",
                fraction * 100.0,
                human::bytes(p.stream_bytes),
                human::bytes(total)
            )
        }
        _ => human::bytes(p.stream_bytes),
    };
    let end = if p.done {
        ", sent; awaiting commit"
    } else {
        ""
    };
    format!(
        "{} {amount} ({} on the wire) {rate}{end}",
        p.snapshot,
        human::bytes(p.wire_bytes)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn progress(estimate: Option<u64>, done: bool) -> Progress {
        Progress {
            snapshot: "tank/a@zrep_20261127T000000Z".into(),
            stream_bytes: 5 << 20,
            wire_bytes: 1 << 20,
            estimate,
            elapsed: Duration::from_secs(2),
            done,
        }
    }

    #[test]
    fn renders_a_bar_when_the_size_is_known() {
        assert_eq!(
            render(&progress(Some(10 << 20), false), 10),
            "tank/a@zrep_20261127T000000Z [#####.....]  50% 5.0 MiB / 10.0 MiB (1.0 MiB on the wire) 2.5 MiB/s"
        );
        assert_eq!(
            render(&progress(None, true), 10),
            "tank/a@zrep_20261127T000000Z 5.0 MiB (1.0 MiB on the wire) 2.5 MiB/s, sent; awaiting commit"
        );
    }
}
