//! Hook latency: the cost of making one `db_write` batch durable, beside the physical limit.
//!
//! `cargo run --release -p cln-backup-benches --bin hook -- [--inprocess] [--plugin PATH] [--python]
//!  [--scale-tail N]`
//!
//! Over the fixture traces s1, s2, s3 (3233 batches of a real node; one session each), in a
//! directory on the same filesystem as /work:
//! - bare `write` of each batch's record bytes at the end of a file + `fdatasync` (what any
//!   journal must pay), and into a preallocated file (no size change to sync: the floor); both
//!   again beside a thread publishing small objects (the lightest compaction-like load);
//! - `--python`: benches/python/append_plugin.py (append + fsync per batch) under the ld-emulator
//!   crate, which drives a plugin process as lightningd v26.06.6 does;
//! - `--plugin PATH`: the cln-backup binary under ld-emulator, plaintext and encrypted; then with
//!   `backup-compact` called back to back in alternating phases of 250 hooks (compaction on,
//!   off, on, ...), through the benches' own driver (the emulator cannot poll for an RPC reply
//!   between hooks): hooks overlapping a compaction against hooks of the same run that did not;
//! - `--inprocess`: `JournalWriter::append` (fdatasync), each paired with a bare append +
//!   fdatasync just before it in the same directory (both see the disk at the same moment); and
//!   with compaction in alternating phases on another thread, as above; with `--scale-tail N`
//!   also the scale trace's last N batches after the rest was journaled (a 27 MB database to
//!   compact: megabytes of packs written and synced beside the hook).
//!
//! Latencies under a drifting load are compared only within one run: paired (bare vs append) or
//! interleaved (compaction phases vs idle phases).

use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cln_backup_benches::driver::{self, SessionTimes};
use cln_backup_benches::measure::{split, summary, target};
use cln_backup_benches::{arg, bench_data, flag, load_trace, testdata};
use store::config::ConfigBody;
use store::journal::{Batch, JournalWriter, Record};
use store::ops::compact::{compact, CompactOptions};
use store::{BackupUrl, Durability, MasterKey, Repository};

/// Hooks per phase when compaction alternates with idle.
const PHASE: usize = 250;

type Intervals = Arc<Mutex<Vec<(Instant, Instant)>>>;

fn main() -> anyhow::Result<()> {
    let sessions: Vec<Vec<Batch>> = ["trace-s1.jsonl", "trace-s2.jsonl", "trace-s3.jsonl"]
        .iter()
        .map(|t| load_trace(&testdata(t)))
        .collect::<anyhow::Result<_>>()?;
    println!(
        "| path | calls | p50 µs | p99 µs | max µs | p50 vs bare append+fdatasync (first row) |"
    );
    println!("|---|---|---|---|---|---|");
    let dir = tempfile::tempdir_in(bench_data())?;
    let flat: Vec<Batch> = sessions.concat();
    let bare = bare_append(dir.path(), &flat, false)?;
    let p50 = summary(&bare).0;
    let row = |what: &str, v: &[Duration]| {
        let (a, b, c) = summary(v);
        println!(
            "| {what} | {} | {a:.0} | {b:.0} | {c:.0} | {:.2}x |",
            v.len(),
            a / p50
        );
    };
    row(
        "bare append (`write` at end of file + `fdatasync`), same bytes, same filesystem",
        &bare,
    );
    row(
        "bare overwrite in a preallocated file + `fdatasync` (floor)",
        &bare_append(dir.path(), &flat, true)?,
    );
    // The limit for "hooks during a compaction": any compaction publishes objects durably, so
    // another thread syncs while hooks run. The lightest such load: 64 KiB written and synced
    // at a time, into a new file, renamed, directory synced (one small publish after another).
    let (beside, publishes) =
        beside_publishes(dir.path(), || bare_append(dir.path(), &flat, false))?;
    row(
        &format!("bare append + `fdatasync` while another thread publishes 64 KiB objects back to back ({publishes} publishes: the limit of any hook beside a compaction)"),
        &beside,
    );
    let (beside_pre, publishes) =
        beside_publishes(dir.path(), || bare_append(dir.path(), &flat, true))?;
    row(
        &format!("bare overwrite in a preallocated file + `fdatasync` while another thread publishes 64 KiB objects back to back ({publishes} publishes)"),
        &beside_pre,
    );
    let mut verdicts = Vec::new();
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join("python/append_plugin.py");
    let mut py_p50 = None;
    if flag("--python") {
        let all = emulator_sessions(&python, &sessions, None)?;
        row(
            "Python plugin (benches/python/append_plugin.py: append + fsync) under ld-emulator",
            &all,
        );
        py_p50 = Some(summary(&all).0);
        let cmd = vec![python.display().to_string()];
        row(
            "Python plugin under the benches driver (no reader thread)",
            &driver_idle(&cmd, &sessions, None)?,
        );
    }
    let automatic = |path: &str, verdicts: &mut Vec<String>| -> anyhow::Result<()> {
        let (idle, during, n) = plugin_automatic(path, AUTO_THRESHOLD)?;
        row(
            &format!("cln-backup plugin (benches driver), scale trace ({AUTO_ROUNDS} sessions), automatic compaction every 8 MiB of journal: hooks overlapping none"),
            &idle,
        );
        row(
            &format!("same runs: hooks overlapping one of the {n} automatic compactions (27 MB database by the end of each)"),
            &during,
        );
        verdicts.push(target(
            "plugin hook p99 during an automatic compaction (scale trace, 8 MiB threshold) <= 2x idle p99",
            summary(&during).1 / summary(&idle).1,
            2.0,
        ));
        Ok(())
    };
    if let (Some(path), true) = (arg("--plugin"), flag("--automatic-only")) {
        let mut v = Vec::new();
        automatic(&path, &mut v)?;
        for l in v {
            println!("{l}");
        }
        return Ok(());
    }
    if let (Some(path), true) = (arg("--plugin"), flag("--compacting-only")) {
        // Only the compaction phases, with plugin options (`--plugin-options JSON`), of an
        // encrypted backup with `--encrypted`: for comparing settings of the compaction thread.
        let (idle, during) = plugin_compacting(&path, &sessions, flag("--encrypted"))?;
        row("cln-backup plugin (benches driver), idle phases", &idle);
        row(
            "cln-backup plugin (benches driver), hooks overlapping a `backup-compact`",
            &during,
        );
        return Ok(());
    }
    if let Some(path) = arg("--plugin") {
        let plugin = PathBuf::from(&path);
        for encrypt in [false, true] {
            let enc = if encrypt { ", encrypted" } else { "" };
            let all = emulator_sessions(&plugin, &sessions, Some(encrypt))?;
            row(&format!("cln-backup plugin under ld-emulator{enc}"), &all);
            let idle50 = summary(&all).0;
            if let Some(py) = py_p50 {
                verdicts.push(target(
                    &format!("plugin hook p50 <= the Python plugin's p50{enc}"),
                    idle50 / py,
                    1.0,
                ));
            }
            verdicts.push(target(
                &format!("plugin hook p50 <= 1.3x bare append+fdatasync{enc}"),
                idle50 / p50,
                1.3,
            ));
            let direct = driver_idle(std::slice::from_ref(&path), &sessions, Some(encrypt))?;
            row(
                &format!("cln-backup plugin under the benches driver (no reader thread){enc}"),
                &direct,
            );
            verdicts.push(target(
                &format!("plugin hook p50 <= 1.3x bare append+fdatasync, benches driver{enc}"),
                summary(&direct).0 / p50,
                1.3,
            ));
            let (idle, during) = plugin_compacting(&path, &sessions, encrypt)?;
            row(
                &format!("cln-backup plugin (benches driver), idle phases{enc}"),
                &idle,
            );
            row(
                &format!(
                    "cln-backup plugin (benches driver), hooks overlapping a `backup-compact`{enc}"
                ),
                &during,
            );
            verdicts.push(target(
                &format!("plugin hook p99 during compaction <= 2x idle p99{enc}"),
                summary(&during).1 / summary(&idle).1,
                2.0,
            ));
        }
        automatic(&path, &mut verdicts)?;
        if let Some(py) = py_p50 {
            let all = emulator_sessions(&python, &sessions, None)?;
            row(
                &format!("Python plugin again (drift check; first run p50 {py:.0} µs)"),
                &all,
            );
        }
    }
    if flag("--inprocess") {
        for encrypt in [false, true] {
            let enc = if encrypt { ", encrypted" } else { "" };
            let (all, bare) = journal_paired(&sessions, encrypt)?;
            let paired = summary(&all).0 / summary(&bare).0;
            row(&format!("bare append + `fdatasync` in the journal's directory, each just before the append below{enc}"), &bare);
            row(
                &format!(
                    "`JournalWriter::append` in-process{enc} ({paired:.2}x its paired bare append)"
                ),
                &all,
            );
            verdicts.push(target(
                &format!("in-process append p50 <= 1.3x bare append+fdatasync (paired){enc}"),
                paired,
                1.3,
            ));
            let (idle, during) = journal_compacting(&sessions, encrypt)?;
            row(
                &format!("`JournalWriter::append` in-process, idle phases{enc}"),
                &idle,
            );
            row(
                &format!("`JournalWriter::append` in-process, overlapping a compaction{enc}"),
                &during,
            );
            verdicts.push(p99_verdict(
                &format!(
                    "in-process append p99 during compaction <= 2x idle p99 (fixture traces){enc}"
                ),
                &idle,
                &during,
            ));
        }
        if let Some(n) = arg("--scale-tail") {
            let n: usize = n.parse()?;
            for encrypt in [false, true] {
                let enc = if encrypt { ", encrypted" } else { "" };
                let (idle, during) = scale_tail(n, encrypt)?;
                row(&format!("scale trace's last {n} batches, 30k-{n} journaled before, idle phases{enc}"), &idle);
                row(
                    &format!("same, overlapping a compaction of the 27 MB database{enc}"),
                    &during,
                );
                verdicts.push(p99_verdict(
                    &format!("in-process append p99 during compaction of the 27 MB database <= 2x idle p99{enc}"),
                    &idle,
                    &during,
                ));
            }
        }
    }
    row(
        "bare append + `fdatasync` again, after the runs above (drift check)",
        &bare_append(dir.path(), &flat, false)?,
    );
    for v in verdicts {
        println!("{v}");
    }
    Ok(())
}

/// Append each batch's record bytes to a file and fdatasync it.
fn bare_append(dir: &Path, batches: &[Batch], prealloc: bool) -> anyhow::Result<Vec<Duration>> {
    let path = dir.join(if prealloc {
        "bare-prealloc.log"
    } else {
        "bare.log"
    });
    let recs: Vec<Vec<u8>> = batches
        .iter()
        .map(|b| {
            Record {
                batch: b.clone(),
                supersedes: false,
                time_ms: 0,
            }
            .encode()
        })
        .collect();
    let total: usize = recs.iter().map(|r| r.len()).sum();
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&path)?;
    if prealloc {
        f.write_all(&vec![0u8; total])?;
        f.sync_all()?;
    }
    std::fs::File::open(dir)?.sync_all()?;
    let mut out = Vec::with_capacity(recs.len());
    let mut off = 0u64;
    for r in &recs {
        let t = Instant::now();
        f.write_all_at(r, off)?;
        f.sync_data()?;
        out.push(t.elapsed());
        off += r.len() as u64;
    }
    Ok(out)
}

/// Run `f` while another thread publishes 64 KiB objects back to back (temp file, fdatasync,
/// rename, directory fsync), as the smallest possible compaction would. Returns `f`'s result and
/// the number of publishes.
fn beside_publishes<T>(
    dir: &Path,
    f: impl FnOnce() -> anyhow::Result<T>,
) -> anyhow::Result<(T, u64)> {
    let stop = Arc::new(AtomicBool::new(false));
    let (d, s) = (dir.join("publishes"), stop.clone());
    std::fs::create_dir_all(&d)?;
    let t = std::thread::spawn(move || -> anyhow::Result<u64> {
        let data = vec![0x5au8; 64 << 10];
        let mut n = 0u64;
        while !s.load(Ordering::Relaxed) {
            let tmp = d.join("obj.tmp");
            let mut o = std::fs::File::create(&tmp)?;
            o.write_all(&data)?;
            o.sync_data()?;
            std::fs::rename(&tmp, d.join(format!("obj{}", n % 16)))?;
            std::fs::File::open(&d)?.sync_all()?;
            n += 1;
        }
        Ok(n)
    });
    let r = f();
    stop.store(true, Ordering::Relaxed);
    let n = t
        .join()
        .map_err(|_| anyhow::anyhow!("publisher thread panicked"))??;
    Ok((r?, n))
}

/// A network directory (and a cln-backup repository with its backup.lock, and backup.key when
/// encrypted, when `repo` is Some(encrypt)).
fn network_dir(repo: Option<bool>) -> anyhow::Result<(tempfile::TempDir, PathBuf)> {
    let dir = tempfile::tempdir_in(bench_data())?;
    let net = dir.path().join("regtest");
    std::fs::create_dir_all(&net)?;
    if let Some(encrypt) = repo {
        let key = MasterKey::generate();
        let root = dir.path().join("backup");
        Repository::init(
            &BackupUrl::File(root.clone()),
            Some(&key),
            encrypt,
            ConfigBody::default(),
        )?;
        let url = format!("file://{}", root.display());
        std::fs::write(
            net.join("backup.lock"),
            serde_json::to_vec(&serde_json::json!({ "backend_url": url }))?,
        )?;
        if encrypt {
            std::fs::write(net.join("backup.key"), key.to_file_text())?;
        }
    }
    Ok((dir, net))
}

/// The three sessions through `plugin` under the ld-emulator crate (s1 a fresh node, s2 and s3
/// restarts); each db_write's round trip as the emulator records it.
fn emulator_sessions(
    plugin: &Path,
    sessions: &[Vec<Batch>],
    repo: Option<bool>,
) -> anyhow::Result<Vec<Duration>> {
    let (_dir, net) = network_dir(repo)?;
    let mut out = Vec::new();
    for (i, s) in sessions.iter().enumerate() {
        let batches: Vec<emulator::DbWrite> = s
            .iter()
            .map(|b| emulator::DbWrite {
                data_version: b.data_version,
                writes: b.writes.clone(),
            })
            .collect();
        let opts = emulator::SessionOptions {
            fresh: i == 0,
            ..Default::default()
        };
        let r = emulator::run_trace_session(plugin, &net, &batches, &opts)?;
        if let Some(stop) = r.stop {
            anyhow::bail!(
                "{} stopped at data_version {}: {} ({:?})",
                plugin.display(),
                stop.data_version,
                stop.reply,
                r.logs
            );
        }
        out.extend(r.latencies);
    }
    Ok(out)
}

/// The three sessions through a plugin under the benches' driver, which reads the plugin's
/// stdout on the calling thread (the emulator reads it on a thread and hands each message over
/// a channel: one more wake-up per round trip).
fn driver_idle(
    cmd: &[String],
    sessions: &[Vec<Batch>],
    repo: Option<bool>,
) -> anyhow::Result<Vec<Duration>> {
    let (_dir, net) = network_dir(repo)?;
    let mut out = Vec::new();
    for (i, s) in sessions.iter().enumerate() {
        let t = driver::session(cmd, &net, s, i == 0, serde_json::json!({}), None)?;
        out.extend(t.hooks.into_iter().map(|h| h.1));
    }
    Ok(out)
}

/// Rounds of [`plugin_compacting`], pooled: one round gives ~2,200 hooks overlapping a
/// compaction, whose p99 (the ~22nd slowest) moved between 1.0x and 2.4x the idle p99 from
/// run to run on the 2-core VM of benches/REPORT.md; five rounds make it a steadier estimate,
/// and each round's own ratio is printed beside it.
const ROUNDS: usize = 5;

/// Hooks of several runs pooled into (overlapping no compaction, overlapping one), with each
/// run's own p99 ratio and how many compactions ran.
#[derive(Default)]
struct Pooled {
    idle: Vec<Duration>,
    during: Vec<Duration>,
    ratios: Vec<String>,
    compactions: usize,
}

impl Pooled {
    fn add(&mut self, hooks: &[(Instant, Duration)], compactions: &[(Instant, Instant)]) {
        let (i, d) = split(hooks, compactions);
        self.ratios
            .push(format!("{:.2}", summary(&d).1 / summary(&i).1));
        self.compactions += compactions.len();
        self.idle.extend(i);
        self.during.extend(d);
    }
}

/// The three sessions through the cln-backup plugin with `backup-compact` called back to back in
/// alternating phases, [`ROUNDS`] times over (each in a fresh directory). Returns (hooks
/// overlapping no compaction, hooks overlapping one), pooled over the rounds.
fn plugin_compacting(
    plugin: &str,
    sessions: &[Vec<Batch>],
    encrypt: bool,
) -> anyhow::Result<(Vec<Duration>, Vec<Duration>)> {
    let cmd = vec![plugin.to_string()];
    let mut pooled = Pooled::default();
    for _ in 0..ROUNDS {
        let (_dir, net) = network_dir(Some(encrypt))?;
        let mut all = SessionTimes::default();
        for (i, s) in sessions.iter().enumerate() {
            let t = driver::session(
                &cmd,
                &net,
                s,
                i == 0,
                arg("--plugin-options")
                    .and_then(|o| serde_json::from_str(&o).ok())
                    .unwrap_or_else(|| serde_json::json!({})),
                Some(("backup-compact", PHASE)),
            )?;
            all.hooks.extend(t.hooks);
            all.compactions.extend(t.compactions);
        }
        pooled.add(&all.hooks, &all.compactions);
    }
    println!(
        "<!-- {} compactions ran beside {} hooks in {ROUNDS} rounds; p99 during/idle of each round: {} -->",
        pooled.compactions,
        pooled.idle.len() + pooled.during.len(),
        pooled.ratios.join(", ")
    );
    Ok((pooled.idle, pooled.during))
}

/// The "p99 during compaction <= 2x idle p99" verdict; none when a run had no idle phase to
/// compare with (a compaction outlasted the appends of its idle phases).
fn p99_verdict(what: &str, idle: &[Duration], during: &[Duration]) -> String {
    if idle.len() < 100 {
        format!(
            "TARGET| {what} | - | not measured in this run: {} samples outside a compaction |",
            idle.len()
        )
    } else {
        target(what, summary(during).1 / summary(idle).1, 2.0)
    }
}

/// Journal bytes between automatic compactions in [`plugin_automatic`]: the scale trace's ~40 MB
/// journal gives a handful of compactions (the plugin's default, 64 MiB, would give none).
const AUTO_THRESHOLD: u64 = 8 << 20;

/// The scale trace (30,014 batches of a real node's invoice load) as one fresh session through the
/// plugin, with automatic compaction every `threshold` bytes of journal, as a node runs: hooks
/// overlapping an automatic compaction (from its "started" log line to its result line) against
/// the others, and how many compactions ran. [`AUTO_ROUNDS`] sessions, pooled; each one's own
/// ratio is printed.
fn plugin_automatic(
    plugin: &str,
    threshold: u64,
) -> anyhow::Result<(Vec<Duration>, Vec<Duration>, usize)> {
    let batches = load_trace(&testdata("trace-scale-30k.jsonl.zst"))?;
    let mut pooled = Pooled::default();
    for _ in 0..AUTO_ROUNDS {
        let (_dir, net) = network_dir(Some(false))?;
        let t = driver::session(
            &[plugin.to_string()],
            &net,
            &batches,
            true,
            serde_json::json!({ "backup-compact-journal-bytes": threshold }),
            None,
        )?;
        let mut intervals = Vec::new();
        let mut started = None;
        for (at, m) in &t.logs {
            if m == "automatic compaction: started" {
                started = Some(*at);
            } else if m.starts_with("automatic compaction") {
                if let Some(s) = started.take() {
                    intervals.push((s, *at));
                }
            }
        }
        pooled.add(&t.hooks, &intervals);
    }
    println!(
        "<!-- automatic compaction: {AUTO_ROUNDS} sessions of the scale trace; p99 during/idle of each: {} -->",
        pooled.ratios.join(", ")
    );
    Ok((pooled.idle, pooled.during, pooled.compactions))
}

/// Sessions of [`plugin_automatic`]: one has only 4 compactions, ~7,000 hooks beside them, and
/// its ratio moved between 1.7x and 2.6x from run to run.
const AUTO_ROUNDS: usize = 3;

fn new_repo(dir: &Path, encrypt: bool) -> anyhow::Result<Repository> {
    let key = MasterKey::generate();
    Ok(Repository::init(
        &BackupUrl::File(dir.join("repo")),
        Some(&key),
        encrypt,
        ConfigBody::default(),
    )?)
}

/// What the cln-backup plugin does to its compaction thread: nice 19 and `SCHED_IDLE`
/// (`--background-priority` reproduces it in-process, to see its effect on the hook). The
/// thread's rayon work then runs in a one-thread pool on the same thread.
#[allow(unsafe_code)]
fn background_priority() {
    // SAFETY: plain system calls on the calling thread; the only memory passed is a local
    // `sched_param` that outlives the call.
    unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, 19);
        let param = libc::sched_param { sched_priority: 0 };
        libc::sched_setscheduler(0, libc::SCHED_IDLE, &param);
    }
}

/// Runs one compaction each time `enabled` is set (`running` while it runs), until `stop`,
/// recording when each ran.
fn compaction_loop(
    repo: Repository,
    w: Arc<Mutex<JournalWriter>>,
    cache: PathBuf,
    (enabled, running): (Arc<AtomicBool>, Arc<AtomicBool>),
    stop: Arc<AtomicBool>,
    intervals: Intervals,
) -> std::thread::JoinHandle<anyhow::Result<u32>> {
    std::thread::spawn(move || {
        let opts = CompactOptions {
            cache_dir: cache,
            holder: "bench compaction".into(),
        };
        let mut snaps = 0;
        while !stop.load(Ordering::Relaxed) {
            if !enabled.swap(false, Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(1));
                continue;
            }
            running.store(true, Ordering::Relaxed);
            let t = Instant::now();
            let r = if flag("--background-priority") {
                rayon::ThreadPoolBuilder::new()
                    .num_threads(1)
                    .start_handler(|_| background_priority())
                    .build()
                    .map_err(|e| anyhow::anyhow!("{e}"))?
                    .install(|| compact(&repo, &w, &opts))
            } else {
                compact(&repo, &w, &opts)
            };
            running.store(false, Ordering::Relaxed);
            let r = r?;
            intervals
                .lock()
                .map_err(|_| anyhow::anyhow!("poisoned"))?
                .push((t, Instant::now()));
            if r.snapshot.is_some() {
                snaps += 1;
            } else {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        Ok(snaps)
    })
}

/// Each append paired with a bare append + fdatasync of its record bytes just before it, to a
/// file in the journal's own directory. Returns (append latencies, bare latencies).
fn journal_paired(
    sessions: &[Vec<Batch>],
    encrypt: bool,
) -> anyhow::Result<(Vec<Duration>, Vec<Duration>)> {
    let dir = tempfile::tempdir_in(bench_data())?;
    let repo = new_repo(dir.path(), encrypt)?;
    let mut f = std::fs::File::create(dir.path().join("repo/journal/bare.log"))?;
    let mut off = 0u64;
    let (mut out, mut bare) = (Vec::new(), Vec::new());
    for s in sessions {
        let mut w = repo.writer("bench", Durability::Fsync)?;
        for b in s {
            let rec = Record {
                batch: b.clone(),
                supersedes: false,
                time_ms: 0,
            }
            .encode();
            let t = Instant::now();
            f.write_all_at(&rec, off)?;
            f.sync_data()?;
            bare.push(t.elapsed());
            off += rec.len() as u64;
            let t = Instant::now();
            w.append(b)?;
            out.push(t.elapsed());
        }
    }
    f.flush()?;
    Ok((out, bare))
}

/// Append `batches` (one writer session each) with compaction on another thread in alternating
/// phases. Returns (appends overlapping no compaction, appends overlapping one).
fn journal_compacting(
    sessions: &[Vec<Batch>],
    encrypt: bool,
) -> anyhow::Result<(Vec<Duration>, Vec<Duration>)> {
    let dir = tempfile::tempdir_in(bench_data())?;
    let repo = new_repo(dir.path(), encrypt)?;
    let intervals: Intervals = Arc::default();
    let mut samples = Vec::new();
    let mut snaps = 0;
    for s in sessions {
        let w = Arc::new(Mutex::new(repo.writer("bench", Durability::Fsync)?));
        snaps += appends_with_compaction(
            &repo,
            &w,
            s,
            &dir.path().join("cache"),
            &intervals,
            &mut samples,
        )?;
    }
    println!(
        "<!-- {snaps} compactions ran beside {} appends -->",
        samples.len()
    );
    let iv = intervals.lock().map(|v| v.clone()).unwrap_or_default();
    Ok(split(&samples, &iv))
}

fn appends_with_compaction(
    repo: &Repository,
    w: &Arc<Mutex<JournalWriter>>,
    batches: &[Batch],
    cache: &Path,
    intervals: &Intervals,
    samples: &mut Vec<(Instant, Duration)>,
) -> anyhow::Result<u32> {
    let enabled = Arc::new(AtomicBool::new(true));
    let stop = Arc::new(AtomicBool::new(false));
    let running = Arc::new(AtomicBool::new(false));
    let h = compaction_loop(
        repo.clone(),
        w.clone(),
        cache.to_path_buf(),
        (enabled.clone(), running.clone()),
        stop.clone(),
        intervals.clone(),
    );
    // Phases: compaction enabled until one compaction has finished (an in-process append takes
    // ~0.1 ms, so a compaction outlasts hundreds of them), then PHASE appends with none running.
    let finished = || intervals.lock().map(|v| v.len()).unwrap_or(0);
    let (mut on, mut count, mut before) = (true, 0usize, finished());
    let mut waits = Vec::new();
    for b in batches {
        if on && finished() > before {
            on = false;
            count = 0;
        } else if !on {
            if !running.load(Ordering::Relaxed) {
                count += 1;
            }
            if count > PHASE {
                on = true;
                before = finished();
                enabled.store(true, Ordering::Relaxed);
            }
        }
        let t = Instant::now();
        let mut g = w.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
        waits.push(t.elapsed());
        g.append(b)?;
        drop(g);
        samples.push((t, t.elapsed()));
        // Between two hooks lightningd takes the plugin's answer and sends the next batch; a
        // loop that takes the writer's (unfair) lock again at once would keep the compaction
        // from ever getting it.
        std::thread::yield_now();
    }
    stop.store(true, Ordering::Relaxed);
    let long: Vec<&Duration> = waits
        .iter()
        .filter(|d| **d > Duration::from_micros(100))
        .collect();
    println!(
        "<!-- appends that waited > 100 µs for the writer lock (held by compaction's rotate and journal recount): {} of {}, longest {:.0} µs -->",
        long.len(),
        waits.len(),
        long.iter().map(|d| d.as_secs_f64() * 1e6).fold(0.0, f64::max)
    );
    h.join()
        .map_err(|_| anyhow::anyhow!("compaction thread panicked"))?
}

/// The scale trace's last `n` batches appended with fdatasync after the others were journaled
/// (page cache only) and compacted once, with compaction in alternating phases.
fn scale_tail(n: usize, encrypt: bool) -> anyhow::Result<(Vec<Duration>, Vec<Duration>)> {
    let batches = load_trace(&testdata("trace-scale-30k.jsonl.zst"))?;
    let (head, tail) = batches.split_at(batches.len().saturating_sub(n));
    let dir = tempfile::tempdir_in(bench_data())?;
    let repo = new_repo(dir.path(), encrypt)?;
    {
        let mut w = repo.writer("bench", Durability::Flush)?;
        for b in head {
            w.append(b)?;
        }
    }
    let w = Arc::new(Mutex::new(repo.writer("bench", Durability::Fsync)?));
    let cache = dir.path().join("cache");
    // One compaction first, so those in the loop are incremental ones of the 27 MB database.
    compact(
        &repo,
        &w,
        &CompactOptions {
            cache_dir: cache.clone(),
            holder: "bench".into(),
        },
    )?;
    let intervals: Intervals = Arc::default();
    let mut samples = Vec::new();
    let snaps = appends_with_compaction(&repo, &w, tail, &cache, &intervals, &mut samples)?;
    println!(
        "<!-- {snaps} compactions ran beside {} appends -->",
        samples.len()
    );
    let iv = intervals.lock().map(|v| v.clone()).unwrap_or_default();
    Ok(split(&samples, &iv))
}
