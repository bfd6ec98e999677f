//! The rest of a node a plugin may look at: lightningd's own database, committed as lightningd
//! commits it, and its RPC socket answering `getinfo`.
//!
//! lightningd runs a transaction's statements, bumps `data_version`, calls `db_write` and waits,
//! then COMMITs (../shared/NOTES.md section 1): [`Database::begin`] before the hook call,
//! [`Database::commit`] after `continue`, [`Database::rollback`] otherwise. PRAGMA-only batches
//! run outside any transaction. The connection waits up to 60 s for a reader's lock, as
//! lightningd's does (`sqlite3_busy_timeout(db, 60000)` in db/db_sqlite3.c), and each COMMIT's
//! duration is recorded: a plugin that reads the database must not make it wait.

use std::io::{BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use rusqlite::Connection;
use serde_json::{json, Value};

pub struct Database {
    conn: Connection,
    in_tx: bool,
    /// Each COMMIT: when it began and how long it took, in order.
    pub commits: Vec<(Instant, Duration)>,
}

fn pragma_only(writes: &[String]) -> bool {
    !writes.is_empty()
        && writes
            .iter()
            .all(|w| w.trim_start().to_ascii_uppercase().starts_with("PRAGMA"))
}

impl Database {
    /// lightningd's database at `path` (created if missing), in rollback-journal mode.
    pub fn open(path: &Path) -> Result<Database> {
        let conn = Connection::open(path).with_context(|| format!("opening {}", path.display()))?;
        conn.busy_timeout(Duration::from_secs(60))?;
        conn.execute_batch("PRAGMA foreign_keys = ON;")?;
        Ok(Database {
            conn,
            in_tx: false,
            commits: Vec::new(),
        })
    }

    /// Run a batch's statements before its hook call (in a transaction, unless PRAGMA-only).
    pub fn begin(&mut self, writes: &[String]) -> Result<()> {
        if pragma_only(writes) {
            for w in writes {
                self.conn.execute_batch(w)?;
            }
            return Ok(());
        }
        self.conn.execute_batch("BEGIN")?;
        self.in_tx = true;
        for w in writes {
            self.conn
                .execute_batch(w)
                .with_context(|| format!("lightningd's database: {w}"))?;
        }
        Ok(())
    }

    /// The hook answered continue.
    pub fn commit(&mut self) -> Result<()> {
        if self.in_tx {
            let t = Instant::now();
            self.conn.execute_batch("COMMIT")?;
            self.commits.push((t, t.elapsed()));
            self.in_tx = false;
        }
        Ok(())
    }

    /// The hook did not answer continue: lightningd stops without committing.
    pub fn rollback(&mut self) -> Result<()> {
        if self.in_tx {
            self.conn.execute_batch("ROLLBACK")?;
            self.in_tx = false;
        }
        Ok(())
    }
}

/// lightningd's RPC socket (`<network dir>/lightning-rpc`): answers `getinfo` with a node id and
/// `listconfigs` with the default wallet; anything else is "unknown command". Closed on drop.
pub struct RpcSocket {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RpcSocket {
    pub fn serve(network_dir: &Path, node_id: &str) -> Result<RpcSocket> {
        let path = network_dir.join("lightning-rpc");
        let listener =
            UnixListener::bind(&path).with_context(|| format!("binding {}", path.display()))?;
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let (stop2, id) = (stop.clone(), node_id.to_string());
        let thread = std::thread::spawn(move || {
            while !stop2.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((s, _)) => {
                        let id = id.clone();
                        std::thread::spawn(move || answer(s, &id));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Ok(RpcSocket {
            path,
            stop,
            thread: Some(thread),
        })
    }
}

fn answer(s: UnixStream, node_id: &str) {
    let _ = s.set_nonblocking(false);
    let Ok(mut w) = s.try_clone() else { return };
    let requests = serde_json::Deserializer::from_reader(BufReader::new(s)).into_iter::<Value>();
    for req in requests {
        let Ok(req) = req else { return };
        let id = req.get("id").cloned().unwrap_or(Value::Null);
        let reply = match req.get("method").and_then(Value::as_str) {
            Some("getinfo") => json!({"jsonrpc": "2.0", "id": id, "result": {
                "id": node_id, "alias": "emulated", "network": "regtest",
                "version": crate::wire::LIGHTNINGD_VERSION,
                "lightning-dir": "", "num_peers": 0}}),
            Some("listconfigs") => json!({"jsonrpc": "2.0", "id": id, "result": {"configs": {
                "wallet": {"value_str": "sqlite3://lightningd.sqlite3", "source": "default"}}}}),
            other => json!({"jsonrpc": "2.0", "id": id, "error": {
                "code": -32601, "message": format!("Unknown command '{}'", other.unwrap_or(""))}}),
        };
        if w.write_all(format!("{reply}{}", crate::wire::FRAME_END).as_bytes())
            .is_err()
        {
            return;
        }
    }
}

impl Drop for RpcSocket {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}
