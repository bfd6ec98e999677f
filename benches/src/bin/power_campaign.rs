//! The long power-loss campaign: the store's write paths (init, `JournalWriter::append` as the
//! plugin calls it, compactions beside the appends, prunes) over a directory whose power is cut
//! at random points below the directory backend, case after case; after each cut the disk keeps
//! only what was synced (or a random part of the rest, torn), and the repository must verify,
//! restore every acknowledged batch exactly (contents compared with a replay of the trace) and
//! go on. The engine is `plugin/tests/support/power_campaign.rs`, shared with the short run in
//! `cargo test -p cln-backup --test crash -- power_loss_campaign`.
//!
//! ```text
//! cargo run --release -p cln-backup-benches --bin power-campaign -- [--cases N] [--seconds S]
//!     [--seed X] [--dir DIR] [--quiet]
//! ```
//!
//! Stops after N cases or S seconds, whichever comes first (default: 1000 cases). The seed is
//! printed; `--seed` or `POWER_SEED` repeats the choices (threads beside the compaction may
//! still move the cut a little). `--dir` is where cases run (default: /dev/shm, as the
//! simulation, not the medium, decides what survives). Prints `power-loss campaign: C cases, F
//! failures`; exits 1 on a failure (the case's directory is kept and named).

#[allow(dead_code)]
#[path = "../../../plugin/tests/support/crash_campaign.rs"]
mod campaign;
#[path = "../../../plugin/tests/support/power_campaign.rs"]
mod power;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use cln_backup_benches::{arg, campaign_end, flag, testdata};

fn options() -> Result<power::PowerOptions> {
    let seconds: Option<f64> = arg("--seconds").map(|s| s.parse()).transpose()?;
    let cases: u64 = match (arg("--cases"), seconds) {
        (Some(r), _) => r.parse().context("--cases")?,
        (None, Some(_)) => u64::MAX,
        (None, None) => 1000,
    };
    let seed = match arg("--seed") {
        Some(s) => match s.strip_prefix("0x") {
            Some(h) => u64::from_str_radix(h, 16),
            None => s.parse(),
        }
        .context("--seed")?,
        None => campaign::seed_from("POWER_SEED"),
    };
    let work_dir = match arg("--dir") {
        Some(d) => PathBuf::from(d),
        None if std::path::Path::new("/dev/shm").is_dir() => PathBuf::from("/dev/shm"),
        None => std::env::temp_dir(),
    };
    Ok(power::PowerOptions {
        trace: Arc::new(campaign::load_traces(&testdata(""))?),
        seed,
        cases,
        max_time: seconds.map(Duration::from_secs_f64),
        work_dir,
        verbose: !flag("--quiet"),
    })
}

fn main() -> ExitCode {
    let opts = match options() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("power-campaign: {e:#}");
            return ExitCode::from(2);
        }
    };
    println!(
        "power-loss campaign: seed {:#x} (--seed {:#x} or POWER_SEED to repeat), cases in {}",
        opts.seed,
        opts.seed,
        opts.work_dir.display()
    );
    match power::run(&opts) {
        Ok(rep) => campaign_end(&rep.failures, &rep.details(), &rep.summary()),
        Err(e) => {
            println!("power-campaign: {e:#}");
            println!("power-loss campaign: 0 cases, 1 failures");
            ExitCode::from(1)
        }
    }
}
