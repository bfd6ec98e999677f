//! `backup.lock`, in the node's network directory: where the node's backup is, and which
//! repository the node expects to find there.
//!
//! ```json
//! {"backend_url": "file:///mnt/backup/cln",
//!  "destinations": [{"url": "s3://bucket/cln?region=...", "mode": "async"}],
//!  "repository": {"id": "<32 hex>", "key_id": "<16 hex>", "encrypted": true, "format": 2}}
//! ```
//! `backend_url` alone is the old Python plugin's format and is still read. `repository` pins the
//! repository: the plugin and every command refuse another one at that URL (a copied or mistyped
//! `backup.lock`, a swapped or downgraded repository); it is written by `backup-cli init`, by a
//! restore into a node, and by the plugin the first time it opens a repository not yet pinned.
//! Unknown fields are refused with their name: a typo (`"destination"`) must not silently drop
//! a destination.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::repo::Identity;

pub const LOCK_FILE: &str = "backup.lock";

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockFile {
    pub backend_url: String,
    /// More destinations beside the primary `backend_url`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub destinations: Vec<DestinationSpec>,
    /// The repository the node expects at `backend_url` (and every destination).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository: Option<Identity>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DestinationSpec {
    pub url: String,
    /// `"sync"` (the default) or `"async"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
}

/// The path of `backup.lock` in `dir`.
pub fn path(dir: &Path) -> PathBuf {
    dir.join(LOCK_FILE)
}

/// Read `backup.lock` in `dir`; `Ok(None)` when there is none.
pub fn read(dir: &Path) -> Result<Option<LockFile>> {
    let p = path(dir);
    let text = match crate::crypto::read_small_file(&p, 1 << 20, "backup.lock") {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io("read", p.display().to_string(), e)),
    };
    serde_json::from_str(&text).map(Some).map_err(|e| {
        Error::Invalid(format!(
            "{} is not a valid backup.lock ({e}); it holds {{\"backend_url\": URL}}, optionally \"destinations\" and \"repository\"",
            p.display()
        ))
    })
}

/// Write `backup.lock` in `dir` atomically (temp file, fsync, rename, fsync the directory),
/// mode 0644.
pub fn write(dir: &Path, lock: &LockFile) -> Result<PathBuf> {
    let p = path(dir);
    let mut body = serde_json::to_vec_pretty(lock)
        .map_err(|e| Error::Invalid(format!("encoding backup.lock: {e}")))?;
    body.push(b'\n');
    write_atomic(&p, &body, 0o644)?;
    Ok(p)
}

/// Publish `body` at `p`: temp file beside it, fsync, rename, fsync the directory.
pub fn write_atomic(p: &Path, body: &[u8], mode: u32) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let dir = p
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        p.file_name()
            .map(|f| f.to_string_lossy())
            .unwrap_or_default(),
        std::process::id()
    ));
    let res = (|| -> std::io::Result<()> {
        let _ = std::fs::remove_file(&tmp);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(body)?;
        f.sync_all()?;
        std::fs::rename(&tmp, p)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res.map_err(|e| Error::io("write", p.display().to_string(), e))
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn old_format_reads_and_typos_are_refused_by_name() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(path(d.path()), r#"{"backend_url": "file:///x"}"#).unwrap();
        let l = read(d.path()).unwrap().unwrap();
        assert_eq!(l.backend_url, "file:///x");
        assert!(l.repository.is_none());
        std::fs::write(
            path(d.path()),
            r#"{"backend_url": "file:///x", "destination": [{"url": "s3://b/p"}]}"#,
        )
        .unwrap();
        let e = read(d.path()).unwrap_err().to_string();
        assert!(e.contains("unknown field `destination`"), "{e}");
        let pinned = LockFile {
            repository: Some(Identity {
                id: "00".repeat(16),
                key_id: Some("11".repeat(8)),
                encrypted: true,
                format: 2,
            }),
            ..l
        };
        write(d.path(), &pinned).unwrap();
        assert_eq!(read(d.path()).unwrap().unwrap(), pinned);
    }
}
