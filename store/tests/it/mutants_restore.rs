//! What restore reports and refuses, for the mutants of `ops/restore.rs` the other tests let
//! through (docs/mutants.md): when the restored state was stored, and which version a refusal
//! names when it cannot restore the one asked for.

use std::sync::Mutex;

use store::journal::reader::{self, JournalReader};
use store::journal::segment::Recovery;
use store::journal::stream_name;
use store::journal::Record;
use store::ops::restore::{restore, RestoreTarget};
use store::Error;

use crate::common::*;

/// The journal's real (not PRAGMA-only) batches, as stored.
fn real_records(env: &Env) -> impl Iterator<Item = Record> + '_ {
    JournalReader::open(&env.repo, 0, Recovery::Strict)
        .unwrap()
        .map(|r| r.unwrap().1)
        .filter(|r| !r.pragma_only())
}

/// When the real batch of version `v` was stored.
fn stored_at(env: &Env, v: u32) -> u64 {
    real_records(env)
        .find(|r| r.batch.data_version == v)
        .unwrap()
        .time_ms
}

/// `--to-version V` reports when V itself was stored, not the batch before it.
#[test]
fn a_restore_reports_when_the_restored_state_was_stored() {
    let env = Env::new(true);
    let s1 = load_trace("trace-s1.jsonl");
    // A batch that is not only PRAGMAs, after one that is not either: the state asked for and
    // the one before it, stored a few milliseconds apart.
    let k = (50..s1.len())
        .find(|&i| !s1[i].is_pragma_only() && !s1[i - 1].is_pragma_only())
        .unwrap();
    let mut w = env.writer();
    append_all(&mut w, &s1[..k]);
    std::thread::sleep(std::time::Duration::from_millis(5));
    append_all(&mut w, &s1[k..k + 20]);
    drop(w);
    let want = s1[k].data_version;
    assert_ne!(
        stored_at(&env, want),
        stored_at(&env, want - 1),
        "the test needs two times"
    );
    let out = env.path("at.sqlite3");
    let rep = restore(&env.repo, &out, &RestoreTarget::Version(want)).unwrap();
    assert_eq!(rep.data_version, want);
    assert_eq!(rep.restored_time_ms, stored_at(&env, want));
}

/// A version whose history was pruned away is refused naming that version and the oldest one
/// there is; in a repository that holds nothing, a version is refused as not available (not
/// as an empty repository, which is what a restore of the newest state says).
#[test]
fn a_version_that_is_not_there_is_refused_naming_it() {
    let env = Env::new(false);
    let out = env.path("x.sqlite3");
    match restore(&env.repo, &out, &RestoreTarget::Version(5)).unwrap_err() {
        Error::VersionNotAvailable { asked: 5, why } => {
            assert!(why.contains("no snapshot at or below"), "{why}")
        }
        e => panic!("{e}"),
    }
    assert!(matches!(
        restore(&env.repo, &out, &RestoreTarget::Latest).unwrap_err(),
        Error::EmptyRepository
    ));

    // Segment 0 of 300 batches, a snapshot in segment 1, then segment 0 deleted, as a prune
    // deletes the journal older than the oldest snapshot it keeps.
    let s1 = load_trace("trace-s1.jsonl");
    let w = Mutex::new(env.writer());
    append_all(&mut w.lock().unwrap(), &s1[..300]);
    w.lock().unwrap().rotate().unwrap();
    append_all(&mut w.lock().unwrap(), &s1[300..320]);
    let snap = env.compact(&w).snapshot.unwrap().data_version;
    append_all(&mut w.lock().unwrap(), &s1[320..340]);
    drop(w);
    for s in reader::segments(&env.repo).unwrap() {
        if s.seq == 0 {
            if s.sealed {
                env.repo.backend().delete(&s.object_name()).unwrap();
            } else {
                env.repo.backend().stream_delete(&stream_name(0)).unwrap();
            }
        }
    }
    let asked = s1[100].data_version;
    match restore(&env.repo, &out, &RestoreTarget::Version(asked)).unwrap_err() {
        Error::VersionNotAvailable { asked: a, why } => {
            assert_eq!(a, asked);
            assert!(
                why.contains(&format!("oldest restorable data_version is {snap}")),
                "{why}"
            );
        }
        e => panic!("{e}"),
    }
    assert!(!out.exists());
}

/// The newest state is the newest batch that is not only PRAGMAs: one lightningd sends at its
/// start (repeating the version) after it changes neither the version nor the hash two copies
/// of a repository are compared by (`backup-cli restore` with several copies).
#[test]
fn a_trailing_pragma_batch_does_not_change_the_newest_state() {
    let env = Env::new(false);
    let s1 = load_trace("trace-s1.jsonl");
    let mut w = env.writer();
    append_all(&mut w, &s1[..100]);
    let real = real_records(&env).last().unwrap();
    let before = store::ops::restore::newest(&env.repo, false).unwrap();
    assert_eq!(before.data_version, real.batch.data_version);
    let hash = blake3::hash(&real.encode()).to_hex().to_string();
    assert_eq!(before.record_hash.as_deref(), Some(hash.as_str()));
    w.append(&store::Batch {
        data_version: real.batch.data_version,
        writes: vec!["PRAGMA foreign_keys = ON".into()],
    })
    .unwrap();
    drop(w);
    let after = store::ops::restore::newest(&env.repo, false).unwrap();
    assert_eq!(after.data_version, real.batch.data_version);
    assert_eq!(after.record_hash.as_deref(), Some(hash.as_str()));
}

/// A snapshot restored on its own reports when its state was stored (its last batch's time,
/// kept in the manifest); a version past the end of the backup is refused naming the end.
#[test]
fn a_snapshot_reports_its_time_and_a_version_past_the_end_names_the_end() {
    let env = Env::new(true);
    let s1 = load_trace("trace-s1.jsonl");
    let w = Mutex::new(env.writer());
    append_all(&mut w.lock().unwrap(), &s1[..300]);
    let snap = env.compact(&w).snapshot.unwrap();
    append_all(&mut w.lock().unwrap(), &s1[300..320]);
    drop(w);
    let stored = stored_at(&env, snap.data_version);
    assert!(stored > 0);
    let out = env.path("snap.sqlite3");
    let rep = restore(&env.repo, &out, &RestoreTarget::Snapshot(snap.id.clone())).unwrap();
    assert_eq!(rep.data_version, snap.data_version);
    assert_eq!(rep.restored_time_ms, stored);

    let end = s1[319].data_version;
    let past = env.path("past.sqlite3");
    match restore(&env.repo, &past, &RestoreTarget::Version(end + 10)).unwrap_err() {
        Error::VersionNotAvailable { asked, why } => {
            assert_eq!(asked, end + 10);
            assert!(
                why.contains(&format!("the backup ends at data_version {end}")),
                "{why}"
            );
        }
        e => panic!("{e}"),
    }
    assert!(!past.exists());
}
