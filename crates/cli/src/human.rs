//! Sizes, rates and durations as people read them, for tables and one-line reports (JSON and
//! state files keep exact numbers).

use std::time::Duration;

/// `0 B`, `512 B`, `1.5 KiB`, `3.0 MiB`, ... in binary units.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// Bytes per second as [`bytes`] per second: `2.5 MiB/s`.
pub fn rate(bytes_per_sec: f64) -> String {
    let n = if bytes_per_sec.is_finite() && bytes_per_sec > 0.0 {
        bytes_per_sec.round() as u64
    } else {
        0
    };
    format!("{}/s", bytes(n))
}

/// `0.4 s`, `12.0 s`, `3m 05s`, `2h 07m`, `3d 04h`: two units at most, rounded down.
pub fn duration(d: Duration) -> String {
    let secs = d.as_secs();
    match secs {
        0..60 => format!("{:.1} s", d.as_secs_f64()),
        60..3600 => format!("{}m {:02}s", secs / 60, secs % 60),
        3600..86400 => format!("{}h {:02}m", secs / 3600, secs % 3600 / 60),
        _ => format!("{}d {:02}h", secs / 86400, secs % 86400 / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_step_at_1024_and_durations_keep_two_units() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(1024), "1.0 KiB");
        assert_eq!(bytes(5 << 20 | 1 << 19), "5.5 MiB");
        assert_eq!(bytes(u64::MAX), "16384.0 PiB");
        assert_eq!(rate(2.5 * 1048576.0), "2.5 MiB/s");
        assert_eq!(rate(f64::NAN), "0 B/s");
        assert_eq!(duration(Duration::from_millis(420)), "0.4 s");
        assert_eq!(duration(Duration::from_secs(185)), "3m 05s");
        assert_eq!(
            duration(Duration::from_secs(2 * 3600 + 7 * 60 + 59)),
            "2h 07m"
        );
        assert_eq!(
            duration(Duration::from_secs(3 * 86400 + 4 * 3600)),
            "3d 04h"
        );
    }
}
