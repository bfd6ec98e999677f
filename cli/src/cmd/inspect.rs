//! `backup-cli inspect URL [--snapshot ID | --to-version N]`: what a backup holds, before betting
//! a node on it: the node id, its channels (peer, state, short channel id, capacity, our
//! balance), counts of invoices, payments and forwards, the data_version and when it was
//! written. Restores into a temporary file and reads it with SQL against lightningd's schema
//! ([`crate::ldb`]).

use anyhow::{Context, Result};
use clap::Args;
use serde::Serialize;
use store::ops::restore::restore;

use super::restore::newest_version;
use crate::ldb::{self, Contents};
use crate::node::DB_FILE_NAME;
use crate::{keys, out, Global};

#[derive(Args, Debug)]
pub struct InspectArgs {
    /// Repository URL
    pub url: String,
    /// Look at exactly this snapshot (id or unique prefix).
    #[arg(long, value_name = "ID", conflicts_with = "to_version")]
    pub snapshot: Option<String>,
    /// Look at the state at this data_version.
    #[arg(long, value_name = "N")]
    pub to_version: Option<u32>,
}

#[derive(Serialize)]
struct InspectOutput {
    url: String,
    /// The node id recorded in the repository (beside the database's own).
    repository_node_id: Option<String>,
    #[serde(flatten)]
    contents: Contents,
    snapshot: Option<String>,
    /// The newest data_version the backup holds, and whether this state is older.
    newest_data_version: u32,
    older_than_newest: bool,
    /// When the state shown was written (unix seconds), where the backup knows it (not for a
    /// format-1 record or a snapshot taken from a database file).
    written: Option<u64>,
}

pub fn run(g: &Global, a: &InspectArgs) -> Result<()> {
    let url = keys::parse_url(&a.url)?;
    let repo = keys::open(g, &url, &[])?;
    let target = super::restore::target_of(&a.snapshot, a.to_version);
    let scratch = tempfile::Builder::new()
        .prefix("cln-backup-inspect")
        .tempdir()
        .context("creating a temporary directory")?;
    let db = scratch.path().join(DB_FILE_NAME);
    let report = {
        let _p = out::Progress::start(g.json, "restoring");
        restore(&repo, &db, &target).with_context(|| format!("restoring {url}"))?
    };
    let contents = ldb::read(&db)?;
    let newest = newest_version(&report);
    // Journal records carry their time, manifests the time of their data_version; 0 is unknown
    // (a format-1 record, a snapshot of a database file).
    let written = (report.restored_time_ms > 0).then_some(report.restored_time_ms / 1000);
    let o = InspectOutput {
        url: url.to_string(),
        repository_node_id: store::node::read_node_id(&repo)?.map(|n| n.node_id),
        older_than_newest: report.data_version < newest,
        newest_data_version: newest,
        snapshot: report.snapshot.clone(),
        written,
        contents,
    };
    if g.json {
        return out::json(&o);
    }
    print_human(&o);
    Ok(())
}

fn msat(v: Option<i64>) -> String {
    match v {
        Some(m) => format!("{}.{:03} sat", m / 1000, (m % 1000).abs()),
        None => "unknown".into(),
    }
}

fn count(v: Option<u64>) -> String {
    v.map_or("unknown".into(), |n| n.to_string())
}

fn print_human(o: &InspectOutput) {
    let c = &o.contents;
    println!("Backup {}", o.url);
    println!(
        "  data_version  {}{}",
        c.data_version,
        if o.older_than_newest {
            format!(
                " (OLDER than the newest the backup holds, {})",
                o.newest_data_version
            )
        } else {
            " (the newest the backup holds)".into()
        }
    );
    println!(
        "  written       {}",
        o.written
            .map(out::time)
            .unwrap_or_else(|| "unknown (only a snapshot's state has a time in format 1)".into())
    );
    println!(
        "  node          {}{}",
        c.node_id.as_deref().unwrap_or("unknown"),
        match (&o.repository_node_id, &c.node_id) {
            (Some(r), Some(d)) if r == d => " (the repository records the same)".to_string(),
            (Some(r), _) => format!(" (the repository records {r}!)"),
            (None, _) => String::new(),
        }
    );
    println!(
        "  schema        version {}{}",
        c.schema_version.map_or("unknown".into(), |v| v.to_string()),
        if c.schema_known {
            ""
        } else {
            " (not one backup-cli knows)"
        }
    );
    println!("  channels      {}", c.channels.len());
    for ch in &c.channels {
        println!(
            "    {:>3}  {:<26} {:<14} capacity {:>14}  ours {:>18}  peer {}",
            ch.id,
            ch.state_name.as_deref().unwrap_or("unknown"),
            ch.short_channel_id.as_deref().unwrap_or("-"),
            ch.capacity_sat
                .map_or("unknown".into(), |s| format!("{s} sat")),
            msat(ch.our_balance_msat),
            ch.peer.as_deref().unwrap_or("unknown")
        );
    }
    let n = &c.counts;
    println!(
        "  invoices      {} ({} paid)",
        count(n.invoices),
        count(n.invoices_paid)
    );
    println!(
        "  payments      {} ({} complete)",
        count(n.payments),
        count(n.payments_complete)
    );
    println!("  forwards      {}", count(n.forwards));
    for note in &c.notes {
        println!("  note: {note}");
    }
}
