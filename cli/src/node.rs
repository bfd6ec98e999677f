//! The node's network directory: is lightningd running, backup.lock, the database.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

pub const LOCK_FILE_NAME: &str = "backup.lock";
pub const DB_FILE_NAME: &str = "lightningd.sqlite3";

/// The contents of `backup.lock` (`store::lockfile`).
pub type BackupLock = store::lockfile::LockFile;

/// The name of lightningd's RPC socket in the network directory (its `rpc-file` default).
pub const RPC_FILE_NAME: &str = "lightning-rpc";

/// A running lightningd, and how it was seen.
pub struct Running {
    /// What shows it, for the message: "pid 123 holds /x/lightningd-regtest.pid", or
    /// "/x/regtest/lightning-rpc accepts connections".
    pub how: String,
}

/// Is lightningd running on the network directory `dir`? Two signals, either is enough:
/// - its pid file `lightningd-<network>.pid` (in the base directory, `dir`'s parent, or `dir`)
///   is locked: lightningd holds a POSIX lock on it for its whole life (`pidfile_create` in
///   lightningd/lightningd.c), and the kernel drops it when the process ends, so a pid file left
///   by a crash (or a pid reused since) does not count;
/// - its RPC socket `dir/lightning-rpc` accepts a connection (after a crash the socket file
///   stays, but connecting is refused).
///
/// A custom `--pid-file` elsewhere or a custom `rpc-file` is not seen.
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
            if let Some(holder) = pid_file_locked(&e.path()) {
                return Some(Running {
                    how: format!("{holder} holds the lock on {}", e.path().display()),
                });
            }
        }
    }
    let sock = dir.join(RPC_FILE_NAME);
    if std::os::unix::net::UnixStream::connect(&sock).is_ok() {
        return Some(Running {
            how: format!("{} accepts connections", sock.display()),
        });
    }
    None
}

/// Whether another process holds a lock on the pid file at `p`: a shared lock is tried (and
/// released at once); lightningd's write lock refuses it. Returns who holds it: "pid N" with the
/// pid the file names, when it is alive.
fn pid_file_locked(p: &Path) -> Option<String> {
    use rustix::fs::{fcntl_lock, FlockOperation};
    let f = std::fs::File::open(p).ok()?;
    match fcntl_lock(&f, FlockOperation::NonBlockingLockShared) {
        Ok(()) => {
            let _ = fcntl_lock(&f, FlockOperation::NonBlockingUnlock);
            None
        }
        Err(_) => {
            let pid = std::fs::read_to_string(p)
                .ok()
                .and_then(|t| t.trim().parse::<i32>().ok())
                .filter(|pid| pid_alive(*pid));
            Some(match pid {
                Some(pid) => format!("lightningd (pid {pid})"),
                None => "a process".to_string(),
            })
        }
    }
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

/// The network directory `dir` (marked by `file`) must be given, not the base directory above
/// it; and no lightningd may run on it (`why`: what would go wrong).
pub fn check_stopped_network_dir(dir: &Path, file: &str, why: &str) -> Result<()> {
    if let Some(sub) = network_subdir_with(dir, file) {
        return Err(crate::exit::usage(format!(
            "{} holds no {file}, but {} does: give the network directory, --lightning-dir {}",
            dir.display(),
            sub.display(),
            sub.display()
        )));
    }
    if let Some(r) = running_node(dir) {
        return Err(crate::exit::refused(format!(
            "lightningd is running ({}): stop it first (`lightning-cli stop`); {why}",
            r.how
        )));
    }
    Ok(())
}

/// When `dir` looks like the base lightning dir (no `file`, e.g. the database or hsm_secret, but
/// a network subdirectory with one), the subdirectory the operator probably meant.
pub fn network_subdir_with(dir: &Path, file: &str) -> Option<PathBuf> {
    if dir.join(file).exists() {
        return None;
    }
    [
        "bitcoin", "testnet", "testnet4", "signet", "regtest", "liquid",
    ]
    .iter()
    .map(|n| dir.join(n))
    .find(|d| d.join(file).exists())
}

/// What a lightningd database says about itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DbState {
    /// `vars.data_version` (0 when absent).
    pub data_version: u32,
    /// `vars.node_id` as 66 hex digits, when the node has started once.
    pub node_id: Option<String>,
}

/// Read `vars.data_version` and `vars.node_id` of the database at `path` (read-only).
pub fn db_state(path: &Path) -> Result<DbState> {
    db_state_with(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
}

/// [`db_state`] opening the database for writing, so SQLite rolls back a hot journal beside it
/// first: for a scratch copy only.
pub fn db_state_rw(path: &Path) -> Result<DbState> {
    db_state_with(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE)
}

fn db_state_with(path: &Path, flags: rusqlite::OpenFlags) -> Result<DbState> {
    use rusqlite::{Connection, OptionalExtension};
    let conn = Connection::open_with_flags(path, flags)
        .with_context(|| format!("opening {}", path.display()))?;
    let data_version = store::replay::data_version(&conn, &path.display().to_string())?;
    let node_id: Option<Vec<u8>> = conn
        .query_row("SELECT blobval FROM vars WHERE name = 'node_id'", [], |r| {
            r.get(0)
        })
        .optional()
        .with_context(|| format!("reading vars.node_id of {}", path.display()))?
        .flatten();
    Ok(DbState {
        data_version,
        node_id: node_id.map(hex::encode),
    })
}

/// The database and the files SQLite keeps beside it (a rollback journal left by a crash holds
/// part of the database's state and is applied to whatever database has this name).
pub fn db_files(dir: &Path) -> Vec<PathBuf> {
    ["", "-journal", "-wal", "-shm"]
        .iter()
        .map(|s| dir.join(format!("{DB_FILE_NAME}{s}")))
        .collect()
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
