//! The real lightningd traces through the journal, snapshots at several points, and restores
//! compared with the real databases lightningd produced.

use std::sync::Mutex;

use store::ops::restore::{restore, RestoreTarget};
use store::AppendOutcome;

use crate::common::*;

fn three_sessions(encrypted: bool) {
    let env = Env::new(encrypted);
    let s1 = load_trace("trace-s1.jsonl");
    let s2 = load_trace("trace-s2.jsonl");
    let s3 = load_trace("trace-s3.jsonl");

    // Session 1: a fresh node; a snapshot in the middle of it.
    let w = Mutex::new(env.writer());
    assert_eq!(
        w.lock().unwrap().append(&s1[0]).unwrap(),
        AppendOutcome::VersionsMatch
    );
    append_all(&mut w.lock().unwrap(), &s1[1..1200]);
    let r1 = env.compact(&w);
    let snap1 = r1.snapshot.clone().expect("a snapshot");
    assert_eq!(snap1.data_version, s1[1198].data_version);
    append_all(&mut w.lock().unwrap(), &s1[1200..]);
    drop(w);
    restore(&env.repo, &env.path("s1.sqlite3"), &RestoreTarget::Latest).unwrap();
    assert_eq!(
        dump(&env.path("s1.sqlite3")),
        dump(&testdata("db-s1.sqlite3"))
    );

    // Session 2: a restart; two snapshots during it.
    let w = Mutex::new(env.writer());
    assert_eq!(
        w.lock().unwrap().append(&s2[0]).unwrap(),
        AppendOutcome::VersionsMatch
    );
    append_all(&mut w.lock().unwrap(), &s2[1..300]);
    let r2 = env.compact(&w);
    assert!(r2.snapshot.is_some());
    append_all(&mut w.lock().unwrap(), &s2[300..]);
    let r3 = env.compact(&w);
    let snap3 = r3.snapshot.clone().unwrap();
    assert!(
        r3.bytes_added < r3.snapshot.as_ref().unwrap().db_size / 2,
        "incremental snapshot stores little"
    );
    drop(w);
    restore(&env.repo, &env.path("s2.sqlite3"), &RestoreTarget::Latest).unwrap();
    assert_eq!(
        dump(&env.path("s2.sqlite3")),
        dump(&testdata("db-s2.sqlite3"))
    );

    // Session 3.
    let mut w = env.writer();
    append_all(&mut w, &s3);
    drop(w);
    let rep = restore(&env.repo, &env.path("s3.sqlite3"), &RestoreTarget::Latest).unwrap();
    assert_eq!(rep.data_version, s3.last().unwrap().data_version);
    assert_eq!(rep.integrity_check, "ok");
    assert_eq!(
        dump(&env.path("s3.sqlite3")),
        dump(&testdata("db-s3.sqlite3"))
    );

    // The end of session 2 by data_version, across a snapshot and the journal after it.
    let v2 = s2.last().unwrap().data_version;
    let rep = restore(
        &env.repo,
        &env.path("v2.sqlite3"),
        &RestoreTarget::Version(v2),
    )
    .unwrap();
    assert_eq!(rep.data_version, v2);
    assert_eq!(
        dump(&env.path("v2.sqlite3")),
        dump(&testdata("db-s2.sqlite3"))
    );

    // Each snapshot alone, and versions in between.
    let rep = restore(
        &env.repo,
        &env.path("snap1.sqlite3"),
        &RestoreTarget::Snapshot(snap1.id.clone()),
    )
    .unwrap();
    assert_eq!(rep.data_version, snap1.data_version);
    assert_eq!(rep.replayed_batches, 0);
    let rep = restore(
        &env.repo,
        &env.path("snap3.sqlite3"),
        &RestoreTarget::Snapshot(snap3.id[..6].to_string()),
    )
    .unwrap();
    assert_eq!(rep.data_version, snap3.data_version);
    for v in [5, 600, snap1.data_version + 7, 3000] {
        let p = env.path(&format!("v{v}.sqlite3"));
        let rep = restore(&env.repo, &p, &RestoreTarget::Version(v)).unwrap();
        assert_eq!(rep.data_version, v);
        assert_eq!(rep.integrity_check, "ok");
    }
    // Beyond the journal: refused, nothing left behind.
    let too_far = s3.last().unwrap().data_version + 1;
    let err = restore(
        &env.repo,
        &env.path("far.sqlite3"),
        &RestoreTarget::Version(too_far),
    )
    .unwrap_err();
    assert!(
        matches!(err, store::Error::VersionNotAvailable { .. }),
        "{err}"
    );
    assert!(!env.path("far.sqlite3").exists());
    // Never overwrite.
    let err = restore(&env.repo, &env.path("s3.sqlite3"), &RestoreTarget::Latest).unwrap_err();
    assert!(matches!(err, store::Error::TargetExists(_)));

    let v = store::ops::verify::verify(
        &env.repo,
        &store::ops::verify::VerifyOptions {
            read_data: true,
            scratch_dir: env.path("scratch"),
        },
    )
    .unwrap();
    assert!(v.ok, "{:?}", v.problems);
    assert_eq!(v.restored_version, Some(s3.last().unwrap().data_version));
}

#[test]
fn three_sessions_plaintext() {
    three_sessions(false);
}

#[test]
fn three_sessions_encrypted() {
    three_sessions(true);
}

#[test]
fn replay_is_deterministic() {
    let env = Env::new(false);
    let s1 = load_trace("trace-s1.jsonl");
    let mut w = env.writer();
    append_all(&mut w, &s1);
    drop(w);
    restore(&env.repo, &env.path("a.sqlite3"), &RestoreTarget::Latest).unwrap();
    restore(&env.repo, &env.path("b.sqlite3"), &RestoreTarget::Latest).unwrap();
    assert_eq!(
        std::fs::read(env.path("a.sqlite3")).unwrap(),
        std::fs::read(env.path("b.sqlite3")).unwrap()
    );
}

/// lightningd died after the hook answered but before COMMIT: the next session re-sends that
/// data_version with other statements. Restore must hold the new statements only.
#[test]
fn crash_before_commit_supersedes() {
    let env = Env::new(true);
    let s1 = load_trace("trace-s1.jsonl");
    let n = 500;
    let mut w = env.writer();
    append_all(&mut w, &s1[..n]);
    let v = s1[n - 1].data_version + 1;
    let uncommitted = store::Batch {
        data_version: v,
        writes: vec![
            "INSERT INTO vars (name, val) VALUES ('uncommitted', 'x');".into(),
            format!(
                "UPDATE vars SET intval = intval + 1 WHERE name = 'data_version' AND intval = {}",
                v - 1
            ),
        ],
    };
    w.append(&uncommitted).unwrap();
    drop(w);
    // Next session: the same version with the real statements.
    let mut w = env.writer();
    assert_eq!(
        w.append(&s1[n]).unwrap(),
        AppendOutcome::Superseded { version: v }
    );
    append_all(&mut w, &s1[n + 1..]);
    drop(w);
    restore(&env.repo, &env.path("r.sqlite3"), &RestoreTarget::Latest).unwrap();
    assert_eq!(
        dump(&env.path("r.sqlite3")),
        dump(&testdata("db-s1.sqlite3"))
    );
}

#[test]
fn first_write_checks() {
    let env = Env::new(false);
    let s1 = load_trace("trace-s1.jsonl");
    let mut w = env.writer();
    append_all(&mut w, &s1[..100]);
    drop(w);
    let last = s1[99].data_version;
    // Backup behind: the node is ahead of the backup.
    let w = env.writer();
    let mut ahead = s1[100].clone();
    ahead.data_version = last + 5;
    let err = w.check(&ahead).unwrap_err();
    assert!(
        matches!(err, store::Error::BackupBehind { backup, .. } if backup == last),
        "{err}"
    );
    assert!(err.to_string().contains("Backup is out of date"));
    // Backup ahead by more than one.
    let mut old = s1[100].clone();
    old.data_version = last - 3;
    let err = w.check(&old).unwrap_err();
    assert!(matches!(err, store::Error::BackupAhead { .. }));
    assert!(err.to_string().contains("lost some state"));
    drop(w);
    // A second writer is refused, naming the holder.
    let _w1 = env.writer();
    let err = env
        .repo
        .writer("second node", store::Durability::Fsync)
        .err()
        .unwrap();
    assert!(matches!(err, store::Error::Locked { .. }));
    assert!(err.to_string().contains("test writer"), "{err}");
}

#[test]
fn wrong_key_and_no_key() {
    let dir = tempfile::tempdir().unwrap();
    let url = store::BackupUrl::File(dir.path().join("repo"));
    let key = store::MasterKey::generate();
    store::Repository::init(&url, Some(&key), true, store::ConfigBody::default()).unwrap();
    let err = store::Repository::open(&url, Some(store::MasterKey::generate())).unwrap_err();
    assert!(matches!(err, store::Error::WrongKey { .. }), "{err}");
    let err = store::Repository::open(&url, None).unwrap_err();
    assert!(matches!(err, store::Error::KeyRequired));
    assert!(store::Repository::open(&url, Some(key)).is_ok());
}

/// The comparisons above mean something: the fixture databases differ from each other.
#[test]
fn fixture_dumps_differ() {
    let d1 = dump(&testdata("db-s1.sqlite3"));
    assert!(d1.len() > 100_000);
    assert_ne!(d1, dump(&testdata("db-s2.sqlite3")));
    assert_ne!(
        dump(&testdata("db-s2.sqlite3")),
        dump(&testdata("db-s3.sqlite3"))
    );
}

fn stored_bytes(root: &std::path::Path) -> Vec<u8> {
    let mut all = Vec::new();
    for d in ["", "snapshots", "index", "packs", "journal", "locks"] {
        for e in std::fs::read_dir(root.join(d)).unwrap() {
            let p = e.unwrap().path();
            if p.is_file() {
                all.extend(std::fs::read(p).unwrap());
            }
        }
    }
    all
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Encryption at rest: no known plaintext from the traces appears in any stored byte.
#[test]
fn encrypted_repository_leaks_no_plaintext() {
    let s1 = load_trace("trace-s1.jsonl");
    // Known plaintext: blobs (keys, preimages, hashes) and string literals from the trace.
    let mut needles: Vec<Vec<u8>> = vec![
        b"SQLite format 3".to_vec(),
        b"INSERT INTO".to_vec(),
        b"data_version".to_vec(),
    ];
    for b in s1.iter().step_by(50) {
        for w in &b.writes {
            for part in w.split("x'").skip(1) {
                let hexpart: String = part.chars().take_while(|c| c.is_ascii_hexdigit()).collect();
                if hexpart.len() >= 32 {
                    needles.push(hex::decode(&hexpart[..32]).unwrap());
                    needles.push(hexpart.as_bytes()[..32].to_vec());
                }
            }
        }
    }
    assert!(needles.len() > 20);
    for encrypted in [true, false] {
        let env = Env::new(encrypted);
        let w = Mutex::new(env.writer());
        append_all(&mut w.lock().unwrap(), &s1[..1500]);
        env.compact(&w);
        append_all(&mut w.lock().unwrap(), &s1[1500..]);
        drop(w);
        let bytes = stored_bytes(&env.dir.path().join("repo"));
        let found = needles.iter().filter(|n| contains(&bytes, n)).count();
        if encrypted {
            assert_eq!(found, 0, "plaintext found in an encrypted repository");
        } else {
            assert!(
                found > 10,
                "the plaintext control found only {found} needles"
            );
        }
    }
}
