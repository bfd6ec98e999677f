//! Metrics to alert on, as a Prometheus text-format file for node_exporter's textfile collector
//! (`backup-metrics-file=/var/lib/node_exporter/textfile/cln_backup.prom`), rewritten every
//! [`WRITE_EVERY`] by a background thread: written to a hidden temporary file in the same
//! directory, then renamed over the old one, so the collector never reads half a file.
//!
//! The hook path only adds to atomic counters ([`Metrics::hook_done`]); everything else (listing
//! snapshots, destinations' status, rendering, writing) happens on the writer thread.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use store::backend::multi::MultiBackend;
use store::Repository;

/// How often the file is rewritten.
pub const WRITE_EVERY: Duration = Duration::from_secs(5);
/// How often the newest snapshot is looked up (listing manifests), besides after a compaction.
const SNAPSHOTS_EVERY: Duration = Duration::from_secs(60);
/// Upper bounds of the hook latency histogram's buckets, in seconds (a local fsync is ~0.1-5 ms,
/// a remote destination tens of ms, a stall seconds).
pub const HOOK_BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];
const NONE: u64 = u64::MAX;

/// Shared between the hook path, the compaction and check threads, and the writer thread.
pub struct Metrics {
    acked_version: AtomicU64,
    journal_bytes: AtomicU64,
    hook_buckets: [AtomicU64; HOOK_BUCKETS.len()],
    hook_count: AtomicU64,
    hook_sum_ns: AtomicU64,
    hook_errors: AtomicU64,
    compaction_errors: AtomicU64,
    check_errors: AtomicU64,
    /// A compaction ended: look up the newest snapshot at the next write.
    snapshots_changed: AtomicBool,
    /// The last check's reply (as `backup-status` shows it).
    last_check: Mutex<Option<Value>>,
    stop: AtomicBool,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            acked_version: AtomicU64::new(NONE),
            journal_bytes: AtomicU64::new(0),
            hook_buckets: Default::default(),
            hook_count: AtomicU64::new(0),
            hook_sum_ns: AtomicU64::new(0),
            hook_errors: AtomicU64::new(0),
            compaction_errors: AtomicU64::new(0),
            check_errors: AtomicU64::new(0),
            snapshots_changed: AtomicBool::new(true),
            last_check: Mutex::new(None),
            stop: AtomicBool::new(false),
        }
    }
}

/// What the writer thread knows beyond the counters.
#[derive(Default)]
pub struct Snapshot {
    /// The newest snapshot: (unix time, data_version).
    pub last: Option<(u64, u32)>,
}

/// A destination as the metrics show it.
pub struct Destination {
    pub url: String,
    pub mode: &'static str,
    pub state: &'static str,
    pub lag_batches: u64,
    pub lag_bytes: u64,
    pub lag_seconds: f64,
}

/// The states a destination can be in (`MultiBackend::status`), each a label value.
const DESTINATION_STATES: [&str; 4] = ["live", "catching up", "down", "opening"];

impl Metrics {
    /// The hook path: one db_write answered after `took`; `acked` is its data_version when it
    /// was answered `continue`, with the journal's bytes since the last snapshot.
    pub fn hook_done(&self, took: Duration, acked: Option<(u32, u64)>) {
        let s = took.as_secs_f64();
        for (b, le) in self.hook_buckets.iter().zip(HOOK_BUCKETS) {
            if s <= le {
                b.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.hook_count.fetch_add(1, Ordering::Relaxed);
        self.hook_sum_ns
            .fetch_add(took.as_nanos() as u64, Ordering::Relaxed);
        match acked {
            Some((v, bytes)) => {
                self.acked_version.store(u64::from(v), Ordering::Relaxed);
                self.journal_bytes.store(bytes, Ordering::Relaxed);
            }
            None => {
                self.hook_errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// A compaction ended (`ok` or not), leaving `journal_bytes` since the newest snapshot.
    pub fn compaction_done(&self, ok: bool, journal_bytes: Option<u64>) {
        if !ok {
            self.compaction_errors.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(b) = journal_bytes {
            self.journal_bytes.store(b, Ordering::Relaxed);
        }
        self.snapshots_changed.store(true, Ordering::Relaxed);
    }

    /// A check ended with this reply (`result` "equal", "different" or "error").
    pub fn check_done(&self, reply: &Value) {
        if reply.get("result").and_then(Value::as_str) == Some("error") {
            self.check_errors.fetch_add(1, Ordering::Relaxed);
        }
        if let Ok(mut l) = self.last_check.lock() {
            *l = Some(reply.clone());
        }
    }

    pub fn last_check(&self) -> Value {
        self.last_check
            .lock()
            .ok()
            .and_then(|l| l.clone())
            .unwrap_or(Value::Null)
    }

    /// The file's text at `now` (unix seconds).
    pub fn render(&self, snap: &Snapshot, destinations: &[Destination], now: u64) -> String {
        let mut t = Text::default();
        let v = self.acked_version.load(Ordering::Relaxed);
        if v != NONE {
            t.gauge(
                "cln_backup_acknowledged_data_version",
                "The data_version of the last db_write batch stored and answered continue.",
                &[(String::new(), v as f64)],
            );
        }
        t.gauge(
            "cln_backup_journal_bytes_since_snapshot",
            "Bytes of journal written since the newest snapshot (restore replays them).",
            &[(
                String::new(),
                self.journal_bytes.load(Ordering::Relaxed) as f64,
            )],
        );
        if let Some((time, ver)) = snap.last {
            t.gauge(
                "cln_backup_last_snapshot_timestamp_seconds",
                "When the newest snapshot was written (unix time).",
                &[(String::new(), time as f64)],
            );
            t.gauge(
                "cln_backup_last_snapshot_age_seconds",
                "Seconds since the newest snapshot was written.",
                &[(String::new(), now.saturating_sub(time) as f64)],
            );
            t.gauge(
                "cln_backup_last_snapshot_data_version",
                "The data_version of the newest snapshot.",
                &[(String::new(), f64::from(ver))],
            );
        }
        let per = |f: &dyn Fn(&Destination) -> f64| -> Vec<(String, f64)> {
            destinations
                .iter()
                .map(|x| (labels(&[("url", &x.url), ("mode", x.mode)]), f(x)))
                .collect()
        };
        t.gauge(
            "cln_backup_destination_up",
            "1 when the destination takes writes as they come (live), 0 otherwise.",
            &per(&|x| f64::from(u8::from(x.state == "live"))),
        );
        let states: Vec<(String, f64)> = destinations
            .iter()
            .flat_map(|x| {
                DESTINATION_STATES.iter().map(move |s| {
                    (
                        labels(&[("url", &x.url), ("mode", x.mode), ("state", s)]),
                        f64::from(u8::from(x.state == *s)),
                    )
                })
            })
            .collect();
        t.gauge(
            "cln_backup_destination_state",
            "1 for the state the destination is in (live, catching up, down, opening).",
            &states,
        );
        t.gauge(
            "cln_backup_destination_lag_batches",
            "db_write batches not yet on the destination.",
            &per(&|x| x.lag_batches as f64),
        );
        t.gauge(
            "cln_backup_destination_lag_bytes",
            "Bytes not yet on the destination.",
            &per(&|x| x.lag_bytes as f64),
        );
        t.gauge(
            "cln_backup_destination_lag_seconds",
            "Age of the oldest write not yet on the destination.",
            &per(&|x| x.lag_seconds),
        );
        let check = self.last_check();
        if let Some(result) = check.get("result").and_then(Value::as_str) {
            let results: Vec<(String, f64)> = ["equal", "different", "error"]
                .iter()
                .map(|r| (labels(&[("result", r)]), f64::from(u8::from(*r == result))))
                .collect();
            t.gauge(
                "cln_backup_check_result",
                "1 for the last backup-check's result: equal (the backup restores to exactly \
                 lightningd's database), different, or error (it could not tell).",
                &results,
            );
            let began = check.get("time").and_then(Value::as_u64).unwrap_or(0);
            t.gauge(
                "cln_backup_check_timestamp_seconds",
                "When the last backup-check began (unix time).",
                &[(String::new(), began as f64)],
            );
            t.gauge(
                "cln_backup_check_age_seconds",
                "Seconds since the last backup-check began.",
                &[(String::new(), now.saturating_sub(began) as f64)],
            );
            let ms = check
                .get("duration_ms")
                .and_then(Value::as_u64)
                .unwrap_or(0);
            t.gauge(
                "cln_backup_check_duration_seconds",
                "How long the last backup-check took.",
                &[(String::new(), ms as f64 / 1000.0)],
            );
        }
        let h = "cln_backup_hook_duration_seconds";
        t.header(
            h,
            "histogram",
            "Time from a db_write call's arrival to its answer (the batch made durable).",
        );
        for (b, le) in self.hook_buckets.iter().zip(HOOK_BUCKETS) {
            let n = b.load(Ordering::Relaxed) as f64;
            t.sample(&format!("{h}_bucket"), &labels(&[("le", &num(le))]), n);
        }
        let count = self.hook_count.load(Ordering::Relaxed) as f64;
        t.sample(&format!("{h}_bucket"), &labels(&[("le", "+Inf")]), count);
        let sum = self.hook_sum_ns.load(Ordering::Relaxed) as f64 / 1e9;
        t.sample(&format!("{h}_sum"), "", sum);
        t.sample(&format!("{h}_count"), "", count);
        let e = "cln_backup_errors_total";
        t.header(
            e,
            "counter",
            "Failures: hook (a db_write refused: lightningd stops), compaction, check (could not finish).",
        );
        for (kind, c) in [
            ("hook", &self.hook_errors),
            ("compaction", &self.compaction_errors),
            ("check", &self.check_errors),
        ] {
            t.sample(
                e,
                &labels(&[("kind", kind)]),
                c.load(Ordering::Relaxed) as f64,
            );
        }
        t.gauge(
            "cln_backup_metrics_timestamp_seconds",
            "When this file was written (unix time): alert when it stops moving.",
            &[(String::new(), now as f64)],
        );
        t.0
    }

    /// Stop the writer thread (it writes once more, then exits).
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// The text format, metric by metric.
#[derive(Default)]
struct Text(String);

impl Text {
    fn header(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }
    fn sample(&mut self, name: &str, labels: &str, v: f64) {
        let _ = writeln!(self.0, "{name}{labels} {}", num(v));
    }
    fn gauge(&mut self, name: &str, help: &str, samples: &[(String, f64)]) {
        self.header(name, "gauge", help);
        for (l, v) in samples {
            self.sample(name, l, *v);
        }
    }
}

/// A sample value: integers without a fraction, others as Rust prints them.
fn num(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

/// `{a="x",b="y"}` with the text format's escapes (backslash, quote, newline).
fn labels(pairs: &[(&str, &str)]) -> String {
    let inner: Vec<String> = pairs
        .iter()
        .map(|(k, v)| {
            let v = v
                .replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('\n', "\\n");
            format!("{k}=\"{v}\"")
        })
        .collect();
    format!("{{{}}}", inner.join(","))
}

/// Write `text` to `path` atomically: a hidden temporary file beside it, then a rename.
pub fn write_file(path: &Path, text: &str) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}

/// Start the writer thread: every [`WRITE_EVERY`], the file at `path` anew, until
/// [`Metrics::stop`].
pub fn spawn_writer(
    path: PathBuf,
    metrics: Arc<Metrics>,
    target: std::sync::Weak<crate::drill::Target>,
    out: crate::protocol::Out,
) {
    let _ = std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            let mut snap = Snapshot::default();
            let mut looked: Option<Instant> = None;
            let mut failing = false;
            loop {
                let stopping = metrics.stop.load(Ordering::SeqCst);
                // The backup was closed (shutdown): nothing more to report.
                let Some(t) = target.upgrade() else { return };
                let (repo, multi) = (&t.repo, t.multi.as_deref());
                let due = looked.is_none_or(|t| t.elapsed() >= SNAPSHOTS_EVERY);
                if due || metrics.snapshots_changed.swap(false, Ordering::Relaxed) {
                    if let Ok(s) = store::ops::snapshots::list(repo) {
                        snap.last = s.last().map(|l| (l.time, l.data_version));
                    }
                    looked = Some(Instant::now());
                }
                let destinations = destinations(repo, multi);
                drop(t);
                let text = metrics.render(&snap, &destinations, store::config::now());
                match write_file(&path, &text) {
                    Ok(()) => failing = false,
                    Err(e) if !failing => {
                        failing = true;
                        out.log(
                            "unusual",
                            &format!("backup-metrics-file: cannot write {}: {e}", path.display()),
                        );
                    }
                    Err(_) => {}
                }
                if stopping {
                    return;
                }
                let until = Instant::now() + WRITE_EVERY;
                while Instant::now() < until && !metrics.stop.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        });
}

fn destinations(repo: &Repository, multi: Option<&MultiBackend>) -> Vec<Destination> {
    match multi {
        Some(m) => m
            .status()
            .into_iter()
            .map(|d| Destination {
                url: d.url,
                mode: d.mode.name(),
                state: d.state,
                lag_batches: d.lag_batches,
                lag_bytes: d.lag_bytes,
                lag_seconds: d.lag_seconds,
            })
            .collect(),
        // One destination: it takes every write before the hook answers.
        None => vec![Destination {
            url: repo.url(),
            mode: "sync",
            state: "live",
            lag_batches: 0,
            lag_bytes: 0,
            lag_seconds: 0.0,
        }],
    }
}

#[cfg(test)]
mod test {
    use super::*;
    use openmetrics_parser::prometheus::parse_prometheus;

    /// Label values with the characters the text format escapes (and those a URL carries) are
    /// accepted by a real parser's grammar, as the escaped text; a fresh plugin's file parses too.
    #[test]
    fn parses_with_escaped_labels_and_empty_state() {
        let m = Metrics::default();
        let empty = m.render(&Snapshot::default(), &[], 1_700_000_000);
        parse_prometheus(&empty).unwrap_or_else(|e| panic!("{e:?}\n{empty}"));
        let odd = "s3://b/p?endpoint=http://h:9000,x=\"y\"\\z\nw";
        m.hook_done(Duration::from_micros(300), Some((42, 4096)));
        m.hook_done(Duration::from_secs(9), None);
        let text = m.render(
            &Snapshot {
                last: Some((1_699_999_000, 40)),
            },
            &[Destination {
                url: odd.into(),
                mode: "async",
                state: "catching up",
                lag_batches: 3,
                lag_bytes: 300,
                lag_seconds: 1.5,
            }],
            1_700_000_000,
        );
        let p = parse_prometheus(&text).unwrap_or_else(|e| panic!("{e:?}\n{text}"));
        let lag = &p.families["cln_backup_destination_lag_seconds"];
        let s = lag.iter_samples().next().unwrap();
        // The parser keeps the escaped text: backslash, quote and newline escaped, nothing else.
        let escaped = r#"s3://b/p?endpoint=http://h:9000,x=\"y\"\\z\nw"#;
        assert_eq!(
            s.get_labelset().unwrap().get_label_value("url"),
            Some(escaped)
        );
        assert!(
            text.contains("cln_backup_last_snapshot_age_seconds 1000\n"),
            "{text}"
        );
        assert!(
            text.contains("cln_backup_errors_total{kind=\"hook\"} 1\n"),
            "{text}"
        );
        // The 9 s hook is past every bucket but +Inf.
        assert!(
            text.contains("cln_backup_hook_duration_seconds_bucket{le=\"5\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("cln_backup_hook_duration_seconds_bucket{le=\"+Inf\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("cln_backup_hook_duration_seconds_bucket{le=\"0.0005\"} 1\n"),
            "{text}"
        );
    }

    #[test]
    fn the_file_is_replaced_whole() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("cln_backup.prom");
        write_file(&p, "a 1\n").unwrap();
        write_file(&p, "b 2\n").unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "b 2\n");
        // Only the file itself is left: node_exporter reads every *.prom in the directory.
        assert_eq!(std::fs::read_dir(t.path()).unwrap().count(), 1);
    }
}
