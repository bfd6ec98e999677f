//! Applying journal records to an SQLite database, as lightningd did.
//!
//! Rules that reproduce lightningd's database exactly (NOTES.md section 1): `PRAGMA foreign_keys`
//! as lightningd had it (ON from the start); each batch's statements as lightningd ran them;
//! PRAGMA-only batches outside any transaction. For speed, consecutive batches share one
//! transaction (a PRAGMA-only batch closes it), the replica runs without a rollback journal and
//! without syncs, and the result counts only after [`Replayer::finish`] synced it: a replay that
//! fails leaves a file the caller must discard.

use std::path::Path;

use rusqlite::Connection;

use crate::error::{Error, Result};
use crate::journal::Record;

/// Drop the batches that a later `supersedes` record replaces. Errors if a superseding record's
/// target is not in `records`.
pub fn effective(records: Vec<Record>, object: &str) -> Result<Vec<Record>> {
    Effective::new(records.into_iter().map(Ok), object).collect()
}

/// [`effective`] as records stream by: a batch is held back until the next batch that is not
/// only PRAGMAs shows whether it replaces it, so memory holds the newest batch and the PRAGMA-only
/// records after it, not the journal.
pub struct Effective<I> {
    inner: I,
    object: String,
    /// The newest real batch (first) and the PRAGMA-only records after it, not yet yielded.
    held: std::collections::VecDeque<Record>,
    /// Records ready to yield, in order.
    ready: std::collections::VecDeque<Record>,
    done: bool,
}

impl<I: Iterator<Item = Result<Record>>> Effective<I> {
    pub fn new(inner: I, object: &str) -> Effective<I> {
        Effective {
            inner,
            object: object.to_string(),
            held: Default::default(),
            ready: Default::default(),
            done: false,
        }
    }

    fn take(&mut self, r: Record) -> Result<()> {
        if r.supersedes {
            match self.held.front() {
                Some(p) if !p.pragma_only() && p.batch.data_version == r.batch.data_version => {
                    self.held.pop_front();
                }
                _ => {
                    return Err(Error::corrupt(
                        &self.object,
                        format!(
                        "record for data_version {} replaces a batch that is not in the journal",
                        r.batch.data_version
                    ),
                    ))
                }
            }
        }
        if r.pragma_only() {
            self.held.push_back(r);
            if self.held.front().is_some_and(Record::pragma_only) {
                // No batch held: nothing can replace what came before.
                self.ready.extend(self.held.drain(..));
            }
        } else {
            self.ready.extend(self.held.drain(..));
            self.held.push_back(r);
        }
        Ok(())
    }
}

impl<I: Iterator<Item = Result<Record>>> Iterator for Effective<I> {
    type Item = Result<Record>;

    fn next(&mut self) -> Option<Result<Record>> {
        loop {
            if let Some(r) = self.ready.pop_front() {
                return Some(Ok(r));
            }
            if self.done {
                return None;
            }
            match self.inner.next() {
                Some(Ok(r)) => {
                    if let Err(e) = self.take(r) {
                        self.done = true;
                        self.held.clear();
                        return Some(Err(e));
                    }
                }
                Some(Err(e)) => {
                    self.done = true;
                    self.held.clear();
                    return Some(Err(e));
                }
                None => {
                    self.done = true;
                    self.ready.extend(self.held.drain(..));
                }
            }
        }
    }
}

pub struct Replayer {
    conn: Connection,
    in_tx: bool,
    foreign_keys: bool,
    pub batches: u64,
    pub statements: u64,
    object: String,
}

impl Replayer {
    /// Open (or create) the database at `path` for replay.
    pub fn open(path: &Path, foreign_keys: bool) -> Result<Replayer> {
        let object = path.display().to_string();
        let conn = Connection::open(path).map_err(|e| Error::sqlite(&object, e))?;
        conn.execute_batch(
            "PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF; PRAGMA cache_size = -65536;",
        )
        .map_err(|e| Error::sqlite(&object, e))?;
        conn.execute_batch(if foreign_keys {
            "PRAGMA foreign_keys = ON;"
        } else {
            "PRAGMA foreign_keys = OFF;"
        })
        .map_err(|e| Error::sqlite(&object, e))?;
        Ok(Replayer {
            conn,
            in_tx: false,
            foreign_keys,
            batches: 0,
            statements: 0,
            object,
        })
    }

    pub fn foreign_keys(&self) -> bool {
        self.foreign_keys
    }

    /// The replica's connection, to read it mid-replay (it sees the open transaction).
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    fn exec(&self, sql: &str, version: u32) -> Result<()> {
        self.conn.execute_batch(sql).map_err(|e| Error::Sqlite {
            object: format!(
                "{} (replaying data_version {version}: {})",
                self.object,
                abbreviate(sql)
            ),
            source: e,
        })
    }

    pub fn apply(&mut self, rec: &Record) -> Result<()> {
        let v = rec.batch.data_version;
        if rec.pragma_only() {
            self.commit()?;
            for w in &rec.batch.writes {
                self.exec(w, v)?;
                if let Some(on) = foreign_keys_setting(w) {
                    self.foreign_keys = on;
                }
            }
        } else {
            if !self.in_tx {
                self.exec("BEGIN", v)?;
                self.in_tx = true;
            }
            for w in &rec.batch.writes {
                self.exec(w, v)?;
            }
        }
        self.batches += 1;
        self.statements += rec.batch.writes.len() as u64;
        Ok(())
    }

    fn commit(&mut self) -> Result<()> {
        if self.in_tx {
            self.conn
                .execute_batch("COMMIT")
                .map_err(|e| Error::sqlite(&self.object, e))?;
            self.in_tx = false;
        }
        Ok(())
    }

    /// The database's `vars.data_version` (0 when the table or row does not exist yet).
    pub fn data_version(&self) -> Result<u32> {
        data_version(&self.conn, &self.object)
    }

    /// Commit, close, and fsync the file. Returns the foreign_keys state at the end.
    pub fn finish(self, path: &Path) -> Result<bool> {
        let fk = self.finish_unsynced()?;
        std::fs::File::open(path)
            .and_then(|f| f.sync_all())
            .map_err(|e| Error::io("fsync", path.display().to_string(), e))?;
        Ok(fk)
    }

    /// Commit and close without syncing: for a file whose content is checked before it is
    /// trusted again (the compaction base), so a sync would only make the hook wait for the disk.
    pub fn finish_unsynced(mut self) -> Result<bool> {
        self.commit()?;
        let fk = self.foreign_keys;
        self.conn
            .close()
            .map_err(|(_, e)| Error::sqlite(&self.object, e))?;
        Ok(fk)
    }
}

pub fn data_version(conn: &Connection, object: &str) -> Result<u32> {
    let has_vars: bool = conn
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE type='table' AND name='vars'",
            [],
            |r| r.get::<_, i64>(0),
        )
        .map_err(|e| Error::sqlite(object, e))?
        > 0;
    if !has_vars {
        return Ok(0);
    }
    match conn.query_row(
        "SELECT intval FROM vars WHERE name = 'data_version'",
        [],
        |r| r.get::<_, i64>(0),
    ) {
        Ok(v) => Ok(v as u32),
        Err(rusqlite::Error::QueryReturnedNoRows) => Ok(0),
        Err(e) => Err(Error::sqlite(object, e)),
    }
}

/// `Some(on)` if the statement sets `PRAGMA foreign_keys`.
pub fn foreign_keys_setting(sql: &str) -> Option<bool> {
    let s: String = sql
        .to_ascii_lowercase()
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    let rest = s.strip_prefix("pragmaforeign_keys=")?;
    let val = rest.trim_end_matches(';');
    match val {
        "on" | "1" | "true" | "yes" => Some(true),
        "off" | "0" | "false" | "no" => Some(false),
        _ => None,
    }
}

fn abbreviate(sql: &str) -> String {
    let s: String = sql.chars().take(80).collect();
    if s.len() < sql.len() {
        format!("{s}…")
    } else {
        s
    }
}

/// Run `PRAGMA integrity_check` on a database file.
pub fn integrity_check(path: &Path) -> Result<String> {
    let object = path.display().to_string();
    let conn = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(|e| Error::sqlite(&object, e))?;
    let mut stmt = conn
        .prepare("PRAGMA integrity_check")
        .map_err(|e| Error::sqlite(&object, e))?;
    let rows: Vec<String> = stmt
        .query_map([], |r| r.get::<_, String>(0))
        .map_err(|e| Error::sqlite(&object, e))?
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| Error::sqlite(&object, e))?;
    Ok(rows.join("; "))
}

#[cfg(test)]
mod test {
    use super::*;
    use crate::journal::record::Batch;

    fn rec(v: u32, sql: &str, supersedes: bool) -> Record {
        Record {
            batch: Batch {
                data_version: v,
                writes: vec![sql.to_string()],
            },
            supersedes,
            time_ms: u64::from(v),
        }
    }

    fn shown(records: &[Record]) -> Vec<(u32, String)> {
        records
            .iter()
            .map(|r| (r.batch.data_version, r.batch.writes.join(";")))
            .collect()
    }

    /// The streaming resolution keeps what the whole-list one kept: a re-sent batch replaces the
    /// one it supersedes, the PRAGMA-only records between them stay where they were.
    #[test]
    fn a_superseding_batch_replaces_the_held_one_and_keeps_the_pragmas_after_it() {
        let input = vec![
            rec(0, "PRAGMA foreign_keys = ON", false),
            rec(1, "INSERT 1", false),
            rec(2, "INSERT 2", false),
            rec(2, "PRAGMA foreign_keys = OFF", false),
            rec(2, "INSERT 2 again", true),
            rec(2, "INSERT 2 third", true),
            rec(3, "INSERT 3", false),
        ];
        let got = effective(input, "journal").unwrap_or_default();
        assert_eq!(
            shown(&got),
            vec![
                (0, "PRAGMA foreign_keys = ON".into()),
                (1, "INSERT 1".into()),
                (2, "PRAGMA foreign_keys = OFF".into()),
                (2, "INSERT 2 third".into()),
                (3, "INSERT 3".into()),
            ]
        );
    }

    #[test]
    fn a_batch_that_replaces_one_already_passed_is_an_error() {
        for input in [
            vec![
                rec(1, "INSERT 1", false),
                rec(2, "INSERT 2", false),
                rec(1, "INSERT 1", true),
            ],
            vec![rec(1, "INSERT 1", true)],
            vec![
                rec(0, "PRAGMA foreign_keys = ON", false),
                rec(0, "PRAGMA x", true),
            ],
        ] {
            let err = effective(input, "journal/x").err().map(|e| e.to_string());
            assert!(
                err.as_deref()
                    .is_some_and(|e| e.contains("replaces a batch that is not in the journal")),
                "{err:?}"
            );
        }
    }

    /// The stream yields a batch only once the next batch shows it stays: nothing is applied
    /// that a later record replaces, and the error stops the stream.
    #[test]
    fn the_stream_holds_back_only_the_newest_batch() {
        let input = vec![
            Ok(rec(1, "INSERT 1", false)),
            Ok(rec(2, "INSERT 2", false)),
            Err(Error::corrupt("journal/y", "damaged")),
            Ok(rec(3, "INSERT 3", false)),
        ];
        let mut e = Effective::new(input.into_iter(), "journal");
        assert_eq!(
            e.next().and_then(|r| r.ok()).map(|r| r.batch.data_version),
            Some(1)
        );
        // Batch 2 is held when the error arrives: the error comes, then nothing.
        assert!(matches!(e.next(), Some(Err(_))));
        assert!(e.next().is_none());
    }
}
