//! `backup-cli restore URL DEST`: the newest state, a snapshot, or a data_version, into a new file.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;
use serde::Serialize;
use store::ops::restore::{restore, RestoreReport, RestoreTarget};

use crate::exit::{refused, usage};
use crate::node::DB_FILE_NAME;
use crate::{keys, out, Global};

#[derive(Args, Debug)]
pub struct RestoreArgs {
    /// Repository URL
    pub url: String,
    /// A new file, or an existing directory (then DEST/lightningd.sqlite3). Never overwritten.
    pub dest: PathBuf,
    /// Restore exactly this snapshot (id or unique prefix, see `snapshots`), without the journal.
    #[arg(long, value_name = "ID", conflicts_with = "to_version",
          value_parser = clap::builder::NonEmptyStringValueParser::new())]
    pub snapshot: Option<String>,
    /// Restore the state at this data_version (1 or more: 0 is before the first batch).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub to_version: Option<u32>,
}

#[derive(Serialize)]
struct RestoreOutput {
    #[serde(flatten)]
    report: RestoreReport,
    duration_ms: u64,
}

pub fn run(g: &Global, a: &RestoreArgs) -> Result<()> {
    let url = keys::parse_url(&a.url)?;
    let dest = if a.dest.is_dir() {
        a.dest.join(DB_FILE_NAME)
    } else {
        a.dest.clone()
    };
    if dest.exists() {
        return Err(refused(format!(
            "{} already exists; refusing to overwrite it (restore into a new file, or move it aside)",
            dest.display()
        )));
    }
    let parent = dest
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    if !parent.is_dir() {
        return Err(usage(format!(
            "{} does not exist: create the directory first",
            parent.display()
        )));
    }
    let target = match (&a.snapshot, a.to_version) {
        (Some(id), _) => RestoreTarget::Snapshot(id.clone()),
        (None, Some(v)) => RestoreTarget::Version(v),
        (None, None) => RestoreTarget::Latest,
    };
    let repo = keys::open(g, &url, std::slice::from_ref(&parent))?;
    let started = Instant::now();
    let report = {
        let _p = out::Progress::start(g.json, "restoring");
        restore(&repo, &dest, &target).with_context(|| format!("restoring {url}"))?
    };
    let o = RestoreOutput {
        report,
        duration_ms: started.elapsed().as_millis() as u64,
    };
    if g.json {
        return out::json(&o);
    }
    let r = &o.report;
    println!("Restored {} from {url}", r.path);
    println!("  data_version     {}", r.data_version);
    match (&r.snapshot, r.snapshot_version) {
        (Some(id), Some(v)) => println!(
            "  from             snapshot {id} (data_version {v}) + {} journal batches ({} statements)",
            r.replayed_batches, r.replayed_statements
        ),
        _ => println!(
            "  from             the journal: {} batches ({} statements)",
            r.replayed_batches, r.replayed_statements
        ),
    }
    println!("  size             {}", out::bytes(r.db_size));
    println!("  integrity_check  {}", r.integrity_check);
    println!(
        "  took             {}",
        out::duration(std::time::Duration::from_millis(o.duration_ms))
    );
    if let Some(t) = &r.torn_tail {
        println!("  note: left out {t}: a batch cut by a crash while it was written (never acknowledged to lightningd)");
    }
    Ok(())
}
