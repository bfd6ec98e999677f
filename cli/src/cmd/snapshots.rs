//! `backup-cli snapshots URL`: the list, oldest first.

use anyhow::{Context, Result};
use serde::Serialize;
use store::manifest::SnapshotInfo;

use super::UrlArg;
use crate::{keys, out, Global};

#[derive(Serialize)]
struct SnapshotsOutput {
    url: String,
    snapshots: Vec<SnapshotInfo>,
}

pub fn run(g: &Global, a: &UrlArg) -> Result<()> {
    let url = keys::parse_url(&a.url)?;
    let repo = keys::open(g, &url, &[])?;
    let snapshots = store::ops::snapshots::list(&repo)
        .with_context(|| format!("listing snapshots of {url}"))?;
    let o = SnapshotsOutput {
        url: url.to_string(),
        snapshots,
    };
    if g.json {
        return out::json(&o);
    }
    if o.snapshots.is_empty() {
        println!("No snapshots in {url} (the journal alone restores; `compact` makes one).");
        return Ok(());
    }
    println!(
        "{:<16}  {:<23}  {:>12}  {:>10}  {:>10}",
        "ID", "TIME", "DATA_VERSION", "DB SIZE", "STORED"
    );
    for s in &o.snapshots {
        println!(
            "{:<16}  {:<23}  {:>12}  {:>10}  {:>10}",
            s.id,
            out::time(s.time),
            s.data_version,
            out::bytes(s.db_size),
            out::bytes(s.stored_bytes)
        );
    }
    println!("{} snapshots", o.snapshots.len());
    Ok(())
}
