//! Hook latency: the cost of making one `db_write` batch durable, beside the physical limit.
//!
//! `cargo run --release -p cln-backup-benches --bin hook -- [--inprocess] [--plugin PATH] [--python]
//!  [--scale-tail N]`
//!
//! In-process (`--inprocess`), over the fixture traces s1, s2, s3 (3233 batches, one writer session
//! each), in a directory on the same filesystem as /work:
//! - bare `write` of the batch's record bytes at the end of a file + `fdatasync` (what any
//!   journal must pay), and the same into a preallocated file (no size change to sync: the floor);
//! - `JournalWriter::append` (fdatasync), plaintext and encrypted;
//! - the same while compaction runs back to back on another thread (only the appends that
//!   overlapped a running compaction count), plaintext and encrypted;
//! - the same on the scale trace's last N batches after its first ones were journaled (a 27 MB
//!   database to compact: packs of several MB to write and sync beside the hook).
//!
//! Through a plugin process (`--plugin PATH` for cln-backup, `--python` for
//! benches/python/append_plugin.py): driven by the `ld-emulator` crate as lightningd drives it.

use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cln_backup_benches::measure::{summary, target};
use cln_backup_benches::{arg, bench_data, flag, load_trace, testdata};
use store::config::ConfigBody;
use store::journal::{Batch, JournalWriter, Record};
use store::ops::compact::{compact, CompactOptions};
use store::{BackupUrl, Durability, MasterKey, Repository};

type Intervals = Arc<Mutex<Vec<(Instant, Instant)>>>;

fn main() -> anyhow::Result<()> {
    let sessions: Vec<Vec<Batch>> = ["trace-s1.jsonl", "trace-s2.jsonl", "trace-s3.jsonl"]
        .iter()
        .map(|t| load_trace(&testdata(t)))
        .collect::<anyhow::Result<_>>()?;
    println!("| path | batches | p50 µs | p99 µs | max µs | p50 vs bare append+fdatasync |");
    println!("|---|---|---|---|---|---|");
    let dir = tempfile::tempdir_in(bench_data())?;
    let flat: Vec<Batch> = sessions.concat();
    let bare = bare_append(dir.path(), &flat, false)?;
    let p50 = summary(&bare).0;
    row(
        "bare append (`write` at end of file + `fdatasync`), same bytes, same filesystem",
        &bare,
        p50,
    );
    row(
        "bare overwrite in a preallocated file + `fdatasync` (floor)",
        &bare_append(dir.path(), &flat, true)?,
        p50,
    );
    let mut verdicts = Vec::new();
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("python/append_plugin.py");
    let python = vec!["python3".to_string(), script.display().to_string()];
    let mut py_p50 = None;
    if flag("--python") {
        let (all, _) = plugin_sessions(&python, &sessions, None, None)?;
        row(
            "Python plugin (benches/python/append_plugin.py: append + fsync), round trip",
            &all,
            p50,
        );
        py_p50 = Some(summary(&all).0);
    }
    if let Some(path) = arg("--plugin") {
        let cmd = vec![path];
        for encrypt in [false, true] {
            let enc = if encrypt { ", encrypted" } else { "" };
            let (all, _) = plugin_sessions(&cmd, &sessions, Some(encrypt), None)?;
            row(
                &format!("cln-backup plugin, round trip, idle{enc}"),
                &all,
                p50,
            );
            let (_, during) =
                plugin_sessions(&cmd, &sessions, Some(encrypt), Some("backup-compact"))?;
            row(&format!("cln-backup plugin, round trip, hooks overlapping a `backup-compact` (called back to back){enc}"), &during, p50);
            let (idle50, idle99, _) = summary(&all);
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
            verdicts.push(target(
                &format!("plugin hook p99 during compaction <= 2x idle p99{enc}"),
                summary(&during).1 / idle99,
                2.0,
            ));
        }
        if flag("--python") {
            let (all, _) = plugin_sessions(&python, &sessions, None, None)?;
            row("Python plugin again (drift check)", &all, p50);
        }
    }
    if flag("--inprocess") {
        for encrypt in [false, true] {
            let enc = if encrypt { ", encrypted" } else { "" };
            let (all, _) = journal(&sessions, encrypt, false)?;
            row(
                &format!("`JournalWriter::append` in-process, idle{enc}"),
                &all,
                p50,
            );
            let (idle50, idle99, _) = summary(&all);
            verdicts.push(target(
                &format!("in-process append p50 <= 1.3x bare append+fdatasync{enc}"),
                idle50 / p50,
                1.3,
            ));
            let (all, during) = journal(&sessions, encrypt, true)?;
            verdicts.push(target(
                &format!(
                    "in-process append p99 during compaction <= 2x idle p99 (fixture traces){enc}"
                ),
                summary(&during).1 / idle99,
                2.0,
            ));
            row(&format!("`JournalWriter::append` in-process, compaction looping beside it{enc}: all appends"), &all, p50);
            row(&format!("`JournalWriter::append` in-process, compaction looping beside it{enc}: appends overlapping a compaction"), &during, p50);
        }
        if let Some(n) = arg("--scale-tail") {
            let n: usize = n.parse()?;
            for encrypt in [false, true] {
                let enc = if encrypt { ", encrypted" } else { "" };
                let (idle, _) = scale_tail(n, encrypt, false)?;
                row(
                    &format!("scale trace's last {n} batches after 30k-{n} journaled, idle{enc}"),
                    &idle,
                    p50,
                );
                let (_, during) = scale_tail(n, encrypt, true)?;
                verdicts.push(target(&format!("in-process append p99 during compaction of the 27 MB database <= 2x idle p99{enc}"), summary(&during).1 / summary(&idle).1, 2.0));
                row(
                    &format!("same, appends overlapping a compaction of the 27 MB database{enc}"),
                    &during,
                    p50,
                );
            }
        }
    }
    row(
        "bare append + `fdatasync` again, after the runs above (drift check)",
        &bare_append(dir.path(), &flat, false)?,
        p50,
    );
    for v in verdicts {
        println!("{v}");
    }
    Ok(())
}

/// The trace's three sessions through a plugin process (s1 as a fresh node, s2 and s3 as
/// restarts). `repo`: Some(encrypt) to create a cln-backup repository and its backup.lock first.
fn plugin_sessions(
    cmd: &[String],
    sessions: &[Vec<Batch>],
    repo: Option<bool>,
    compact_rpc: Option<&str>,
) -> anyhow::Result<(Vec<Duration>, Vec<Duration>)> {
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
    let mut hooks = Vec::new();
    let mut compactions = Vec::new();
    for (i, s) in sessions.iter().enumerate() {
        let t = cln_backup_benches::driver::session(
            cmd,
            &net,
            s,
            i == 0,
            serde_json::json!({}),
            compact_rpc,
        )?;
        hooks.extend(t.hooks);
        compactions.extend(t.compactions);
    }
    if compact_rpc.is_some() {
        println!(
            "<!-- {} compactions ran beside {} hooks -->",
            compactions.len(),
            hooks.len()
        );
    }
    let iv: Intervals = Arc::new(Mutex::new(compactions));
    let during = overlapping(&hooks, &iv);
    Ok((hooks.into_iter().map(|h| h.1).collect(), during))
}

fn row(what: &str, v: &[Duration], bare_p50: f64) {
    let (p50, p99, max) = summary(v);
    println!(
        "| {what} | {} | {p50:.0} | {p99:.0} | {max:.0} | {:.2}x |",
        v.len(),
        p50 / bare_p50
    );
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

fn new_repo(dir: &Path, encrypt: bool) -> anyhow::Result<Repository> {
    let key = MasterKey::generate();
    Ok(Repository::init(
        &BackupUrl::File(dir.join("repo")),
        Some(&key),
        encrypt,
        ConfigBody::default(),
    )?)
}

/// Runs compaction back to back until stopped, recording when each ran.
fn compaction_loop(
    repo: Repository,
    w: Arc<Mutex<JournalWriter>>,
    cache: std::path::PathBuf,
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
            let t = Instant::now();
            let r = compact(&repo, &w, &opts)?;
            if r.snapshot.is_some() {
                snaps += 1;
                intervals
                    .lock()
                    .map_err(|_| anyhow::anyhow!("poisoned"))?
                    .push((t, Instant::now()));
            } else {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        Ok(snaps)
    })
}

fn overlapping(samples: &[(Instant, Duration)], intervals: &Intervals) -> Vec<Duration> {
    let iv = intervals.lock().map(|v| v.clone()).unwrap_or_default();
    samples
        .iter()
        .filter(|(s, d)| iv.iter().any(|(a, b)| *s < *b && *s + *d > *a))
        .map(|(_, d)| *d)
        .collect()
}

/// Append `batches` (one writer session per element) with fdatasync, optionally with compaction
/// looping beside. Returns all latencies and those that overlapped a compaction.
fn journal(
    sessions: &[Vec<Batch>],
    encrypt: bool,
    compacting: bool,
) -> anyhow::Result<(Vec<Duration>, Vec<Duration>)> {
    let dir = tempfile::tempdir_in(bench_data())?;
    let repo = new_repo(dir.path(), encrypt)?;
    let intervals: Intervals = Arc::default();
    let mut samples = Vec::new();
    let mut snaps = 0;
    for s in sessions {
        let w = Arc::new(Mutex::new(repo.writer("bench", Durability::Fsync)?));
        let stop = Arc::new(AtomicBool::new(false));
        let h = compacting.then(|| {
            compaction_loop(
                repo.clone(),
                w.clone(),
                dir.path().join("cache"),
                stop.clone(),
                intervals.clone(),
            )
        });
        for b in s {
            let t = Instant::now();
            w.lock()
                .map_err(|_| anyhow::anyhow!("poisoned"))?
                .append(b)?;
            samples.push((t, t.elapsed()));
        }
        stop.store(true, Ordering::Relaxed);
        if let Some(h) = h {
            snaps += h
                .join()
                .map_err(|_| anyhow::anyhow!("compaction thread panicked"))??;
        }
    }
    if compacting {
        println!(
            "<!-- {snaps} compactions ran beside {} appends -->",
            samples.len()
        );
    }
    let during = overlapping(&samples, &intervals);
    Ok((samples.into_iter().map(|s| s.1).collect(), during))
}

fn scale_tail(
    n: usize,
    encrypt: bool,
    compacting: bool,
) -> anyhow::Result<(Vec<Duration>, Vec<Duration>)> {
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
    // One compaction first, so the looping ones are incremental ones of the 27 MB database.
    compact(
        &repo,
        &w,
        &CompactOptions {
            cache_dir: dir.path().join("cache"),
            holder: "bench".into(),
        },
    )?;
    let intervals: Intervals = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let h = compacting.then(|| {
        compaction_loop(
            repo.clone(),
            w.clone(),
            dir.path().join("cache"),
            stop.clone(),
            intervals.clone(),
        )
    });
    let mut samples = Vec::new();
    for b in tail {
        let t = Instant::now();
        w.lock()
            .map_err(|_| anyhow::anyhow!("poisoned"))?
            .append(b)?;
        samples.push((t, t.elapsed()));
    }
    stop.store(true, Ordering::Relaxed);
    if let Some(h) = h {
        let snaps = h
            .join()
            .map_err(|_| anyhow::anyhow!("compaction thread panicked"))??;
        println!(
            "<!-- {snaps} compactions ran beside {} appends -->",
            samples.len()
        );
    }
    let during = overlapping(&samples, &intervals);
    Ok((samples.into_iter().map(|s| s.1).collect(), during))
}
