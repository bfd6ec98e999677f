//! `backup-cli`: the operator's tool for cln-backup repositories.
//!
//! Each command lives in `cmd/<name>.rs` and is a thin layer over `store::ops`: parse, find the
//! key, open the repository, call the store, print. Errors are `anyhow` with context saying what
//! to do; [`exit`] maps them to the documented exit codes (cli/README.md).

// The std printing macros, shadowed for the whole crate (textual scope: these definitions come
// before the modules): they go through `out`, which never panics on a closed stdout (out.rs).
#[allow(unused_macros)]
macro_rules! print {
    ($($t:tt)*) => { $crate::out::print_stdout(format_args!($($t)*)) };
}
macro_rules! println {
    () => { $crate::out::print_stdout(format_args!("\n")) };
    ($($t:tt)*) => { $crate::out::print_stdout(format_args!("{}\n", format_args!($($t)*))) };
}
macro_rules! eprint {
    ($($t:tt)*) => { $crate::out::print_stderr(format_args!($($t)*)) };
}
macro_rules! eprintln {
    () => { $crate::out::print_stderr(format_args!("\n")) };
    ($($t:tt)*) => { $crate::out::print_stderr(format_args!("{}\n", format_args!($($t)*))) };
}

mod cmd;
mod exit;
mod hsm;
mod keys;
mod ldb;
mod node;
mod out;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Back up Core Lightning's database: the operator's tool for cln-backup repositories.
#[derive(Parser, Debug)]
#[command(name = "backup-cli", version, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args, Debug, Clone)]
pub struct Global {
    /// Print one JSON object on stdout instead of text (field names in cli/README.md).
    #[arg(long, global = true)]
    pub json: bool,
    /// The repository key file (default: $CLN_BACKUP_KEY_FILE, then backup.key beside the
    /// restore target or in --lightning-dir). At init: where to write the new key.
    #[arg(long, global = true, value_name = "PATH")]
    pub key_file: Option<PathBuf>,
    /// Read the key's 24-word phrase from the terminal (or stdin when it is not a terminal).
    /// The phrase is never taken from the command line.
    #[arg(long, global = true)]
    pub key_phrase: bool,
    /// The node's network directory (e.g. ~/.lightning/bitcoin), where backup.lock and
    /// backup.key live.
    #[arg(long, global = true, value_name = "DIR")]
    pub lightning_dir: Option<PathBuf>,
    /// For socket: repositories, give up reaching the server after this many seconds (each
    /// wait is shown).
    #[arg(long, global = true, value_name = "SECS", default_value_t = 30.0)]
    pub connect_timeout: f64,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create a repository (and, with --lightning-dir, backup.lock, backup.key and a first
    /// snapshot of lightningd.sqlite3).
    Init(cmd::init::InitArgs),
    /// Restore the database from a repository into a new file, or into a node (--lightning-dir).
    Restore(cmd::restore::RestoreArgs),
    /// Compare the backup with a stopped node's database, table by table (running node:
    /// `lightning-cli backup-check`).
    Check(cmd::check::CheckArgs),
    /// What a backup holds: node id, channels and balances, invoices, payments, forwards.
    Inspect(cmd::inspect::InspectArgs),
    /// List the snapshots of a repository.
    Snapshots(cmd::UrlArg),
    /// Remove snapshots by a retention policy, then unreferenced data.
    Prune(cmd::prune::PruneArgs),
    /// Take a snapshot now (offline: the plugin must not be running on this repository).
    Compact(cmd::compact::CompactArgs),
    /// Check every object of a repository (with --read-data: every chunk, and a trial restore).
    Verify(cmd::verify::VerifyArgs),
    /// Sizes, dedup ratio, journal and snapshots of a repository.
    Info(cmd::UrlArg),
    /// Convert a backup file of the old Python plugin (.dbak) into a repository.
    Import(cmd::import::ImportArgs),
    /// Create a node's key (and the line its backup server needs), or show it again.
    #[command(subcommand)]
    Key(cmd::key::KeyCommand),
    /// Serve one repository per node to remote nodes (socket: URLs); `server status`,
    /// `server migrate`.
    Server(cmd::server::ServerArgs),
    /// Run the real plugin under the lightningd emulator against bundled traces, then check.
    Demo(cmd::demo::DemoArgs),
}

fn main() {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            // clap prints help/version to stdout (exit 0) and usage errors to stderr (exit 2).
            let code = if e.use_stderr() { exit::USAGE } else { 0 };
            let _ = e.print();
            std::process::exit(code);
        }
    };
    let json = cli.global.json;
    let mut code = match cmd::run(&cli) {
        Ok(()) => exit::OK,
        Err(e) => exit::report(&e, json),
    };
    if let Some(e) = out::stdout_error() {
        // The work is done, but its report was lost (a closed pipe is not an error: out.rs).
        eprintln!("backup-cli: error: writing the output to stdout: {e}");
        if code == exit::OK {
            code = exit::FAILED;
        }
    }
    std::process::exit(code);
}
