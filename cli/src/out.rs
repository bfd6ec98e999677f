//! Output for people (sizes, durations, times, progress) and for scripts (one JSON object).
//!
//! Every `println!`/`print!` of the crate comes here (main.rs shadows the std macros), so a
//! closed stdout never panics: `backup-cli restore ... | head` stops printing when `head` goes
//! away, and the exit status says whether the work was done (the restore was published), not
//! whether its report could be read. Any other error writing stdout (a full disk under
//! `> report.json`) makes the exit status 1: a script reading the file must not take a
//! truncated report for a complete one. Writes to stderr never fail a command.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

/// Set when a reader closed stdout (EPIPE): nothing more is printed.
static STDOUT_CLOSED: AtomicBool = AtomicBool::new(false);
/// The first error other than EPIPE writing stdout, reported at exit.
static STDOUT_ERROR: Mutex<Option<String>> = Mutex::new(None);

/// Write to stdout (what `print!`/`println!` expand to in this crate): never panics.
pub fn print_stdout(args: std::fmt::Arguments) {
    if STDOUT_CLOSED.load(Ordering::Relaxed) {
        return;
    }
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_fmt(args).and_then(|()| out.flush()) {
        STDOUT_CLOSED.store(true, Ordering::Relaxed);
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            if let Ok(mut slot) = STDOUT_ERROR.lock() {
                slot.get_or_insert_with(|| e.to_string());
            }
        }
    }
}

/// Write to stderr (what `eprint!`/`eprintln!` expand to in this crate): errors are ignored.
pub fn print_stderr(args: std::fmt::Arguments) {
    let mut err = std::io::stderr().lock();
    let _ = err.write_fmt(args).and_then(|()| err.flush());
}

/// An error writing stdout other than a closed pipe, if there was one.
pub fn stdout_error() -> Option<String> {
    STDOUT_ERROR.lock().ok().and_then(|s| s.clone())
}

/// `1.5 MiB`, `812 B`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = UNITS[0];
    for u in UNITS.iter().skip(1) {
        if v < 1024.0 {
            break;
        }
        v /= 1024.0;
        unit = u;
    }
    format!("{v:.1} {unit}")
}

/// `850 ms`, `3.2 s`, `4 min 05 s`.
pub fn duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 10 {
        format!("{:.2} ms", d.as_secs_f64() * 1000.0)
    } else if ms < 1000 {
        format!("{ms} ms")
    } else if ms < 60_000 {
        format!("{:.1} s", d.as_secs_f64())
    } else {
        let s = d.as_secs();
        format!("{} min {:02} s", s / 60, s % 60)
    }
}

/// A unix time as `YYYY-MM-DD HH:MM:SS UTC`.
pub fn time(unix: u64) -> String {
    store::time::utc(unix)
}

pub fn ratio(r: f64) -> String {
    if r > 0.0 {
        format!("{r:.2}x")
    } else {
        "-".into()
    }
}

/// Print `v` as one line of JSON on stdout.
pub fn json<T: Serialize>(v: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string(v)?);
    Ok(())
}

/// A spinner on stderr for long work, only when stderr is a terminal and not `--json`.
pub struct Progress(Option<ProgressBar>);

impl Progress {
    pub fn start(json: bool, msg: &str) -> Progress {
        if json || !std::io::stderr().is_terminal() {
            return Progress(None);
        }
        let pb = ProgressBar::new_spinner();
        if let Ok(style) = ProgressStyle::with_template("{spinner} {msg} {elapsed}") {
            pb.set_style(style);
        }
        pb.set_message(msg.to_string());
        pb.enable_steady_tick(Duration::from_millis(120));
        Progress(Some(pb))
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(pb) = self.0.take() {
            pb.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn units() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(3 << 20), "3.0 MiB");
        assert_eq!(duration(Duration::from_millis(850)), "850 ms");
        assert_eq!(duration(Duration::from_micros(420)), "0.42 ms");
        assert_eq!(duration(Duration::from_millis(3200)), "3.2 s");
        assert_eq!(duration(Duration::from_secs(245)), "4 min 05 s");
        assert_eq!(time(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(time(1_700_000_000), "2023-11-14 22:13:20 UTC");
        assert_eq!(time(951_782_400), "2000-02-29 00:00:00 UTC");
    }
}
