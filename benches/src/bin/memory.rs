//! Memory of each operation as an operator runs it: the built binaries under `/usr/bin/time -v`
//! (its "Maximum resident set size": every resident page, the file pages a process maps
//! included), with the anonymous part (heap, stacks) sampled from `/proc/PID/status` every
//! 2 ms, on a generated CLN-shaped database (benches/src/gen.rs); beside restic doing the same
//! where it is installed (Debian: `apt-get install restic`).
//!
//! ```sh
//! cargo build --release -p backup-cli -p cln-backup -p ld-emulator -p cln-backup-benches --bin memory
//! target/release/memory --size-mib 1024 [--restic]
//! ```
//! `--setup-only` stops after the second snapshot and leaves the repository (for profiling one
//! operation by hand).
//!
//! Rows: `backup-cli init --lightning-dir` (the first snapshot), a second snapshot of the copy
//! with 1% of its pages changed (taken in process, not measured), `backup-cli restore` (newest
//! state), `backup-cli prune --keep-last 1` (drops the first snapshot), `backup-cli verify
//! --read-data` (every chunk, and a trial restore), and the plugin under the lightningd emulator
//! over the three real sessions with a `backup-compact` after each (its peak and its resident
//! memory at the end: the steady state). The targets (issue 17): 128 MiB anonymous and 256 MiB
//! peak RSS for each operation, whatever the database's size.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cln_backup_benches::{arg, bench_data, flag, gen, measure, testdata};

/// One measured run: wall time, peak RSS from `/usr/bin/time -v`, sampled anonymous peak and
/// the last sampled resident size, in bytes.
struct Mem {
    wall: Duration,
    peak_rss: u64,
    peak_anon: u64,
    last_rss: u64,
    /// The sampled process's own peak RSS (`VmHWM`), last seen.
    hwm: u64,
}

fn status_kib(pid: u32, key: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

/// The children of `pid` (`/usr/bin/time`'s child is the measured process).
fn children(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// Run `cmd` under `/usr/bin/time -v`; sample `RssAnon` of the process named by `pid_of`
/// (given the time process's pid) until it ends.
fn measured(
    cmd: &mut Command,
    pid_of: impl Fn(u32) -> Option<u32> + Send + 'static,
) -> anyhow::Result<Mem> {
    let report = tempfile::NamedTempFile::new()?;
    let program = cmd.get_program().to_owned();
    let args: Vec<_> = cmd.get_args().map(|a| a.to_owned()).collect();
    let mut timed = Command::new("/usr/bin/time");
    timed
        .arg("-v")
        .arg("-o")
        .arg(report.path())
        .arg(&program)
        .args(&args);
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => timed.env(k, v),
            None => timed.env_remove(k),
        };
    }
    if let Some(d) = cmd.get_current_dir() {
        timed.current_dir(d);
    }
    let started = Instant::now();
    let child = timed
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let time_pid = child.id();
    let stop = Arc::new(AtomicBool::new(false));
    let anon = Arc::new(AtomicU64::new(0));
    let last = Arc::new(AtomicU64::new(0));
    let hwm = Arc::new(AtomicU64::new(0));
    let sampler = {
        let (stop, anon, last, hwm) = (stop.clone(), anon.clone(), last.clone(), hwm.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if let Some(p) = pid_of(time_pid) {
                    if let Some(a) = status_kib(p, "RssAnon:") {
                        anon.fetch_max(a * 1024, Ordering::Relaxed);
                    }
                    if let Some(r) = status_kib(p, "VmRSS:") {
                        last.store(r * 1024, Ordering::Relaxed);
                    }
                    if let Some(h) = status_kib(p, "VmHWM:") {
                        hwm.fetch_max(h * 1024, Ordering::Relaxed);
                    }
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        })
    };
    let out = child.wait_with_output()?;
    let wall = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let _ = sampler.join();
    let text = std::fs::read_to_string(report.path())?;
    if !out.status.success() {
        anyhow::bail!(
            "{program:?} {args:?} failed: {}\n{}\n{text}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let peak_rss = text
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("Maximum resident set size (kbytes): ")
        })
        .and_then(|v| v.trim().parse::<u64>().ok())
        .ok_or_else(|| anyhow::anyhow!("no maximum RSS in /usr/bin/time's report:\n{text}"))?
        * 1024;
    Ok(Mem {
        wall,
        peak_rss,
        peak_anon: anon.load(Ordering::Relaxed),
        last_rss: last.load(Ordering::Relaxed),
        hwm: hwm.load(Ordering::Relaxed),
    })
}

fn direct_child(time_pid: u32) -> Option<u32> {
    children(time_pid).first().copied()
}

fn mib(b: u64) -> String {
    format!("{:.0} MiB", b as f64 / (1 << 20) as f64)
}

const ANON_LIMIT: u64 = 128 << 20;
const RSS_LIMIT: u64 = 256 << 20;

fn row(tool: &str, what: &str, m: &Mem) {
    let verdict = if m.peak_anon <= ANON_LIMIT && m.peak_rss <= RSS_LIMIT {
        "met"
    } else {
        "**not met**"
    };
    println!(
        "| {tool} | {what} | {:.2} s | {} | {} | {verdict} |",
        m.wall.as_secs_f64(),
        mib(m.peak_rss),
        mib(m.peak_anon)
    );
}

fn restic_row(what: &str, m: &Mem) {
    println!(
        "| restic | {what} | {:.2} s | {} | {} | - |",
        m.wall.as_secs_f64(),
        mib(m.peak_rss),
        mib(m.peak_anon)
    );
}

fn bin(name: &str) -> anyhow::Result<PathBuf> {
    let p = std::env::current_exe()?
        .parent()
        .map(|d| d.join(name))
        .unwrap_or_default();
    anyhow::ensure!(
        p.exists(),
        "{} is missing: cargo build --release -p backup-cli -p cln-backup -p ld-emulator",
        p.display()
    );
    Ok(p)
}

fn main() -> anyhow::Result<()> {
    let size_mib: u64 = arg("--size-mib")
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(1024);
    let cli = bin("backup-cli")?;
    let plugin = bin("cln-backup")?;
    let emulator = bin("ld-emulator")?;
    let g = gen::database(size_mib << 20)?;
    let work = bench_data().join("work").join("memory");
    if work.exists() {
        std::fs::remove_dir_all(&work)?;
    }
    let node = work.join("node");
    std::fs::create_dir_all(&node)?;
    let db = node.join("lightningd.sqlite3");
    measure::copy_synced(&g.base, &db)?;
    measure::warm(&db)?;
    let repo = work.join("repo");
    let url = format!("file://{}", repo.display());
    let key = node.join("backup.key");
    println!(
        "<!-- memory: db {} bytes ({} MiB asked), {} -->",
        g.size,
        size_mib,
        std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|c| c
                .lines()
                .find(|l| l.starts_with("model name"))
                .map(String::from))
            .unwrap_or_default()
    );
    println!("\n| tool | operation ({} MiB database) | time | peak RSS (`time -v`) | peak anonymous | within 128 MiB anon / 256 MiB RSS |", g.size >> 20);
    println!("|---|---|---|---|---|---|");

    let m = measured(
        Command::new(&cli)
            .arg("init")
            .arg("--lightning-dir")
            .arg(&node)
            .arg(&url),
        direct_child,
    )?;
    row("backup-cli", "init (first snapshot)", &m);

    // A second snapshot (1% of the pages changed), so that prune has one to drop.
    let k = store::MasterKey::from_file_text(&std::fs::read_to_string(&key)?, "backup.key")?;
    let r = store::Repository::open(&store::BackupUrl::parse(&url)?, Some(k))?;
    store::ops::seed::snapshot_database(&r, &g.changed, &work.join("scratch"), "memory bench")?;
    drop(r);
    if flag("--setup-only") {
        // For profiling one operation by hand: the repository with its two snapshots stays.
        println!(
            "repository with two snapshots: {url} (key {})",
            key.display()
        );
        return Ok(());
    }

    let out = work.join("restored.sqlite3");
    let m = measured(
        Command::new(&cli)
            .arg("restore")
            .arg("--key-file")
            .arg(&key)
            .arg(&url)
            .arg(&out),
        direct_child,
    )?;
    row("backup-cli", "restore (newest)", &m);
    std::fs::remove_file(&out)?;

    let m = measured(
        Command::new(&cli)
            .args(["prune", "--keep-last", "1", "--key-file"])
            .arg(&key)
            .arg(&url),
        direct_child,
    )?;
    row("backup-cli", "prune --keep-last 1", &m);

    let m = measured(
        Command::new(&cli)
            .args(["verify", "--read-data", "--key-file"])
            .arg(&key)
            .arg(&url),
        direct_child,
    )?;
    row("backup-cli", "verify --read-data", &m);

    plugin_rows(&cli, &plugin, &emulator, &work)?;

    if flag("--restic") {
        restic_rows(&g.base, &g.changed, &work)?;
    }
    Ok(())
}

/// The plugin over the three real sessions, a compaction after each, in a fresh repository.
fn plugin_rows(cli: &Path, plugin: &Path, emulator: &Path, work: &Path) -> anyhow::Result<()> {
    let net = work.join("plugin-node");
    std::fs::create_dir_all(&net)?;
    let repo = work.join("plugin-repo");
    measure::timed(
        Command::new(cli)
            .arg("init")
            .arg("--lightning-dir")
            .arg(&net)
            .arg(format!("file://{}", repo.display())),
    )?;
    // The plugin is the emulator's child: a wrapper notes its pid, then becomes it.
    let pid_file = work.join("plugin.pid");
    let wrapper = work.join("plugin.sh");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\necho $$ > '{}'\nexec '{}' \"$@\"\n",
            pid_file.display(),
            plugin.display()
        ),
    )?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755))?;
    let mut c = Command::new(emulator);
    c.arg("--plugin").arg(&wrapper).arg("--dir").arg(&net);
    for s in 1..=3 {
        c.arg("--trace").arg(testdata(&format!("trace-s{s}.jsonl")));
        c.arg("--rpc").arg("backup-compact");
    }
    let pf = pid_file.clone();
    let m = measured(&mut c, move |_| {
        std::fs::read_to_string(&pf).ok()?.trim().parse().ok()
    })?;
    let plugin = Mem {
        peak_rss: m.hwm,
        ..m
    };
    row(
        "cln-backup plugin",
        &format!(
            "3 real sessions (3233 hooks), backup-compact after each; resident at the end: {}",
            mib(plugin.last_rss)
        ),
        &plugin,
    );
    Ok(())
}

fn restic_rows(base: &Path, changed: &Path, work: &Path) -> anyhow::Result<()> {
    if Command::new("restic").arg("version").output().is_err() {
        println!("<!-- restic is not installed (apt-get install restic): no restic rows -->");
        return Ok(());
    }
    let w = work.join("restic");
    std::fs::create_dir_all(&w)?;
    let repo = w.join("repo");
    let file = w.join("lightningd.sqlite3");
    let restic = |args: &[&str]| {
        let mut c = Command::new("restic");
        c.env("RESTIC_PASSWORD", "bench")
            .env("RESTIC_CACHE_DIR", w.join("cache"))
            .arg("--repo")
            .arg(&repo)
            .args(args);
        c
    };
    measure::timed(&mut restic(&["init"]))?;
    measure::copy_synced(base, &file)?;
    measure::warm(&file)?;
    let f = file.display().to_string();
    restic_row(
        "backup (first)",
        &measured(&mut restic(&["backup", &f]), direct_child)?,
    );
    measure::copy_synced(changed, &file)?;
    measure::timed(&mut restic(&["backup", &f]))?;
    let target = w.join("restored").display().to_string();
    restic_row(
        "restore latest",
        &measured(
            &mut restic(&["restore", "latest", "--target", &target]),
            direct_child,
        )?,
    );
    restic_row(
        "forget --keep-last 1 --prune",
        &measured(
            &mut restic(&["forget", "--keep-last", "1", "--prune"]),
            direct_child,
        )?,
    );
    restic_row(
        "check --read-data",
        &measured(&mut restic(&["check", "--read-data"]), direct_child)?,
    );
    Ok(())
}
