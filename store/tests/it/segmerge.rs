//! Sealed journal segments are merged into runs by garbage collection (issue 18, item 2): their
//! number follows the journal's bytes, not the number of compactions, and the journal reads the
//! same, to the newest state and to any data_version inside a merged run; a crash between the
//! run's publish and the deletion of its members leaves a journal readers accept, and the next
//! collection finishes the job; a damaged or swapped run is refused, naming it.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use store::backend::dir::DirBackend;
use store::backend::fault::{Fault, FaultBackend, FaultPlan};
use store::journal::{parse_sealed_name, reader, JournalWriter};
use store::manifest::SnapshotInfo;
use store::ops::compact::{compact, CompactOptions};
use store::ops::prune;
use store::ops::restore::{restore, RestoreTarget};
use store::{Batch, ConfigBody, Durability, MasterKey, Repository};

use crate::common::*;

fn url(root: &Path) -> store::url::BackupUrl {
    store::url::BackupUrl::File(root.to_path_buf())
}

fn open(root: &Path, key: &MasterKey) -> Repository {
    Repository::open(&url(root), Some(key.clone())).unwrap()
}

/// A repository at `root` holding `trace`, compacted every `every` batches (no prune): one
/// sealed segment per compaction. Returns the snapshots made.
fn build(root: &Path, key: &MasterKey, trace: &[Batch], every: usize) -> Vec<SnapshotInfo> {
    let repo = Repository::init(&url(root), Some(key), true, ConfigBody::default()).unwrap();
    let w = Mutex::new(repo.writer("w", Durability::Flush).unwrap());
    let mut snaps = Vec::new();
    for part in trace.chunks(every) {
        snaps.extend(append_and_compact(
            &repo,
            &w,
            part,
            &root.with_extension("cache"),
        ));
    }
    snaps
}

/// Append `part` and compact: the snapshot made, if any.
fn append_and_compact(
    repo: &Repository,
    w: &Mutex<JournalWriter>,
    part: &[Batch],
    cache: &Path,
) -> Option<SnapshotInfo> {
    append_all(&mut w.lock().unwrap(), part);
    let opts = CompactOptions {
        cache_dir: cache.to_path_buf(),
        holder: "c".into(),
    };
    compact(repo, w, &opts).unwrap().snapshot
}

/// Sealed journal objects as listed (runs, single segments, leftovers): their names and bytes.
fn sealed(repo: &Repository) -> (Vec<String>, u64) {
    let l: Vec<_> = repo
        .backend()
        .list("journal/")
        .unwrap()
        .into_iter()
        .filter(|o| parse_sealed_name(&o.name).is_some())
        .collect();
    (
        l.iter().map(|o| o.name.clone()).collect(),
        l.iter().map(|o| o.size).sum(),
    )
}

fn runs(repo: &Repository) -> Vec<String> {
    sealed(repo)
        .0
        .into_iter()
        .filter(|n| parse_sealed_name(n).is_some_and(|(f, l)| f < l))
        .collect()
}

/// The bound the merges keep: one sealed object per 8 MiB of sealed journal, plus the slack,
/// plus the newest snapshot's resume segment (never merged) and one.
#[track_caller]
fn assert_bounded(repo: &Repository, what: &str) -> u64 {
    let (names, bytes) = sealed(repo);
    let n = names.len() as u64;
    assert!(
        n <= bytes / prune::SEGMENT_BYTES_PER_OBJECT + prune::SMALL_SEGMENTS_MAX + 2,
        "{what}: {n} sealed journal objects for {bytes} bytes"
    );
    n
}

/// Versions inside merged runs: a few past each of every `step`-th snapshot whose resume
/// segment a run holds.
fn versions_inside_runs(repo: &Repository, snaps: &[SnapshotInfo], step: usize) -> Vec<u32> {
    let segs = reader::segments(repo).unwrap();
    let newest = snaps.last().unwrap().data_version;
    let out: Vec<u32> = snaps
        .iter()
        .step_by(step)
        .filter(|s| {
            segs.iter().any(|g| {
                g.sealed
                    && g.last > g.seq
                    && g.seq <= s.journal_segment
                    && s.journal_segment <= g.last
            })
        })
        .map(|s| (s.data_version + 7).min(newest))
        .collect();
    assert!(out.len() >= 3, "only {} versions inside runs", out.len());
    out
}

#[track_caller]
fn restore_dump(repo: &Repository, out: &Path, target: RestoreTarget) -> String {
    let r = restore(repo, out, &target).unwrap();
    if let RestoreTarget::Version(v) = target {
        assert_eq!(r.data_version, v);
    }
    let d = dump(out);
    std::fs::remove_file(out).unwrap();
    d
}

/// `other` restores what `merged` does at versions inside `merged`'s runs (past every `step`-th
/// snapshot), and both restore the newest state to the database `newest` of testdata.
#[track_caller]
fn assert_same_states(
    merged: &Repository,
    other: &Repository,
    snaps: &[SnapshotInfo],
    step: usize,
    out: &Path,
    newest: &str,
) {
    for version in versions_inside_runs(merged, snaps, step) {
        assert_eq!(
            restore_dump(merged, out, RestoreTarget::Version(version)),
            restore_dump(other, out, RestoreTarget::Version(version)),
            "data_version {version}"
        );
    }
    let want = dump(&testdata(newest));
    assert_eq!(restore_dump(merged, out, RestoreTarget::Latest), want);
    assert_eq!(restore_dump(other, out, RestoreTarget::Latest), want);
}

#[test]
fn many_compactions_leave_few_sealed_segments_and_restore_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let key = MasterKey::generate();
    let root = dir.path().join("repo");
    let s1 = load_trace("trace-s1.jsonl");
    let snaps = build(&root, &key, &s1, 20);
    let repo = open(&root, &key);
    let (names, bytes_before) = sealed(&repo);
    let before = names.len();
    assert!(before > 100, "{before} sealed segments");
    let unmerged_root = dir.path().join("unmerged");
    copy_dir(&root, &unmerged_root);
    let unmerged = open(&unmerged_root, &key);

    let r = prune::collect_garbage(&repo, "gc").unwrap();
    let after = assert_bounded(&repo, "after one collection");
    let (_, bytes_after) = sealed(&repo);
    eprintln!(
        "{} compactions: {before} sealed segments ({bytes_before} bytes) -> {after} sealed objects ({bytes_after} bytes); {r:?}",
        snaps.len()
    );
    assert!(
        r.written_runs >= 1 && r.merged_segments as usize >= before - 2,
        "{r:?}"
    );
    assert_eq!(
        r.journal_objects,
        reader::segments(&repo).unwrap().len() as u64
    );
    assert!(after <= 3, "{after} sealed objects");
    // Nothing left to do: a second collection changes nothing.
    let again = prune::collect_garbage(&repo, "gc").unwrap();
    assert_eq!((again.written_runs, again.merged_segments), (0, 0));

    // The same states, from the run as from the segments it replaced.
    let v = verify_all(&repo, &dir.path().join("scratch"));
    assert_eq!(v.restored_version, Some(s1.last().unwrap().data_version));
    let out = dir.path().join("out.sqlite3");
    assert_same_states(&repo, &unmerged, &snaps, 9, &out, "db-s1.sqlite3");
    drop(unmerged);

    // Then the plugin's way: a collection after every compaction, the bound held at each.
    let w = Mutex::new(repo.writer("w", Durability::Flush).unwrap());
    let s2 = load_trace("trace-s2.jsonl");
    let (mut compactions, mut most, mut runs_written) = (0, 0, 0);
    for part in s2.chunks(10) {
        let made = append_and_compact(&repo, &w, part, &dir.path().join("cache"));
        if made.is_some() {
            compactions += 1;
            let r = prune::collect_garbage(&repo, "gc").unwrap();
            runs_written += r.written_runs;
            most = most.max(assert_bounded(&repo, &format!("compaction {compactions}")));
        }
    }
    drop(w);
    eprintln!("{compactions} more compactions, each followed by a collection: at most {most} sealed objects, {runs_written} runs written");
    assert!(
        compactions > 50 && runs_written >= 5,
        "{compactions} {runs_written}"
    );
    verify_all(&repo, &dir.path().join("scratch"));
    assert_eq!(
        restore_dump(&repo, &out, RestoreTarget::Latest),
        dump(&testdata("db-s2.sqlite3"))
    );
}

/// A crash after the run's publish, before its members are deleted: simulated by putting the
/// run beside the segments it merges. Readers read the run once; the next collection deletes
/// the members.
#[test]
fn a_run_beside_its_members_reads_once_and_the_next_collection_cleans_up() {
    let dir = tempfile::tempdir().unwrap();
    let key = MasterKey::generate();
    let root = dir.path().join("repo");
    let snaps = build(&root, &key, &load_trace("trace-s1.jsonl"), 40);
    let crashed_root = dir.path().join("crashed");
    copy_dir(&root, &crashed_root);
    let repo = open(&root, &key);
    prune::collect_garbage(&repo, "gc").unwrap();
    let run_names = runs(&repo);
    assert!(!run_names.is_empty());
    for n in &run_names {
        std::fs::copy(root.join(n), crashed_root.join(n)).unwrap();
    }
    let crashed = open(&crashed_root, &key);
    let members = sealed(&crashed).0.len() - sealed(&repo).0.len();
    assert!(members > 40, "{members}");
    let seen = |r: &Repository| {
        reader::segments(r)
            .unwrap()
            .iter()
            .map(|s| (s.seq, s.last, s.sealed))
            .collect::<Vec<_>>()
    };
    assert_eq!(seen(&crashed), seen(&repo));
    let v = verify_all(&crashed, &dir.path().join("scratch"));
    assert_eq!(v.journal_segments, seen(&repo).len() as u64);
    let out = dir.path().join("out.sqlite3");
    assert_same_states(&repo, &crashed, &snaps, 5, &out, "db-s1.sqlite3");
    let r = prune::collect_garbage(&crashed, "gc").unwrap();
    assert_eq!(r.deleted_leftover_segments, members as u64, "{r:?}");
    assert_eq!(r.written_runs, 0, "{r:?}");
    assert_eq!(sealed(&crashed).0, sealed(&repo).0);
    verify_all(&crashed, &dir.path().join("scratch"));
}

/// A crash at each of the last steps of a collection (before the run's publish, after it, and
/// between every deletion of a member): verify passes, the newest state and the states inside
/// the run restore, and the next collection leaves the bound and no leftovers.
#[test]
fn a_crash_at_each_step_of_a_merge_leaves_a_readable_journal() {
    let dir = tempfile::tempdir().unwrap();
    let template = dir.path().join("template");
    let plain = |root: &Path| {
        Repository::open_backend(Arc::new(DirBackend::open(root).unwrap()), None).unwrap()
    };
    Repository::init_backend(
        Arc::new(DirBackend::create(&template).unwrap()),
        None,
        false,
        ConfigBody::default(),
    )
    .unwrap();
    let trace = load_trace("trace-s1.jsonl");
    let last = trace.last().unwrap().data_version;
    let mut snaps = Vec::new();
    {
        let repo = plain(&template);
        let w = Mutex::new(repo.writer("w", Durability::Flush).unwrap());
        for part in trace.chunks(100) {
            snaps.extend(append_and_compact(
                &repo,
                &w,
                part,
                &dir.path().join("tcache"),
            ));
        }
    }
    let reference = plain(&template);
    let faulty = |root: &Path, plan: &FaultPlan| {
        let inner: Arc<dyn store::backend::Backend> = Arc::new(DirBackend::open(root).unwrap());
        Repository::open_backend(Arc::new(FaultBackend::new(inner, plan.clone())), None).unwrap()
    };
    // How many mutating steps a collection takes, and how many objects its merge replaces.
    let count = dir.path().join("count");
    copy_dir(&template, &count);
    let plan = FaultPlan::new();
    let repo = faulty(&count, &plan);
    let start = plan.ops();
    let r = prune::collect_garbage(&repo, "gc").unwrap();
    let steps = plan.ops() - start;
    assert!(r.merged_objects >= 10, "{r:?}");
    let versions = versions_inside_runs(&repo, &snaps, 4);
    drop(repo);
    let out = dir.path().join("out.sqlite3");
    let expected: Vec<String> = versions
        .iter()
        .map(|&v| restore_dump(&reference, &out, RestoreTarget::Version(v)))
        .collect();
    let mut cases = 0;
    for k in (steps - r.merged_objects - 2)..=steps {
        let case = dir.path().join(format!("case-{k}"));
        copy_dir(&template, &case);
        let plan = FaultPlan::new();
        let repo = faulty(&case, &plan);
        plan.set(plan.ops() + k, Fault::Crash);
        let res = prune::collect_garbage(&repo, "gc");
        assert!(
            res.is_err() && plan.crashed(),
            "step {k} of {steps}: {res:?}"
        );
        plan.restart();
        drop(repo);
        let repo = plain(&case);
        let tag = format!("crash at step {k} of {steps}");
        let v = verify_all(&repo, &dir.path().join("scratch"));
        assert_eq!(v.restored_version, Some(last), "{tag}");
        for (version, want) in versions.iter().zip(&expected) {
            assert_eq!(
                &restore_dump(&repo, &out, RestoreTarget::Version(*version)),
                want,
                "{tag}: data_version {version}"
            );
        }
        let again = prune::collect_garbage(&repo, "again").unwrap();
        assert_bounded(&repo, &tag);
        // No object is held by another any more.
        let segs = reader::segments(&repo).unwrap();
        assert_eq!(
            sealed(&repo).0.len(),
            segs.iter().filter(|s| s.sealed).count(),
            "{tag}: {again:?}"
        );
        verify_all(&repo, &dir.path().join("scratch"));
        std::fs::remove_dir_all(&case).unwrap();
        cases += 1;
    }
    eprintln!(
        "{cases} crash points in a collection of {steps} steps whose merge replaced {} objects",
        r.merged_objects
    );
}

/// A run with a flipped byte, or another repository's run (same key, same name) in its place,
/// is refused by a restore that reads it and by verify, naming the run; a member swapped with
/// another repository's stops the merge, naming the member, and nothing is deleted.
#[test]
fn a_damaged_or_swapped_run_is_refused_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let key = MasterKey::generate();
    let trace = load_trace("trace-s1.jsonl");
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let snaps = build(&a, &key, &trace, 50);
    build(&b, &key, &trace, 50);
    let b_unmerged = dir.path().join("b-unmerged");
    copy_dir(&b, &b_unmerged);
    let swapped_member = dir.path().join("member");
    copy_dir(&a, &swapped_member);
    let ra = open(&a, &key);
    let rb = open(&b, &key);
    prune::collect_garbage(&ra, "gc").unwrap();
    prune::collect_garbage(&rb, "gc").unwrap();
    let run = runs(&ra).into_iter().next().unwrap();
    assert_eq!(runs(&ra), runs(&rb));
    let version = versions_inside_runs(&ra, &snaps, 3)[0];
    let out = dir.path().join("out.sqlite3");
    let refused = |root: &PathBuf, what: &str| {
        let repo = open(root, &key);
        let e = restore(&repo, &out, &RestoreTarget::Version(version)).unwrap_err();
        assert!(e.to_string().contains(&run), "{what}: {e}");
        assert!(!out.exists());
        let v = store::ops::verify::verify(
            &repo,
            &store::ops::verify::VerifyOptions {
                read_data: true,
                scratch_dir: dir.path().join("scratch"),
            },
        )
        .unwrap();
        assert!(
            !v.ok && v.problems.iter().any(|p| p.contains(&run)),
            "{what}: {:?}",
            v.problems
        );
    };

    let flipped = dir.path().join("flipped");
    copy_dir(&a, &flipped);
    let mut bytes = std::fs::read(flipped.join(&run)).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x10;
    std::fs::write(flipped.join(&run), bytes).unwrap();
    refused(&flipped, "a flipped byte");

    let swapped = dir.path().join("swapped");
    copy_dir(&a, &swapped);
    std::fs::copy(b.join(&run), swapped.join(&run)).unwrap();
    refused(&swapped, "another repository's run");

    // Before any merge: one member of the run-to-be replaced by the other repository's.
    let (first, _) = parse_sealed_name(&run).unwrap();
    let member = store::journal::sealed_name(first + 1);
    std::fs::copy(b_unmerged.join(&member), swapped_member.join(&member)).unwrap();
    let repo = open(&swapped_member, &key);
    let listed = sealed(&repo).0;
    let e = prune::collect_garbage(&repo, "gc").unwrap_err();
    assert!(e.to_string().contains(&member), "{e}");
    assert_eq!(sealed(&repo).0, listed, "nothing was deleted or published");
}
