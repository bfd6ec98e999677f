//! `backup-cli prune URL --keep-...`: show the plan, then apply it (unless --dry-run).

use anyhow::{Context, Result};
use clap::Args;
use serde::Serialize;
use store::ops::prune::{self, PrunePlan, PruneReport, Retention};

use crate::exit::usage;
use crate::{keys, out, Global};

#[derive(Args, Debug)]
pub struct PruneArgs {
    /// Repository URL
    pub url: String,
    /// Keep the N newest snapshots.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub keep_last: u32,
    /// Keep the newest snapshot of each of the last N hours that have one.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub keep_hourly: u32,
    /// ... of each of the last N days.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub keep_daily: u32,
    /// ... of each of the last N weeks.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub keep_weekly: u32,
    /// ... of each of the last N months.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub keep_monthly: u32,
    /// Keep every data_version of this span restorable (e.g. 30d, 12h, 2w): every snapshot
    /// newer than now minus it, and the newest one at or before that.
    #[arg(long, value_name = "SPAN")]
    pub keep_within: Option<String>,
    /// Show the plan only.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Serialize)]
struct PruneOutput {
    url: String,
    dry_run: bool,
    plan: PrunePlan,
    report: Option<PruneReport>,
}

pub fn run(g: &Global, a: &PruneArgs) -> Result<()> {
    let url = keys::parse_url(&a.url)?;
    let retention = Retention {
        keep_last: a.keep_last,
        keep_hourly: a.keep_hourly,
        keep_daily: a.keep_daily,
        keep_weekly: a.keep_weekly,
        keep_monthly: a.keep_monthly,
        keep_within: match &a.keep_within {
            Some(s) => {
                prune::parse_duration(s).map_err(|e| usage(format!("--keep-within: {e}")))?
            }
            None => 0,
        },
    };
    if retention.is_empty() {
        return Err(usage(
            "give a retention policy: at least one of --keep-last, --keep-hourly, --keep-daily, \
             --keep-weekly, --keep-monthly above 0, or --keep-within (the newest snapshot is \
             always kept)",
        ));
    }
    let repo = keys::open(g, &url, &[])?;
    let plan =
        prune::plan(&repo, &retention).with_context(|| format!("planning prune of {url}"))?;
    if !g.json {
        for k in &plan.keep {
            println!(
                "keep    {}  data_version {:>8}  {}  ({})",
                k.snapshot.id,
                k.snapshot.data_version,
                out::time(k.snapshot.time),
                k.reasons.join(", ")
            );
        }
        for s in &plan.remove {
            println!(
                "remove  {}  data_version {:>8}  {}",
                s.id,
                s.data_version,
                out::time(s.time)
            );
        }
        println!(
            "{} kept, {} to remove, {} journal segments to remove",
            plan.keep.len(),
            plan.remove.len(),
            plan.remove_segments.len()
        );
    }
    let report = if a.dry_run {
        None
    } else {
        let _p = out::Progress::start(g.json, "pruning");
        Some(
            prune::apply(&repo, &plan, &store::repo::holder("backup-cli prune")).with_context(
                || format!("pruning {url} (a crash here loses nothing kept: run prune again)"),
            )?,
        )
    };
    if g.json {
        return out::json(&PruneOutput {
            url: url.to_string(),
            dry_run: a.dry_run,
            plan,
            report,
        });
    }
    match report {
        None => println!("Dry run: nothing was changed."),
        Some(r) => {
            println!(
                "Removed {} snapshots, {} packs, {} journal segments; {} -> {} ({} freed).",
                r.removed_snapshots,
                r.deleted_packs,
                r.deleted_segments,
                out::bytes(r.bytes_before),
                out::bytes(r.bytes_after),
                out::bytes(r.bytes_before.saturating_sub(r.bytes_after))
            );
            println!(
                "Packs: {} rewritten for dead space, {} small ones merged, {} written ({}); {} packs \
                 ({}, {} of it dead) and {} index objects left.",
                r.repacked_packs,
                r.merged_packs,
                r.written_packs,
                out::bytes(r.written_bytes),
                r.packs,
                out::bytes(r.pack_bytes),
                out::bytes(r.dead_bytes),
                r.index_objects
            );
        }
    }
    Ok(())
}
