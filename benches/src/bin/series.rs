//! The 30-snapshot series: replay the 30k-invoice scale trace into a repository, a snapshot
//! every N batches, and report stored bytes per chunker (the chunking decision in
//! ARCHITECTURE.md, and the target of a quarter of restic's bytes); with `--restic`,
//! restic backing up the database file at the same points.
//!
//! `cargo run --release -p cln-backup-benches --bin series -- [--every 1000]
//!  [--chunker pages:1|pages:4|cdc:16384] [--encrypt] [--restic | --restic-bytes N] [--trace PATH]`
//!
//! `--encrypt` makes the repositories encrypted.
//!
//! Prints markdown table rows (see run-report.sh).

use std::process::Command;
use std::sync::Mutex;
use std::time::Instant;

use cln_backup_benches::measure::timed;
use cln_backup_benches::{
    arg, bench_data, dir_size, flag, load_trace, mb, parse_chunker, repo_bytes, testdata,
};
use store::config::ConfigBody;
use store::journal::{Batch, Record};
use store::ops::compact::{compact, CompactOptions};
use store::replay::Replayer;
use store::{BackupUrl, Durability, MasterKey, Repository};

fn main() -> anyhow::Result<()> {
    let every: usize = arg("--every")
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(1000);
    let encrypt = flag("--encrypt");
    let chunkers: Vec<String> = match arg("--chunker") {
        Some(c) => c.split(',').map(String::from).collect(),
        None => vec!["pages:1".into(), "pages:4".into(), "cdc:16384".into()],
    };
    let trace = arg("--trace")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| testdata("trace-scale-30k.jsonl.zst"));
    let batches = load_trace(&trace)?;
    println!(
        "<!-- trace: {} batches from {}, a snapshot every {every} -->",
        batches.len(),
        trace.display()
    );
    if flag("--header") {
        println!("| store | snapshots | final db | packs + indexes | manifests | journal | total | vs restic's | time | new bytes per snapshot, share of the db (median, max of 2..) |");
        println!("|---|---|---|---|---|---|---|---|---|---|");
    }
    let restic_total = if flag("--restic") {
        Some(restic(&batches, every)? as f64)
    } else {
        arg("--restic-bytes")
            .map(|s| s.parse::<f64>())
            .transpose()?
    };
    for c in chunkers {
        ours(&batches, every, &c, encrypt, restic_total)?;
    }
    Ok(())
}

fn ours(
    batches: &[Batch],
    every: usize,
    c: &str,
    encrypt: bool,
    restic: Option<f64>,
) -> anyhow::Result<()> {
    let dir = tempfile::tempdir_in(bench_data())?;
    let root = dir.path().join("repo");
    let key = MasterKey::generate();
    let body = ConfigBody {
        chunker: parse_chunker(c)?,
        ..ConfigBody::default()
    };
    let repo = Repository::init(&BackupUrl::File(root.clone()), Some(&key), encrypt, body)?;
    let w = Mutex::new(repo.writer("series", Durability::Flush)?);
    let opts = CompactOptions {
        cache_dir: dir.path().join("cache"),
        holder: "series".into(),
    };
    let mut snaps = 0;
    let mut snap_secs = 0.0;
    let mut shares = Vec::new();
    let mut db_size = 0;
    let mut chunks = 0;
    for (i, b) in batches.iter().enumerate() {
        w.lock()
            .map_err(|_| anyhow::anyhow!("poisoned"))?
            .append(b)?;
        if (i + 1) % every == 0 || i + 1 == batches.len() {
            let t = Instant::now();
            let r = compact(&repo, &w, &opts)?;
            snap_secs += t.elapsed().as_secs_f64();
            if let Some(s) = r.snapshot {
                snaps += 1;
                if snaps > 1 {
                    shares.push(s.stored_bytes as f64 / s.db_size.max(1) as f64);
                }
                db_size = s.db_size;
                chunks = s.chunks;
            }
        }
    }
    drop(w);
    let (packs, manifests, journal) = repo_bytes(&root);
    let total = packs + manifests + journal;
    shares.sort_by(|a, b| a.total_cmp(b));
    let median = shares.get(shares.len() / 2).copied().unwrap_or(0.0);
    let max = shares.last().copied().unwrap_or(0.0);
    println!(
        "| cln-backup {c}{} | {snaps} | {:.1} MB ({chunks} chunks) | {:.1} MB | {:.2} MB | {:.1} MB | **{:.1} MB** | {} | {:.1} s | {:.1}%, {:.1}% |",
        if encrypt { " encrypted" } else { "" },
        mb(db_size),
        mb(packs),
        mb(manifests),
        mb(journal),
        mb(total),
        restic.map(|r| format!("{:.3}x", total as f64 / r)).unwrap_or_else(|| "-".into()),
        snap_secs,
        100.0 * median,
        100.0 * max,
    );
    println!("<!-- series {c} enc={encrypt}: total {total} -->");
    if let Some(r) = restic {
        println!(
            "{}",
            cln_backup_benches::measure::target(
                &format!(
                    "30-snapshot series, journal included, <= 0.25x restic's bytes ({c}{})",
                    if encrypt { ", encrypted" } else { "" }
                ),
                total as f64 / r,
                0.25
            )
        );
    }
    Ok(())
}

/// restic (repository v2, compressed, as `restic init` makes it) backing up the database file
/// at the same points of the trace.
fn restic(batches: &[Batch], every: usize) -> anyhow::Result<u64> {
    let dir = tempfile::tempdir_in(bench_data())?;
    let repo = dir.path().join("restic");
    let db = dir.path().join("lightningd.sqlite3");
    let restic = |args: &[&std::ffi::OsStr]| -> anyhow::Result<std::time::Duration> {
        timed(
            Command::new("restic")
                .env("RESTIC_PASSWORD", "bench")
                .env("RESTIC_CACHE_DIR", dir.path().join("cache"))
                .arg("--repo")
                .arg(&repo)
                .args(args),
        )
    };
    restic(&["init".as_ref()])?;
    let empty = dir_size(&repo);
    let mut rp = Some(Replayer::open(&db, true)?);
    let mut snaps = 0;
    let mut secs = 0.0;
    for (i, b) in batches.iter().enumerate() {
        if let Some(r) = rp.as_mut() {
            r.apply(&Record {
                batch: b.clone(),
                supersedes: false,
                time_ms: 0,
            })?;
        }
        if (i + 1) % every == 0 || i + 1 == batches.len() {
            if let Some(r) = rp.take() {
                r.finish(&db)?;
            }
            secs += restic(&["backup".as_ref(), "--quiet".as_ref(), db.as_os_str()])?.as_secs_f64();
            snaps += 1;
            rp = Some(Replayer::open(&db, true)?);
        }
    }
    drop(rp);
    let total = dir_size(&repo) - empty;
    println!(
        "| restic 0.14 (`backup` of the file) | {snaps} | {:.1} MB | - | - | - | **{:.1} MB** | 1.000x | {secs:.1} s | - |",
        mb(std::fs::metadata(&db)?.len()),
        mb(total)
    );
    println!("<!-- restic series total {total} -->");
    Ok(total)
}
