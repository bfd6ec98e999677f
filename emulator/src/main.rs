//! `ld-emulator`: run a plugin binary as lightningd v26.06.6 would, over recorded traces.
//!
//! Each `--trace` is one lightningd session (the first a fresh node, the next ones restarts):
//! getmanifest, db_write calls before and after init, the `--rpc` calls, then shutdown.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use emulator::{load_trace, run_trace_session, SessionOptions};
use serde_json::Value;

#[derive(Parser, Debug)]
#[command(
    name = "ld-emulator",
    about = "Drive a lightningd plugin as lightningd v26.06.6 does"
)]
struct Args {
    /// The plugin binary.
    #[arg(long)]
    plugin: PathBuf,
    /// The network directory (the plugin's working directory), e.g. <lightning-dir>/regtest.
    #[arg(long)]
    dir: PathBuf,
    /// A trace (one db_write params object per line, `.zst` allowed); one session each.
    #[arg(long = "trace", required = true)]
    traces: Vec<PathBuf>,
    /// An RPC call after each session's hooks: METHOD or METHOD=JSON-PARAMS.
    #[arg(long = "rpc")]
    rpcs: Vec<String>,
    /// A plugin option sent in init: NAME=VALUE (VALUE as JSON if it parses, else a string).
    #[arg(long = "option")]
    options: Vec<String>,
    /// The first trace is a restart (3 calls before init), not a fresh node (9).
    #[arg(long)]
    restart: bool,
    /// Seconds to wait for any one answer.
    #[arg(long, default_value_t = 300)]
    timeout: u64,
}

fn split_json(s: &str, default: Value) -> (String, Value) {
    match s.split_once('=') {
        Some((k, v)) => (
            k.to_string(),
            serde_json::from_str(v).unwrap_or_else(|_| Value::String(v.to_string())),
        ),
        None => (s.to_string(), default),
    }
}

fn pct(v: &[Duration], p: f64) -> f64 {
    let mut us: Vec<f64> = v.iter().map(|d| d.as_secs_f64() * 1e6).collect();
    us.sort_by(f64::total_cmp);
    let i = ((us.len() as f64 - 1.0) * p).round() as usize;
    us.get(i).copied().unwrap_or(0.0)
}

fn run(a: &Args) -> Result<bool> {
    let mut all_ok = true;
    for (n, trace) in a.traces.iter().enumerate() {
        let batches = load_trace(trace)?;
        let opts = SessionOptions {
            fresh: n == 0 && !a.restart,
            init_options: a
                .options
                .iter()
                .map(|o| split_json(o, Value::Bool(true)))
                .collect(),
            rpc_after: a
                .rpcs
                .iter()
                .map(|r| split_json(r, Value::Object(Default::default())))
                .collect(),
            timeout: Duration::from_secs(a.timeout),
            env: Vec::new(),
        };
        println!(
            "== session {} ({}): {} db_write calls, {} before init",
            n + 1,
            trace.display(),
            batches.len(),
            opts.pre_init().min(batches.len())
        );
        let r = run_trace_session(&a.plugin, &a.dir, &batches, &opts)
            .with_context(|| format!("session {}", n + 1))?;
        for l in &r.logs {
            println!("  log {}: {}", l.level, l.message);
        }
        println!("  answered continue: {} of {} sent", r.continued, r.sent);
        if !r.latencies.is_empty() {
            println!(
                "  hook round trip: p50 {:.0} µs, p99 {:.0} µs, max {:.0} µs",
                pct(&r.latencies, 0.5),
                pct(&r.latencies, 0.99),
                pct(&r.latencies, 1.0)
            );
        }
        for (m, reply) in &r.rpc_replies {
            println!(
                "  rpc {m}: {}",
                serde_json::to_string_pretty(reply)?.replace('\n', "\n  ")
            );
        }
        if !r.stderr.is_empty() {
            println!(
                "  plugin stderr: {}",
                r.stderr.trim_end().replace('\n', "\n    ")
            );
        }
        match &r.exit {
            Some(st) => println!("  plugin exited: {st}"),
            None => println!("  plugin killed"),
        }
        if let Some(s) = &r.stop {
            println!(
                "  STOP at call {} (data_version {}): {}; lightningd would stop here without committing",
                s.index + 1,
                s.data_version,
                s.reply
            );
            all_ok = false;
            break;
        }
    }
    Ok(all_ok)
}

fn main() -> ExitCode {
    let a = Args::parse();
    match run(&a) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("ld-emulator: {e:#}");
            ExitCode::from(2)
        }
    }
}
