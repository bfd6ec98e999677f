//! Faults through the backend trait: torn journal tails, ENOSPC and EIO on append and publish,
//! and a crash at every mutating step of compaction and prune. After each: no acknowledged
//! batch is lost, nothing half-published is visible, verify passes, restore is exact.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use store::backend::dir::DirBackend;
use store::backend::fault::{Fault, FaultBackend, FaultPlan};
use store::backend::Backend;
use store::ops::compact::{compact, CompactOptions};
use store::ops::prune::{self, Retention};
use store::ops::restore::{restore, RestoreTarget};
use store::ops::verify::{verify, VerifyOptions};
use store::{Batch, Durability, Repository};

use crate::common::*;

fn faulty(root: &Path, plan: &FaultPlan) -> Repository {
    let inner: Arc<dyn Backend> = Arc::new(DirBackend::open(root).unwrap());
    Repository::open_backend(Arc::new(FaultBackend::new(inner, plan.clone())), None).unwrap()
}

fn plain(root: &Path) -> Repository {
    Repository::open_backend(Arc::new(DirBackend::open(root).unwrap()), None).unwrap()
}

fn new_repo(dir: &Path) -> PathBuf {
    let root = dir.join("repo");
    Repository::init_backend(
        Arc::new(DirBackend::create(&root).unwrap()),
        None,
        false,
        store::ConfigBody::default(),
    )
    .unwrap();
    root
}

/// A repository in a new directory whose journal holds the first `n` batches of trace s1, and
/// that trace.
fn journaled(
    n: usize,
    durability: Durability,
) -> (tempfile::TempDir, PathBuf, Repository, Vec<Batch>) {
    let dir = tempfile::tempdir().unwrap();
    let root = new_repo(dir.path());
    let s1 = load_trace("trace-s1.jsonl");
    let repo = plain(&root);
    let mut w = repo.writer("w", durability).unwrap();
    append_all(&mut w, &s1[..n]);
    drop(w);
    (dir, root, repo, s1)
}

/// Verify finds nothing, and the newest state restores to lightningd's database after the first
/// `n` batches of trace s1 (contents compared, not only the data_version).
fn expect_state(repo: &Repository, dir: &Path, tag: &str, n: usize) {
    let v = verify(
        repo,
        &VerifyOptions {
            read_data: true,
            scratch_dir: dir.join("scratch"),
        },
    )
    .unwrap();
    assert!(v.ok, "{tag}: verify found {:?}", v.problems);
    let out = dir.join(format!("{tag}.sqlite3"));
    let rep = restore(repo, &out, &RestoreTarget::Latest).unwrap();
    let s1 = load_trace("trace-s1.jsonl");
    assert_eq!(rep.data_version, s1[n - 1].data_version, "{tag}");
    // Dumps of lightningd's database by batch count, made once per test process.
    static EXPECTED: Mutex<Vec<(usize, String)>> = Mutex::new(Vec::new());
    let want = {
        let mut e = EXPECTED.lock().unwrap_or_else(|p| p.into_inner());
        match e.iter().find(|(k, _)| *k == n) {
            Some((_, d)) => d.clone(),
            None => {
                let d = dump_after(&s1, n, dir);
                e.push((n, d.clone()));
                d
            }
        }
    };
    assert!(
        dump(&out) == want,
        "{tag}: the restored database is not lightningd's after {n} batches"
    );
    std::fs::remove_file(out).unwrap();
}

#[test]
fn torn_tail_is_cut_and_nothing_acknowledged_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let root = new_repo(dir.path());
    let s1 = load_trace("trace-s1.jsonl");
    let plan = FaultPlan::new();
    let repo = faulty(&root, &plan);
    let mut w = repo.writer("w", Durability::Flush).unwrap();
    append_all(&mut w, &s1[..300]);
    plan.set(plan.ops() + 1, Fault::CrashTorn);
    assert!(
        w.append(&s1[300]).is_err(),
        "the torn append is not acknowledged"
    );
    drop(w);
    plan.restart();
    let repo = plain(&root);
    let w = repo.writer("w", Durability::Flush).unwrap();
    assert!(
        w.recovery_note().unwrap().contains("torn tail"),
        "{:?}",
        w.recovery_note()
    );
    assert_eq!(w.last_version(), Some(s1[299].data_version));
    drop(w);
    expect_state(&repo, dir.path(), "torn", 300);
}

#[test]
fn damaged_record_followed_by_valid_ones_is_an_error_not_skipped() {
    let (dir, root, repo, _) = journaled(50, Durability::Flush);
    let seg = root.join("journal/0000000000000000.log");
    let mut bytes = std::fs::read(&seg).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(&seg, &bytes).unwrap();
    let err = restore(&repo, &dir.path().join("x.sqlite3"), &RestoreTarget::Latest).unwrap_err();
    assert!(
        matches!(err, store::Error::Corrupt { ref object, .. } if object.contains("0000000000000000")),
        "{err}"
    );
    assert!(!dir.path().join("x.sqlite3").exists());
    let err = repo.writer("w", Durability::Flush).err().unwrap();
    assert!(
        err.is_corruption(),
        "the writer refuses a damaged journal: {err}"
    );
}

#[test]
fn enospc_and_eio_on_append_are_errors_and_the_journal_stays_whole() {
    let dir = tempfile::tempdir().unwrap();
    let root = new_repo(dir.path());
    let s1 = load_trace("trace-s1.jsonl");
    let plan = FaultPlan::new();
    let repo = faulty(&root, &plan);
    let mut w = repo.writer("w", Durability::Flush).unwrap();
    append_all(&mut w, &s1[..100]);
    for fault in [Fault::NoSpace, Fault::Eio] {
        plan.set(plan.ops() + 1, fault);
        let err = w.append(&s1[100]).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("journal"), "names the object: {msg}");
        if fault == Fault::NoSpace {
            assert!(msg.contains("disk is full"), "{msg}");
        }
        // The writer refuses to go on after a failed append (a retry could store it twice)...
        assert!(w.append(&s1[100]).is_err());
        // ...and the next process (lightningd restarted) continues where the journal ends.
        drop(w);
        w = repo.writer("w", Durability::Flush).unwrap();
    }
    // The same batch goes through once the fault is gone.
    append_all(&mut w, &s1[100..200]);
    drop(w);
    expect_state(&plain(&root), dir.path(), "enospc", 200);
}

#[test]
fn enospc_on_publish_leaves_nothing_half_published() {
    let dir = tempfile::tempdir().unwrap();
    let root = new_repo(dir.path());
    let s1 = load_trace("trace-s1.jsonl");
    let plan = FaultPlan::new();
    let repo = faulty(&root, &plan);
    let w = Mutex::new(repo.writer("w", Durability::Flush).unwrap());
    append_all(&mut w.lock().unwrap(), &s1[..800]);
    let opts = CompactOptions {
        cache_dir: dir.path().join("cache"),
        holder: "c".into(),
    };
    for k in 1..=6 {
        plan.set(plan.ops() + k, Fault::NoSpace);
        if compact(&repo, &w, &opts).is_ok() {
            break;
        }
        expect_state(&plain(&root), dir.path(), &format!("publish{k}"), 800);
    }
    append_all(&mut w.lock().unwrap(), &s1[800..900]);
    drop(w);
    expect_state(&plain(&root), dir.path(), "after", 900);
}

/// A crash before each mutating step of compaction, then of prune: reopen, verify, restore.
#[test]
fn crash_at_every_step_of_compaction_and_prune() {
    let dir = tempfile::tempdir().unwrap();
    let template = new_repo(dir.path());
    let s1 = load_trace("trace-s1.jsonl");
    {
        let repo = plain(&template);
        let w = Mutex::new(repo.writer("w", Durability::Flush).unwrap());
        let opts = CompactOptions {
            cache_dir: dir.path().join("tcache"),
            holder: "c".into(),
        };
        append_all(&mut w.lock().unwrap(), &s1[..600]);
        compact(&repo, &w, &opts).unwrap();
        append_all(&mut w.lock().unwrap(), &s1[600..1200]);
        compact(&repo, &w, &opts).unwrap();
        append_all(&mut w.lock().unwrap(), &s1[1200..1500]);
    }
    let last = 1500;
    let mut crashes = 0;
    for op in ["compact", "prune"] {
        for k in 1.. {
            let case = dir.path().join(format!("{op}-{k}"));
            copy_dir(&template, &case);
            let plan = FaultPlan::new();
            let repo = faulty(&case, &plan);
            let w = Mutex::new(repo.writer("w", Durability::Flush).unwrap());
            plan.set(plan.ops() + k, Fault::Crash);
            let res = match op {
                "compact" => compact(
                    &repo,
                    &w,
                    &CompactOptions {
                        cache_dir: dir.path().join(format!("cache-{k}")),
                        holder: "c".into(),
                    },
                )
                .map(|_| ()),
                _ => prune::plan(
                    &repo,
                    &Retention {
                        keep_last: 1,
                        ..Default::default()
                    },
                )
                .and_then(|p| prune::apply(&repo, &p, "p"))
                .map(|_| ()),
            };
            drop(w);
            let finished = res.is_ok() && !plan.crashed();
            plan.restart();
            expect_state(&plain(&case), dir.path(), &format!("{op}-{k}"), last);
            // The next compaction after a crash works and the state is still whole.
            let repo = plain(&case);
            let w = Mutex::new(repo.writer("w", Durability::Flush).unwrap());
            compact(
                &repo,
                &w,
                &CompactOptions {
                    cache_dir: dir.path().join(format!("cache2-{op}-{k}")),
                    holder: "c".into(),
                },
            )
            .unwrap();
            drop(w);
            expect_state(&repo, dir.path(), &format!("{op}-{k}-again"), last);
            std::fs::remove_dir_all(&case).unwrap();
            if finished {
                break;
            }
            crashes += 1;
            assert!(k < 100, "{op} never finished");
        }
    }
    assert!(crashes >= 8, "crashed at only {crashes} points");
}

/// A compaction told to stop (the plugin at shutdown) stops with `Cancelled` at its first safe
/// point, publishes no snapshot, leaves a repository that verifies and restores exactly, and the
/// next compaction works. (Stops at later safe points, mid-replay, are what
/// `shutdown_during_compaction_*` in plugin/tests/destinations.rs hit with the real plugin.)
#[test]
fn a_cancelled_compaction_leaves_nothing_half_done() {
    let env = Env::new(true);
    let s1 = load_trace("trace-s1.jsonl");
    let w = Mutex::new(env.writer());
    append_all(&mut w.lock().unwrap(), &s1[..1200]);
    let first = env.compact(&w).snapshot.expect("a first snapshot");
    append_all(&mut w.lock().unwrap(), &s1[1200..]);
    let opts = CompactOptions {
        cache_dir: env.path("cache"),
        holder: "test compaction".into(),
    };
    let cancel = std::sync::atomic::AtomicBool::new(true);
    let err = store::ops::compact::compact_cancellable(&env.repo, &w, &opts, &cancel).unwrap_err();
    assert!(matches!(err, store::Error::Cancelled(_)), "{err}");
    let snaps = store::ops::snapshots::list(&env.repo).unwrap();
    assert_eq!(snaps.len(), 1);
    assert_eq!(snaps[0].id, first.id);
    let v = verify(
        &env.repo,
        &VerifyOptions {
            read_data: true,
            scratch_dir: env.path(""),
        },
    )
    .unwrap();
    assert!(v.problems.is_empty(), "{:?}", v.problems);
    // The next compaction (not cancelled) makes the snapshot, and the newest state is exact.
    let second = compact(&env.repo, &w, &opts).unwrap();
    assert!(second.snapshot.is_some(), "{:?}", second.note);
    drop(w);
    let out = env.path("restored.sqlite3");
    restore(&env.repo, &out, &RestoreTarget::Latest).unwrap();
    assert_eq!(dump(&out), dump(&testdata("db-s1.sqlite3")));
}

fn segment_file(root: &Path) -> PathBuf {
    root.join("journal/0000000000000000.log")
}

#[test]
fn a_synced_journal_is_written_ahead_with_zeros_that_readers_never_see() {
    let dir = tempfile::tempdir().unwrap();
    let root = new_repo(dir.path());
    let s1 = load_trace("trace-s1.jsonl");
    let repo = plain(&root);
    let mut w = repo.writer("w", Durability::Fsync).unwrap();
    append_all(&mut w, &s1[..200]);
    let listed = repo.backend().stream_list().unwrap();
    let len = listed[0].size;
    let file = std::fs::read(segment_file(&root)).unwrap();
    assert!(
        file.len() as u64 > len,
        "appends overwrite zeros written ahead: file {} bytes, stream {len}",
        file.len()
    );
    assert!(file[len as usize..].iter().all(|&b| b == 0));
    // Another backend of the same directory (the server, a status call) sees the stream only.
    let other = DirBackend::open(&dir.path().join("repo/../repo")).unwrap();
    assert_eq!(
        other.stream_read("0000000000000000").unwrap(),
        &file[..len as usize]
    );
    assert_eq!(other.stream_list().unwrap()[0].size, len);
    drop(w);
    assert_eq!(
        std::fs::metadata(segment_file(&root)).unwrap().len(),
        len,
        "closing cuts the zeros"
    );
    expect_state(&repo, dir.path(), "closed", 200);
}

/// The zeros ahead are extended by a background thread once half are used, so no append waits
/// for that write and sync; across extensions of every size (up to 4 MiB) readers see exactly the
/// records, and closing right after an append, whether or not an extension is under way, leaves
/// the file exactly as long as the stream.
#[test]
fn the_zeros_ahead_are_extended_in_the_background_and_never_read() {
    let dir = tempfile::tempdir().unwrap();
    let b = DirBackend::create(&dir.path().join("r")).unwrap();
    let other = DirBackend::open(&dir.path().join("r")).unwrap();
    let path = dir.path().join("r/journal/s.log");
    let file_len = || std::fs::metadata(&path).unwrap().len();
    let record = |i: u64| -> Vec<u8> {
        (0..1000u64)
            .map(|k| ((i * 31 + k) % 251 + 1) as u8)
            .collect()
    };
    let mut s = b.stream_open("s", Durability::Fsync).unwrap();
    let mut expected = Vec::new();
    let append = |s: &mut Box<dyn store::backend::Stream>, expected: &mut Vec<u8>, i: u64| {
        let r = record(i);
        s.append(&r).unwrap();
        expected.extend_from_slice(&r);
    };
    append(&mut s, &mut expected, 0);
    let first = file_len();
    assert!(
        first > s.len(),
        "a new synced stream is written ahead with zeros"
    );
    let mut i = 1;
    while s.len() <= first / 2 {
        append(&mut s, &mut expected, i);
        i += 1;
    }
    let asked = std::time::Instant::now();
    while file_len() <= first && asked.elapsed() < std::time::Duration::from_secs(20) {
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    assert!(
        file_len() > first,
        "half the zeros used: the next ones are written with no append waiting for them"
    );
    // Past 4 MiB: extensions of 128 KiB up to 4 MiB.
    while s.len() < 6 << 20 {
        append(&mut s, &mut expected, i);
        if i % 700 == 0 {
            assert_eq!(
                other.stream_read("s").unwrap(),
                expected,
                "after {i} appends"
            );
            assert_eq!(other.stream_list().unwrap()[0].size, expected.len() as u64);
        }
        i += 1;
    }
    assert!(file_len() >= expected.len() as u64);
    drop(s);
    assert_eq!(file_len(), expected.len() as u64, "closing cuts every zero");
    assert_eq!(std::fs::read(&path).unwrap(), expected);
}

#[test]
fn zeros_left_by_a_crash_end_the_journal_and_appends_resume_where_the_records_end() {
    let (dir, root, repo, s1) = journaled(200, Durability::Fsync);
    let records = std::fs::metadata(segment_file(&root)).unwrap().len();
    // What a SIGKILL leaves: the zeros written ahead stay.
    let zeros_after_crash = |extra: &[u8]| {
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(segment_file(&root))
            .unwrap();
        use std::io::Write;
        f.write_all(extra).unwrap();
        f.write_all(&vec![0u8; 300 << 10]).unwrap();
    };
    zeros_after_crash(&[]);
    // Readers in another process take the zeros for the end.
    expect_state(&repo, dir.path(), "zeros", 200);
    let mut w = repo.writer("w", Durability::Fsync).unwrap();
    assert_eq!(w.recovery_note(), None, "zeros are not damage");
    assert_eq!(w.last_version(), Some(s1[199].data_version));
    assert_eq!(repo.backend().stream_list().unwrap()[0].size, records);
    append_all(&mut w, &s1[200..300]);
    drop(w);
    expect_state(&repo, dir.path(), "resumed", 300);

    // A record torn while it was written over the zeros: cut, like any torn tail. The torn
    // bytes are the first 100 of the frame the writer really writes next (a torn write keeps
    // the frame's own offset check; a frame copied from elsewhere would be damage).
    let before = std::fs::metadata(segment_file(&root)).unwrap().len();
    let mut w = repo.writer("w", Durability::Fsync).unwrap();
    append_all(&mut w, &s1[300..301]);
    drop(w);
    let whole = std::fs::read(segment_file(&root)).unwrap();
    let next_frame = whole[before as usize..].to_vec();
    std::fs::OpenOptions::new()
        .write(true)
        .open(segment_file(&root))
        .unwrap()
        .set_len(before)
        .unwrap();
    zeros_after_crash(&next_frame[..100]);
    let v = verify(
        &repo,
        &VerifyOptions {
            read_data: false,
            scratch_dir: dir.path().join("scratch"),
        },
    )
    .unwrap();
    assert!(
        v.warnings.iter().any(|p| p.contains("torn tail")) && v.problems.is_empty(),
        "verify names the torn record as a crash's, not as damage: {v:?}"
    );
    let out = dir.path().join("torn.sqlite3");
    let rep = restore(&repo, &out, &RestoreTarget::Latest).unwrap();
    assert_eq!(rep.data_version, s1[299].data_version);
    let mut w = repo.writer("w", Durability::Fsync).unwrap();
    assert!(
        w.recovery_note().is_some_and(|n| n.contains("torn tail")),
        "{:?}",
        w.recovery_note()
    );
    assert_eq!(repo.backend().stream_list().unwrap()[0].size, before);
    append_all(&mut w, &s1[300..400]);
    drop(w);
    expect_state(&repo, dir.path(), "after-torn", 400);
}
