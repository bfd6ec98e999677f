//! The restore drill (`ops::check`) against lightningd's real databases.
//!
//! "Replication running" is not "restorable": the check must say equal exactly when the backup
//! restores to what lightningd has, name the first difference otherwise (in the backup or in the
//! node's database), follow a database that lightningd keeps committing to, and never hold a lock
//! on it between its short reads (a held read lock makes lightningd's COMMIT wait).

use std::cell::{Cell, RefCell};
use std::path::Path;
use std::sync::Mutex;

use rusqlite::Connection;
use store::ops::check::{check, CheckOptions, CheckReport};
use store::Batch;

use crate::common::*;

/// A backup of sessions 1..=upto of the real traces, with a snapshot after session 1.
fn backup(upto: u32) -> Env {
    let env = Env::new(true);
    let w = Mutex::new(env.writer());
    append_all(&mut w.lock().unwrap(), &load_trace("trace-s1.jsonl"));
    env.compact(&w);
    drop(w);
    for s in 2..=upto {
        let mut w = env.writer();
        append_all(&mut w, &load_trace(&format!("trace-s{s}.jsonl")));
    }
    env
}

/// A copy of lightningd's real database after session `s`, as the node's live database.
fn live(env: &Env, s: u32) -> std::path::PathBuf {
    let p = env.path(&format!("live-{s}.sqlite3"));
    std::fs::copy(testdata(&format!("db-s{s}.sqlite3")), &p).unwrap();
    p
}

fn run(env: &Env, db: &Path) -> CheckReport {
    let mut o = CheckOptions::new(env.path("scratch"));
    o.pause_factor = 0;
    check(&env.repo, db, &o).unwrap()
}

#[test]
fn equal_on_the_real_traces_at_every_session() {
    let env = backup(3);
    for s in 1..=3 {
        let db = live(&env, s);
        let r = run(&env, &db);
        assert!(r.equal(), "session {s}: {:?}", r.difference);
        assert_eq!(r.result, "equal");
        let last = load_trace(&format!("trace-s{s}.jsonl"))
            .last()
            .unwrap()
            .data_version;
        assert_eq!((r.data_version, r.data_version_end), (last, last));
        assert!(r.tables >= 30 && r.rows > 1000, "{r:?}");
        assert!(r.snapshot.is_some());
    }
    // The scratch copy is gone.
    assert_eq!(std::fs::read_dir(env.path("scratch")).unwrap().count(), 0);
}

#[test]
fn names_the_first_difference_in_the_node_database() {
    let env = backup(3);
    let v = load_trace("trace-s3.jsonl").last().unwrap().data_version;
    let cases: [(&str, &str, Option<i64>, &str); 3] = [
        (
            "UPDATE invoices SET msatoshi = msatoshi + 1 WHERE id = 7",
            "invoices",
            Some(7),
            "column msatoshi: lightningd has",
        ),
        (
            "DELETE FROM invoices WHERE id = 9",
            "invoices",
            Some(9),
            "only in the backup",
        ),
        (
            "CREATE INDEX extra ON invoices(label)",
            "schema",
            None,
            "index extra",
        ),
    ];
    for (sql, table, rowid, what) in cases {
        let db = live(&env, 3);
        Connection::open(&db).unwrap().execute_batch(sql).unwrap();
        let r = run(&env, &db);
        let d = r
            .difference
            .clone()
            .unwrap_or_else(|| panic!("{sql}: no difference"));
        assert_eq!(r.result, "different");
        assert_eq!(
            (d.table.as_str(), d.rowid, d.data_version),
            (table, rowid, v),
            "{sql}: {d}"
        );
        assert!(d.what.contains(what), "{sql}: {d}");
    }
}

#[test]
fn names_the_first_difference_in_the_backup() {
    // A backup that is authentic but wrong: one stored batch is not what lightningd committed.
    let env = Env::new(false);
    let mut s1 = load_trace("trace-s1.jsonl");
    let i = s1
        .iter()
        .position(|b| {
            b.writes
                .iter()
                .any(|w| w.starts_with("INSERT INTO invoices"))
        })
        .unwrap();
    let w0 = s1[i]
        .writes
        .iter()
        .position(|w| w.starts_with("INSERT INTO invoices"))
        .unwrap();
    // The invoice's id 1 becomes 10001.
    let changed = s1[i].writes[w0].replacen("VALUES ( ", "VALUES ( 1000", 1);
    assert_ne!(changed, s1[i].writes[w0]);
    s1[i].writes[w0] = changed;
    let mut w = env.writer();
    append_all(&mut w, &s1);
    drop(w);
    let db = live(&env, 1);
    let r = run(&env, &db);
    let d = r.difference.expect("a difference");
    assert_eq!((d.table.as_str(), d.rowid), ("invoices", Some(1)), "{d}");
    assert_eq!(d.what, "only in lightningd's database");

    // A backup that is behind lightningd: the batches of session 2 never reached it.
    let env = backup(1);
    let db = live(&env, 2);
    let r = run(&env, &db);
    let d = r.difference.expect("behind");
    assert_eq!(d.table, "data_version");
    assert!(d.what.contains("the backup ends at"), "{d}");
}

/// lightningd commits between the check's reads with a busy timeout of zero: a lock held by the
/// check across reads would fail that commit (SQLITE_BUSY) instead of only delaying it. The
/// check follows the database forward and still finds it equal.
#[test]
fn never_holds_a_lock_between_reads_and_follows_new_commits() {
    let env = backup(2);
    let db = live(&env, 2);
    let s3 = load_trace("trace-s3.jsonl");
    let writer = RefCell::new(env.writer());
    let node = Connection::open(&db).unwrap();
    node.busy_timeout(std::time::Duration::ZERO).unwrap();
    node.execute_batch("PRAGMA foreign_keys = ON;").unwrap();
    let next = Cell::new(0usize);
    let failures = RefCell::new(Vec::new());
    let commit = |b: &Batch| -> rusqlite::Result<()> {
        if b.is_pragma_only() {
            return b.writes.iter().try_for_each(|w| node.execute_batch(w));
        }
        node.execute_batch("BEGIN")?;
        for w in &b.writes {
            node.execute_batch(w)?;
        }
        node.execute_batch("COMMIT")
    };
    let step = |_: u64| {
        let i = next.get();
        let Some(b) = s3.get(i) else { return };
        // As the plugin and lightningd: durable in the backup first, then the commit.
        writer.borrow_mut().append(b).unwrap();
        if let Err(e) = commit(b) {
            failures
                .borrow_mut()
                .push(format!("batch {}: {e}", b.data_version));
        }
        next.set(i + 1);
    };
    let mut o = CheckOptions::new(env.path("scratch"));
    o.pause_factor = 0;
    o.rows_per_step = 16;
    o.after_step = Some(&step);
    let r = check(&env.repo, &db, &o).unwrap();
    assert_eq!(failures.borrow().clone(), Vec::<String>::new());
    assert!(r.equal(), "{:?}", r.difference);
    let first = load_trace("trace-s2.jsonl").last().unwrap().data_version;
    assert_eq!(r.data_version, first);
    assert!(
        next.get() > 100,
        "{} batches committed during the check",
        next.get()
    );
    assert!(r.data_version_end > first + 50, "{r:?}");
    assert!(r.steps > 100);
}

/// Two databases at rest: equal to itself, and the first difference otherwise (a restore into a
/// node uses it when the node's database is at the restored data_version).
#[test]
fn compare_databases_at_rest() {
    use store::ops::check::compare_databases;
    let env = Env::new(false);
    let a = live(&env, 3);
    assert_eq!(
        compare_databases(&a, &testdata("db-s3.sqlite3")).unwrap(),
        None
    );
    Connection::open(&a)
        .unwrap()
        .execute("UPDATE invoices SET label = 'changed' WHERE id = 40", [])
        .unwrap();
    let d = compare_databases(&a, &testdata("db-s3.sqlite3"))
        .unwrap()
        .unwrap();
    assert_eq!((d.table.as_str(), d.rowid), ("invoices", Some(40)));
    assert!(d.what.starts_with("column label"), "{d}");
    let d = compare_databases(&a, &testdata("db-s1.sqlite3"))
        .unwrap()
        .unwrap();
    assert_ne!(d.table, "schema");
}
