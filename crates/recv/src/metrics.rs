//! zrep-recv's Prometheus metrics: per peer and target, from the sessions' shared counters.

use zrep_cli::metrics::Exposition;
use zrep_repl::receiver::{ReceiverMetrics, TargetCounters};

/// Exposition text of every counter.
pub fn render(metrics: &ReceiverMetrics) -> String {
    let counters = metrics.snapshot();
    type Field = fn(&TargetCounters) -> Option<f64>;
    let families: [(&str, &str, &str, Field); 6] = [
        (
            "zrep_recv_commits_total",
            "counter",
            "Transfers committed.",
            |c| Some(c.commits as f64),
        ),
        (
            "zrep_recv_received_bytes_total",
            "counter",
            "Stream bytes of committed transfers.",
            |c| Some(c.received_bytes as f64),
        ),
        (
            "zrep_recv_failures_total",
            "counter",
            "Accepted transfers that did not commit.",
            |c| Some(c.failures as f64),
        ),
        (
            "zrep_recv_refusals_total",
            "counter",
            "Offers refused.",
            |c| Some(c.refusals as f64),
        ),
        (
            "zrep_recv_pruned_total",
            "counter",
            "Snapshots destroyed by this receiver's retention.",
            |c| Some(c.pruned as f64),
        ),
        (
            "zrep_recv_last_commit_timestamp_seconds",
            "gauge",
            "Time of the last commit.",
            |c| c.last_commit.map(|t| t as f64),
        ),
    ];
    let mut out = Exposition::default();
    for (name, kind, help, field) in families {
        out.family(name, kind, help);
        for ((peer, target), c) in &counters {
            if let Some(value) = field(c) {
                out.sample(name, &[("peer", peer), ("target", target)], value);
            }
        }
    }
    out.finish()
}
