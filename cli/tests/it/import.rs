//! `import`: the old plugin's real backup (pre-#4090 statements that SQLite rejects unless
//! fixed) restores to data_version 46 with integrity ok; a file with a snapshot entry (as the
//! old plugin's compaction wrote) restores to lightningd's real database; bad files fail clearly.

use crate::common::*;

fn integrity(path: &std::path::Path) -> (i64, String) {
    let c = rusqlite::Connection::open(path).unwrap();
    let v: i64 = c
        .query_row(
            "SELECT intval FROM vars WHERE name = 'data_version'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let ic: String = c
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    (v, ic)
}

#[test]
fn import_the_real_old_backup() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("node");
    std::fs::create_dir(&dir).unwrap();
    let u = url(&t.path().join("repo"));
    let dbak = testdata("pre-4090-backup.dbak");
    let j = run(&["import", "--json", "--lightning-dir", p(&dir), &u, p(&dbak)])
        .ok()
        .json();
    assert_eq!(j["created_repository"], true);
    assert_eq!(j["encrypted"], true);
    assert_eq!(j["entries"], 46);
    assert_eq!(j["statements_fixed"], 2);
    assert_eq!(j["data_version"], 46);
    assert_eq!(j["integrity_check"], "ok");
    assert_eq!(j["key_phrase"].as_str().unwrap().split(' ').count(), 24);
    assert!(dir.join("backup.key").exists());

    let out = t.path().join("restored.sqlite3");
    run(&["restore", &u, p(&out), "--lightning-dir", p(&dir)]).ok();
    assert_eq!(integrity(&out), (46, "ok".to_string()));

    // Importing again into the now non-empty repository is refused.
    run(&["import", "--lightning-dir", p(&dir), &u, p(&dbak)]).fails(4, "already holds a backup");
}

/// An old-format file: a raw database at `snap_version`, then `batches`.
fn dbak(db: &[u8], snap_version: u32, batches: &[store::Batch]) -> Vec<u8> {
    let mut body = Vec::new();
    let (mut version, mut next, mut prev, mut last, mut count) = (0u32, 512u64, 0u32, 0u64, 0u64);
    let mut add = |body: &mut Vec<u8>, v: u32, typ: u8, payload: &[u8]| {
        body.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        body.extend_from_slice(&v.to_be_bytes());
        body.push(typ);
        body.extend_from_slice(payload);
        prev = version;
        last = next;
        version = v;
        next += 9 + payload.len() as u64;
        count += 1;
    };
    add(&mut body, snap_version, 2, db);
    for b in batches {
        add(&mut body, b.data_version, 1, b.writes.join("\0").as_bytes());
    }
    let mut h = Vec::with_capacity(512);
    h.extend_from_slice(&1u32.to_be_bytes());
    h.extend_from_slice(&version.to_be_bytes());
    h.extend_from_slice(&next.to_be_bytes());
    h.extend_from_slice(&prev.to_be_bytes());
    h.extend_from_slice(&last.to_be_bytes());
    h.extend_from_slice(&count.to_be_bytes());
    h.resize(512, 0);
    h.extend_from_slice(&body);
    h
}

#[test]
fn import_a_snapshot_entry_then_statements() {
    let t = tempfile::tempdir().unwrap();
    let db = std::fs::read(testdata("db-s1.sqlite3")).unwrap();
    let file = t.path().join("backup.dbak");
    std::fs::write(&file, dbak(&db, last_version(1), &trace(2))).unwrap();
    let u = url(&t.path().join("repo"));
    let j = run(&["import", "--json", "--no-encryption", &u, p(&file)])
        .ok()
        .json();
    assert_eq!(j["snapshots"], 1);
    assert_eq!(j["data_version"], last_version(2));
    let out = t.path().join("out.sqlite3");
    run(&["restore", &u, p(&out)]).ok();
    assert_same_db(&out, &testdata("db-s2.sqlite3"));
    let s = run(&["snapshots", "--json", &u]).ok().json();
    assert_eq!(s["snapshots"][0]["data_version"], last_version(1));
}

#[test]
fn import_bad_files() {
    let t = tempfile::tempdir().unwrap();
    let u = url(&t.path().join("repo"));
    let junk = t.path().join("junk.dbak");
    std::fs::write(&junk, vec![7u8; 600]).unwrap();
    run(&["import", "--no-encryption", &u, p(&junk)])
        .fails(1, "is not a readable backup of the old plugin");
    // A cut file: the header says more than the file holds.
    let mut real = std::fs::read(testdata("pre-4090-backup.dbak")).unwrap();
    real.truncate(real.len() - 100);
    let cut = t.path().join("cut.dbak");
    std::fs::write(&cut, real).unwrap();
    run(&["import", "--no-encryption", &u, p(&cut)]).fails(1, "cut.dbak");
    run(&[
        "import",
        "--no-encryption",
        &u,
        p(&t.path().join("missing.dbak")),
    ])
    .fails(1, "reading");
    assert!(!t.path().join("repo").exists());
}
