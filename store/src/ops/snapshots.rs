//! Listing snapshots.

use crate::error::Result;
use crate::manifest::{self, SnapshotInfo};
use crate::repo::Repository;

/// Every snapshot, oldest first.
pub fn list(repo: &Repository) -> Result<Vec<SnapshotInfo>> {
    Ok(manifest::list(repo)?.iter().map(|m| m.info()).collect())
}
