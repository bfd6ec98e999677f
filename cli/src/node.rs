//! The node's network directory: is lightningd running, backup.lock, the database.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

pub const LOCK_FILE_NAME: &str = "backup.lock";
pub const DB_FILE_NAME: &str = "lightningd.sqlite3";

/// The contents of `backup.lock`: `backend_url` as the old plugin wrote and read it, and the
/// plugin's further destinations. The same fields as the plugin's `LockFile`
/// (plugin/src/backup.rs); an unknown field is refused with its name, as there.
#[derive(Serialize, Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct BackupLock {
    pub backend_url: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub destinations: Vec<LockDestination>,
}

/// One more destination in `backup.lock`: `{"url": URL, "mode": "sync"|"async"}`.
#[derive(Serialize, Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct LockDestination {
    pub url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
}

/// A running lightningd: its pid file and pid.
pub struct Running {
    pub pid_file: PathBuf,
    pub pid: i32,
}

/// Look for `lightningd-<network>.pid` in `dir` and its parent, with a live pid.
pub fn running_node(dir: &Path) -> Option<Running> {
    let mut dirs = vec![dir.to_path_buf()];
    if let Some(p) = dir.parent() {
        dirs.push(p.to_path_buf());
    }
    for d in dirs {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !(name.starts_with("lightningd-") && name.ends_with(".pid")) {
                continue;
            }
            let Ok(text) = std::fs::read_to_string(e.path()) else {
                continue;
            };
            let Ok(pid) = text.trim().parse::<i32>() else {
                continue;
            };
            if pid_alive(pid) {
                return Some(Running {
                    pid_file: e.path(),
                    pid,
                });
            }
        }
    }
    None
}

/// `kill(pid, 0)`: the process exists (EPERM means it exists but is not ours).
pub fn pid_alive(pid: i32) -> bool {
    let Some(p) = rustix::process::Pid::from_raw(pid) else {
        return false;
    };
    match rustix::process::test_kill_process(p) {
        Ok(()) => true,
        Err(e) => e == rustix::io::Errno::PERM,
    }
}

pub fn read_lock(dir: &Path) -> Result<Option<BackupLock>> {
    let p = dir.join(LOCK_FILE_NAME);
    match store::crypto::read_small_file(&p, 1 << 20, "backup.lock") {
        Ok(b) => Ok(Some(serde_json::from_str(&b).with_context(|| {
            format!(
                "{} is not valid: JSON {{\"backend_url\": URL, \"destinations\": [...]}}",
                p.display()
            )
        })?)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", p.display())),
    }
}

/// Write `backup.lock` atomically (temp file, fsync, rename, fsync the directory).
pub fn write_lock(dir: &Path, url: &str) -> Result<PathBuf> {
    let p = dir.join(LOCK_FILE_NAME);
    let body = serde_json::to_vec(&BackupLock {
        backend_url: url.to_string(),
        destinations: Vec::new(),
    })?;
    write_atomic(&p, &body, 0o644)?;
    Ok(p)
}

pub fn write_atomic(p: &Path, body: &[u8], mode: u32) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let dir = p.parent().unwrap_or(Path::new("."));
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
    res.with_context(|| format!("writing {}", p.display()))
}

/// Move `p` aside as `p.replaced-<unix time>`; returns the new name.
pub fn move_aside(p: &Path) -> Result<PathBuf> {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut name = p.as_os_str().to_owned();
    name.push(format!(".replaced-{t}"));
    let to = PathBuf::from(name);
    std::fs::rename(p, &to)
        .with_context(|| format!("moving {} aside to {}", p.display(), to.display()))?;
    Ok(to)
}

/// When `dir` looks like the base lightning dir (no database, but a network subdirectory with
/// one), the subdirectory the operator probably meant.
pub fn network_subdir(dir: &Path) -> Option<PathBuf> {
    if dir.join(DB_FILE_NAME).exists() {
        return None;
    }
    [
        "bitcoin", "testnet", "testnet4", "signet", "regtest", "liquid",
    ]
    .iter()
    .map(|n| dir.join(n))
    .find(|d| d.join(DB_FILE_NAME).exists())
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn own_pid_is_alive_and_a_free_one_is_not() {
        assert!(pid_alive(std::process::id() as i32));
        assert!(!pid_alive(0));
        assert!(!pid_alive(i32::MAX));
    }
}
