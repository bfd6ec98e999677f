//! `backup-cli restore URL DEST`: the newest state, a snapshot, or a data_version, into a new file.
//!
//! Anchors: every copy it can name (URL, `--also URL`, and the destinations of the node's
//! `backup.lock` with `--lightning-dir`) is read, the newest authentic state wins, and a copy
//! that is behind, disagrees or is damaged is named. `--expect-version` is the operator's own
//! anchor. The newest data_version found and when it was stored are always printed.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;
use serde::Serialize;
use store::ops::restore::{restore_with, Newest, RestoreOptions, RestoreReport, RestoreTarget};
use store::Repository;

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
    #[arg(long, value_name = "ID", conflicts_with = "to_version")]
    pub snapshot: Option<String>,
    /// Restore the state at this data_version.
    #[arg(long, value_name = "N")]
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
    /// The restored state is older than the newest the backup holds.
    older_than_newest: bool,
    /// Where it was restored from, when copies were compared.
    restored_from: String,
    copies: Vec<Copy>,
    duration_ms: u64,
}

/// The copies to read: `url` first, then `--also`, then the destinations of the node's
/// backup.lock when `url` is one of its destinations.
fn copy_urls(g: &Global, a: &RestoreArgs, url: &store::BackupUrl) -> Result<Vec<store::BackupUrl>> {
    let mut urls = vec![url.clone()];
    for u in &a.also {
        urls.push(keys::parse_url(u)?);
    }
    if let Some(d) = &g.lightning_dir {
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

/// Read each copy's newest state; return the one to restore from and what each holds.
fn survey(
    g: &Global,
    urls: &[store::BackupUrl],
    beside: &[PathBuf],
    accept_damaged_tail: bool,
) -> Result<(Repository, Vec<Copy>)> {
    let first = keys::open(g, &urls[0], beside)?;
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
    let urls = copy_urls(g, a, &url)?;
    let (repo, copies) = survey(
        g,
        &urls,
        std::slice::from_ref(&parent),
        a.accept_damaged_tail,
    )?;
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
    let o = RestoreOutput {
        older_than_newest: report.data_version < report.newest_version,
        restored_from: repo.url(),
        copies,
        report,
        duration_ms: started.elapsed().as_millis() as u64,
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
    if let Some(t) = &r.torn_tail {
        println!("  note: left out {t}: a batch cut by a crash while it was written (never acknowledged to lightningd under fsync durability)");
    }
    if let Some(t) = &r.damaged_tail {
        println!("  WARNING: left out the damaged end of the journal ({t}): the batches stored there are lost from this copy (--accept-damaged-tail)");
    }
    if o.older_than_newest {
        println!(
            "  WARNING: this is an OLDER state than the newest the backup holds (data_version {}). A node started on it with open channels is punished by its peers (penalty close): use it only to inspect.",
            r.newest_version
        );
    }
    for c in o.copies.iter().filter(|c| c.state != "newest") {
        eprintln!("backup-cli: warning: {}: {}", c.url, c.state);
    }
    Ok(())
}
