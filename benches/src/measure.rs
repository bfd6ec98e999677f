//! Timing and memory helpers: percentiles, peak memory from /proc, command timing.

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The `p`-th percentile (0..=100) of `v` (sorted in place), nearest rank.
pub fn pct(v: &mut [Duration], p: f64) -> Duration {
    if v.is_empty() {
        return Duration::ZERO;
    }
    v.sort_unstable();
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

pub fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// p50, p99, max of a latency sample in microseconds.
pub fn summary(v: &[Duration]) -> (f64, f64, f64) {
    let mut v = v.to_vec();
    (
        us(pct(&mut v, 50.0)),
        us(pct(&mut v, 99.0)),
        us(pct(&mut v, 100.0)),
    )
}

fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|n| n.parse().ok()))
        })
        .unwrap_or(0)
}

/// Peak resident set of this process so far (VmHWM, = getrusage maxrss), in bytes. It counts
/// the pages of memory-mapped files that were touched, so a snapshot that maps a 1 GiB file shows
/// up to 1 GiB here even though that memory is page cache the kernel can drop at will.
pub fn peak_rss() -> u64 {
    status_kib("VmHWM:") * 1024
}

/// Samples anonymous resident memory (heap, stacks: what the process really allocates) every
/// 2 ms on a thread; `stop` gives the peak in bytes.
pub struct AnonPeak {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl AnonPeak {
    pub fn start() -> AnonPeak {
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicU64::new(0));
        let (s, p) = (stop.clone(), peak.clone());
        let handle = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                p.fetch_max(status_kib("RssAnon:") * 1024, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(2));
            }
        });
        AnonPeak {
            stop,
            peak,
            handle: Some(handle),
        }
    }
    pub fn stop(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
        self.peak
            .load(Ordering::Relaxed)
            .max(status_kib("RssAnon:") * 1024)
    }
}

/// Run a command, fail on a non-zero exit, return its wall time.
pub fn timed(cmd: &mut Command) -> anyhow::Result<Duration> {
    let t = Instant::now();
    let out = cmd.output()?;
    let d = t.elapsed();
    if !out.status.success() {
        anyhow::bail!(
            "{:?} failed: {}\n{}",
            cmd,
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(d)
}

/// Read a file once so that it is in the page cache (every measurement runs warm).
pub fn warm(path: &Path) -> anyhow::Result<()> {
    use std::io::Read;
    let mut f = std::fs::File::open(path)?;
    let mut buf = vec![0u8; 1 << 20];
    while f.read(&mut buf)? > 0 {}
    Ok(())
}

/// Copy a file and fsync the copy.
pub fn copy_synced(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::copy(from, to)?;
    std::fs::File::open(to)?.sync_all()?;
    Ok(())
}

/// A small deterministic generator (splitmix64): random-looking bytes, reproducible runs.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(n + 8);
        while v.len() < n {
            v.extend_from_slice(&self.next_u64().to_le_bytes());
        }
        v.truncate(n);
        v
    }
}

/// Reset this process's peak resident set (VmHWM), so each measured run reports its own.
pub fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// A target verdict line; run-report.sh gathers these into the report's targets table.
pub fn target(what: &str, ratio: f64, limit: f64) -> String {
    format!(
        "TARGET| {what} | {ratio:.3}x | {} |",
        if ratio <= limit { "met" } else { "**not met**" }
    )
}

/// A markdown row `| what | n | p50 µs | p99 µs | max µs | p50 / base_p50 |` of a latency sample.
pub fn latency_row(what: &str, v: &[Duration], base_p50: f64) -> String {
    let (a, b, c) = summary(v);
    format!(
        "| {what} | {} | {a:.0} | {b:.0} | {c:.0} | {:.2}x |",
        v.len(),
        a / base_p50
    )
}

/// One bare durable append, what any journal pays: `rec` written at `*off` of `f` and
/// `fdatasync`'ed; `*off` advances. Returns the time taken.
pub fn bare_append_one(f: &std::fs::File, rec: &[u8], off: &mut u64) -> std::io::Result<Duration> {
    use std::os::unix::fs::FileExt;
    let t = Instant::now();
    f.write_all_at(rec, *off)?;
    f.sync_data()?;
    *off += rec.len() as u64;
    Ok(t.elapsed())
}

/// Split timed samples into (overlapping none of `intervals`, overlapping one).
pub fn split(
    samples: &[(Instant, Duration)],
    intervals: &[(Instant, Instant)],
) -> (Vec<Duration>, Vec<Duration>) {
    let (mut idle, mut during) = (Vec::new(), Vec::new());
    for (s, d) in samples {
        if intervals.iter().any(|(a, b)| *s < *b && *s + *d > *a) {
            during.push(*d);
        } else {
            idle.push(*d);
        }
    }
    (idle, during)
}
