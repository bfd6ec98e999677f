//! The restore drill while the node runs: `backup-check` on request, and every
//! `backup-check-interval` seconds in the background. Each run restores the backup and compares
//! it table by table with lightningd's own database (`store::ops::check`: short read
//! transactions, never a long lock on lightningd's database), on its own thread at the
//! compaction's low priority (nice and `SCHED_IDLE`), never on the hook path. It does not start
//! while a compaction runs (both read the whole journal; a compaction does not start while it
//! runs either).
//!
//! The result (equal, or the first difference; when; how long) goes to `backup-status`, to
//! lightningd's log (`info` when equal, `broken` on a difference, `unusual` when it could not
//! tell) and to the metrics.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use store::backend::multi::MultiBackend;
use store::journal::JournalWriter;
use store::ops::check::{check, CheckOptions, CheckReport};
use store::Repository;

use crate::metrics::Metrics;
use crate::protocol::{Out, PLUGIN_ERROR};
use crate::rpc::{background_priority, Compaction, CACHE_DIR};

/// lightningd's database in its network directory (its default `wallet`).
pub const DB_FILE: &str = "lightningd.sqlite3";
/// How long a periodic drill waits when a compaction is running.
const BUSY_RETRY: Duration = Duration::from_secs(60);
/// The first periodic drill after a start comes at most this late (then every interval): a node
/// restarted more often than the interval is drilled all the same.
const FIRST_AFTER: Duration = Duration::from_secs(3600);

/// What the background work needs, cloned off the open backup (the plugin holds it in an `Arc`;
/// long-lived threads hold it weakly).
pub struct Target {
    pub repo: Repository,
    pub network_dir: PathBuf,
    pub multi: Option<Arc<MultiBackend>>,
    pub writer: Arc<Mutex<JournalWriter>>,
}

/// The reply (and `backup-status`'s `last_check`): the report with its result, or an error.
fn reply_of(res: &store::Result<CheckReport>, db: &Path) -> Value {
    match res {
        Ok(r) => serde_json::to_value(r).unwrap_or(Value::Null),
        Err(e) => json!({
            "result": "error",
            "error": e.to_string(),
            "database": db.display().to_string(),
            "time": store::config::now(),
        }),
    }
}

fn log_line(res: &store::Result<CheckReport>, what: &str) -> (&'static str, String) {
    match res {
        Ok(r) => match &r.difference {
            None => (
                "info",
                format!(
                    "{what}: equal: the backup restores to exactly lightningd's database \
                     (data_version {}..{}, {} tables, {} rows, {} ms; {} reads of lightningd's \
                     database, none holding its lock longer than {} us)",
                    r.data_version,
                    r.data_version_end,
                    r.tables,
                    r.rows,
                    r.duration_ms,
                    r.steps,
                    r.longest_lock_us
                ),
            ),
            Some(d) => (
                "broken",
                format!(
                    "{what}: the backup does NOT restore to lightningd's database: first \
                     difference: {d}. Do not rely on this backup until the cause is known; \
                     `backup-cli verify --read-data` and `backup-cli inspect` show what it holds"
                ),
            ),
        },
        Err(e) => (
            "unusual",
            format!("{what} could not finish: {e}. It runs again at the next interval"),
        ),
    }
}

/// Start a drill on its own thread. `reply_to`: the RPC id to answer (None: periodic, which only
/// logs). Err with why when it cannot start now.
pub fn start(
    t: &Arc<Target>,
    job: &Arc<Compaction>,
    compaction: &Compaction,
    out: &Out,
    metrics: &Arc<Metrics>,
    reply_to: Option<Value>,
    nice: i32,
) -> Result<(), String> {
    if compaction.running() {
        return Err(
            "a compaction is running; the check runs after it (try again when it ends)".into(),
        );
    }
    let Some(guard) = job.begin() else {
        return Err("a check is already running; its result comes in backup-status".into());
    };
    let db = t.network_dir.join(DB_FILE);
    let (repo, scratch) = (t.repo.clone(), t.network_dir.join(CACHE_DIR));
    let (out, metrics, job2) = (out.clone(), metrics.clone(), job.clone());
    let spawned = std::thread::Builder::new()
        .name("backup-check".into())
        .spawn(move || {
            let what = if reply_to.is_some() {
                "backup-check"
            } else {
                "periodic backup-check"
            };
            // The heavy work (restore, replay, comparison) at the compaction's low priority;
            // the reads of lightningd's database, which hold its lock, on a thread started
            // before (at normal priority: one never waits for a CPU while lightningd waits
            // for its lock). Restore's parallel steps run on rayon's global low-priority threads.
            let lower = move || background_priority(nice);
            let res = if db.exists() {
                let mut opts = CheckOptions::new(scratch);
                opts.cancel = Some(job2.cancel_flag());
                opts.lower_priority = Some(&lower);
                check(&repo, &db, &opts)
            } else {
                Err(store::Error::Invalid(format!(
                    "{} does not exist (a wallet elsewhere is not checked)",
                    db.display()
                )))
            };
            let value = reply_of(&res, &db);
            let (level, line) = log_line(&res, what);
            out.log(level, &line);
            job2.set_last(value.clone());
            metrics.check_done(&value);
            drop(guard);
            if let Some(id) = reply_to {
                let _ = match &res {
                    Err(e) => out.error(&id, PLUGIN_ERROR, &format!("{what} failed: {e}")),
                    Ok(_) => out.result(&id, value),
                };
            }
        });
    match spawned {
        Ok(h) => {
            job.set_thread(h);
            Ok(())
        }
        Err(e) => Err(format!("cannot start a thread: {e}")),
    }
}

/// The periodic drill: a check [`FIRST_AFTER`] the start (or `interval`, if shorter), then every
/// `interval` (postponed while a compaction runs). Ends when `job` is closed (shutdown).
pub fn spawn_periodic(
    target: Weak<Target>,
    job: Arc<Compaction>,
    compaction: Arc<Compaction>,
    out: Out,
    metrics: Arc<Metrics>,
    interval: Duration,
    nice: i32,
) {
    let _ = std::thread::Builder::new()
        .name("check-timer".into())
        .spawn(move || {
            let mut due = Instant::now() + interval.min(FIRST_AFTER);
            loop {
                std::thread::sleep(Duration::from_millis(200));
                if job.cancel_flag().load(Ordering::SeqCst) {
                    return;
                }
                if Instant::now() < due || job.running() {
                    continue;
                }
                let Some(t) = target.upgrade() else { return };
                due = match start(&t, &job, &compaction, &out, &metrics, None, nice) {
                    Ok(()) => Instant::now() + interval,
                    Err(_) => Instant::now() + BUSY_RETRY.min(interval),
                };
            }
        });
}
