//! A year of a busy node, simulated (issue 18): storage, object count, prune, restart and restore
//! over simulated time, through the real plugin under the lightningd emulator. The engine is
//! `plugin/tests/support/year.rs` (its module doc says what the workload is and what is measured),
//! shared with the bounded run in `cargo test -p cln-backup --test year`.
//!
//! ```text
//! cargo build --release -p cln-backup -p backup-cli -p cln-backup-benches --bin year
//! target/release/year [--batches 3000000] [--days 365] [--sessions 24] [--plaintext]
//!     [--s3] [--compact-bytes N] [--out DIR] [--dir DIR] [--plugin PATH] [--cli PATH]
//! python3 benches/python/year_plot.py DIR/year-dir.json [DIR/year-s3.json] -o benches/year.png
//! ```
//!
//! `--s3` makes the primary an S3 prefix under `CLN_BACKUP_S3_URL` (`.ci/s3-server.sh start && .
//! target/ci-s3.env`); there the compaction threshold defaults to the 8 MiB README.md advises for
//! an S3 primary, elsewhere to the plugin's default (64 MiB). Retention is the plugin's default.
//! Writes `year-dir.json` or `year-s3.json` (one object per measurement) and the same table as a
//! Markdown file in `--out` (default `target/bench-data`), and prints each point as it comes.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use cln_backup_benches::{arg, bench_data, flag, testdata};
use serde_json::{json, Value};

#[path = "../../../plugin/tests/support/year.rs"]
mod year;

fn binary(flag_name: &str, name: &str) -> Result<PathBuf> {
    let p = match arg(flag_name) {
        Some(p) => PathBuf::from(p),
        None => std::env::current_exe()?.with_file_name(name),
    };
    if !p.is_file() {
        bail!(
            "no {name} at {}: cargo build --release -p cln-backup -p backup-cli, or {flag_name} PATH",
            p.display()
        );
    }
    Ok(std::fs::canonicalize(&p)?)
}

fn main() -> Result<()> {
    let s3 = flag("--s3");
    let url = if s3 {
        let base = std::env::var("CLN_BACKUP_S3_URL").context(
            "--s3: CLN_BACKUP_S3_URL is not set (.ci/s3-server.sh start && . target/ci-s3.env)",
        )?;
        let (head, query) = base.split_once('?').unwrap_or((&base, ""));
        let prefix = format!(
            "{}/year-{}",
            head.trim_end_matches('/'),
            store::ids::SnapshotId::random()
        );
        Some(if query.is_empty() {
            prefix
        } else {
            format!("{prefix}?{query}")
        })
    } else {
        None
    };
    let compact_bytes: Option<u64> = match arg("--compact-bytes") {
        Some(n) => Some(n.parse().context("--compact-bytes")?),
        None => s3.then_some(8 << 20),
    };
    let out = arg("--out").map_or_else(bench_data, PathBuf::from);
    std::fs::create_dir_all(&out)?;
    let work = tempfile::tempdir_in(arg("--dir").map_or_else(bench_data, PathBuf::from))?;
    let opts = year::YearOptions {
        plugin: binary("--plugin", "cln-backup")?,
        cli: Some(binary("--cli", "backup-cli")?),
        traces: [1, 2, 3].map(|s| testdata(&format!("node-d-trace-s{s}.jsonl.zst"))),
        dir: work.path().to_path_buf(),
        url,
        batches: arg("--batches").map_or(Ok(3_000_000), |s| s.parse())?,
        days: arg("--days").map_or(Ok(365.0), |s| s.parse())?,
        sessions: arg("--sessions").map_or(Ok(24), |s| s.parse())?,
        init_options: compact_bytes
            .map(|n| vec![("backup-compact-journal-bytes".to_string(), json!(n))])
            .unwrap_or_default(),
        encrypted: !flag("--plaintext"),
        verbose: true,
    };
    let what = if s3 { "s3" } else { "dir" };
    let work_shape = year::Workload::load(&opts.traces)?;
    println!(
        "workload: node D's {} batches, then cycles of its {} steady batches",
        work_shape.base_len(),
        work_shape.template_len()
    );
    drop(work_shape);
    println!(
        "year ({what}): {} batches over {} days, {} sessions after the node's own, compaction every {} of journal, default retention, {}",
        opts.batches,
        opts.days,
        opts.sessions,
        compact_bytes.map_or("64 MiB (default)".to_string(), |n| format!("{n} bytes")),
        if opts.encrypted { "encrypted" } else { "plaintext" }
    );
    let started = std::time::Instant::now();
    let points = year::run(&opts, |p| {
        println!("{}", p.json());
        let _ = std::io::stdout().flush();
    })?;
    let all: Vec<Value> = points.iter().map(year::Point::json).collect();
    let json_path = out.join(format!("year-{what}.json"));
    std::fs::write(
        &json_path,
        serde_json::to_string_pretty(&json!({
            "backend": what,
            "batches": opts.batches,
            "days": opts.days,
            "sessions": opts.sessions,
            "compact_bytes": compact_bytes,
            "encrypted": opts.encrypted,
            "seconds": started.elapsed().as_secs(),
            "points": all,
        }))?,
    )?;
    let table = year::table(&points);
    std::fs::write(out.join(format!("year-{what}.md")), &table)?;
    println!("\n{table}");
    println!(
        "{} s; points in {}",
        started.elapsed().as_secs(),
        json_path.display()
    );
    Ok(())
}
