//! The plugin's RPC methods. Each runs on its own thread and answers when done, so the main loop
//! keeps serving `db_write` meanwhile (lightningd passes RPC calls and hook calls concurrently).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use store::backend::multi::{Mode, MultiBackend};
use store::ops::compact::{compact_cancellable, CompactOptions, CompactReport};
use store::ops::stats::Stats;

use crate::backup::Backup;
use crate::protocol::{Out, PLUGIN_ERROR};

/// Where compaction keeps its local base copy of the database (beside the node's).
pub const CACHE_DIR: &str = "cln-backup-cache";

/// Shared between the main loop and a background job's thread: the compaction's, and (another
/// instance) the restore drill's (`drill.rs`).
#[derive(Default)]
pub struct Compaction {
    running: AtomicBool,
    /// The last compaction's reply (or error), for `backup-status`.
    last: Mutex<Option<Value>>,
    /// The thread of the running (or last) compaction, joined at shutdown.
    thread: Mutex<Option<JoinHandle<()>>>,
    /// Set at shutdown: no compaction starts after it.
    closed: AtomicBool,
    /// Set at shutdown: the running compaction stops at its next safe point.
    cancel: AtomicBool,
}

impl Compaction {
    pub fn running(&self) -> bool {
        self.running.load(Ordering::SeqCst)
    }
    /// Refuse new compactions, ask the running one to stop at its next safe point, then wait up
    /// to `timeout` for it to end (its lock guards are dropped with it). True if none is left
    /// running.
    pub fn close(&self, timeout: Duration) -> bool {
        self.closed.store(true, Ordering::SeqCst);
        self.cancel.store(true, Ordering::SeqCst);
        let deadline = Instant::now() + timeout;
        let handle = self.thread.lock().ok().and_then(|mut t| t.take());
        let Some(handle) = handle else {
            return !self.running();
        };
        while !handle.is_finished() {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = handle.join();
        true
    }
    pub fn last(&self) -> Value {
        self.last
            .lock()
            .ok()
            .and_then(|l| l.clone())
            .unwrap_or(Value::Null)
    }

    /// Mark a job running, unless one runs or shutdown began: the guard clears it.
    pub fn begin(self: &Arc<Self>) -> Option<Running> {
        let free = !self.closed.load(Ordering::SeqCst)
            && self
                .running
                .compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok();
        free.then(|| Running(self.clone()))
    }

    /// Set at shutdown: the running job stops at its next safe point.
    pub fn cancel_flag(&self) -> &AtomicBool {
        &self.cancel
    }

    pub fn set_last(&self, v: Value) {
        if let Ok(mut l) = self.last.lock() {
            *l = Some(v);
        }
    }

    pub fn set_thread(&self, h: JoinHandle<()>) {
        if let Ok(mut t) = self.thread.lock() {
            *t = Some(h);
        }
    }
}

/// Clears `running` however the thread ends.
pub struct Running(Arc<Compaction>);
impl Drop for Running {
    fn drop(&mut self) {
        self.0.running.store(false, Ordering::SeqCst);
    }
}

fn stats_json(s: &Stats) -> Value {
    json!({"backupsize": s.backup_size, "version_count": s.version_count})
}

/// The old plugin's keys (`before`/`after` with `backupsize` and `version_count`), and ours.
pub fn compact_reply(r: &CompactReport) -> Value {
    json!({
        "before": stats_json(&r.before),
        "after": stats_json(&r.after),
        "snapshot": r.snapshot.as_ref().map(|s| s.id.clone()),
        "data_version": r.snapshot.as_ref().map(|s| s.data_version),
        "bytes_added": r.bytes_added,
        "dedup_ratio": r.dedup_ratio,
        "duration_ms": r.duration_ms,
        "note": r.note,
    })
}

/// Start a compaction on its own thread. `reply_to` is the RPC id to answer when it ends (None
/// for an automatic one, which only logs). Returns false if one is already running.
pub fn start_compaction(
    backup: &Backup,
    state: &Arc<Compaction>,
    out: &Out,
    reply_to: Option<Value>,
    backup_retention: &Option<store::ops::prune::Retention>,
    nice: i32,
    metrics: &Arc<crate::metrics::Metrics>,
) -> bool {
    let Some(guard) = state.begin() else {
        return false;
    };
    let repo = backup.repo.clone();
    let writer = backup.writer.clone();
    let opts = CompactOptions {
        cache_dir: backup.network_dir.join(CACHE_DIR),
        holder: store::repo::holder(&format!(
            "cln-backup plugin compaction, lightning-dir {}",
            backup.network_dir.display()
        )),
    };
    let out = out.clone();
    let retention = backup_retention.clone();
    let metrics = metrics.clone();
    let spawned = std::thread::Builder::new()
        .name("compaction".into())
        .spawn(move || {
            let what = if reply_to.is_some() { "backup-compact" } else { "automatic compaction" };
            out.log("debug", &format!("{what}: started"));
            remove_stale_bases(&opts.cache_dir, &repo.repo_id().to_string());
            // The hook must not wait for a CPU behind a compaction: it runs on one thread at a
            // low CPU priority.
            background_priority(nice);
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(1)
                .thread_name(|_| "compaction-worker".into())
                .start_handler(move |_| background_priority(nice))
                .build();
            let cancel = &guard.0.cancel;
            let work = || {
                let mut res = compact_cancellable(&repo, &writer, &opts, cancel);
                // Retention: after a new snapshot, prune what the policy no longer keeps, so
                // the backup stays bounded (the old plugin's users saw it grow without end).
                // Without a policy, garbage collection alone: it merges the small packs each
                // compaction leaves, so the object count stays bounded.
                let mut pruned = Value::Null;
                if let Ok(r) = &mut res {
                    // An append-only destination (issue 15) refuses the deletes a prune makes:
                    // its operator prunes on the server's host.
                    let append_only = repo.backend().append_only();
                    if append_only && r.snapshot.is_some() {
                        out.log("info", &format!("{what}: the retention prune is skipped: {} is append-only (its operator prunes on the server's host)", repo.url()));
                    }
                    // Not at shutdown: the next compaction prunes.
                    if r.snapshot.is_some() && !cancel.load(Ordering::SeqCst) && !append_only {
                        let done = match &retention {
                            Some(policy) => store::ops::prune::plan(&repo, policy)
                                .and_then(|p| store::ops::prune::apply(&repo, &p, &opts.holder)),
                            None => store::ops::prune::collect_garbage(&repo, &opts.holder),
                        };
                        match done {
                            Ok(p) => {
                                pruned = serde_json::to_value(&p).unwrap_or(Value::Null);
                                if let Ok(after) = store::ops::stats::stats(&repo) {
                                    r.after = after;
                                }
                            }
                            // A destination behind others that refuses deletes (issue 15).
                            Err(e @ store::Error::AppendOnly { .. }) => out.log("info", &format!("{what}: the retention prune is skipped: {e}")),
                            Err(e) => out.log("unusual", &format!(
                                "{what}: {} failed: {e}. Nothing kept is lost; the next compaction tries again.",
                                if retention.is_some() { "pruning by the retention policy" } else { "garbage collection" }
                            )),
                        }
                    }
                }
                (res, pruned)
            };
            // All of it in the low-priority pool: a parallel step outside it (listing the
            // manifests to prune) would run on rayon's global threads, at the hook's priority.
            let (res, pruned) = match &pool {
                Ok(p) => p.install(work),
                Err(_) => work(),
            };
            let (value, logline) = match &res {
                Ok(r) => {
                    let mut v = compact_reply(r);
                    v["pruned"] = pruned.clone();
                    let line = match &r.snapshot {
                        Some(s) => format!(
                            "{what}: snapshot {} at data_version {} ({} bytes added, dedup ratio {:.2}, {} ms); backup size {} -> {} bytes{}",
                            s.id, s.data_version, r.bytes_added, r.dedup_ratio, r.duration_ms,
                            r.before.backup_size, r.after.backup_size, prune_summary(&pruned)
                        ),
                        None => format!("{what}: no snapshot made ({})", r.note.as_deref().unwrap_or("nothing to do")),
                    };
                    (v, ("info", line))
                }
                Err(e @ store::Error::Cancelled(_)) => (
                    json!({"error": e.to_string()}),
                    ("info", format!("{what} stopped for shutdown: {e}")),
                ),
                Err(e) => (
                    json!({"error": e.to_string()}),
                    ("unusual", format!("{what} failed: {e}. The journal keeps every change; hooks are not affected.")),
                ),
            };
            out.log(logline.0, &logline.1);
            guard.0.set_last(value.clone());
            // The journal since the new snapshot, as the compaction's stats measured it (the
            // next hook brings it up to date; the writer's lock stays the hook's).
            metrics.compaction_done(
                matches!(res, Ok(_) | Err(store::Error::Cancelled(_))),
                res.as_ref().ok().map(|r| r.after.journal_bytes_since_snapshot),
            );
            drop(guard);
            if let Some(id) = reply_to {
                let _ = match res {
                    Ok(_) => out.result(&id, value),
                    Err(e) => out.error(&id, PLUGIN_ERROR, &format!("{what} failed: {e}")),
                };
            }
        });
    match spawned {
        Ok(handle) => {
            state.set_thread(handle);
            true
        }
        Err(_) => false,
    }
}

/// What the prune after a compaction did, for its log line (empty when none ran).
fn prune_summary(pruned: &Value) -> String {
    let n = |k: &str| pruned.get(k).and_then(Value::as_u64).unwrap_or(0);
    if pruned.is_null() {
        return String::new();
    }
    format!(
        "; pruned {} snapshots and {} journal segments, {} packs deleted ({} repacked, {} merged, {} written), {} packs and {} index objects left, {} ms",
        n("removed_snapshots"),
        n("deleted_segments"),
        n("deleted_packs"),
        n("repacked_packs"),
        n("merged_packs"),
        n("written_packs"),
        n("packs"),
        n("index_objects"),
        n("duration_ms")
    )
}

/// `backup-status`, answered from its own thread (listing snapshots may take a while remotely).
pub fn status(
    backup: &Backup,
    state: &Arc<Compaction>,
    check: &Arc<Compaction>,
    out: &Out,
    id: Value,
    durability: &str,
) {
    let repo = backup.repo.clone();
    let writer = backup.writer.clone();
    let state = state.clone();
    let check = check.clone();
    let out = out.clone();
    let durability = durability.to_string();
    let network_dir: PathBuf = backup.network_dir.clone();
    let multi = backup.multi.clone();
    std::thread::spawn(move || {
        // Each destination with its lag (only when backup.lock lists more than one).
        let destinations: Vec<Value> = multi
            .map(|m| {
                m.status()
                    .into_iter()
                    .map(|d| {
                        json!({
                            "url": d.url,
                            "mode": d.mode.name(),
                            "state": d.state,
                            "lag_batches": d.lag_batches,
                            "lag_writes": d.lag_writes,
                            "lag_bytes": d.lag_bytes,
                            "lag_seconds": d.lag_seconds,
                            "last_error": d.last_error,
                        })
                    })
                    .collect()
            })
            .unwrap_or_default();
        let (last, bytes) = match writer.lock() {
            Ok(w) => (w.last_version(), w.bytes_since_snapshot()),
            Err(_) => (None, 0),
        };
        let snaps = store::ops::snapshots::list(&repo);
        let node_id = store::node::read_node_id(&repo)
            .ok()
            .flatten()
            .map(|n| n.node_id);
        let reply = match snaps {
            Ok(s) => out.result(
                &id,
                json!({
                    "url": repo.url(),
                    "encrypted": repo.is_encrypted(),
                    "durability": durability,
                    "lightning_dir": network_dir.display().to_string(),
                    "data_version": last,
                    "journal_bytes_since_snapshot": bytes,
                    "snapshot_count": s.len(),
                    "last_snapshot": s.last(),
                    "compaction_running": state.running(),
                    "last_compaction": state.last(),
                    "node_id": node_id,
                    "check_running": check.running(),
                    "last_check": check.last(),
                    "destinations": destinations,
                }),
            ),
            Err(e) => out.error(&id, PLUGIN_ERROR, &format!("backup-status: {e}")),
        };
        let _ = reply;
    });
}

/// Log the state changes of asynchronous destinations (down, behind after an error, caught up)
/// to lightningd, where operators look; `backup-status` has the details. The thread holds only a
/// weak reference and ends with the backup.
pub fn watch_destinations(multi: &Option<Arc<MultiBackend>>, out: &Out) {
    let Some(m) = multi else {
        return;
    };
    let weak = Arc::downgrade(m);
    let out = out.clone();
    let _ = std::thread::Builder::new()
        .name("destinations".into())
        .spawn(move || {
            // Per destination: the last state seen, and whether a problem was logged since it
            // was last live.
            let mut seen: Vec<(&'static str, bool)> = Vec::new();
            loop {
                std::thread::sleep(Duration::from_secs(1));
                let Some(m) = weak.upgrade() else {
                    return;
                };
                let status = m.status();
                drop(m);
                let dests = status.iter().filter(|d| d.mode == Mode::Async);
                for (i, d) in dests.enumerate() {
                    if seen.len() <= i {
                        seen.push(("opening", false));
                    }
                    let Some((prev, troubled)) = seen.get_mut(i) else {
                        continue;
                    };
                    if *prev == d.state {
                        continue;
                    }
                    let err = d.last_error.as_deref().unwrap_or("no error recorded");
                    match d.state {
                        "down" => {
                            *troubled = true;
                            out.log("unusual", &format!(
                                "asynchronous destination {} is down ({err}); lightningd goes on, and it is caught up once it opens",
                                d.url
                            ));
                        }
                        "catching up" if d.last_error.is_some() => {
                            *troubled = true;
                            out.log("unusual", &format!(
                                "asynchronous destination {} is {} batches behind ({err}); catching up by comparison",
                                d.url, d.lag_batches
                            ));
                        }
                        "live" if *troubled => {
                            *troubled = false;
                            out.log(
                                "info",
                                &format!("asynchronous destination {} caught up", d.url),
                            );
                        }
                        _ => {}
                    }
                    *prev = d.state;
                }
            }
        });
}

/// `backup-snapshots`: every snapshot, oldest first.
pub fn snapshots(backup: &Backup, out: &Out, id: Value) {
    let repo = backup.repo.clone();
    let out = out.clone();
    std::thread::spawn(move || {
        let _ = match store::ops::snapshots::list(&repo) {
            Ok(s) => out.result(&id, json!({ "snapshots": s })),
            Err(e) => out.error(&id, PLUGIN_ERROR, &format!("backup-snapshots: {e}")),
        };
    });
}

/// Compaction bases of other repositories (left by `backup-cli init --force`): a full copy of the
/// database each, useless now.
fn remove_stale_bases(dir: &std::path::Path, repo_id: &str) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let is_base = name.ends_with(".base.sqlite3") || name.ends_with(".base.json");
        if is_base && !name.starts_with(repo_id) {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// A low CPU priority for the calling thread only (Linux applies it per thread): `nice` (19 by
/// default) and, unless `nice` is 0, the `SCHED_IDLE` policy, under which the thread runs only
/// when no normal thread wants the CPU. Best effort: where either is refused the compaction
/// runs with what it got.
///
/// Why both, measured with `hook --compacting-only` (p99 of hooks overlapping back-to-back
/// compactions over the idle p99; benches/report-notes.md):
/// - nice 19 rather than 10: seven runs each, 1.4-2.8x at 19, 2.1-6.7x at 10;
/// - `SCHED_IDLE` on top of nice 19: fifteen runs each, interleaved, median 1.24x and worst
///   1.64x, against median 1.37x and worst 2.09x. Kernel traces showed why: a nice-19 thread
///   keeps its CPU for the rest of its slice when the hook's thread (or lightningd) wakes,
///   and on two cores the woken thread waited up to the next tick, 1-3.5 ms, while the other
///   core sat idle. A thread under `SCHED_IDLE` is preempted by any normal wakeup.
///
/// The compaction holds nothing the hook waits for while it computes: the journal writer's
/// lock only to switch segments, a stream's length only to read it.
///
/// Its disk I/O deliberately stays in the normal class. The idle class was tried and made the
/// hook *slower*: a hook's fdatasync waits for the filesystem journal commit, and that commit can
/// wait for the compaction's idle-class writes, which the scheduler holds back while the hook's
/// I/O is pending (a priority inversion). Measured with `hook --compacting-only`: p99 of hooks
/// overlapping a compaction 1.1-1.7 ms in the normal class, 1.7-8.1 ms in the idle class
/// (benches/REPORT.md).
pub fn background_priority(nice: i32) {
    // SAFETY: plain system calls on the calling thread (id 0 is the caller for
    // sched_setscheduler; gettid for setpriority); the only memory passed is a local
    // `sched_param` that outlives the call.
    #[allow(unsafe_code)]
    unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, nice);
        if nice > 0 {
            let param = libc::sched_param { sched_priority: 0 };
            libc::sched_setscheduler(0, libc::SCHED_IDLE, &param);
        }
    }
}
