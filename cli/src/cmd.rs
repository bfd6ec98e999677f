//! One file per command; each parses its arguments, calls the store, prints.

pub mod check;
pub mod compact;
pub mod demo;
pub mod import;
pub mod info;
pub mod init;
pub mod inspect;
pub mod key;
pub mod prune;
pub mod restore;
pub mod restore_node;
pub mod server;
pub mod snapshots;
pub mod verify;

use anyhow::Result;
use clap::Args;

use crate::{Cli, Command};

/// Just the repository URL.
#[derive(Args, Debug)]
pub struct UrlArg {
    /// Repository URL: file:///abs/path, socket:HOST:PORT, s3://BUCKET/PREFIX
    pub url: String,
}

pub fn run(cli: &Cli) -> Result<()> {
    let g = &cli.global;
    match &cli.command {
        Command::Init(a) => init::run(g, a),
        Command::Restore(a) => restore::run(g, a),
        Command::Check(a) => check::run(g, a),
        Command::Inspect(a) => inspect::run(g, a),
        Command::Snapshots(a) => snapshots::run(g, a),
        Command::Prune(a) => prune::run(g, a),
        Command::Compact(a) => compact::run(g, a),
        Command::Verify(a) => verify::run(g, a),
        Command::Info(a) => info::run(g, a),
        Command::Import(a) => import::run(g, a),
        Command::Key(k) => key::run(g, k),
        Command::Server(a) => server::run(g, a),
        Command::Demo(a) => demo::run(g, a),
    }
}
