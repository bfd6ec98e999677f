//! Restore's own checks, each fed a repository that only it catches: the version-gap check
//! (a journal missing batches whose statements do not show it), the `vars.data_version` check
//! (a version asked for inside a deleted segment: the journal before it replays cleanly to an
//! older version), and `PRAGMA integrity_check` (a snapshot of a database whose index lost
//! entries: every chunk authenticates, the version is right). Without the check, each restore
//! would hand the operator a wrong database without a word.

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

/// A version asked for inside the deleted segment: the journal before the hole replays without
/// error to the last version before it, which only the `vars.data_version` check tells from
/// the one asked for.
#[test]
fn a_version_inside_a_deleted_segment_fails_the_data_version_check() {
    let env = Env::new(true);
    let s1 = load_trace("trace-s1.jsonl");
    journal_without_its_middle(&env, &s1[..900], 300, 600);
    let asked = s1[450].data_version;
    let out = env.path("at.sqlite3");
    let err = restore(&env.repo, &out, &RestoreTarget::Version(asked)).unwrap_err();
    assert!(
        matches!(&err, Error::RestoreCheck { what, .. }
            if what.contains(&format!("vars.data_version is {}, expected {asked}", s1[299].data_version))),
        "{err}"
    );
    assert!(!out.exists(), "no output");
    // The newest state: the hole is a gap.
    let err = restore(&env.repo, &out, &RestoreTarget::Latest).unwrap_err();
    assert!(err.to_string().contains("gap"), "{err}");
    // Before the hole, exact.
    restore(
        &env.repo,
        &out,
        &RestoreTarget::Version(s1[299].data_version),
    )
    .unwrap();
    assert!(dump(&out) == dump_after(&s1, 300, env.dir.path()));
}

/// Batches that set `vars.data_version` outright (lightningd bumps it relative to the last
/// value, so a hole in its batches also leaves the version short): a journal missing some of
/// them replays to the right version and a sound database, short of their rows. Only the check
/// that each batch follows the previous one stops that restore.
#[test]
fn a_gap_that_leaves_the_version_right_fails_the_gap_check() {
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
    let err = restore(&env.repo, &out, &RestoreTarget::Latest).unwrap_err();
    assert!(
        matches!(&err, Error::Corrupt { object, what }
            if object == "journal" && what.contains("data_version 61 follows 30") && what.contains("gap")),
        "{err}"
    );
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
