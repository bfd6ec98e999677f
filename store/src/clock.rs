//! The wall clock the store and the plugin read for what they record and decide by time
//! (a manifest's `time`, retention's `keep-within` and its day/week/month buckets), with one
//! seam for benchmarks that simulate months of a node in hours.
//!
//! **Benchmarks and tests only:** when the environment variable [`SIMULATED_CLOCK_ENV`]
//! (`CLN_BACKUP_SIMULATED_CLOCK_FILE`) names a file, the time is read from that file (decimal
//! Unix milliseconds, written by the benchmark as it advances its simulation) at every call.
//! An operator never sets it: a node's backup would then date its snapshots by that file. The
//! plugin logs a warning at start when it is set. Lock leases (S3) and every timeout keep the
//! real clock, so a simulated year never expires a live lease.

use std::os::unix::fs::FileExt;
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

/// The environment variable that makes [`now_ms`] read a simulated clock (see the module doc).
pub const SIMULATED_CLOCK_ENV: &str = "CLN_BACKUP_SIMULATED_CLOCK_FILE";

fn simulated() -> Option<&'static std::fs::File> {
    static FILE: OnceLock<Option<std::fs::File>> = OnceLock::new();
    FILE.get_or_init(|| {
        let path = std::env::var_os(SIMULATED_CLOCK_ENV)?;
        std::fs::File::open(path).ok()
    })
    .as_ref()
}

/// The simulated clock file in use, if any (for the plugin's warning).
pub fn simulated_clock() -> Option<String> {
    simulated()?;
    std::env::var(SIMULATED_CLOCK_ENV).ok()
}

fn real_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Unix time in milliseconds: the real clock, or the simulated one (module doc).
pub fn now_ms() -> u64 {
    let Some(f) = simulated() else {
        return real_ms();
    };
    let mut buf = [0u8; 24];
    let n = f.read_at(&mut buf, 0).unwrap_or(0);
    std::str::from_utf8(buf.get(..n).unwrap_or_default())
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(real_ms)
}

/// Unix time in seconds ([`now_ms`] / 1000).
pub fn now() -> u64 {
    now_ms() / 1000
}

#[cfg(test)]
mod test {
    #[test]
    fn the_real_clock_without_the_variable() {
        // The test process does not set the variable: the real clock, in a plausible range.
        let t = super::now();
        assert!(t > 1_700_000_000 && t < 4_000_000_000, "{t}");
        assert!(super::simulated_clock().is_none());
    }
}
