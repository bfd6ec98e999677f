//! Restore's own checks, each fed a repository that should not restore: a journal missing a
//! segment (format 2 refuses it by the segments' links, naming the missing one; in format 1 the
//! version-gap check and the `vars.data_version` check were what stood between it and a wrong
//! database, see the replay without checks below), and `PRAGMA integrity_check` (a snapshot of
//! a database whose index lost entries: every chunk authenticates, the version is right).
//! Without them, each restore would hand the operator a wrong database without a word.

use rusqlite::Connection;
use store::ops::restore::{restore, RestoreTarget};
use store::{Batch, Error};

use crate::common::*;

/// Segments 0, 1 and 2 of `batches` (split at `a` and `b`), then segment 1 deleted (an
/// attacker with access to the storage, or a bad copy).
fn journal_without_its_middle(env: &Env, batches: &[Batch], a: usize, b: usize) {
    let mut w = env.writer();
    append_all(&mut w, &batches[..a]);
    w.rotate().unwrap();
    append_all(&mut w, &batches[a..b]);
    w.rotate().unwrap();
    append_all(&mut w, &batches[b..]);
    drop(w);
    env.repo
        .backend()
        .stream_delete("0000000000000001")
        .unwrap();
}

/// The error of a journal whose segment 1 is gone: corruption naming the missing segment.
#[track_caller]
fn assert_hole(err: &Error) {
    assert!(
        matches!(err, Error::Corrupt { object, what }
            if object == "journal/0000000000000001"
                && what.contains("the journal jumps from segment 0000000000000000 to 0000000000000002")),
        "{err}"
    );
}

/// A version asked for inside the deleted segment: the journal before the hole replays without
/// error to the last version before it, which only the `vars.data_version` check tells from
/// the one asked for.
#[test]
fn a_version_inside_a_deleted_segment_is_refused_naming_the_hole() {
    let env = Env::new(true);
    let s1 = load_trace("trace-s1.jsonl");
    journal_without_its_middle(&env, &s1[..900], 300, 600);
    let asked = s1[450].data_version;
    let out = env.path("at.sqlite3");
    // Format 2: each segment's link names the one it follows, so the hole is refused before
    // any replay, naming the missing segment (format 1 replayed to the last version before it,
    // which only the `vars.data_version` check told from the one asked for).
    let err = restore(&env.repo, &out, &RestoreTarget::Version(asked)).unwrap_err();
    assert_hole(&err);
    assert!(!out.exists(), "no output");
    // The newest state: the same.
    let err = restore(&env.repo, &out, &RestoreTarget::Latest).unwrap_err();
    assert_hole(&err);
    assert!(!out.exists(), "no output");
    // Before the hole too: the journal is read whole, and format 2 names the damage rather
    // than restore from a journal it knows is incomplete.
    let err = restore(
        &env.repo,
        &out,
        &RestoreTarget::Version(s1[299].data_version),
    )
    .unwrap_err();
    assert_hole(&err);
    assert!(!out.exists(), "no output");
}

/// Batches that set `vars.data_version` outright (lightningd bumps it relative to the last
/// value, so a hole in its batches also leaves the version short): a journal missing some of
/// them replays to the right version and a sound database, short of their rows. Only the check
/// that each batch follows the previous one stops that restore.
#[test]
fn a_gap_that_leaves_the_version_right_is_refused_naming_the_hole() {
    let mut batches = vec![Batch {
        data_version: 1,
        writes: vec![
            "CREATE TABLE vars (name TEXT PRIMARY KEY, val TEXT, intval INTEGER)".into(),
            "CREATE TABLE payments (id INTEGER PRIMARY KEY, msat INTEGER)".into(),
            "INSERT INTO vars (name, intval) VALUES ('data_version', 1)".into(),
        ],
    }];
    for v in 2..=90u32 {
        batches.push(Batch {
            data_version: v,
            writes: vec![
                format!("INSERT INTO payments (id, msat) VALUES ({v}, {})", v * 1000),
                format!("UPDATE vars SET intval = {v} WHERE name = 'data_version'"),
            ],
        });
    }
    let env = Env::new(false);
    journal_without_its_middle(&env, &batches, 30, 60);
    let out = env.path("latest.sqlite3");
    // Format 2 refuses the hole by the segments' links (format 1 needed the gap check:
    // "data_version 61 follows 30").
    let err = restore(&env.repo, &out, &RestoreTarget::Latest).unwrap_err();
    assert_hole(&err);
    assert!(!out.exists());
    // What the check stands between: those batches replay to version 90, integrity ok.
    let mut rp = store::replay::Replayer::open(&env.path("unchecked.sqlite3"), true).unwrap();
    for b in batches[..30].iter().chain(&batches[60..]) {
        rp.apply(&store::journal::Record {
            batch: b.clone(),
            supersedes: false,
            time_ms: 0,
        })
        .unwrap();
    }
    assert_eq!(rp.data_version().unwrap(), 90);
    rp.finish(&env.path("unchecked.sqlite3")).unwrap();
    assert_eq!(
        store::replay::integrity_check(&env.path("unchecked.sqlite3")).unwrap(),
        "ok"
    );
}

/// A node database whose index lost entries (here: rows added while the index was hidden from
/// the schema), stored as the first snapshot the way `backup-cli init --lightning-dir` stores
/// it. Its pages authenticate and its version is right: restore must still refuse to hand it
/// over as a good database.
#[test]
fn a_database_that_fails_integrity_check_is_not_restored() {
    let env = Env::new(true);
    let node = env.path("node.sqlite3");
    std::fs::copy(testdata("db-s1.sqlite3"), &node).unwrap();
    {
        let c = Connection::open(&node).unwrap();
        c.execute_batch(
            "CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT);
             CREATE INDEX notes_body ON notes (body);
             INSERT INTO notes (body) VALUES ('a'), ('b');",
        )
        .unwrap();
        let (root, sql): (i64, String) = c
            .query_row(
                "SELECT rootpage, sql FROM sqlite_master WHERE name = 'notes_body'",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        c.execute_batch(
            "PRAGMA writable_schema = ON;
             DELETE FROM sqlite_master WHERE name = 'notes_body';",
        )
        .unwrap();
        drop(c);
        let c = Connection::open(&node).unwrap();
        c.execute("INSERT INTO notes (body) VALUES ('c')", [])
            .unwrap();
        c.execute_batch("PRAGMA writable_schema = ON;").unwrap();
        c.execute(
            "INSERT INTO sqlite_master (type, name, tbl_name, rootpage, sql) \
             VALUES ('index', 'notes_body', 'notes', ?1, ?2)",
            rusqlite::params![root, sql],
        )
        .unwrap();
    }
    assert_ne!(
        store::replay::integrity_check(&node).unwrap(),
        "ok",
        "the node database is damaged"
    );
    let m =
        store::ops::seed::snapshot_database(&env.repo, &node, &env.path("seed"), "init").unwrap();
    let out = env.path("restored.sqlite3");
    let err = restore(&env.repo, &out, &RestoreTarget::Snapshot(m.id.to_string())).unwrap_err();
    assert!(
        matches!(&err, Error::RestoreCheck { what, .. } if what.contains("integrity_check") && what.contains("notes_body")),
        "{err}"
    );
    assert!(!out.exists());
    let err = restore(&env.repo, &out, &RestoreTarget::Latest).unwrap_err();
    assert!(matches!(err, Error::RestoreCheck { .. }), "{err}");
}
