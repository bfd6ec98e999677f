//! A snapshot taken from a database file (`backup-cli init --lightning-dir`, import of old
//! backups): copied with SQLite's online backup API (never `.dump`: implicit rowids matter),
//! then stored like any snapshot. The node must be stopped, or the copy is only as new as the
//! moment it was taken.

use std::path::Path;

use rusqlite::{Connection, OpenFlags};

use crate::error::{Error, Result};
use crate::journal::reader;
use crate::manifest::{self, Manifest};
use crate::pack::ChunkIndex;
use crate::replay;
use crate::repo::{Repository, MAINTENANCE_LOCK};
use crate::snapshot::{self, SnapshotInput};

/// Copy `src` (a live or stopped SQLite database) to `dest` through the backup API.
pub fn copy_database(src: &Path, dest: &Path) -> Result<()> {
    let object = src.display().to_string();
    let from = Connection::open_with_flags(src, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(|e| Error::sqlite(&object, e))?;
    let mut to =
        Connection::open(dest).map_err(|e| Error::sqlite(dest.display().to_string(), e))?;
    {
        let b =
            rusqlite::backup::Backup::new(&from, &mut to).map_err(|e| Error::sqlite(&object, e))?;
        b.run_to_completion(1024, std::time::Duration::from_millis(0), None)
            .map_err(|e| Error::sqlite(&object, e))?;
    }
    to.close()
        .map_err(|(_, e)| Error::sqlite(dest.display().to_string(), e))?;
    std::fs::File::open(dest)
        .and_then(|f| f.sync_all())
        .map_err(|e| Error::io("fsync", dest.display().to_string(), e))
}

/// The segment the journal continues in after a snapshot taken now.
pub fn next_segment(repo: &Repository) -> Result<u64> {
    Ok(match reader::segments(repo)?.last() {
        Some(s) if !s.sealed => s.seq,
        Some(s) => s.last + 1,
        None => 0,
    })
}

/// Store the database at `src` as a snapshot. `scratch` is a directory for the temporary copy.
pub fn snapshot_database(
    repo: &Repository,
    src: &Path,
    scratch: &Path,
    holder: &str,
) -> Result<Manifest> {
    let _lock = repo.lock(MAINTENANCE_LOCK, holder)?;
    std::fs::create_dir_all(scratch)
        .map_err(|e| Error::io("create", scratch.display().to_string(), e))?;
    let mut r = [0u8; 6];
    crate::crypto::fill_random(&mut r);
    let tmp = scratch.join(format!("seed-{}.sqlite3", hex::encode(r)));
    let res = (|| {
        copy_database(src, &tmp)?;
        let conn = Connection::open_with_flags(&tmp, OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(|e| Error::sqlite(tmp.display().to_string(), e))?;
        let v = replay::data_version(&conn, &src.display().to_string())?;
        drop(conn);
        let parent = manifest::latest(repo)?;
        let parent_refs = match &parent {
            Some(p) => Some(manifest::resolve(repo, p)?),
            None => None,
        };
        let index = ChunkIndex::load(repo)?;
        snapshot::write_snapshot(
            repo,
            &SnapshotInput {
                path: &tmp,
                data_version: v,
                journal_segment: next_segment(repo)?,
                foreign_keys: true,
                // When the backup stored this state (the database file says nothing of when
                // lightningd wrote it).
                data_time_ms: crate::config::now_ms(),
                next: None,
            },
            parent.as_ref(),
            parent_refs.as_deref(),
            &index,
        )
    })();
    let _ = std::fs::remove_file(&tmp);
    res
}
