//! The live restore drill beside the hook: does `backup-check` slow down `db_write` or
//! lightningd's commits?
//!
//! `cargo run --release -p cln-backup-benches --bin check -- [--plugin PATH] [--scale]
//!  [--rounds N] [--encrypted]`
//!
//! The real plugin under ld-emulator with lightningd's database kept as lightningd keeps it
//! (each batch run before its hook call, COMMIT after `continue`, busy timeout 60 s). A first part
//! of the trace, then `backup-compact` (so the check restores a snapshot and replays the journal
//! after it, as on a node), then the rest in alternating phases of [`PHASE`] hooks: `backup-check`
//! called back to back, then none. Hooks whose round trip overlaps a check are compared with the
//! others of the same run (p99 during / idle, target <= 2x), and so are lightningd's COMMITs (a
//! reader's lock would make them wait). Every check must answer "equal".
//!
//! Traces: s1-s3 (3233 batches, a 1.7 MB database; the default, small) or `--scale` (30,014
//! batches, a 27 MB database). `--rounds` runs (fresh directories) are pooled, each one's own
//! ratio printed.

use std::path::Path;
use std::time::{Duration, Instant};

use cln_backup_benches::measure::{split, summary, target};
use cln_backup_benches::{arg, bench_data, flag, load_trace, testdata};
use emulator::node::Database;
use emulator::{DbWrite, Emulator};
use serde_json::{json, Value};
use store::{BackupUrl, ConfigBody, MasterKey, Repository};

/// Hooks per phase (checks on, then off).
const PHASE: usize = 250;

#[derive(Default)]
struct Run {
    /// Each hook: when it was sent, its round trip.
    hooks: Vec<(Instant, Duration)>,
    /// Each COMMIT of lightningd's database: when, how long.
    commits: Vec<(Instant, Duration)>,
    /// Each check: sent, answered.
    checks: Vec<(Instant, Instant)>,
    /// The longest any check held its read lock on lightningd's database (µs).
    longest_lock_us: u64,
}

fn main() -> anyhow::Result<()> {
    let plugin = arg("--plugin").unwrap_or_else(|| {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../target/release/cln-backup")
            .display()
            .to_string()
    });
    let rounds: usize = arg("--rounds").map(|r| r.parse()).transpose()?.unwrap_or(3);
    let encrypted = flag("--encrypted");
    let batches: Vec<DbWrite> = if flag("--scale") {
        load_trace(&testdata("trace-scale-30k.jsonl.zst"))?
    } else {
        ["trace-s1.jsonl", "trace-s2.jsonl", "trace-s3.jsonl"]
            .iter()
            .map(|t| load_trace(&testdata(t)))
            .collect::<anyhow::Result<Vec<_>>>()?
            .concat()
    }
    .into_iter()
    .map(|b| DbWrite {
        data_version: b.data_version,
        writes: b.writes,
    })
    .collect();
    // The traces of s2 and s3 begin with restarts; as one session they are consecutive batches.
    let warm = batches.len() / 3;
    let (mut idle, mut during, mut c_idle, mut c_during) = (vec![], vec![], vec![], vec![]);
    let mut ratios = Vec::new();
    let (mut checks, mut longest) = (0, 0);
    for _ in 0..rounds {
        let r = run(&plugin, &batches, warm, encrypted)?;
        let (i, d) = split(&r.hooks, &r.checks);
        let (ci, cd) = split(&r.commits, &r.checks);
        ratios.push(format!(
            "hooks {:.2}, commits {:.2}",
            summary(&d).1 / summary(&i).1,
            summary(&cd).1 / summary(&ci).1
        ));
        checks += r.checks.len();
        longest = longest.max(r.longest_lock_us);
        idle.extend(i);
        during.extend(d);
        c_idle.extend(ci);
        c_during.extend(cd);
    }
    println!("| what | n | p50 µs | p99 µs | max µs |");
    println!("|---|---|---|---|---|");
    for (what, v) in [
        ("db_write round trip, no check running", &idle),
        ("db_write round trip, overlapping a backup-check", &during),
        ("lightningd's COMMIT, no check running", &c_idle),
        ("lightningd's COMMIT, overlapping a backup-check", &c_during),
    ] {
        let (a, b, c) = summary(v);
        println!("| {what} | {} | {a:.0} | {b:.0} | {c:.0} |", v.len());
    }
    println!(
        "<!-- {checks} checks (all equal) in {rounds} rounds of {} batches; longest read lock on \
         lightningd's database {longest} µs; p99 during/idle of each round: {} -->",
        batches.len(),
        ratios.join("; ")
    );
    if idle.len() < 100 || during.len() < 100 {
        println!(
            "TARGET| db_write p99 during backup-check vs idle | - | not measured: {} idle, {} during |",
            idle.len(),
            during.len()
        );
    } else {
        println!(
            "{}",
            target(
                "db_write p99 during backup-check vs idle",
                summary(&during).1 / summary(&idle).1,
                2.0
            )
        );
    }
    Ok(())
}

/// One session: the first `warm` batches, a compaction, then check phases over the rest.
fn run(plugin: &str, batches: &[DbWrite], warm: usize, encrypted: bool) -> anyhow::Result<Run> {
    let dir = tempfile::tempdir_in(bench_data())?;
    let net = dir.path().join("regtest");
    std::fs::create_dir(&net)?;
    let repo = dir.path().join("repo");
    let key = MasterKey::generate();
    Repository::init(
        &BackupUrl::File(repo.clone()),
        Some(&key),
        encrypted,
        ConfigBody::default(),
    )?;
    std::fs::write(
        net.join("backup.lock"),
        json!({ "backend_url": format!("file://{}", repo.display()) }).to_string(),
    )?;
    if encrypted {
        std::fs::write(net.join("backup.key"), key.to_file_text())?;
    }
    let mut em = Emulator::spawn(Path::new(plugin), &net, &[])?;
    em.set_timeout(Duration::from_secs(600));
    em.attach_database(Database::open(&net.join("lightningd.sqlite3"))?);
    em.getmanifest()?;
    let options = [
        ("backup-compact-journal-bytes".to_string(), json!(0)),
        ("backup-check-interval".to_string(), json!(0)),
    ];
    let (_, stop, _) = em.run_batches(&batches[..warm], 9, &options)?;
    if let Some(s) = stop {
        anyhow::bail!(
            "stopped at {}: {}\n{}",
            s.data_version,
            s.reply,
            em.log_text()
        );
    }
    em.rpc_ok("backup-compact", json!({}))?;
    let mut r = Run::default();
    let commits_before = em.database().map_or(0, |d| d.commits.len());
    let mut pending: Option<(String, Instant)> = None;
    let (mut on, mut count) = (true, 0usize);
    for b in &batches[warm..] {
        if let Some((id, sent)) = &pending {
            if let Some(v) = em.rpc_poll(id) {
                r.checks.push((*sent, Instant::now()));
                check_equal(&v)?;
                r.longest_lock_us = r
                    .longest_lock_us
                    .max(v["result"]["longest_lock_us"].as_u64().unwrap_or(0));
                pending = None;
            }
        }
        if on || pending.is_none() {
            count += 1;
        }
        if count > PHASE {
            on = !on;
            count = 1;
        }
        if pending.is_none() && on {
            pending = Some((em.rpc_start("backup-check", json!({}))?, Instant::now()));
        }
        let start = Instant::now();
        let reply = em.db_write(b.data_version, &b.writes)?;
        if !reply.is_continue() {
            anyhow::bail!("db_write {}: {reply}\n{}", b.data_version, em.log_text());
        }
        if let Some(d) = em.latencies.last() {
            r.hooks.push((start, *d));
        }
    }
    if let Some((id, sent)) = pending {
        let v = em.rpc_wait(&id)?;
        r.checks.push((sent, Instant::now()));
        check_equal(&v)?;
    }
    r.commits = em
        .database()
        .map(|d| d.commits.get(commits_before..).unwrap_or_default().to_vec())
        .unwrap_or_default();
    em.close_stdin_and_wait()?;
    Ok(r)
}

fn check_equal(v: &Value) -> anyhow::Result<()> {
    if v["result"]["result"] != "equal" {
        anyhow::bail!("backup-check did not answer equal: {v}");
    }
    Ok(())
}
