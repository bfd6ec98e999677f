//! `backup-cli info URL`: sizes, dedup ratio, journal, snapshots, encryption.

use anyhow::{Context, Result};
use serde::Serialize;
use store::ops::stats::Stats;

use super::UrlArg;
use crate::{keys, out, Global};

#[derive(Serialize)]
struct InfoOutput {
    url: String,
    repo_id: String,
    encrypted: bool,
    key_id: Option<String>,
    created: u64,
    #[serde(flatten)]
    stats: Stats,
}

pub fn run(g: &Global, a: &UrlArg) -> Result<()> {
    let url = keys::parse_url(&a.url)?;
    let repo = keys::open(g, &url, &[])?;
    let stats = store::ops::stats::stats(&repo).with_context(|| format!("reading {url}"))?;
    let o = InfoOutput {
        url: url.to_string(),
        repo_id: repo.repo_id().to_string(),
        encrypted: repo.is_encrypted(),
        key_id: repo
            .is_encrypted()
            .then(|| repo.crypto().key_id().to_string()),
        created: repo.config().body.created,
        stats,
    };
    if g.json {
        return out::json(&o);
    }
    let s = &o.stats;
    println!("Repository   {}", o.url);
    println!("  id           {}", o.repo_id);
    println!("  created      {}", out::time(o.created));
    println!(
        "  encryption   {}{}",
        s.encryption,
        o.key_id
            .as_ref()
            .map(|k| format!(" (key id {k})"))
            .unwrap_or_default()
    );
    println!("  total size   {}", out::bytes(s.backup_size));
    println!(
        "  snapshots    {} ({} of databases in {} packs, {}; dedup {})",
        s.snapshot_count,
        out::bytes(s.logical_bytes),
        s.pack_count,
        out::bytes(s.pack_bytes),
        out::ratio(s.dedup_ratio)
    );
    if let Some(l) = &s.last_snapshot {
        println!(
            "  last         {} at data_version {}, {}",
            l.id,
            l.data_version,
            out::time(l.time)
        );
    }
    println!(
        "  journal      {} records in {} segments, {} ({} since the last snapshot)",
        s.journal_records,
        s.journal_segments,
        out::bytes(s.journal_bytes),
        out::bytes(s.journal_bytes_since_snapshot)
    );
    match s.last_version {
        Some(v) => println!("  newest       data_version {v}"),
        None => println!("  newest       empty (nothing stored yet)"),
    }
    match &s.oldest_restorable {
        Some(r) => println!(
            "  restorable   back to data_version {}{}",
            r.data_version,
            match r.time {
                Some(t) => format!(" (the oldest snapshot, {})", out::time(t)),
                None => " (the journal from the node's first batch)".into(),
            }
        ),
        None => println!("  restorable   nothing yet"),
    }
    Ok(())
}
