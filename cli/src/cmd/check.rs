//! `backup-cli check --lightning-dir DIR [URL]`: the restore drill with the node stopped. Does the
//! backup restore to exactly DIR's `lightningd.sqlite3`? Exit 3 when it does not (the first
//! difference is printed). A running node is checked by the plugin: `lightning-cli backup-check`.

use anyhow::{Context, Result};
use clap::Args;
use store::ops::check::{check, CheckOptions, CheckReport};

use crate::exit::{usage, CliError};
use crate::node::{self, DB_FILE_NAME};
use crate::{keys, out, Global};

#[derive(Args, Debug)]
pub struct CheckArgs {
    /// Repository URL (default: the one in DIR/backup.lock).
    pub url: Option<String>,
}

pub fn run(g: &Global, a: &CheckArgs) -> Result<()> {
    let Some(dir) = g.lightning_dir.as_deref() else {
        return Err(usage(
            "give --lightning-dir DIR: the node's network directory, whose lightningd.sqlite3 is \
             compared with the backup",
        ));
    };
    node::check_stopped_network_dir(
        dir,
        DB_FILE_NAME,
        "on a running node, `lightning-cli backup-check` runs this check inside the plugin",
    )?;
    let db = dir.join(DB_FILE_NAME);
    if !db.exists() {
        return Err(usage(format!("{} does not exist", db.display())));
    }
    let url_text = match (&a.url, node::read_lock(dir)?) {
        (Some(u), _) => u.clone(),
        (None, Some(l)) => l.backend_url,
        (None, None) => {
            return Err(usage(format!(
                "no URL given and no {} in {}",
                node::LOCK_FILE_NAME,
                dir.display()
            )))
        }
    };
    let url = keys::parse_url(&url_text)?;
    let repo = keys::open(g, &url, &[dir.to_path_buf()])?;
    let scratch = tempfile::Builder::new()
        .prefix(".cln-backup-check")
        .tempdir_in(dir)
        .with_context(|| format!("creating a scratch directory in {}", dir.display()))?;
    let mut opts = CheckOptions::new(scratch.path().to_path_buf());
    // Nothing else reads or writes it: big steps, no pauses.
    opts.rows_per_step = 4096;
    opts.pause_factor = 0;
    let rep = {
        let _p = out::Progress::start(g.json, "comparing");
        check(&repo, &db, &opts)
            .with_context(|| format!("comparing {} with {url}", db.display()))?
    };
    if g.json {
        out::json(&rep)?;
    } else {
        print_human(&rep, &db.display().to_string(), &url.to_string());
    }
    match &rep.difference {
        None => Ok(()),
        Some(d) => Err(CliError::Problems(format!(
            "the backup does not restore to {}: {d}",
            db.display()
        ))
        .into()),
    }
}

pub fn print_human(r: &CheckReport, db: &str, url: &str) {
    match &r.difference {
        None => println!(
            "EQUAL: {url} restores to exactly {db} at data_version {} ({} tables, {} rows compared).",
            r.data_version_end, r.tables, r.rows
        ),
        Some(d) => {
            println!("DIFFERENT: {url} does not restore to {db}.");
            println!("  first difference: {d}");
        }
    }
    println!(
        "  backup's copy: {} + {} journal batches; took {}",
        r.snapshot
            .as_deref()
            .map(|s| format!("snapshot {s}"))
            .unwrap_or_else(|| "the journal".into()),
        r.replayed_batches,
        out::duration(std::time::Duration::from_millis(r.duration_ms))
    );
}
