//! lightningd's database, read in short read transactions on a thread of its own.
//!
//! Why a thread: the check's heavy work (restore, replay, comparison) may run at the lowest CPU
//! priority (the plugin's `SCHED_IDLE`), and a thread at that priority can wait a long time for a
//! CPU. It must never do so while it holds a read lock on lightningd's database, or lightningd's
//! COMMIT waits for it: so the reads run here, on a thread started before the caller lowers its
//! own priority (it inherits the caller's), and each answer comes back only after its COMMIT.

use std::path::Path;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags};

use super::rows::{self, Row, SchemaObject};
use crate::error::{Error, Result};
use crate::replay;

pub enum Request {
    Schema,
    /// Up to `limit` rows of a rowid table after `after`.
    Rows {
        table: String,
        after: Option<i64>,
        limit: usize,
    },
    /// A WITHOUT ROWID table, whole.
    AllRows {
        table: String,
    },
}

pub enum Payload {
    Schema(Vec<SchemaObject>),
    Rows(Vec<Row>),
}

/// One read transaction's answer: the data_version it saw, what it read, how long it held the
/// lock (from its first read to its COMMIT) and how long it waited for it before.
pub struct Answer {
    pub version: u32,
    pub payload: Payload,
    pub held: Duration,
    pub waited: Duration,
}

type Job = (Request, mpsc::Sender<Result<Answer>>);

pub struct Live {
    tx: Option<mpsc::Sender<Job>>,
    thread: Option<JoinHandle<()>>,
}

impl Live {
    pub fn open(path: &Path) -> Result<Live> {
        let object = path.display().to_string();
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| Error::sqlite(&object, e))?;
        // lightningd's commit holds its lock only while it writes: wait for it, never fail.
        conn.busy_timeout(Duration::from_secs(60))
            .and_then(|_| conn.execute_batch("PRAGMA query_only = ON;"))
            .map_err(|e| Error::sqlite(&object, e))?;
        let (tx, rx) = mpsc::channel::<Job>();
        let thread = std::thread::Builder::new()
            .name("check-reader".into())
            .spawn(move || {
                for (req, reply) in rx {
                    let _ = reply.send(step(&conn, &object, &req));
                }
            })
            .map_err(|e| Error::io("spawn", "the check's reader thread", e))?;
        Ok(Live {
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    pub fn ask(&self, req: Request) -> Result<Answer> {
        let (reply, answer) = mpsc::channel();
        let gone = || Error::Invalid("the check's reader thread stopped".into());
        self.tx
            .as_ref()
            .ok_or_else(gone)?
            .send((req, reply))
            .map_err(|_| gone())?;
        answer.recv().map_err(|_| gone())?
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// BEGIN; data_version (takes the shared lock, waiting for a commit in progress); the reads;
/// COMMIT.
fn step(conn: &Connection, object: &str, req: &Request) -> Result<Answer> {
    let sql = |e| Error::sqlite(object, e);
    conn.execute_batch("BEGIN").map_err(sql)?;
    let start = Instant::now();
    let res = (|| {
        let version = replay::data_version(conn, object)?;
        let locked = Instant::now();
        let payload = match req {
            Request::Schema => Payload::Schema(rows::schema(conn, object)?),
            Request::Rows {
                table,
                after,
                limit,
            } => Payload::Rows(rows::rows(conn, table, *after, None, Some(*limit), object)?),
            Request::AllRows { table } => Payload::Rows(rows::all_rows(conn, table, object)?),
        };
        Ok((version, payload, locked))
    })();
    let end = conn.execute_batch("COMMIT").map_err(sql);
    let (version, payload, locked) = res?;
    end?;
    Ok(Answer {
        version,
        payload,
        held: locked.elapsed(),
        waited: locked.duration_since(start),
    })
}
