//! The 30-snapshot series: replay the 30k-invoice scale trace into a repository, a snapshot
//! every N batches, and report stored bytes per chunker (the chunking decision in
//! ARCHITECTURE.md, and the target of a quarter of restic's 187 MB).
//!
//! `cargo run --release -p cln-backup-benches --bin series -- [--every 1000] [--chunker pages:1|pages:4|cdc:16384] [--encrypt]`

use std::sync::Mutex;
use std::time::Instant;

use cln_backup_benches::{load_trace, repo_bytes, testdata};
use store::config::{ChunkerParams, ConfigBody};
use store::ops::compact::{compact, CompactOptions};
use store::{BackupUrl, Durability, MasterKey, Repository};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let arg = |k: &str| {
        args.iter()
            .position(|a| a == k)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let every: usize = arg("--every")
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(1000);
    let encrypt = args.iter().any(|a| a == "--encrypt");
    let chunkers: Vec<String> = match arg("--chunker") {
        Some(c) => vec![c],
        None => vec!["pages:1".into(), "pages:4".into(), "cdc:16384".into()],
    };
    let trace = arg("--trace")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| testdata("trace-scale-30k.jsonl.zst"));
    let batches = load_trace(&trace)?;
    println!("trace: {} batches from {}", batches.len(), trace.display());
    for c in chunkers {
        let chunker = match c.split_once(':') {
            Some(("pages", n)) => ChunkerParams::Pages { pages: n.parse()? },
            Some(("cdc", n)) => {
                let avg: u32 = n.parse()?;
                ChunkerParams::FastCdc {
                    min: avg / 4,
                    avg,
                    max: avg * 4,
                }
            }
            _ => anyhow::bail!("--chunker pages:N or cdc:AVG"),
        };
        let dir = tempfile::tempdir()?;
        let root = dir.path().join("repo");
        let key = MasterKey::generate();
        let body = ConfigBody {
            chunker,
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
        let mut new_bytes = Vec::new();
        let mut db_size = 0;
        let mut chunks = 0;
        let mut manifest_bytes = Vec::new();
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
                    new_bytes.push(s.stored_bytes);
                    db_size = s.db_size;
                    chunks = s.chunks;
                    manifest_bytes.push(s.manifest_bytes);
                }
            }
        }
        drop(w);
        let (packs, manifests, journal) = repo_bytes(&root);
        let total = packs + manifests + journal;
        let share: Vec<String> = new_bytes
            .iter()
            .skip(1)
            .take(5)
            .map(|b| format!("{:.1}%", 100.0 * *b as f64 / db_size.max(1) as f64))
            .collect();
        println!(
            "{c}{}: {snaps} snapshots, final db {:.1} MB in {chunks} chunks; stored: packs+index {:.1} MB, manifests {:.2} MB (last {} B), journal {:.1} MB, total {:.1} MB ({:.3}x restic's 187 MB); snapshot time {:.2} s total; new bytes of snapshots 2-6 as share of the db: {}",
            if encrypt { " encrypted" } else { "" },
            db_size as f64 / 1e6,
            packs as f64 / 1e6,
            manifests as f64 / 1e6,
            manifest_bytes.last().copied().unwrap_or(0),
            journal as f64 / 1e6,
            total as f64 / 1e6,
            total as f64 / 187e6,
            snap_secs,
            share.join(" "),
        );
    }
    Ok(())
}
