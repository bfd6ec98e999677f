//! `backup-cli compact URL`: an offline snapshot, by the plugin's own code path
//! (`store::ops::compact`). While the node runs, the plugin holds the writer lock: use
//! `lightning-cli backup-compact` then.

use std::path::PathBuf;
use std::sync::Mutex;

use anyhow::{Context, Result};
use clap::Args;
use store::ops::compact::{compact, CompactOptions};
use store::Durability;

use crate::{keys, out, Global};

#[derive(Args, Debug)]
pub struct CompactArgs {
    /// Repository URL
    pub url: String,
    /// Keep the compaction base (a local copy of the database at the last snapshot) here
    /// between runs; without it a temporary directory is used and the base rebuilt each time.
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
}

pub fn run(g: &Global, a: &CompactArgs) -> Result<()> {
    let url = keys::parse_url(&a.url)?;
    let repo = keys::open(g, &url, &[])?;
    let holder = store::repo::holder("backup-cli compact");
    let writer = match repo.writer(&holder, Durability::Fsync) {
        Ok(w) => w,
        Err(e @ store::Error::Locked { .. }) => {
            return Err(anyhow::Error::from(e).context(
                "the repository's writer is taken (the plugin, while lightningd runs): \
                 use `lightning-cli backup-compact` instead",
            ))
        }
        Err(e) => {
            return Err(anyhow::Error::from(e).context(format!("opening the journal of {url}")))
        }
    };
    if let Some(note) = writer.recovery_note() {
        eprintln!("backup-cli: journal repaired on open: {note}");
    }
    let writer = Mutex::new(writer);
    let tmp;
    let cache_dir = match &a.cache_dir {
        Some(d) => d.clone(),
        None => {
            tmp = tempfile::Builder::new()
                .prefix("cln-backup-compact")
                .tempdir()
                .context("creating a temporary directory for the compaction base")?;
            tmp.path().to_path_buf()
        }
    };
    let report = {
        let _p = out::Progress::start(g.json, "compacting");
        compact(&repo, &writer, &CompactOptions { cache_dir, holder })
            .with_context(|| format!("compacting {url}"))?
    };
    if g.json {
        return out::json(&report);
    }
    match &report.snapshot {
        Some(s) => {
            println!(
                "Snapshot {} at data_version {} ({} database, {} added, dedup {}) in {}.",
                s.id,
                s.data_version,
                out::bytes(s.db_size),
                out::bytes(report.bytes_added),
                out::ratio(report.dedup_ratio),
                out::duration(std::time::Duration::from_millis(report.duration_ms))
            );
        }
        None => println!(
            "No snapshot made: {}.",
            report.note.as_deref().unwrap_or("nothing to compact")
        ),
    }
    println!(
        "Repository: {} before, {} after; {} versions before, {} after.",
        out::bytes(report.before.backup_size),
        out::bytes(report.after.backup_size),
        report.before.version_count,
        report.after.version_count
    );
    Ok(())
}
