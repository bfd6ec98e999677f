//! Check: does the backup restore to exactly what lightningd has? A restore drill against the
//! node's own database, while it runs (the plugin's `backup-check`) or stopped (`backup-cli
//! check`).
//!
//! lightningd's database is in rollback-journal mode: a reader's lock makes lightningd's COMMIT
//! wait (its busy handler sleeps, 1 ms and more), so the live database is never read in one long
//! transaction. Instead each table is read in rowid order, `rows_per_step` rows per short read
//! transaction that also reads `vars.data_version`, with a pause after each. The backup's copy
//! (restored at the first version read) is brought forward through the journal to the version
//! each step saw, and the same rowid range is compared there. So every range is compared at one
//! version both sides agree on, and no read holds lightningd up for longer than one step
//! (`longest_lock_us` in the report says how long that was). The reads run on a thread of their
//! own ([`live`]), so the heavy work may run at the lowest CPU priority without a lock held.
//!
//! A difference is a finding, not an error: [`CheckReport::difference`] names the table, the
//! rowid, the column and the data_version. Errors (the repository unreadable, the journal
//! changing under the check) mean the check could not tell.

mod follow;
mod live;
mod rows;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::error::{Error, Result};
use crate::repo::Repository;
use follow::{Behind, Follower};

pub struct CheckOptions<'a> {
    /// Where the backup's copy is made (a temporary file, removed at the end).
    pub scratch_dir: PathBuf,
    /// Rows read from lightningd's database in one read transaction.
    pub rows_per_step: usize,
    /// After each read of lightningd's database, pause this many times as long as the read
    /// took (0: no pause, for a stopped node).
    pub pause_factor: u32,
    /// Stop at the next step when set (the plugin's shutdown).
    pub cancel: Option<&'a AtomicBool>,
    /// Called after each read of lightningd's database, with no lock held on it, with the number
    /// of reads so far (tests commit batches there, as lightningd would between reads).
    pub after_step: Option<&'a dyn Fn(u64)>,
    /// Called on the calling thread once the thread that reads lightningd's database is started:
    /// the plugin lowers the CPU priority of the heavy work here, not of the reads that hold a
    /// lock on lightningd's database.
    pub lower_priority: Option<&'a dyn Fn()>,
}

impl CheckOptions<'_> {
    pub fn new(scratch_dir: PathBuf) -> Self {
        CheckOptions {
            scratch_dir,
            rows_per_step: 256,
            pause_factor: 4,
            cancel: None,
            after_step: None,
            lower_priority: None,
        }
    }
}

/// Where the backup and lightningd's database first differ.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Difference {
    /// The table (or "schema", or "data_version").
    pub table: String,
    pub rowid: Option<i64>,
    /// The data_version at which both were compared.
    pub data_version: u32,
    pub what: String,
}

impl std::fmt::Display for Difference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.table)?;
        if let Some(r) = self.rowid {
            write!(f, " rowid {r}")?;
        }
        write!(f, " at data_version {}: {}", self.data_version, self.what)
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct CheckReport {
    /// "equal" or "different".
    pub result: &'static str,
    pub difference: Option<Difference>,
    /// The data_version of lightningd's database when the check began, and at its last step.
    pub data_version: u32,
    pub data_version_end: u32,
    /// The snapshot the backup's copy was restored from, and the batches replayed after it.
    pub snapshot: Option<String>,
    pub replayed_batches: u64,
    pub tables: u64,
    pub rows: u64,
    /// Read transactions on lightningd's database; the longest time one held its lock, and the
    /// longest one waited for it (a commit of lightningd's in progress), in microseconds.
    pub steps: u64,
    pub longest_lock_us: u64,
    pub longest_wait_us: u64,
    /// When it began (unix seconds), and how long it took.
    pub time: u64,
    pub duration_ms: u64,
}

impl CheckReport {
    pub fn equal(&self) -> bool {
        self.difference.is_none()
    }
}

/// Removes the backup's copy however the check ends.
struct Scratch(PathBuf);
impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// lightningd's database ([`live::Live`]), with the check's pacing and statistics.
struct Reads<'a> {
    live: live::Live,
    pause_factor: u32,
    after_step: Option<&'a dyn Fn(u64)>,
    steps: u64,
    longest_lock: Duration,
    longest_wait: Duration,
}

impl Reads<'_> {
    fn ask(&mut self, req: live::Request) -> Result<(u32, live::Payload)> {
        let t = Instant::now();
        let res = self.live.ask(req);
        let took = t.elapsed();
        self.steps += 1;
        if let Ok(a) = &res {
            self.longest_lock = self.longest_lock.max(a.held);
            self.longest_wait = self.longest_wait.max(a.waited);
        }
        if self.pause_factor > 0 {
            std::thread::sleep(took * self.pause_factor);
        }
        if let Some(f) = self.after_step {
            f(self.steps);
        }
        res.map(|a| (a.version, a.payload))
    }

    fn rows(&mut self, req: live::Request) -> Result<(u32, Vec<rows::Row>)> {
        match self.ask(req)? {
            (v, live::Payload::Rows(r)) => Ok((v, r)),
            (_, live::Payload::Schema(_)) => {
                Err(Error::Invalid("the reader answered out of turn".into()))
            }
        }
    }
}

/// Compare the backup with lightningd's database at `live` (see the module comment).
pub fn check(repo: &Repository, live: &Path, opts: &CheckOptions) -> Result<CheckReport> {
    let started = Instant::now();
    let time = crate::config::now();
    let mut db = Reads {
        live: live::Live::open(live)?,
        pause_factor: opts.pause_factor,
        after_step: opts.after_step,
        steps: 0,
        longest_lock: Duration::ZERO,
        longest_wait: Duration::ZERO,
    };
    if let Some(f) = opts.lower_priority {
        f();
    }
    let (v0, live_schema) = match db.ask(live::Request::Schema)? {
        (v, live::Payload::Schema(s)) => (v, s),
        (_, live::Payload::Rows(_)) => {
            return Err(Error::Invalid("the reader answered out of turn".into()))
        }
    };

    let mut r = [0u8; 6];
    crate::crypto::fill_random(&mut r);
    std::fs::create_dir_all(&opts.scratch_dir)
        .map_err(|e| Error::io("create", opts.scratch_dir.display().to_string(), e))?;
    // A copy left by a crash of an earlier check (one check runs at a time per scratch dir).
    if let Ok(rd) = std::fs::read_dir(&opts.scratch_dir) {
        for e in rd.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if n.starts_with("check-") && n.ends_with(".sqlite3") {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    let scratch = Scratch(
        opts.scratch_dir
            .join(format!("check-{}.sqlite3", hex::encode(r))),
    );
    let mut report = CheckReport {
        result: "equal",
        difference: None,
        data_version: v0,
        data_version_end: v0,
        snapshot: None,
        replayed_batches: 0,
        tables: 0,
        rows: 0,
        steps: 0,
        longest_lock_us: 0,
        longest_wait_us: 0,
        time,
        duration_ms: 0,
    };
    let finish = |mut rep: CheckReport, db: &Reads, diff: Option<Difference>| {
        rep.result = if diff.is_some() { "different" } else { "equal" };
        rep.difference = diff;
        rep.steps = db.steps;
        rep.longest_lock_us = db.longest_lock.as_micros() as u64;
        rep.longest_wait_us = db.longest_wait.as_micros() as u64;
        rep.duration_ms = started.elapsed().as_millis() as u64;
        Ok(rep)
    };
    let behind = |end: u32, v: u32| Difference {
        table: "data_version".into(),
        rowid: None,
        data_version: v,
        what: format!(
            "lightningd committed data_version {v}, but the backup ends at {end}: batches \
             lightningd committed are missing from the backup"
        ),
    };
    let mut copy = match Follower::start(repo, &scratch.0, v0)? {
        Ok(f) => f,
        Err(Behind::EndsAt(end)) => return finish(report, &db, Some(behind(end, v0))),
    };
    report.snapshot = copy.restore.snapshot.clone();
    report.replayed_batches = copy.restore.replayed_batches;
    let backup_schema = rows::schema(copy.connection(), "the backup's copy")?;
    if let Some(d) = schema_difference(&live_schema, &backup_schema, v0) {
        return finish(report, &db, Some(d));
    }

    for (table, has_rowid) in rows::tables(&live_schema) {
        report.tables += 1;
        let columns = rows::columns(copy.connection(), &table, "the backup's copy")?;
        let mut after: Option<i64> = None;
        loop {
            if opts.cancel.is_some_and(|c| c.load(Ordering::SeqCst)) {
                return Err(Error::Cancelled("the check"));
            }
            let (v, live_rows) = db.rows(if has_rowid {
                live::Request::Rows {
                    table: table.clone(),
                    after,
                    limit: opts.rows_per_step,
                }
            } else {
                live::Request::AllRows {
                    table: table.clone(),
                }
            })?;
            report.data_version_end = v;
            if let Err(Behind::EndsAt(end)) = copy.advance_to(v)? {
                return finish(report, &db, Some(behind(end, v)));
            }
            let full = has_rowid && live_rows.len() == opts.rows_per_step;
            let upto = if full {
                live_rows.last().and_then(|r| r.0)
            } else {
                None
            };
            let backup_rows = if has_rowid {
                rows::rows(
                    copy.connection(),
                    &table,
                    after,
                    upto,
                    None,
                    "the backup's copy",
                )?
            } else {
                rows::all_rows(copy.connection(), &table, "the backup's copy")?
            };
            report.rows += live_rows.len() as u64;
            if let Some((rowid, what)) = rows::first_difference(&live_rows, &backup_rows, &columns)
            {
                let d = Difference {
                    table: table.clone(),
                    rowid,
                    data_version: v,
                    what,
                };
                return finish(report, &db, Some(d));
            }
            if !full {
                break;
            }
            after = upto;
        }
    }
    drop(scratch);
    finish(report, &db, None)
}

/// Compare two databases at rest (no one writes either), table by table in rowid ranges with
/// bounded memory: the first difference, or None when they hold the same rows (rowids included).
/// `a` is named "lightningd's database" in the difference, `b` "the backup".
pub fn compare_databases(a: &Path, b: &Path) -> Result<Option<Difference>> {
    let open = |p: &Path| {
        rusqlite::Connection::open_with_flags(p, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(|e| Error::sqlite(p.display().to_string(), e))
    };
    let (ca, cb) = (open(a)?, open(b)?);
    let (oa, ob) = (a.display().to_string(), b.display().to_string());
    let v = crate::replay::data_version(&ca, &oa)?;
    let (sa, sb) = (rows::schema(&ca, &oa)?, rows::schema(&cb, &ob)?);
    if let Some(d) = schema_difference(&sa, &sb, v) {
        return Ok(Some(d));
    }
    const STEP: usize = 4096;
    for (table, has_rowid) in rows::tables(&sa) {
        let columns = rows::columns(&ca, &table, &oa)?;
        let mut after = None;
        loop {
            let (ra, upto) = if has_rowid {
                let r = rows::rows(&ca, &table, after, None, Some(STEP), &oa)?;
                let upto = (r.len() == STEP)
                    .then(|| r.last().and_then(|x| x.0))
                    .flatten();
                (r, upto)
            } else {
                (rows::all_rows(&ca, &table, &oa)?, None)
            };
            let rb = if has_rowid {
                rows::rows(&cb, &table, after, upto, None, &ob)?
            } else {
                rows::all_rows(&cb, &table, &ob)?
            };
            if let Some((rowid, what)) = rows::first_difference(&ra, &rb, &columns) {
                return Ok(Some(Difference {
                    table,
                    rowid,
                    data_version: v,
                    what,
                }));
            }
            match upto {
                Some(u) => after = Some(u),
                None => break,
            }
        }
    }
    Ok(None)
}

fn schema_difference(
    live: &[rows::SchemaObject],
    backup: &[rows::SchemaObject],
    v: u32,
) -> Option<Difference> {
    let abbreviate = |s: &str| -> String {
        let t: String = s.split_whitespace().collect::<Vec<_>>().join(" ");
        let short: String = t.chars().take(100).collect();
        if short.len() < t.len() {
            format!("{short}…")
        } else {
            short
        }
    };
    let d = |what: String| {
        Some(Difference {
            table: "schema".into(),
            rowid: None,
            data_version: v,
            what,
        })
    };
    let mut b = backup.iter();
    for l in live {
        match b.next() {
            None => return d(format!("{} {} only in lightningd's database", l.0, l.1)),
            Some(k) if (&k.0, &k.1) != (&l.0, &l.1) => {
                return d(format!(
                    "lightningd's database has {} {} where the backup has {} {}",
                    l.0, l.1, k.0, k.1
                ))
            }
            Some(k) if k.2 != l.2 => {
                return d(format!(
                    "{} {}: lightningd has `{}`, the backup `{}`",
                    l.0,
                    l.1,
                    abbreviate(&l.2),
                    abbreviate(&k.2)
                ))
            }
            Some(_) => {}
        }
    }
    b.next()
        .and_then(|k| d(format!("{} {} only in the backup", k.0, k.1)))
}
