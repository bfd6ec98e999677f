//! `backup-cli restore URL DEST`: the newest state, a snapshot, or a data_version, into a new file;
//! or into a node's network directory (`--lightning-dir DIR`, or DEST being one), guarded:
//! see [`super::restore_node`].

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;
use serde::Serialize;
use store::ops::restore::{restore, RestoreReport, RestoreTarget};

use crate::exit::{refused, usage};
use crate::hsm::HSM_SECRET;
use crate::node::{DB_FILE_NAME, LOCK_FILE_NAME};
use crate::{keys, out, Global};
use store::Repository;

#[derive(Args, Debug)]
pub struct RestoreArgs {
    /// Repository URL
    pub url: String,
    /// A new file, or an existing directory (then DEST/lightningd.sqlite3). Never overwritten.
    /// Without DEST, or when DEST is a node's network directory (it holds hsm_secret or
    /// backup.lock, or is --lightning-dir): a restore into that node, with its checks.
    pub dest: Option<PathBuf>,
    /// Restore exactly this snapshot (id or unique prefix, see `snapshots`), without the journal.
    #[arg(long, value_name = "ID", conflicts_with = "to_version")]
    pub snapshot: Option<String>,
    /// Restore the state at this data_version.
    #[arg(long, value_name = "N")]
    pub to_version: Option<u32>,
    /// Into a node: restore a state OLDER than the newest the backup holds. A node started on an
    /// old state sends its peers revoked channel states, and they may take ALL the funds of those
    /// channels (a penalty close). Only when every channel of that state has been closed since,
    /// or on a test network.
    #[arg(long)]
    pub accept_old_state_penalty_risk: bool,
    /// Into a node: the node id its hsm_secret derives, when backup-cli cannot derive it (an
    /// hsm_secret protected by a passphrase): what `lightning-hsmtool getnodeid` prints.
    #[arg(long, value_name = "ID")]
    pub node_id: Option<String>,
}

impl RestoreArgs {
    pub fn target(&self) -> RestoreTarget {
        target_of(&self.snapshot, self.to_version)
    }
}

/// `--snapshot ID` / `--to-version N` / neither (the newest).
pub fn target_of(snapshot: &Option<String>, to_version: Option<u32>) -> RestoreTarget {
    match (snapshot, to_version) {
        (Some(id), _) => RestoreTarget::Snapshot(id.clone()),
        (None, Some(v)) => RestoreTarget::Version(v),
        (None, None) => RestoreTarget::Latest,
    }
}

/// Is `dest` a node's network directory (so the restore goes into that node)?
fn node_dir(g: &Global, dest: Option<&Path>) -> Result<Option<PathBuf>> {
    let Some(dest) = dest else {
        return match &g.lightning_dir {
            Some(d) => Ok(Some(d.clone())),
            None => Err(usage(
                "give DEST (a new file, or a directory) or --lightning-dir DIR (a node's network \
                 directory, to restore into that node)",
            )),
        };
    };
    if !dest.is_dir() {
        return Ok(None);
    }
    let is_ld = g.lightning_dir.as_deref().is_some_and(|d| {
        match (std::fs::canonicalize(d), std::fs::canonicalize(dest)) {
            (Ok(a), Ok(b)) => a == b,
            _ => false,
        }
    });
    let marked = [HSM_SECRET, LOCK_FILE_NAME]
        .iter()
        .any(|f| dest.join(f).exists());
    Ok((is_ld || marked).then(|| dest.to_path_buf()))
}

/// The newest data_version the repository holds (for a restore of an older one).
// FORMAT-V2: the lead's restore reports the newest version and its time (issue 14); read it
// from the RestoreReport once that is on main, instead of reading the whole journal again.
pub fn newest_version(
    repo: &Repository,
    report: &RestoreReport,
    target: &RestoreTarget,
) -> Result<u32> {
    if *target == RestoreTarget::Latest {
        return Ok(report.data_version);
    }
    let s = store::ops::stats::stats(repo).context("finding the newest state the backup holds")?;
    Ok(s.last_version.unwrap_or(0).max(report.data_version))
}

#[derive(Serialize)]
struct RestoreOutput {
    #[serde(flatten)]
    report: RestoreReport,
    duration_ms: u64,
    /// The newest data_version the backup holds.
    newest_data_version: u32,
    /// The restored state is older than the newest: never start a node on it.
    older_than_newest: bool,
}

pub fn run(g: &Global, a: &RestoreArgs) -> Result<()> {
    let url = keys::parse_url(&a.url)?;
    if let Some(dir) = node_dir(g, a.dest.as_deref())? {
        return super::restore_node::run(g, a, &url, &dir);
    }
    if a.accept_old_state_penalty_risk || a.node_id.is_some() {
        return Err(usage(
            "--accept-old-state-penalty-risk and --node-id are for a restore into a node \
             (--lightning-dir DIR)",
        ));
    }
    let Some(dest) = &a.dest else {
        return Err(usage("give DEST"));
    };
    let dest = if dest.is_dir() {
        dest.join(DB_FILE_NAME)
    } else {
        dest.clone()
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
    let target = a.target();
    let repo = keys::open(g, &url, std::slice::from_ref(&parent))?;
    let started = Instant::now();
    let report = {
        let _p = out::Progress::start(g.json, "restoring");
        restore(&repo, &dest, &target).with_context(|| format!("restoring {url}"))?
    };
    let duration_ms = started.elapsed().as_millis() as u64;
    let newest_data_version = newest_version(&repo, &report, &target)?;
    let o = RestoreOutput {
        older_than_newest: report.data_version < newest_data_version,
        newest_data_version,
        report,
        duration_ms,
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
    if o.older_than_newest {
        println!(
            "  WARNING: this is an OLD state: the backup holds data_version {}. Never start a node \
             on it while its channels are open: its peers could take their funds (penalty close).",
            o.newest_data_version
        );
    }
    if let Some(t) = &r.torn_tail {
        println!("  note: left out {t}: a batch cut by a crash while it was written (never acknowledged to lightningd)");
    }
    Ok(())
}
