//! Bandwidth limit on the wire: `"50MiB/s"`-style rates and a pacer that delays writes so that
//! the bytes sent since the start of a transfer never run ahead of the rate (plus one burst).

use std::time::Duration;

use tokio::time::Instant;

/// A rate in bytes per second, from text such as `50MiB/s`, `10MB/s`, `800KiB/s`, `1000B/s`
/// (decimal `kB/KB`, `MB`, `GB`; binary `KiB`, `MiB`, `GiB`).
pub fn parse_rate(text: &str) -> Result<u64, String> {
    let err = || format!("{text:?}: expected a rate such as \"50MiB/s\" or \"10MB/s\"");
    let amount = text.trim().strip_suffix("/s").ok_or_else(err)?.trim();
    let split = amount
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(amount.len());
    let (number, unit) = amount.split_at(split);
    let number: f64 = number.parse().map_err(|_| err())?;
    let unit: f64 = match unit.trim() {
        "B" => 1.0,
        "kB" | "KB" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        "KiB" => 1024.0,
        "MiB" => 1024.0 * 1024.0,
        "GiB" => 1024.0 * 1024.0 * 1024.0,
        _ => return Err(err()),
    };
    let rate = number * unit;
    if !(rate >= 1.0 && rate.is_finite()) {
        return Err(format!("{text:?}: the rate must be at least 1 B/s"));
    }
    Ok(rate as u64)
}

/// Paces writes to `rate` bytes per second.
#[derive(Debug)]
pub struct Pacer {
    rate: u64,
    started: Instant,
    sent: u64,
}

impl Pacer {
    /// Starts pacing now.
    pub fn new(rate: u64) -> Self {
        Self {
            rate: rate.max(1),
            started: Instant::now(),
            sent: 0,
        }
    }

    /// Accounts `bytes` just written and sleeps until the rate allows them.
    pub async fn sent(&mut self, bytes: usize) {
        self.sent += bytes as u64;
        let due = self.started + Duration::from_secs_f64(self.sent as f64 / self.rate as f64);
        tokio::time::sleep_until(due).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rates() {
        assert_eq!(parse_rate("50MiB/s"), Ok(50 * 1024 * 1024));
        assert_eq!(parse_rate("10MB/s"), Ok(10_000_000));
        assert_eq!(parse_rate("1.5 KiB/s"), Ok(1536));
        assert_eq!(parse_rate("1000B/s"), Ok(1000));
        for bad in ["50MiB", "fast/s", "0B/s", "5Mb/s", "-1MB/s", "/s"] {
            assert!(parse_rate(bad).is_err(), "{bad}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn paces_to_the_rate() {
        let started = Instant::now();
        let mut pacer = Pacer::new(1000);
        for _ in 0..10 {
            pacer.sent(500).await;
        }
        assert_eq!(started.elapsed(), Duration::from_secs(5));
    }
}
