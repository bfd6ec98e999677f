//! The long crash campaign: the real `cln-backup` plugin SIGKILLed at random moments under the
//! lightningd emulator, over and over, while it streams the fixture traces (s1, s2, s3), compacts
//! (`backup-compact` calls and a low automatic threshold) and is pruned beside. After each kill:
//! reopen, verify (reading every chunk), restore the newest state and the newest snapshot, and
//! compare with lightningd's database at the last committed batch (or the pending one, if the
//! plugin wrote it before it died). The engine is `plugin/tests/support/crash_campaign.rs`,
//! shared with the bounded run in `cargo test -p cln-backup --test crash`.
//!
//! ```text
//! cargo build --release -p cln-backup
//! cargo run --release -p cln-backup-benches --bin crash-campaign -- [--rounds N] [--seconds S]
//!     [--seed X] [--plugin PATH] [--cli PATH] [--dir DIR] [--quiet]
//! ```
//!
//! Stops after N rounds (one kill each) or S seconds, whichever comes first (default: 200
//! rounds). The seed is printed; `--seed` or `CRASH_SEED` reproduces a run. `--plugin` defaults
//! to `cln-backup` beside this binary. With `--cli target/release/backup-cli` (build it too),
//! half the prunes run `backup-cli prune` as a process, a third of those killed with SIGKILL. Prints `crash campaign: R rounds, K kills, F failures`;
//! exits 1 on a failure (the node's directory is kept and named).

#[path = "../../../plugin/tests/support/crash_campaign.rs"]
mod campaign;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use cln_backup_benches::{arg, campaign_end, flag, testdata};

fn parse_seed(s: &str) -> Result<u64> {
    Ok(match s.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16)?,
        None => s.parse()?,
    })
}

fn options() -> Result<campaign::CampaignOptions> {
    let seconds: Option<f64> = arg("--seconds").map(|s| s.parse()).transpose()?;
    let rounds: u64 = match (arg("--rounds"), seconds) {
        (Some(r), _) => r.parse().context("--rounds")?,
        (None, Some(_)) => u64::MAX,
        (None, None) => 200,
    };
    let seed = match arg("--seed") {
        Some(s) => parse_seed(&s).context("--seed")?,
        None => campaign::seed_from_env(),
    };
    let plugin = match arg("--plugin") {
        Some(p) => PathBuf::from(p),
        None => std::env::current_exe()?.with_file_name("cln-backup"),
    };
    if !plugin.is_file() {
        bail!(
            "no plugin binary at {}: build it first (cargo build --release -p cln-backup) or pass --plugin PATH",
            plugin.display()
        );
    }
    Ok(campaign::CampaignOptions {
        plugin: std::fs::canonicalize(&plugin)?,
        testdata: testdata(""),
        seed,
        rounds,
        max_time: seconds.map(Duration::from_secs_f64),
        kill_window_ms: (5, 600),
        work_dir: arg("--dir").map(PathBuf::from),
        verbose: !flag("--quiet"),
        prune_cli: match arg("--cli") {
            Some(c) => Some(std::fs::canonicalize(&c).with_context(|| format!("--cli {c}"))?),
            None => None,
        },
    })
}

fn main() -> ExitCode {
    let opts = match options() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("crash-campaign: {e:#}");
            return ExitCode::from(2);
        }
    };
    println!(
        "crash campaign: plugin {}, prune {}, seed {:#x} (--seed {:#x} or CRASH_SEED to reproduce)",
        opts.plugin.display(),
        opts.prune_cli
            .as_ref()
            .map_or("in-process".to_string(), |c| format!(
                "in-process and {}",
                c.display()
            )),
        opts.seed,
        opts.seed
    );
    match campaign::run(&opts) {
        Ok(rep) => campaign_end(&rep.failures, &rep.details(), &rep.summary()),
        Err(e) => {
            println!("crash-campaign: {e:#}");
            println!("crash campaign: 0 rounds, 0 kills, 1 failures");
            ExitCode::from(1)
        }
    }
}
