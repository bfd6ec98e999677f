//! `backup-cli restore URL DEST`: the newest state, a snapshot, or a data_version, into a new file;
//! or into a node's network directory (`--lightning-dir DIR`, or DEST being one), guarded:
//! see [`super::restore_node`].
//!
//! Anchors: every copy it can name (URL, `--also URL`, and the destinations of the node's
//! `backup.lock` with `--lightning-dir`) is read, the newest authentic state wins, and a copy
//! that is behind, disagrees or is damaged is named. `--expect-version` is the operator's own
//! anchor. The newest data_version found and when it was stored are always printed.

use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::exit::{refused, usage};
use crate::hsm::HSM_SECRET;
use crate::node::{DB_FILE_NAME, LOCK_FILE_NAME};
use crate::{keys, out, Global};
use anyhow::{Context, Result};
use clap::Args;
use serde::Serialize;
use store::ops::restore::{restore_with, Newest, RestoreOptions, RestoreReport, RestoreTarget};
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
    #[arg(long, value_name = "ID", conflicts_with = "to_version",
          value_parser = clap::builder::NonEmptyStringValueParser::new())]
    pub snapshot: Option<String>,
    /// Restore the state at this data_version (1 or more: 0 is before the first batch).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub to_version: Option<u32>,
    /// Another copy of the same repository (a destination of the node): read too, the newest
    /// authentic state wins. Repeatable. With --lightning-dir, the destinations of its
    /// backup.lock are read as well.
    #[arg(long, value_name = "URL")]
    pub also: Vec<String>,
    /// Refuse unless the backup holds at least this data_version (your own record of the
    /// node's state: an anchor the storage cannot roll back).
    #[arg(long, value_name = "N")]
    pub expect_version: Option<u32>,
    /// Restore even though the newest journal records are damaged (not a torn write): the
    /// batches there are lost from this copy. Look for a newer copy first.
    #[arg(long)]
    pub accept_damaged_tail: bool,
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
pub fn newest_version(report: &RestoreReport) -> u32 {
    report.newest_version.max(report.data_version)
}

/// One copy read for the anchors.
#[derive(Serialize)]
pub struct Copy {
    pub url: String,
    /// Its newest state, when it could be read.
    pub newest_version: Option<u32>,
    pub newest_time_ms: Option<u64>,
    /// "newest", "behind by N", "disagrees", "other repository", or the error.
    pub state: String,
}

#[derive(Serialize)]
struct RestoreOutput {
    #[serde(flatten)]
    report: RestoreReport,
    /// Where it was restored from, when copies were compared.
    restored_from: String,
    copies: Vec<Copy>,
    duration_ms: u64,
    /// The newest data_version the backup holds.
    newest_data_version: u32,
    /// The restored state is older than the newest: never start a node on it.
    older_than_newest: bool,
}

/// The copies to read: `url` first, then `--also`, then the destinations of the node's
/// backup.lock (in `dir`) when `url` is one of its destinations.
pub fn copy_urls(
    dir: Option<&Path>,
    a: &RestoreArgs,
    url: &store::BackupUrl,
) -> Result<Vec<store::BackupUrl>> {
    let mut urls = vec![url.clone()];
    for u in &a.also {
        urls.push(keys::parse_url(u)?);
    }
    if let Some(d) = dir {
        if let Some(l) = store::lockfile::read(d)? {
            let listed: Vec<String> = std::iter::once(l.backend_url.clone())
                .chain(l.destinations.iter().map(|d| d.url.clone()))
                .collect();
            let ours = listed
                .iter()
                .filter_map(|u| store::BackupUrl::parse(u).ok())
                .any(|u| u == *url);
            if ours {
                for u in listed {
                    if let Ok(u) = store::BackupUrl::parse(&u) {
                        if !urls.contains(&u) {
                            urls.push(u);
                        }
                    }
                }
            }
        }
    }
    Ok(urls)
}

/// Read each copy's newest state (`first` is `urls[0]`, opened); return the one to restore from
/// and what each holds.
pub fn survey(
    first: Repository,
    urls: &[store::BackupUrl],
    accept_damaged_tail: bool,
) -> Result<(Repository, Vec<Copy>)> {
    let pin = first.identity();
    let mut found: Vec<(Repository, Result<Newest, String>)> = Vec::new();
    let mut copies = Vec::new();
    for (i, u) in urls.iter().enumerate() {
        let repo = if i == 0 {
            Ok(first.clone())
        } else {
            Repository::open(u, first.key().cloned())
                .map_err(|e| e.to_string())
                .and_then(|r| {
                    r.check_identity(&pin)
                        .map(|_| r)
                        .map_err(|e| format!("other repository: {e}"))
                })
        };
        match repo {
            Ok(r) => {
                let n =
                    store::ops::restore::newest(&r, accept_damaged_tail).map_err(|e| e.to_string());
                found.push((r, n));
            }
            Err(e) => copies.push(Copy {
                url: u.to_string(),
                newest_version: None,
                newest_time_ms: None,
                state: e,
            }),
        }
    }
    let best = found
        .iter()
        .filter_map(|(r, n)| n.as_ref().ok().map(|n| (r, n)))
        .max_by_key(|(_, n)| n.data_version)
        .map(|(r, n)| (r.clone(), n.clone()));
    for (r, n) in &found {
        let state = match (n, &best) {
            (Err(e), _) => e.clone(),
            (Ok(n), Some((_, b))) if n.data_version < b.data_version => {
                format!("behind by {} batches", b.data_version - n.data_version)
            }
            (Ok(n), Some((_, b))) if n.record_hash != b.record_hash => {
                "disagrees: same data_version, another newest batch".to_string()
            }
            _ => "newest".to_string(),
        };
        copies.push(Copy {
            url: r.url(),
            newest_version: n.as_ref().ok().map(|n| n.data_version),
            newest_time_ms: n.as_ref().ok().map(|n| n.time_ms),
            state,
        });
    }
    match best {
        Some((r, _)) => Ok((r, copies)),
        // No copy could be read whole: restore from the first, which reports why.
        None => Ok((first, copies)),
    }
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
    let urls = copy_urls(g.lightning_dir.as_deref(), a, &url)?;
    let first = keys::open(g, &url, std::slice::from_ref(&parent))?;
    let (repo, copies) = survey(first, &urls, a.accept_damaged_tail)?;
    let opts = RestoreOptions {
        accept_damaged_tail: a.accept_damaged_tail,
        expect_version: a.expect_version,
    };
    let started = Instant::now();
    let report = {
        let _p = out::Progress::start(g.json, "restoring");
        restore_with(&repo, &dest, &target, &opts)
            .with_context(|| format!("restoring {}", repo.url()))?
    };
    let duration_ms = started.elapsed().as_millis() as u64;
    let newest_data_version = newest_version(&report);
    let o = RestoreOutput {
        older_than_newest: report.data_version < newest_data_version,
        newest_data_version,
        restored_from: repo.url(),
        copies,
        report,
        duration_ms,
    };
    if g.json {
        return out::json(&o);
    }
    let r = &o.report;
    println!("Restored {} from {}", r.path, o.restored_from);
    println!(
        "  data_version     {}{}",
        r.data_version,
        store::ops::restore::when(r.restored_time_ms)
    );
    println!(
        "  newest in backup {}{}",
        r.newest_version,
        store::ops::restore::when(r.newest_time_ms)
    );
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
    if o.copies.len() > 1 {
        println!("  copies read:");
        for c in &o.copies {
            println!(
                "    {}: {}{}",
                c.url,
                c.newest_version
                    .map_or(String::new(), |v| format!("data_version {v}, ")),
                c.state
            );
        }
    }
    if o.older_than_newest {
        println!(
            "  WARNING: this is an OLD state: the backup holds data_version {}. Never start a node \
             on it while its channels are open: its peers could take their funds (penalty close).",
            o.newest_data_version
        );
    }
    if let Some(t) = &r.torn_tail {
        println!("  note: left out {t}: a batch cut by a crash while it was written (never acknowledged to lightningd under fsync durability)");
    }
    if let Some(t) = &r.damaged_tail {
        println!("  WARNING: left out the damaged end of the journal ({t}): the batches stored there are lost from this copy (--accept-damaged-tail)");
    }
    for c in o.copies.iter().filter(|c| c.state != "newest") {
        eprintln!("backup-cli: warning: {}: {}", c.url, c.state);
    }
    Ok(())
}
