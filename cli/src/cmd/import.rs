//! `backup-cli import URL OLD.dbak`: a backup of the old Python plugin into a repository.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use crate::Global;

#[derive(Args, Debug)]
pub struct ImportArgs {
    /// Repository URL (created if absent)
    pub url: String,
    /// The old plugin's backup file
    pub file: PathBuf,
}

pub fn run(_g: &Global, _a: &ImportArgs) -> Result<()> {
    anyhow::bail!("import is not built yet")
}
