//! Snapshot throughput on a generated CLN-shaped database of at least 1 GiB: a first snapshot,
//! then an incremental one after ~1% of the pages changed; beside raw blake3 and zstd-3 on the
//! same bytes, and beside restic backing up the same file twice.
//!
//! `cargo run --release -p cln-backup-benches --bin snapshot -- [--size-mib 1024]
//!  [--chunker pages:1|cdc:16384] [--encrypt] [--raw] [--restic]`
//!
//! Prints markdown table rows (see run-report.sh). All reads are from a warm page cache.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use cln_backup_benches::measure::{self, target, timed, AnonPeak};
use cln_backup_benches::{arg, bench_data, flag, gen, mb, parse_chunker};
use rayon::prelude::*;
use store::config::ConfigBody;
use store::pack::ChunkIndex;
use store::snapshot::{write_snapshot, SnapshotInput};
use store::{manifest, BackupUrl, MasterKey, Repository};

fn main() -> anyhow::Result<()> {
    let size_mib: u64 = arg("--size-mib")
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(1024);
    let g = gen::database(size_mib << 20)?;
    let total_pages = g.size / g.page_size;
    println!(
        "<!-- db {} bytes, page size {}, {} pages, {} changed ({:.2}%) -->",
        g.size,
        g.page_size,
        total_pages,
        g.pages_changed,
        100.0 * g.pages_changed as f64 / total_pages as f64
    );
    if flag("--raw") {
        raw(&g.base)?;
    }
    // restic first, then each variant: `--variants pages:1,pages:1+enc,cdc:16384`.
    if flag("--restic") || arg("--variants").is_some() {
        println!("\nSnapshots of the same file (`pages:N` = page-aligned chunks of N pages, `cdc:AVG` = FastCDC):\n");
        println!("| tool | first snapshot | incremental (1% pages changed) | stored by first | added by incremental | chunks / new chunks in incremental | manifest bytes first / incremental | peak anonymous memory | peak RSS (counts the mapped file) |");
        println!("|---|---|---|---|---|---|---|---|---|");
    }
    let r = if flag("--restic") {
        Some(restic(&g)?)
    } else {
        None
    };
    let variants = arg("--variants").unwrap_or_default();
    let mut verdicts = Vec::new();
    let mut notes = Vec::new();
    for v in variants.split(',').filter(|v| !v.is_empty()) {
        let (c, encrypt) = match v.strip_suffix("+enc") {
            Some(c) => (c, true),
            None => (v, false),
        };
        let o = ours(&g, c, encrypt)?;
        notes.push(o.3.clone());
        if let (Some(r), true) = (&r, c == "pages:1") {
            let enc = if encrypt { ", encrypted" } else { "" };
            let mb = mb(g.size);
            verdicts.push(target(
                &format!("first snapshot of the {mb:.0} MB database <= 0.3x restic's time{enc}"),
                o.0.as_secs_f64() / r.0.as_secs_f64(),
                0.3,
            ));
            verdicts.push(target(
                &format!("incremental snapshot (1% of pages changed) <= 0.1x restic's time{enc}"),
                o.1.as_secs_f64() / r.1.as_secs_f64(),
                0.1,
            ));
            verdicts.push(target(
                &format!("incremental snapshot stores <= 0.05x restic's added bytes{enc}"),
                o.2 as f64 / r.2 as f64,
                0.05,
            ));
        }
    }
    if !notes.is_empty() {
        println!();
        for n in notes {
            println!("{n}");
        }
    }
    for v in verdicts {
        println!("{v}");
    }
    Ok(())
}

fn mbps(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / 1e6 / d.as_secs_f64()
}

fn workdir(name: &str) -> anyhow::Result<std::path::PathBuf> {
    let w = bench_data().join("work").join(name);
    if w.exists() {
        std::fs::remove_dir_all(&w)?;
    }
    std::fs::create_dir_all(&w)?;
    Ok(w)
}

/// Raw hashing and compression of the database's pages: the physical limit of a snapshot pass.
fn raw(path: &Path) -> anyhow::Result<()> {
    let f = std::fs::File::open(path)?;
    #[allow(unsafe_code)]
    // SAFETY: a private file of this benchmark, not modified while mapped.
    let map = unsafe { memmap2::Mmap::map(&f)? };
    let data: &[u8] = &map;
    measure::warm(path)?;
    let ps = 4096;
    let one = rayon::ThreadPoolBuilder::new().num_threads(1).build()?;
    let all = rayon::ThreadPoolBuilder::new().build()?;
    let n = all.current_num_threads();
    let key = [7u8; 32];
    let mut rows = Vec::new();
    for (label, pool) in [
        ("1 core", &one),
        (if n == 2 { "2 cores" } else { "all cores" }, &all),
    ] {
        let t = Instant::now();
        let h: u64 = pool.install(|| {
            data.par_chunks(ps)
                .map(|p| blake3::keyed_hash(&key, p).as_bytes()[0] as u64)
                .sum()
        });
        let d_hash = t.elapsed();
        std::hint::black_box(h);
        let t = Instant::now();
        let z: usize = pool.install(|| {
            data.par_chunks(ps)
                .map(|p| zstd::bulk::compress(p, 3).map(|c| c.len()).unwrap_or(0))
                .sum()
        });
        let d_zstd = t.elapsed();
        let t = Instant::now();
        let z16: usize = pool.install(|| {
            data.par_chunks(ps * 16)
                .map(|p| zstd::bulk::compress(p, 3).map(|c| c.len()).unwrap_or(0))
                .sum()
        });
        let d_zstd16 = t.elapsed();
        rows.push(format!(
            "| {label} | {:.0} | {:.0} | {:.0} | {:.0} ({:.2}) | {:.0} ({:.2}) |",
            mbps(data.len() as u64, d_hash),
            mbps(data.len() as u64, d_zstd),
            mbps(data.len() as u64, d_zstd16),
            mb(z as u64),
            z as f64 / data.len() as f64,
            mb(z16 as u64),
            z16 as f64 / data.len() as f64,
        ));
    }
    // The disk: write the bytes a first snapshot stores (the zstd-3 output size) and fdatasync.
    let out_len = rows_out_len(data);
    let tmp = bench_data().join("write-limit.tmp");
    let buf = vec![0x5au8; 16 << 20];
    let t = Instant::now();
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp)?;
        let mut left = out_len;
        while left > 0 {
            let n = left.min(buf.len());
            f.write_all(&buf[..n])?;
            left -= n;
        }
        f.sync_data()?;
    }
    let d_write = t.elapsed();
    std::fs::remove_file(&tmp)?;
    println!(
        "Disk: writing {:.0} MB (what a first snapshot stores) + fdatasync: {:.2} s ({:.0} MB/s).\n",
        mb(out_len as u64),
        d_write.as_secs_f64(),
        mbps(out_len as u64, d_write)
    );
    println!("| cores | blake3 (keyed) per 4 KiB page, MB/s | zstd-3 per 4 KiB page, MB/s | zstd-3 per 64 KiB, MB/s | zstd-3 4 KiB output MB (ratio) | zstd-3 64 KiB output MB (ratio) |");
    println!("|---|---|---|---|---|---|");
    for r in rows {
        println!("{r}");
    }
    Ok(())
}

/// (first backup time, second backup time, bytes the second added)
/// About what zstd-3 makes of the data (sampled: every 64th MiB).
fn rows_out_len(data: &[u8]) -> usize {
    let mut raw = 0;
    let mut out = 0;
    for c in data.chunks(1 << 20).step_by(64) {
        raw += c.len();
        out += c
            .chunks(4096)
            .map(|p| {
                zstd::bulk::compress(p, 3)
                    .map(|z| z.len())
                    .unwrap_or(p.len())
            })
            .sum::<usize>();
    }
    (data.len() as f64 * out as f64 / raw.max(1) as f64) as usize
}

fn restic(g: &gen::Generated) -> anyhow::Result<(Duration, Duration, u64)> {
    let w = workdir("restic")?;
    let repo = w.join("repo");
    let file = w.join("lightningd.sqlite3");
    let env = |c: &mut Command| {
        c.env("RESTIC_PASSWORD", "bench")
            .env("RESTIC_CACHE_DIR", w.join("cache"))
            .arg("--repo")
            .arg(&repo);
    };
    let mut c = Command::new("restic");
    env(&mut c);
    timed(c.arg("init"))?;
    let empty = cln_backup_benches::dir_size(&repo);
    measure::copy_synced(&g.base, &file)?;
    measure::warm(&file)?;
    let mut c = Command::new("restic");
    env(&mut c);
    let t1 = timed(c.arg("backup").arg(&file))?;
    let s1 = cln_backup_benches::dir_size(&repo);
    measure::copy_synced(&g.changed, &file)?;
    measure::warm(&file)?;
    let mut c = Command::new("restic");
    env(&mut c);
    let t2 = timed(c.arg("backup").arg(&file))?;
    let s2 = cln_backup_benches::dir_size(&repo);
    println!(
        "| restic {} | {:.2} s ({:.0} MB/s) | {:.2} s ({:.0} MB/s) | {:.1} MB | {:.1} MB | - | - | - | - |",
        restic_version(),
        t1.as_secs_f64(),
        mbps(g.size, t1),
        t2.as_secs_f64(),
        mbps(g.size, t2),
        mb(s1 - empty),
        mb(s2 - s1),
    );
    println!(
        "<!-- restic: {} {} {} {} -->",
        t1.as_secs_f64(),
        t2.as_secs_f64(),
        s1 - empty,
        s2 - s1
    );
    let _ = std::fs::remove_dir_all(&w);
    Ok((t1, t2, s2 - s1))
}

fn restic_version() -> String {
    Command::new("restic")
        .arg("version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.split_whitespace().nth(1).map(String::from))
        .unwrap_or_default()
}

/// (first snapshot time, incremental snapshot time, bytes the incremental added, a note)
fn ours(
    g: &gen::Generated,
    chunker: &str,
    encrypt: bool,
) -> anyhow::Result<(Duration, Duration, u64, String)> {
    measure::reset_peak_rss();
    let name = format!(
        "ours-{}{}",
        chunker.replace(':', "-"),
        if encrypt { "-enc" } else { "" }
    );
    let w = workdir(&name)?;
    let root = w.join("repo");
    let file = w.join("lightningd.sqlite3");
    let key = MasterKey::generate();
    let body = ConfigBody {
        chunker: parse_chunker(chunker)?,
        ..ConfigBody::default()
    };
    let repo = Repository::init(&BackupUrl::File(root.clone()), Some(&key), encrypt, body)?;
    measure::copy_synced(&g.base, &file)?;
    measure::warm(&file)?;

    let anon = AnonPeak::start();
    let t = Instant::now();
    let index = ChunkIndex::load(&repo)?;
    let input = SnapshotInput {
        path: &file,
        data_version: gen::data_version(&g.base)?,
        journal_segment: 0,
        foreign_keys: true,
        data_time_ms: 0,
        next: None,
    };
    let m1 = write_snapshot(&repo, &input, None, None, &index)?;
    let t1 = t.elapsed();
    drop(index);
    let s1 = cln_backup_benches::dir_size(&root);

    measure::copy_synced(&g.changed, &file)?;
    measure::warm(&file)?;
    let t = Instant::now();
    // As compaction does: load the index and the parent's chunk list from the repository.
    let index = ChunkIndex::load(&repo)?;
    let t_index = t.elapsed();
    let parent = manifest::latest(&repo)?;
    let prefs = match &parent {
        Some(p) => Some(manifest::resolve(&repo, p)?),
        None => None,
    };
    let t_parent = t.elapsed() - t_index;
    let input = SnapshotInput {
        path: &file,
        data_version: gen::data_version(&g.changed)?,
        journal_segment: 0,
        foreign_keys: true,
        data_time_ms: 0,
        next: None,
    };
    let m2 = write_snapshot(&repo, &input, parent.as_ref(), prefs.as_deref(), &index)?;
    let t2 = t.elapsed();
    let peak_anon = anon.stop();
    let note = format!(
        "- {chunker}{}: the incremental snapshot's {:.2} s = loading the chunk index {:.2} s + the parent's chunk list {:.2} s + chunking, hashing, compressing and storing {:.2} s",
        if encrypt { " encrypted" } else { "" },
        t2.as_secs_f64(),
        t_index.as_secs_f64(),
        t_parent.as_secs_f64(),
        (t2 - t_index - t_parent).as_secs_f64()
    );
    let s2 = cln_backup_benches::dir_size(&root);
    println!(
        "| cln-backup {chunker}{} | {:.2} s ({:.0} MB/s) | {:.2} s ({:.0} MB/s) | {:.1} MB | {:.2} MB | {} / {} | {} B / {} B | {:.0} MB | {:.0} MB |",
        if encrypt { " encrypted" } else { "" },
        t1.as_secs_f64(),
        mbps(g.size, t1),
        t2.as_secs_f64(),
        mbps(g.size, t2),
        mb(s1),
        mb(s2 - s1),
        m1.chunk_count,
        m2.new_chunks,
        m1.object_size,
        m2.object_size,
        mb(peak_anon),
        mb(measure::peak_rss()),
    );
    println!(
        "<!-- ours {chunker} enc={encrypt}: {} {} {} {} new_bytes_reported={} -->",
        t1.as_secs_f64(),
        t2.as_secs_f64(),
        s1,
        s2 - s1,
        m2.stored_bytes
    );
    let _ = std::fs::remove_dir_all(&w);
    Ok((t1, t2, s2 - s1, note))
}
