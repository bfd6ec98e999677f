//! `backup-cli demo`: the real plugin under the lightningd emulator, then checks.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use crate::Global;

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Work here instead of a fresh temporary directory (kept afterwards).
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// The plugin binary (default: cln-backup next to backup-cli).
    #[arg(long, value_name = "PATH")]
    pub plugin: Option<PathBuf>,
}

pub fn run(_g: &Global, _a: &DemoArgs) -> Result<()> {
    anyhow::bail!("demo is not built yet")
}
