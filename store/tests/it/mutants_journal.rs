//! Survivors of the mutation run in the journal writer (docs/mutants.md), killed by what the
//! plugin would answer lightningd.

use store::journal::segment::MAX_RECORD;
use store::journal::Record;
use store::{Batch, Error};

use crate::common::Env;

/// A batch with one statement whose record encodes to `size` bytes (before the seal).
fn batch_of(version: u32, size: usize) -> Batch {
    let stmt = |n: usize| format!("INSERT INTO t VALUES ('{}')", "x".repeat(n));
    let enc = |b: &Batch| {
        Record {
            batch: b.clone(),
            supersedes: false,
            time_ms: 0,
        }
        .encode()
        .len()
    };
    let probe = Batch {
        data_version: version,
        writes: vec![stmt(0)],
    };
    let fixed = enc(&probe);
    // A longer statement may take a longer length prefix: adjust until it fits exactly.
    let mut n = size - fixed;
    loop {
        let b = Batch {
            data_version: version,
            writes: vec![stmt(n)],
        };
        match enc(&b) {
            s if s == size => return b,
            s if s > size => n -= s - size,
            s => n += size - s,
        }
    }
}

fn small(version: u32) -> Batch {
    Batch {
        data_version: version,
        writes: vec![format!(
            "UPDATE vars SET intval={version} WHERE name='data_version'"
        )],
    }
}

/// A batch whose record is over the limit a reader accepts is refused before anything is
/// stored, with the sizes (sealed) in the error; one of exactly the limit is stored and read
/// back by the next writer (the limit is inclusive).
#[test]
fn a_batch_over_the_record_limit_is_refused_one_at_the_limit_is_stored() {
    for encrypted in [false, true] {
        let env = Env::new(encrypted);
        let overhead = env.repo.crypto().overhead() as u64;
        let mut w = env.writer();
        w.append(&small(1)).unwrap();
        let over = batch_of(2, MAX_RECORD + 1);
        match w.append(&over) {
            Err(Error::BatchTooLarge { version, size, max }) => {
                assert_eq!(version, 2);
                assert_eq!(max, MAX_RECORD as u64 + overhead);
                assert_eq!(size, MAX_RECORD as u64 + 1 + overhead);
            }
            other => panic!("a record over the limit was answered {other:?}"),
        }
        assert_eq!(
            w.last_version(),
            Some(1),
            "nothing of the refused batch counts"
        );
        // Not a failure of the backup: the writer takes the next batch.
        let at = batch_of(2, MAX_RECORD);
        w.append(&at).unwrap();
        drop(w);
        let w = env
            .reopen()
            .writer("reader", store::Durability::Fsync)
            .unwrap();
        assert_eq!(
            w.last_version(),
            Some(2),
            "the batch at the limit is read back"
        );
    }
}

/// A compaction that cannot start the next journal segment, nor remove what it made of it,
/// stops the writer: a restart continues in the newest segment, so nothing may be appended to
/// the older one meanwhile. The next writer (lightningd restarted) goes on.
#[test]
fn a_half_made_segment_left_behind_stops_the_writer_until_a_restart() {
    use std::sync::{Arc, Mutex};

    use store::backend::fault::{Fault, FaultBackend, FaultPlan};
    use store::ops::compact::{compact, CompactOptions};
    use store::{Durability, Repository};

    let s1 = crate::common::load_trace("trace-s1.jsonl");
    let n = 12;
    // The same steps in a new repository each time; returns it, the writer, the fault plan,
    // the operations counted before the compaction, and the compaction's result.
    let run = |crash_at: Option<u64>| {
        let env = Env::new(false);
        let plan = FaultPlan::new();
        let faulty = FaultBackend::new(env.repo.backend().clone(), plan.clone());
        let repo = Repository::open_backend(Arc::new(faulty), None).unwrap();
        let mut w = repo.writer("w", Durability::Fsync).unwrap();
        crate::common::append_all(&mut w, &s1[..n]);
        let next = store::journal::stream_name(w.segment() + 1);
        let before = plan.ops();
        if let Some(k) = crash_at {
            plan.set(before + k, Fault::Crash);
        }
        let w = Mutex::new(w);
        let res = compact(
            &repo,
            &w,
            &CompactOptions {
                cache_dir: env.path("cache"),
                holder: "test compaction".into(),
            },
        );
        (env, repo, w, plan, before, next, res)
    };
    // Where the compaction starts the next segment: its header is the first append to it.
    let (_env, _, _, plan, before, next, res) = run(None);
    res.unwrap();
    let header_append = plan
        .log()
        .iter()
        .find_map(|l| {
            let (num, what) = l.split_once(' ')?;
            what.starts_with(&format!("append journal/{next}.log"))
                .then(|| num.parse::<u64>().unwrap())
        })
        .expect("the compaction starts the next segment");

    let (_env, repo, w, plan, _, _, res) = run(Some(header_append - before));
    assert!(
        res.is_err(),
        "the compaction fails with its segment half made"
    );
    // The storage works again, but the half-made segment is still there.
    plan.restart();
    let e = w
        .lock()
        .unwrap()
        .append(&s1[n])
        .expect_err("appending in the older segment after a half-made newer one");
    assert!(e.to_string().contains("earlier failure"), "{e}");
    drop(w);
    // A restart reads the journal and goes on.
    let mut w = repo.writer("w2", Durability::Fsync).unwrap();
    assert_eq!(w.last_version(), Some(s1[n - 1].data_version));
    w.append(&s1[n]).unwrap();
}

/// A new repository whose journal holds `batches`, and its writer.
fn journal_of(encrypted: bool, batches: &[Batch]) -> (Env, store::journal::JournalWriter) {
    let env = Env::new(encrypted);
    let mut w = env.writer();
    crate::common::append_all(&mut w, batches);
    (env, w)
}

/// The link of segment 1 as stored.
fn link_of_segment_1(repo: &store::Repository) -> store::journal::Predecessor {
    use store::journal::reader;
    use store::journal::segment::Recovery;
    let segs = reader::segments(repo).unwrap();
    let seg = segs.iter().find(|s| s.seq == 1).expect("segment 1");
    let c = reader::open_segment(repo, seg, Recovery::Strict).unwrap();
    c.link
        .expect("segment 1 has a link")
        .predecessor
        .expect("it names segment 0")
}

/// lightningd stops right after a compaction began a new segment, before any batch of it: the
/// next writer writes that segment's link from the segment before it as stored, naming its
/// newest batch that is not only PRAGMAs. Here the segment before ends in a PRAGMA-only batch
/// of the version before that, as lightningd sends it when it restarts after a crash between
/// the hook and its COMMIT (docs/format.md, "data_version rules"), and the next batch re-sends
/// the last version. The restore is exact; a link naming the PRAGMA's version made restore
/// refuse this good journal, and one naming no version left the predecessor's end unchecked.
#[test]
fn a_segment_begun_before_a_restart_links_to_its_predecessors_newest_real_batch() {
    use store::ops::restore::{restore, RestoreTarget};
    use store::AppendOutcome;

    let s1 = crate::common::load_trace("trace-s1.jsonl");
    let n = 40;
    let last = s1[n - 1].data_version;
    for encrypted in [false, true] {
        let env = Env::new(encrypted);
        let mut w = env.writer();
        crate::common::append_all(&mut w, &s1[..n]);
        drop(w);
        // lightningd restarted after a crash between the hook of `last` and its COMMIT.
        let mut w = env.writer();
        let pragma = Batch {
            data_version: last - 1,
            writes: vec!["PRAGMA foreign_keys = OFF;".into()],
        };
        assert_eq!(w.append(&pragma).unwrap(), AppendOutcome::Pragma);
        w.rotate().unwrap(); // a compaction began segment 1 ...
        drop(w); // ... and lightningd stopped before its next batch
        let mut w = env.writer();
        assert_eq!(
            w.append(&s1[n - 1]).unwrap(),
            AppendOutcome::Superseded { version: last }
        );
        crate::common::append_all(&mut w, &s1[n..n + 10]);
        drop(w);

        let out = env.path("restored.sqlite3");
        let rep = restore(&env.repo, &out, &RestoreTarget::Latest).unwrap();
        assert_eq!(rep.data_version, s1[n + 9].data_version);
        assert_eq!(
            crate::common::dump(&out),
            crate::common::dump_after(&s1, n + 10, env.dir.path())
        );
        let link = link_of_segment_1(&env.repo);
        assert_eq!(
            (link.seq, link.last_version),
            (0, Some(last)),
            "segment 1's link names segment 0 and its newest real batch"
        );
    }
}

/// Segment 0 swapped for segment 0 of a fork of the repository: a copy of it written on with
/// the node's key elsewhere (a clone of the node, or a copied destination), holding as many
/// frames and the same newest version, but another batch at its end. Only the chain that
/// segment 1's link names tells the two apart. Restore refuses it; without that check it
/// returned the fork's batch followed by this repository's later ones, a state no node had.
#[test]
fn a_predecessor_swapped_for_a_forks_segment_of_the_same_length_is_refused() {
    use store::ops::restore::{restore, RestoreTarget};

    let s1 = crate::common::load_trace("trace-s1.jsonl");
    let n = 40;
    let env = Env::new(true);
    let mut w = env.writer();
    crate::common::append_all(&mut w, &s1[..n]);
    drop(w);
    let fork_dir = env.path("fork");
    crate::common::copy_dir(&env.path("repo"), &fork_dir);
    // The fork stores the same version with other statements.
    let mut other = s1[n].clone();
    other.writes.insert(
        0,
        "INSERT INTO vars (name, intval) VALUES ('forked', 1);".into(),
    );
    let fork = env.open_copy(&fork_dir);
    let mut fw = fork.writer("fork", store::Durability::Fsync).unwrap();
    fw.append(&other).unwrap();
    drop(fw);
    let mut w = env.writer();
    w.append(&s1[n]).unwrap();
    w.rotate().unwrap();
    crate::common::append_all(&mut w, &s1[n + 1..n + 10]);
    drop(w);
    let out = env.path("restored.sqlite3");
    restore(&env.repo, &out, &RestoreTarget::Latest).expect("before the swap");
    std::fs::remove_file(&out).unwrap();

    let seg0 = "journal/0000000000000000.log";
    std::fs::copy(fork_dir.join(seg0), env.path("repo").join(seg0)).unwrap();
    let err = restore(&env.repo, &out, &RestoreTarget::Latest).unwrap_err();
    assert!(
        matches!(&err, Error::Corrupt { what, .. }
            if what.contains("its predecessor's last record is not the one it followed")),
        "{err}"
    );
    assert!(!out.exists(), "no output");
}

/// The newest segment deleted (or the journal rolled back to before it) after compaction sealed
/// the one before: the writer refuses, naming the missing segment, and stores nothing. Writing
/// on in the sealed segment's place would put acknowledged batches where no reader looks (a
/// sealed segment hides a stream of the same number).
#[test]
fn a_deleted_newest_segment_after_a_sealed_one_stops_the_writer() {
    use std::sync::Mutex;

    let s1 = crate::common::load_trace("trace-s1.jsonl");
    let (env, w) = journal_of(true, &s1[..30]);
    let w = Mutex::new(w);
    env.compact(&w);
    let mut w = w.into_inner().unwrap();
    assert_eq!(w.segment(), 1);
    crate::common::append_all(&mut w, &s1[30..40]);
    drop(w);
    env.repo
        .backend()
        .stream_delete(&store::journal::stream_name(1))
        .unwrap();

    let e = env
        .repo
        .writer("restarted", store::Durability::Fsync)
        .err()
        .expect("a writer on a journal missing its newest segment");
    assert!(
        matches!(&e, Error::Corrupt { object, what }
            if object == "journal/0000000000000001" && what.contains("is missing")),
        "{e}"
    );
    let segs = store::journal::reader::segments(&env.repo).unwrap();
    assert!(segs.iter().all(|s| s.sealed), "nothing written: {segs:?}");
}

/// A segment closed by a rotation and read back from storage, not from the writer's memory
/// (lightningd restarted before compaction sealed it): its successor's link counts its frames
/// as stored, so the journal restores exactly, from the streams and after the compaction that
/// seals it from the stream.
#[test]
fn a_rotated_segment_read_back_after_a_restart_restores_exactly() {
    use std::sync::Mutex;
    use store::ops::restore::{restore, RestoreTarget};

    let s1 = crate::common::load_trace("trace-s1.jsonl");
    let (env, mut w) = journal_of(true, &s1[..30]);
    w.rotate().unwrap();
    crate::common::append_all(&mut w, &s1[30..45]);
    w.rotate().unwrap();
    crate::common::append_all(&mut w, &s1[45..50]);
    drop(w);
    let want = crate::common::dump_after(&s1, 50, env.dir.path());
    let out = env.path("streams.sqlite3");
    let rep = restore(&env.repo, &out, &RestoreTarget::Latest).unwrap();
    assert_eq!(rep.data_version, s1[49].data_version);
    assert_eq!(crate::common::dump(&out), want);

    // The restarted writer's compaction seals segments 0 and 1 from what is stored.
    let w = Mutex::new(env.writer());
    env.compact(&w);
    let mut w = w.into_inner().unwrap();
    crate::common::append_all(&mut w, &s1[50..55]);
    drop(w);
    let out = env.path("sealed.sqlite3");
    restore(&env.repo, &out, &RestoreTarget::Latest).unwrap();
    assert_eq!(
        crate::common::dump(&out),
        crate::common::dump_after(&s1, 55, env.dir.path())
    );
}

/// PRAGMA-only batches repeat the current version, or the one before it at the start of a
/// session (docs/format.md, "data_version rules"); any other version means lightningd's
/// database and the backup disagree, and the batch is refused before anything is stored.
#[test]
fn a_pragma_batch_of_another_version_is_refused() {
    let s1 = crate::common::load_trace("trace-s1.jsonl");
    let (env, w) = journal_of(false, &s1[..20]);
    drop(w);
    let last = s1[19].data_version;
    let pragma = |v: u32| Batch {
        data_version: v,
        writes: vec!["PRAGMA foreign_keys = ON;".into()],
    };
    let gap = |r: store::Result<store::AppendOutcome>| matches!(r, Err(Error::VersionGap { expected, got }) if expected == last && got != last);
    // A new session: the version before is lightningd's restart after a crash; older is not.
    let mut w = env.writer();
    let r = w.append(&pragma(last - 2));
    assert!(gap(r), "a PRAGMA two versions back at a session's start");
    assert_eq!(
        w.append(&pragma(last - 1)).unwrap(),
        store::AppendOutcome::Pragma
    );
    // Once the session has stored a batch, only its own version.
    w.append(&s1[20]).unwrap();
    let now = s1[20].data_version;
    assert_eq!(
        w.append(&pragma(now)).unwrap(),
        store::AppendOutcome::Pragma
    );
    match w.append(&pragma(now - 1)) {
        Err(Error::VersionGap { expected, got }) => assert_eq!((expected, got), (now, now - 1)),
        other => panic!("a PRAGMA of the version before, mid-session: {other:?}"),
    }
    drop(w);
    assert_eq!(
        env.repo
            .writer("reader", store::Durability::Fsync)
            .unwrap()
            .last_version(),
        Some(now)
    );
}

/// A snapshot seeded from the node's database (`backup-cli repair` or `init` on a repository
/// whose journal is behind the node) is newer than the journal's newest batch: the writer
/// takes the node's next version, and refuses the snapshot's own version sent again: the
/// backup cannot supersede a batch it holds only inside a snapshot, so that is the node having
/// lost state ("lost some state", with the hint not to start the node until the operator knows
/// which is newer), not a backup behind the node (whose hint says to re-initialise it).
#[test]
fn a_seeded_snapshot_newer_than_the_journal_sets_the_version_the_writer_expects() {
    let s1 = crate::common::load_trace("trace-s1.jsonl");
    // A journal of the first 30 batches, and the node's database after the first `n` stored
    // as a snapshot.
    let seeded = |n: usize| {
        let (env, w) = journal_of(false, &s1[..30]);
        drop(w);
        let db = env.path("node.sqlite3");
        let mut rp = store::replay::Replayer::open(&db, true).unwrap();
        for b in &s1[..n] {
            rp.apply(&Record {
                batch: b.clone(),
                supersedes: false,
                time_ms: 0,
            })
            .unwrap();
        }
        rp.finish(&db).unwrap();
        store::ops::seed::snapshot_database(&env.repo, &db, &env.path("scratch"), "test").unwrap();
        env
    };
    // The snapshot at the journal's own newest version: that batch is still in the journal,
    // so lightningd sending it again (a crash between the hook and its COMMIT) supersedes it.
    let env = seeded(30);
    let mut w = env.writer();
    let v = s1[29].data_version;
    assert_eq!(
        w.append(&s1[29]).unwrap(),
        store::AppendOutcome::Superseded { version: v }
    );
    drop(w);

    // The node's database ten batches ahead of the journal.
    let env = seeded(40);
    let mut w = env.writer();
    let snap = s1[39].data_version;
    assert_eq!(w.last_version(), Some(snap));
    match w.append(&s1[39]) {
        Err(Error::BackupAhead { backup, node, .. }) => {
            assert_eq!((backup, node), (snap, snap - 1))
        }
        other => panic!("the snapshot's version sent again: {other:?}"),
    }
    assert_eq!(
        w.append(&s1[40]).unwrap(),
        store::AppendOutcome::VersionsMatch
    );
}

/// The journal bytes since the newest snapshot, as the plugin reports them (`backup-status`,
/// the metrics) and counts them for its automatic compaction, are what `stats` reads from the
/// repository: after appends, after a rotation, after a restart, after a compaction, and after a
/// compaction that found too little to snapshot but rotated the journal all the same.
#[test]
fn the_writers_bytes_since_the_snapshot_are_what_the_repository_holds() {
    use std::sync::Mutex;
    use store::journal::JournalWriter;

    let s1 = crate::common::load_trace("trace-s1.jsonl");
    let (env, mut w) = journal_of(true, &s1[..30]);
    let stored = || {
        store::ops::stats::stats(&env.repo)
            .unwrap()
            .journal_bytes_since_snapshot
    };
    let same = |w: &JournalWriter, when: &str| -> u64 {
        let n = w.bytes_since_snapshot();
        assert_eq!(n, stored(), "the writer's count {when}");
        n
    };
    let first = same(&w, "with no snapshot");
    w.rotate().unwrap();
    crate::common::append_all(&mut w, &s1[30..40]);
    let two = same(&w, "with no snapshot, two segments");
    assert!(two > first);
    drop(w);
    let w = env.writer();
    assert_eq!(same(&w, "after a restart, with no snapshot"), two);

    let w = Mutex::new(w);
    assert!(env.compact(&w).snapshot.is_some());
    let after = same(&w.lock().unwrap(), "after a compaction");
    assert!(
        after < two,
        "a compaction lowers the count: {after} >= {two}"
    );
    // The snapshot holds all but the newest batch; with no batch since, the next compaction
    // rotates, then finds nothing to snapshot.
    let r = env.compact(&w);
    assert!(r.snapshot.is_none(), "{:?}", r.note);
    crate::common::append_all(&mut w.lock().unwrap(), &s1[40..45]);
    let rotated = same(&w.lock().unwrap(), "after a compaction that only rotated");
    assert!(rotated > after);
    drop(w);
    let w = env.writer();
    assert_eq!(same(&w, "after a restart, since a snapshot"), rotated);
}
