//! `backup-cli verify URL [--read-data]`: exit 3 when problems are found.

use anyhow::{Context, Result};
use clap::Args;
use store::ops::verify::{verify, VerifyOptions};

use crate::exit::CliError;
use crate::{keys, out, Global};

#[derive(Args, Debug)]
pub struct VerifyArgs {
    /// Repository URL
    pub url: String,
    /// Also decrypt every blob of every pack (its seal, every chunk's address), not only each
    /// pack's last blob, and restore the newest state to a temporary file (replay and
    /// integrity_check).
    #[arg(long)]
    pub read_data: bool,
}

pub fn run(g: &Global, a: &VerifyArgs) -> Result<()> {
    let url = keys::parse_url(&a.url)?;
    let repo = keys::open(g, &url, &[])?;
    let scratch = tempfile::Builder::new()
        .prefix("cln-backup-verify")
        .tempdir()
        .context("creating a temporary directory")?;
    let started = std::time::Instant::now();
    let rep = {
        let _p = out::Progress::start(g.json, "verifying");
        verify(
            &repo,
            &VerifyOptions {
                read_data: a.read_data,
                scratch_dir: scratch.path().to_path_buf(),
            },
        )
        .with_context(|| format!("verifying {url}"))?
    };
    if g.json {
        out::json(&rep)?;
    } else {
        println!(
            "Checked {} snapshots, {} index objects, {} packs, {} chunks referenced{}, {} journal segments ({} records) in {}.",
            rep.snapshots,
            rep.index_objects,
            rep.packs,
            rep.chunks_referenced,
            if a.read_data {
                format!(" ({} read)", rep.chunks_read)
            } else {
                String::new()
            },
            rep.journal_segments,
            rep.journal_records,
            out::duration(started.elapsed())
        );
        if let Some(v) = rep.restored_version {
            println!("Trial restore of the newest state: data_version {v}, integrity ok.");
        }
        for w in &rep.warnings {
            println!("warning: {w}");
        }
        for p in &rep.problems {
            println!("PROBLEM: {p}");
        }
        if rep.ok {
            println!("OK: no problems found.");
        }
    }
    if !rep.ok {
        return Err(CliError::Problems(format!(
            "verify found {} problem(s) in {url}",
            rep.problems.len()
        ))
        .into());
    }
    Ok(())
}
