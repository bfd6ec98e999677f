//! `cln-backup`: Core Lightning plugin that makes every `db_write` batch durable in a cln-backup
//! repository before lightningd commits it.
//!
//! Read first: [`protocol`] (the wire, and why it is hand-written), then [`backup`] (the
//! invariant: `continue` only after a durable append), then [`rpc`] (work off the hook path).
//!
//! Life of the process (lightningd v26.06.6, ../shared/NOTES.md section 1):
//! getmanifest (nothing touched on disk: `lightningd --help` sends it too) -> db_write calls
//! before init (the first one reads `backup.lock` from the working directory, the node's network
//! dir, opens the repository and takes its writer lock) -> init (options) -> db_write and RPC
//! calls -> stdin closes (or a `shutdown` notification) -> [`Plugin::shutdown`]: stop a running
//! compaction at its next safe point and wait for it (bounded), so its locks are released rather
//! than left to expire, close the backup, drain asynchronous destinations -> exit 0.

mod backup;
mod drill;
mod lnrpc;
mod metrics;
mod options;
mod protocol;
mod rpc;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use store::{AppendOutcome, Batch};

use backup::Backup;
use options::Options;
use protocol::{Incoming, Out, INVALID_PARAMS, METHOD_NOT_FOUND, PLUGIN_ERROR};

struct Plugin {
    out: Out,
    dir: PathBuf,
    opts: Options,
    initialized: bool,
    backup: Option<Backup>,
    /// Set by the first failed append: every later db_write is refused (fail-stop).
    failed: Option<String>,
    compaction: Arc<rpc::Compaction>,
    /// The restore drill (`backup-check`), on request and periodic.
    check: Arc<rpc::Compaction>,
    metrics: Arc<metrics::Metrics>,
    /// The RPC socket of lightningd (from init), for `getinfo`.
    rpc_socket: Option<PathBuf>,
    /// The work started once both init and the backup are there (node id, drill, metrics).
    background_started: bool,
    /// What those threads work on; they hold it weakly, and shutdown drops it.
    target: Option<Arc<drill::Target>>,
    /// Automatic compaction waits until the journal passes this (raised after a failed try).
    auto_floor: u64,
    /// Set by a `shutdown` notification: the main loop ends.
    exiting: bool,
}

/// How long shutdown waits for a running compaction. lightningd gives a plugin that subscribed
/// to `shutdown` 30 s before it closes its pipes (../shared/NOTES.md); the rest is for the drain.
const SHUTDOWN_COMPACTION_WAIT: Duration = Duration::from_secs(20);
/// How long shutdown waits for asynchronous destinations to take their queued writes.
const SHUTDOWN_DRAIN_WAIT: Duration = Duration::from_secs(5);

impl Plugin {
    fn handle(&mut self, m: Incoming) {
        match m {
            Incoming::Request { id, method, params } => self.request(id, &method, params),
            Incoming::Notification { method, .. } if method == "shutdown" => {
                self.shutdown("lightningd sent shutdown");
                self.exiting = true;
            }
            Incoming::Notification { .. } | Incoming::Other(_) => {}
        }
    }

    fn request(&mut self, id: Value, method: &str, params: Value) {
        let res = match method {
            "getmanifest" => self.out.result(&id, options::manifest()),
            "init" => self.init(&id, &params),
            "db_write" => self.db_write(&id, &params),
            "backup-compact" | "backup-status" | "backup-snapshots" | "backup-check" => {
                match &self.backup {
                    None => self.out.error(
                        &id,
                        PLUGIN_ERROR,
                        &format!(
                            "the backup is not open: {}",
                            self.failed.as_deref().unwrap_or("no db_write received yet")
                        ),
                    ),
                    Some(b) => match method {
                        "backup-compact" if self.check.running() => self.out.error(
                            &id,
                            PLUGIN_ERROR,
                            "a backup-check is running; compact when it ends (see backup-status)",
                        ),
                        "backup-compact" => {
                            if rpc::start_compaction(
                                b,
                                &self.compaction,
                                &self.out,
                                Some(id.clone()),
                                &self.opts.retention,
                                self.opts.compaction_nice,
                                &self.metrics,
                            ) {
                                Ok(())
                            } else {
                                self.out.error(&id, PLUGIN_ERROR, "a compaction is already running; try again when it ends (see backup-status)")
                            }
                        }
                        "backup-check" => match drill::start(
                            &self
                                .target
                                .clone()
                                .unwrap_or_else(|| Arc::new(drill_target(b))),
                            &self.check,
                            &self.compaction,
                            &self.out,
                            &self.metrics,
                            Some(id.clone()),
                            self.opts.compaction_nice,
                        ) {
                            Ok(()) => Ok(()),
                            Err(why) => self.out.error(&id, PLUGIN_ERROR, &why),
                        },
                        "backup-status" => {
                            rpc::status(
                                b,
                                &self.compaction,
                                &self.check,
                                &self.out,
                                id,
                                self.opts.durability.name(),
                            );
                            Ok(())
                        }
                        _ => {
                            rpc::snapshots(b, &self.out, id);
                            Ok(())
                        }
                    },
                }
            }
            _ => self.out.error(
                &id,
                METHOD_NOT_FOUND,
                &format!("cln-backup has no method {method}"),
            ),
        };
        if let Err(e) = res {
            eprintln!("cln-backup: writing to lightningd failed: {e}");
        }
    }

    fn init(&mut self, id: &Value, params: &Value) -> std::io::Result<()> {
        let opts = match Options::from_init(params) {
            Ok(o) => o,
            Err(e) => {
                // lightningd v26.06.6 ignores an error answer to init: refuse every later write
                // instead, so lightningd stops without committing rather than run on unconfigured.
                let msg = format!("{e}; fix the option in lightningd's config and start it again");
                self.out.log("broken", &msg);
                self.failed = Some(msg.clone());
                return self.out.error(id, INVALID_PARAMS, &msg);
            }
        };
        if let Some(w) = options::non_sqlite_wallet(params) {
            self.out.log("broken", &options::sqlite_only_message(&w));
        }
        options::check_wallet_in_background(params, &self.dir, &self.out);
        self.rpc_socket = Some(lnrpc::socket_path(params, &self.dir));
        self.opts = opts;
        self.opts.remote.notify = self.wait_notices();
        self.initialized = true;
        // Writes before init used the default options; switch now if asked. A new reconnect
        // policy needs the backend opened anew.
        if let Some(b) = self.backup.take() {
            if b.remote != self.opts.remote && !self.compaction.running() {
                let first_done = b.first_done;
                drop(b);
                match Backup::open(&self.dir, self.opts.durability, &self.opts.remote) {
                    Ok(mut b) => {
                        b.first_done = first_done;
                        rpc::watch_destinations(&b.multi, &self.out);
                        self.backup = Some(b);
                    }
                    Err(e) => {
                        let msg = format!("{e:#}");
                        self.out.log("broken", &msg);
                        self.failed = Some(msg);
                    }
                }
            } else if b.durability() != Some(self.opts.durability) && !self.compaction.running() {
                match b.reopen(self.opts.durability) {
                    Ok(b) => self.backup = Some(b),
                    Err(e) => {
                        let msg = format!("{e:#}");
                        self.out.log("broken", &msg);
                        self.failed = Some(msg);
                    }
                }
            } else {
                self.backup = Some(b);
            }
        }
        let state = match &self.backup {
            Some(b) => format!(
                "backing up to {} ({}), durability {}",
                b.repo.url(),
                if b.repo.is_encrypted() {
                    "encrypted"
                } else {
                    "not encrypted"
                },
                self.opts.durability.name()
            ),
            None => "no backup open yet".into(),
        };
        self.start_background();
        if let Some(f) = store::clock::simulated_clock() {
            self.out.log(
                "unusual",
                &format!(
                    "the clock is simulated from {f} ({} is set): for benchmarks only, never beside a real node",
                    store::clock::SIMULATED_CLOCK_ENV
                ),
            );
        }
        self.out.log(
            "info",
            &format!(
                "cln-backup {} initialized: {state}; automatic compaction {}",
                env!("CARGO_PKG_VERSION"),
                match self.opts.compact_journal_bytes {
                    0 => "off".to_string(),
                    n => format!("when the journal since the last snapshot passes {n} bytes"),
                }
            ),
        );
        self.out.result(id, json!({}))
    }

    fn db_write(&mut self, id: &Value, params: &Value) -> std::io::Result<()> {
        let started = Instant::now();
        let batch = match parse_batch(params) {
            Some(b) => b,
            None => {
                let msg = format!("db_write with malformed params, refusing it: {params}");
                self.out.log("broken", &msg);
                self.metrics.hook_done(started.elapsed(), None);
                return self.out.error(id, INVALID_PARAMS, &msg);
            }
        };
        let (res, acked) = match self.append(&batch) {
            Ok(bytes) => (
                self.out.result(id, json!({"result": "continue"})),
                Some((batch.data_version, bytes)),
            ),
            Err(msg) => {
                self.out.log("broken", &msg);
                (self.out.error(id, PLUGIN_ERROR, &msg), None)
            }
        };
        self.metrics.hook_done(started.elapsed(), acked);
        res
    }

    /// Once init arrived and the backup is open: record the node id (lightningd's `getinfo`),
    /// start the periodic restore drill and the metrics file. All of it on other threads.
    fn start_background(&mut self) {
        if self.background_started || !self.initialized {
            return;
        }
        let Some(b) = &self.backup else {
            return;
        };
        self.background_started = true;
        // The threads below hold this weakly: at shutdown the plugin drops it with the backup, so
        // the journal is closed (its zeros cut, its lock released) and the destinations drained
        // and joined, whatever those threads are doing.
        let target = Arc::new(drill_target(b));
        let weak = Arc::downgrade(&target);
        self.target = Some(target);
        if let Some(sock) = &self.rpc_socket {
            record_node_id(sock.clone(), weak.clone(), self.out.clone());
        }
        if self.opts.check_interval > 0 {
            drill::spawn_periodic(
                weak.clone(),
                self.check.clone(),
                self.compaction.clone(),
                self.out.clone(),
                self.metrics.clone(),
                Duration::from_secs(self.opts.check_interval),
                self.opts.compaction_nice,
            );
        }
        if let Some(f) = &self.opts.metrics_file {
            metrics::spawn_writer(
                self.dir.join(f),
                self.metrics.clone(),
                weak,
                self.out.clone(),
            );
        }
    }

    /// Where a `socket:` destination says what it waits for (a redial after the link dropped,
    /// which the hook waits for): lightningd's log.
    fn wait_notices(&self) -> store::backend::remote::client::Notify {
        let out = self.out.clone();
        store::backend::remote::client::Notify::new(move |m| out.log("unusual", m))
    }

    /// The hook path: open on first use, one durable append, log the first-write outcome.
    /// Returns the journal's bytes since the last snapshot.
    fn append(&mut self, batch: &Batch) -> Result<u64, String> {
        let v = batch.data_version;
        if let Some(f) = &self.failed {
            return Err(format!(
                "refusing db_write for data_version {v}: the backup stopped after an earlier failure ({f}). Restart lightningd once the cause is fixed."
            ));
        }
        if self.backup.is_none() {
            let b = Backup::open(&self.dir, self.opts.durability, &self.opts.remote)
                .map_err(|e| format!("{e:#}"))?;
            {
                let w = b
                    .writer
                    .lock()
                    .map_err(|_| "journal writer poisoned".to_string())?;
                for note in &b.notes {
                    self.out.log("info", note);
                }
                if let Some(note) = w.recovery_note() {
                    self.out
                        .log("unusual", &format!("journal recovery: {note}"));
                }
                self.out.log(
                    "info",
                    &format!(
                        "cln-backup: backup {} opened ({}), it holds data_version {}",
                        b.repo.url(),
                        if b.repo.is_encrypted() {
                            "encrypted"
                        } else {
                            "not encrypted"
                        },
                        w.last_version().map_or("none".into(), |l| l.to_string())
                    ),
                );
            }
            rpc::watch_destinations(&b.multi, &self.out);
            self.backup = Some(b);
            self.start_background();
        }
        let Some(b) = self.backup.as_mut() else {
            return Err("internal: backup not open".into());
        };
        match b.append(batch) {
            Ok((outcome, journal_bytes)) => {
                if !b.first_done && outcome != AppendOutcome::Pragma {
                    b.first_done = true;
                    match outcome {
                        AppendOutcome::VersionsMatch => self.out.log(
                            "info",
                            &format!("Versions match up: the backup continues at data_version {v}"),
                        ),
                        AppendOutcome::Superseded { version } => self.out.log(
                            "unusual",
                            &format!(
                                "Last changes not applied: lightningd stopped after the backup stored data_version {version} but before committing it; the batch it sends now replaces that one"
                            ),
                        ),
                        _ => {}
                    }
                }
                self.maybe_compact(journal_bytes);
                Ok(journal_bytes)
            }
            Err(e) => {
                let msg = match &e {
                    store::Error::BackupBehind { .. } | store::Error::BackupAhead { .. } => e
                        .to_string()
                        .replace("<dir>", &self.dir.display().to_string())
                        .replace("<url>", &b.repo.url()),
                    _ => format!(
                        "cannot store db_write data_version {v} in the backup {}: {e}. lightningd stops without committing it; fix the cause and start lightningd again.",
                        b.repo.url()
                    ),
                };
                self.failed = Some(msg.clone());
                Err(msg)
            }
        }
    }

    /// lightningd is stopping: no new work; stop a running compaction at its next safe point and
    /// wait for it (bounded) so its lock guards delete their lease objects (an S3 lease left
    /// behind refuses prune and compaction for a minute); close the backup (the writer lock);
    /// drain asynchronous destinations.
    /// Every step is logged: to lightningd if it still reads, and to stderr (its own stderr).
    fn shutdown(&mut self, why: &str) {
        let say = |level: &str, msg: String| {
            self.out.log(level, &msg);
            eprintln!("cln-backup: {msg}");
        };
        if self.compaction.running() {
            say(
                "info",
                format!(
                    "shutdown ({why}): stopping the running compaction at its next safe point (waiting up to {} s), so its locks are released",
                    SHUTDOWN_COMPACTION_WAIT.as_secs()
                ),
            );
            let t = Instant::now();
            if self.compaction.close(SHUTDOWN_COMPACTION_WAIT) {
                say(
                    "info",
                    format!(
                        "shutdown: the compaction ended after {:.1} s; its locks are released",
                        t.elapsed().as_secs_f64()
                    ),
                );
            } else {
                say(
                    "unusual",
                    format!(
                        "shutdown: the compaction is still running after {} s; exiting anyway (it is crash-safe; its locks expire by themselves, within 60 s on S3)",
                        SHUTDOWN_COMPACTION_WAIT.as_secs()
                    ),
                );
            }
        } else {
            // A compaction that just ended may still hold the journal writer (and its lock)
            // for the moment its thread takes to finish: wait for it, or the lock outlives the
            // process (on S3 a lease that refuses the next start for up to 60 s; seen by the
            // year benchmark restarting right after a compaction).
            self.compaction.close(SHUTDOWN_COMPACTION_WAIT);
        }
        // A restore drill stops at its next step (it publishes nothing).
        if !self.check.close(SHUTDOWN_COMPACTION_WAIT) {
            say(
                "unusual",
                "shutdown: the backup-check did not stop in time; exiting anyway".into(),
            );
        }
        self.metrics.stop();
        self.target = None;
        let Some(b) = self.backup.take() else {
            return;
        };
        // Threads answering RPCs (backup-status) hold the writer for a moment; the writer's
        // lock goes with its last holder, which must be before the process exits.
        let t = Instant::now();
        while Arc::strong_count(&b.writer) > 1 && t.elapsed() < SHUTDOWN_DRAIN_WAIT {
            std::thread::sleep(Duration::from_millis(5));
        }
        if let Some(m) = &b.multi {
            let t = Instant::now();
            let behind = m.drain(SHUTDOWN_DRAIN_WAIT);
            for d in &behind {
                say(
                    "unusual",
                    format!(
                        "shutdown: asynchronous destination {} is {} and {} batches ({} writes) behind{}; it catches up at the next start",
                        d.url,
                        d.state,
                        d.lag_batches,
                        d.lag_writes,
                        d.last_error.as_deref().map(|e| format!(" (last error: {e})")).unwrap_or_default()
                    ),
                );
            }
            if behind.is_empty() {
                say(
                    "info",
                    format!(
                        "shutdown: asynchronous destinations caught up ({:.1} s)",
                        t.elapsed().as_secs_f64()
                    ),
                );
            }
        }
        let url = b.repo.url();
        drop(b);
        say(
            "info",
            format!("shutdown: backup {url} closed, its locks released"),
        );
    }

    fn maybe_compact(&mut self, journal_bytes: u64) {
        let limit = self.opts.compact_journal_bytes;
        if journal_bytes < limit {
            self.auto_floor = 0; // the last compaction worked: back to the plain threshold
        }
        if !self.initialized || limit == 0 || journal_bytes < limit.max(self.auto_floor) {
            return;
        }
        if self.compaction.running() || self.check.running() {
            return;
        }
        if let Some(b) = &self.backup {
            // If this one makes no progress, do not retry at every call: wait for a quarter more.
            self.auto_floor = journal_bytes + limit / 4;
            rpc::start_compaction(
                b,
                &self.compaction,
                &self.out,
                None,
                &self.opts.retention,
                self.opts.compaction_nice,
                &self.metrics,
            );
        }
    }
}

fn drill_target(b: &Backup) -> drill::Target {
    drill::Target {
        repo: b.repo.clone(),
        network_dir: b.network_dir.clone(),
        multi: b.multi.clone(),
        writer: b.writer.clone(),
    }
}

/// Ask lightningd (`getinfo`, on its RPC socket, from a thread: lightningd serves RPC only
/// between hooks) which node this is, and record it in the repository once. The same node is a
/// no-op; another node is fail-stop: this node's batches would go into another node's backup, so
/// every later db_write is refused (lightningd stops) and the log names both ids.
fn record_node_id(sock: PathBuf, target: std::sync::Weak<drill::Target>, out: Out) {
    let _ = std::thread::Builder::new()
        .name("node-id".into())
        .spawn(move || {
            // lightningd opens its socket during startup, after init: retry for about 2 minutes.
            let mut wait = Duration::from_millis(250);
            let mut tries = 0;
            let id = loop {
                match lnrpc::call(&sock, "getinfo", json!({})) {
                    Ok(v) => match v.get("id").and_then(Value::as_str) {
                        Some(id) => break id.to_string(),
                        None => return out.log("unusual", &format!("getinfo gave no node id: {v}")),
                    },
                    Err(e) if tries >= 12 => {
                        return out.log(
                            "unusual",
                            &format!("cannot ask lightningd for its node id ({e}); the repository records it at the next start"),
                        )
                    }
                    Err(_) => {
                        std::thread::sleep(wait);
                        wait = (wait * 2).min(Duration::from_secs(15));
                        tries += 1;
                    }
                }
            };
            use store::node::{record_node_id, NodeIdSource, NodeRecordOutcome};
            // The backup was closed meanwhile (shutdown): the next start records it.
            let Some(t) = target.upgrade() else { return };
            let repo = &t.repo;
            match record_node_id(repo, &id, NodeIdSource::Getinfo) {
                Ok(NodeRecordOutcome::Recorded(_)) => out.log(
                    "info",
                    &format!("recorded node {id} in the backup {}", repo.url()),
                ),
                Ok(NodeRecordOutcome::AlreadyRecorded(_)) => {
                    out.log("debug", &format!("the backup records node {id}, as it should"))
                }
                Err(e @ store::Error::NodeIdMismatch { .. }) => {
                    let msg = format!(
                        "the backup {} belongs to another node: {e}. Refusing every further write \
                         (lightningd stops): point backup.lock at this node's own backup",
                        repo.url()
                    );
                    if let Ok(mut w) = t.writer.lock() {
                        w.poison(msg.clone());
                    }
                    out.log("broken", &msg);
                }
                Err(e) => out.log(
                    "unusual",
                    &format!("cannot record node {id} in the backup {}: {e}", repo.url()),
                ),
            }
        });
}

fn parse_batch(params: &Value) -> Option<Batch> {
    let data_version = u32::try_from(params.get("data_version")?.as_u64()?).ok()?;
    let writes = params
        .get("writes")?
        .as_array()?
        .iter()
        .map(|w| w.as_str().map(str::to_string))
        .collect::<Option<Vec<String>>>()?;
    Some(Batch {
        data_version,
        writes,
    })
}

/// lightningd ends a plugin by closing its stdin. A service manager's stop (systemd sends SIGTERM
/// to every process of the service once `lightning-cli stop` returns) or Ctrl-C in a terminal
/// (SIGINT to the whole process group) would kill the plugin in the middle of its shutdown,
/// leaving a compaction's S3 lease behind for a minute: both are ignored, and the plugin exits
/// when its stdin closes (lightningd shuts down on these signals itself). SIGKILL still ends it.
fn ignore_stop_signals() {
    // SAFETY: setting a signal's disposition to SIG_IGN installs no handler and passes no memory.
    #[allow(unsafe_code)]
    unsafe {
        libc::signal(libc::SIGTERM, libc::SIG_IGN);
        libc::signal(libc::SIGINT, libc::SIG_IGN);
    }
}

fn main() -> ExitCode {
    ignore_stop_signals();
    // Parallel steps outside a compaction's own pool (opening the backup, `backup-status`)
    // run on rayon's global threads: at low priority too, so their spinning between jobs never
    // takes a CPU from the hook (seen in kernel traces of `hook --compacting-only`).
    let _ = rayon::ThreadPoolBuilder::new()
        .thread_name(|i| format!("background-{i}"))
        .start_handler(|_| rpc::background_priority(19))
        .build_global();
    // One writer for stdout: every message to lightningd goes through the same mutex.
    let out = Out::stdout();
    let warn_out = out.clone();
    store::warn::set_sink(move |m| {
        warn_out.log("unusual", m);
        eprintln!("cln-backup: {m}");
    });
    let dir = match std::env::current_dir() {
        Ok(d) => d,
        Err(e) => {
            eprintln!("cln-backup: no working directory: {e}");
            return ExitCode::from(1);
        }
    };
    let mut p = Plugin {
        out,
        dir,
        opts: Options::default(),
        initialized: false,
        backup: None,
        failed: None,
        compaction: Arc::default(),
        check: Arc::default(),
        metrics: Arc::default(),
        rpc_socket: None,
        background_started: false,
        target: None,
        auto_floor: 0,
        exiting: false,
    };
    p.opts.remote.notify = p.wait_notices();
    for m in protocol::messages(std::io::stdin().lock()) {
        match m {
            Ok(m) => {
                p.handle(m);
                if p.exiting {
                    return ExitCode::SUCCESS;
                }
            }
            Err(e) => {
                eprintln!("cln-backup: unreadable input from lightningd, exiting: {e}");
                return ExitCode::from(1);
            }
        }
    }
    // stdin closed: lightningd is shutting down (or gone).
    p.shutdown("lightningd closed stdin");
    ExitCode::SUCCESS
}
