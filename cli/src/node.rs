//! The node's network directory: is lightningd running, backup.lock, the database.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

pub const LOCK_FILE_NAME: &str = "backup.lock";
pub const DB_FILE_NAME: &str = "lightningd.sqlite3";

/// The contents of `backup.lock` (`store::lockfile`).
pub type BackupLock = store::lockfile::LockFile;

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
    Ok(store::lockfile::read(dir)?)
}

/// Write `backup.lock` atomically (temp file, fsync, rename, fsync the directory), pinning the
/// repository the node is to use.
pub fn write_lock(dir: &Path, url: &str, repository: store::repo::Identity) -> Result<PathBuf> {
    Ok(store::lockfile::write(
        dir,
        &BackupLock {
            backend_url: url.to_string(),
            destinations: Vec::new(),
            repository: Some(repository),
        },
    )?)
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
