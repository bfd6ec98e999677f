//! Restore throughput beside a plain file copy, and journal replay beside the sqlite3 shell.
//!
//! `cargo run --release -p cln-backup-benches --bin restore -- [--size-mib 1024] [--replay] [--restore] [--encrypt]`
//!
//! Replay: the scale trace's 30,014 batches applied by `store::replay::Replayer` to an empty
//! database, beside `sqlite3` executing the same SQL in one transaction; then the whole restore
//! path (`store::ops::restore::restore` of a journal-only repository: read, open, replay, sync,
//! integrity_check). Restore: the generated database stored as one snapshot, materialized
//! (read packs, decompress, check every chunk's address, write, fsync) and fully restored,
//! beside `cp` + fsync of the same file.

use std::io::Write;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use cln_backup_benches::measure::{self, timed};
use cln_backup_benches::{arg, bench_data, flag, gen, load_trace, mb, testdata};
use store::config::ConfigBody;
use store::journal::Record;
use store::ops::restore::{restore, RestoreTarget};
use store::pack::ChunkIndex;
use store::replay::Replayer;
use store::snapshot::{materialize, write_snapshot, SnapshotInput};
use store::{manifest, BackupUrl, Durability, MasterKey, Repository};

fn main() -> anyhow::Result<()> {
    let encrypt = flag("--encrypt");
    if flag("--replay") {
        replay(encrypt)?;
    }
    if flag("--restore") {
        let size_mib: u64 = arg("--size-mib")
            .map(|s| s.parse())
            .transpose()?
            .unwrap_or(1024);
        restore_big(size_mib, encrypt)?;
    }
    Ok(())
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn replay(encrypt: bool) -> anyhow::Result<()> {
    let batches = load_trace(&testdata("trace-scale-30k.jsonl.zst"))?;
    let stmts: u64 = batches.iter().map(|b| b.writes.len() as u64).sum();
    let dir = tempfile::tempdir_in(bench_data())?;

    // The sqlite3 shell, one transaction (the reference: 0.85 s).
    let sql = dir.path().join("all.sql");
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&sql)?);
        writeln!(f, "PRAGMA foreign_keys = ON;\nBEGIN;")?;
        for b in &batches {
            for w in &b.writes {
                let w = w.trim_end();
                writeln!(f, "{w}{}", if w.ends_with(';') { "" } else { ";" })?;
            }
        }
        writeln!(f, "COMMIT;")?;
    }
    measure::warm(&sql)?;
    let shell_db = dir.path().join("shell.sqlite3");
    let t_shell = timed(
        std::process::Command::new("sqlite3")
            .arg(&shell_db)
            .stdin(std::fs::File::open(&sql)?),
    )?;

    // The store's replayer alone (records already decoded).
    let db = dir.path().join("replay.sqlite3");
    let t = Instant::now();
    let mut rp = Replayer::open(&db, true)?;
    for b in &batches {
        rp.apply(&Record {
            batch: b.clone(),
            supersedes: false,
            time_ms: 0,
        })?;
    }
    rp.finish(&db)?;
    let t_replayer = t.elapsed();

    // The whole restore path from a journal-only repository.
    let key = MasterKey::generate();
    let root = dir.path().join("repo");
    let repo = Repository::init(
        &BackupUrl::File(root.clone()),
        Some(&key),
        encrypt,
        ConfigBody::default(),
    )?;
    {
        let w = Mutex::new(repo.writer("bench", Durability::Flush)?);
        for b in &batches {
            w.lock()
                .map_err(|_| anyhow::anyhow!("poisoned"))?
                .append(b)?;
        }
    }
    let journal = cln_backup_benches::dir_size(&root.join("journal"));
    let out = dir.path().join("restored.sqlite3");
    let t = Instant::now();
    let rep = restore(&repo, &out, &RestoreTarget::Latest)?;
    let t_restore = t.elapsed();
    let size = std::fs::metadata(&out)?.len();

    let enc = if encrypt {
        " (encrypted repository)"
    } else {
        ""
    };
    println!("| what | time | statements/s | vs sqlite3 shell |");
    println!("|---|---|---|---|");
    println!(
        "| sqlite3 {} shell, same SQL in one transaction | {:.2} s | {:.0} | 1.00x |",
        sqlite_version(),
        secs(t_shell),
        stmts as f64 / secs(t_shell)
    );
    println!(
        "| `Replayer` (decoded records, transaction per run of batches, sync at end) | {:.2} s | {:.0} | {:.2}x |",
        secs(t_replayer),
        stmts as f64 / secs(t_replayer),
        secs(t_replayer) / secs(t_shell)
    );
    println!(
        "| `restore` from a journal-only repository{enc} ({:.1} MB journal; read, check, replay, fsync, integrity_check) | {:.2} s | {:.0} | {:.2}x |",
        mb(journal),
        secs(t_restore),
        rep.replayed_statements as f64 / secs(t_restore),
        secs(t_restore) / secs(t_shell)
    );
    println!(
        "{}",
        measure::target(
            &format!("restore of the scale trace's 30,014 batches (journal replay) <= 1.1x the sqlite3 shell in one transaction{}", if encrypt { ", encrypted" } else { "" }),
            secs(t_restore) / secs(t_shell),
            1.1
        )
    );
    println!(
        "<!-- replay: {} batches, {stmts} statements, db {size} bytes, shell {} replayer {} restore {} -->",
        batches.len(),
        secs(t_shell),
        secs(t_replayer),
        secs(t_restore)
    );
    Ok(())
}

fn sqlite_version() -> String {
    std::process::Command::new("sqlite3")
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.split_whitespace().next().map(String::from))
        .unwrap_or_default()
}

fn restore_big(size_mib: u64, encrypt: bool) -> anyhow::Result<()> {
    let g = gen::database(size_mib << 20)?;
    let dir = tempfile::tempdir_in(bench_data())?;
    let key = MasterKey::generate();
    let root = dir.path().join("repo");
    let repo = Repository::init(
        &BackupUrl::File(root.clone()),
        Some(&key),
        encrypt,
        ConfigBody::default(),
    )?;
    let index = ChunkIndex::load(&repo)?;
    measure::warm(&g.base)?;
    let input = SnapshotInput {
        path: &g.base,
        data_version: gen::data_version(&g.base)?,
        journal_segment: 0,
        foreign_keys: true,
        data_time_ms: 0,
        next: None,
    };
    let m = write_snapshot(&repo, &input, None, None, &index)?;
    drop(index);
    let stored = cln_backup_benches::dir_size(&root);
    for p in [&root] {
        for e in std::fs::read_dir(p.join("packs"))?.flatten() {
            measure::warm(&e.path()).ok();
        }
    }

    let cp_out = dir.path().join("cp.sqlite3");
    let t = Instant::now();
    timed(std::process::Command::new("cp").arg(&g.base).arg(&cp_out))?;
    std::fs::File::open(&cp_out)?.sync_all()?;
    let t_cp = t.elapsed();
    std::fs::remove_file(&cp_out)?;

    let out = dir.path().join("materialized.sqlite3");
    let t = Instant::now();
    let index = ChunkIndex::load(&repo)?;
    let m = manifest::read(&repo, &m.id)?;
    let refs = manifest::resolve(&repo, &m)?;
    materialize(&repo, &m, &refs, &index, &out)?;
    let t_mat = t.elapsed();
    std::fs::remove_file(&out)?;

    let t = Instant::now();
    restore(&repo, &out, &RestoreTarget::Latest)?;
    let t_restore = t.elapsed();
    let t = Instant::now();
    let ic = store::replay::integrity_check(&out)?;
    let t_ic = t.elapsed();

    let enc = if encrypt { " encrypted" } else { "" };
    let mbps = |d: Duration| g.size as f64 / 1e6 / d.as_secs_f64();
    println!(
        "| what ({:.0} MB database, {:.0} MB stored{enc}) | time | MB/s | vs cp |",
        mb(g.size),
        mb(stored)
    );
    println!("|---|---|---|---|");
    println!(
        "| `cp` + fsync | {:.2} s | {:.0} | 1.00x |",
        secs(t_cp),
        mbps(t_cp)
    );
    println!(
        "| materialize (index, manifest, read packs, decompress, check each chunk's address, write, fsync) | {:.2} s | {:.0} | {:.2}x |",
        secs(t_mat),
        mbps(t_mat),
        secs(t_mat) / secs(t_cp)
    );
    println!(
        "| `restore` (materialize + open + data_version check + integrity_check) | {:.2} s | {:.0} | {:.2}x |",
        secs(t_restore),
        mbps(t_restore),
        secs(t_restore) / secs(t_cp)
    );
    println!(
        "| of which `PRAGMA integrity_check` alone (measured again after) | {:.2} s | {:.0} | - |",
        secs(t_ic),
        mbps(t_ic)
    );
    println!("<!-- restore: ic={ic} -->");
    Ok(())
}
