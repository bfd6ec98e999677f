//! Garbage collection reclaims: after many small compactions and a prune to one snapshot, the
//! repository stores that snapshot in about what a fresh backup of it would take.
//!
//! The failure this guards against (issue 18, measured on a real regtest node): prune decided
//! which packs to repack from totals over the chunk index and then rewrote the index with the
//! live chunks only, so the dead chunks left in kept packs dropped out of the books and were
//! never reclaimed: 521 packs and 2.9x the database for ONE snapshot, where a fresh backup is one
//! pack of 0.38x.

use std::sync::Mutex;

use store::ops::prune::{self, Retention};
use store::ops::restore::{restore, RestoreTarget};

use crate::common::*;

/// Bytes a snapshot costs: packs, indexes, manifests (not the journal, not the config).
fn snapshot_bytes(repo: &store::Repository) -> u64 {
    ["packs/", "index/", "snapshots/"]
        .iter()
        .map(|p| {
            repo.backend()
                .list(p)
                .unwrap()
                .iter()
                .map(|o| o.size)
                .sum::<u64>()
        })
        .sum()
}

/// What a fresh repository stores for the database at `db`: one snapshot of it.
fn fresh_backup_bytes(env: &Env, db: &std::path::Path, encrypted: bool) -> u64 {
    let url = store::BackupUrl::File(env.path("fresh"));
    let key = store::MasterKey::generate();
    let fresh =
        store::Repository::init(&url, Some(&key), encrypted, store::ConfigBody::default()).unwrap();
    store::ops::seed::snapshot_database(&fresh, db, &env.path("fresh-scratch"), "fresh").unwrap();
    snapshot_bytes(&fresh)
}

fn many_small_compactions_then_prune_to_one(encrypted: bool) {
    let env = Env::new(encrypted);
    let mut trace = load_trace("trace-s1.jsonl");
    trace.extend(load_trace("trace-s2.jsonl"));
    // The plugin's default: the retention policy prunes after each compaction.
    let retention = Retention {
        keep_last: 10,
        keep_daily: 7,
        keep_weekly: 4,
        keep_monthly: 6,
        ..Default::default()
    };
    let w = Mutex::new(env.writer());
    let mut snapshots = 0;
    for part in trace.chunks(25) {
        append_all(&mut w.lock().unwrap(), part);
        if env.compact(&w).snapshot.is_some() {
            snapshots += 1;
            let plan = prune::plan(&env.repo, &retention).unwrap();
            prune::apply(&env.repo, &plan, "retention").unwrap();
        }
    }
    drop(w);
    assert!(snapshots > 100, "{snapshots} snapshots");
    let before = snapshot_bytes(&env.repo);
    let plan = prune::plan(
        &env.repo,
        &Retention {
            keep_last: 1,
            ..Default::default()
        },
    )
    .unwrap();
    let kept = plan.keep[0].snapshot.clone();
    prune::apply(&env.repo, &plan, "test prune").unwrap();
    let after = snapshot_bytes(&env.repo);

    let db = env.path("kept.sqlite3");
    let r = restore(&env.repo, &db, &RestoreTarget::Snapshot(kept.id.clone())).unwrap();
    assert_eq!(r.data_version, kept.data_version);
    let fresh = fresh_backup_bytes(&env, &db, encrypted);
    let ratio = after as f64 / fresh as f64;
    eprintln!(
        "{snapshots} snapshots: {before} bytes; pruned to one: {after} bytes; a fresh backup of it: {fresh} bytes ({ratio:.2}x)"
    );
    assert!(
        ratio <= 1.2,
        "after prune to one snapshot the repository stores {after} bytes for it, {ratio:.2}x the {fresh} bytes of a fresh backup"
    );

    // Everything kept still restores and verifies, to the byte.
    verify_all(&env.repo, &env.path("scratch"));
    restore(
        &env.repo,
        &env.path("latest.sqlite3"),
        &RestoreTarget::Latest,
    )
    .unwrap();
    assert_eq!(
        dump(&env.path("latest.sqlite3")),
        dump(&testdata("db-s2.sqlite3"))
    );
}

#[test]
fn prune_reclaims_what_small_compactions_left() {
    many_small_compactions_then_prune_to_one(false);
}

#[test]
fn prune_reclaims_what_small_compactions_left_encrypted() {
    many_small_compactions_then_prune_to_one(true);
}

fn count(repo: &store::Repository, prefix: &str) -> (u64, u64) {
    let l = repo.backend().list(prefix).unwrap();
    (l.len() as u64, l.iter().map(|o| o.size).sum())
}

/// Without a retention policy (nothing pruned) every compaction still leaves a pack and an
/// index object; garbage collection after each merges the small ones, so their numbers follow
/// the stored bytes, not the number of compactions, and every snapshot still restores exactly.
#[test]
fn small_packs_and_indexes_are_merged_without_a_policy() {
    let env = Env::new(true);
    let trace = load_trace("trace-s1.jsonl");
    let w = Mutex::new(env.writer());
    let mut snaps = Vec::new();
    let small = env.repo.config().body.pack_target / 2;
    let mut merged = 0;
    for part in trace.chunks(60) {
        append_all(&mut w.lock().unwrap(), part);
        if let Some(s) = env.compact(&w).snapshot {
            snaps.push(s);
            let r = prune::collect_garbage(&env.repo, "gc").unwrap();
            assert_eq!(r.removed_snapshots, 0);
            merged += r.merged_packs;
            let (packs, pack_bytes) = count(&env.repo, "packs/");
            let (indexes, _) = count(&env.repo, "index/");
            assert_eq!((r.packs, r.index_objects), (packs, indexes));
            assert!(
                packs <= pack_bytes / small + prune::SMALL_PACKS_MAX as u64 + 1,
                "{} compactions: {packs} packs for {pack_bytes} bytes",
                snaps.len()
            );
            assert!(
                indexes <= prune::INDEX_OBJECTS_MAX as u64 + 1,
                "{indexes} index objects"
            );
        }
    }
    drop(w);
    assert!(snaps.len() >= 30, "{} snapshots", snaps.len());
    assert!(merged >= 20, "only {merged} packs merged");
    // Every snapshot is still whole: restore each and compare with a replay of the trace.
    for (k, s) in snaps.iter().enumerate().step_by(7) {
        let p = env.path(&format!("s{k}.sqlite3"));
        let r = restore(&env.repo, &p, &RestoreTarget::Snapshot(s.id.clone())).unwrap();
        assert_eq!(r.data_version, s.data_version);
        let v = env.path(&format!("v{k}.sqlite3"));
        restore(&env.repo, &v, &RestoreTarget::Version(s.data_version)).unwrap();
        assert_eq!(dump(&p), dump(&v));
    }
    verify_all(&env.repo, &env.path("scratch"));
}

/// A crash at every mutating step of a prune that removes snapshots, rewrites packs with dead
/// space and merges small packs and index objects: after each, verify (reading every indexed
/// chunk) passes and the newest state and every kept snapshot restore; the next collection
/// finishes the job.
#[test]
fn crash_at_every_step_of_a_collection_that_rewrites() {
    use std::sync::Arc;
    use store::backend::dir::DirBackend;
    use store::backend::fault::{Fault, FaultBackend, FaultPlan};
    let dir = tempfile::tempdir().unwrap();
    let template = dir.path().join("template");
    let plain = |root: &std::path::Path| {
        store::Repository::open_backend(Arc::new(DirBackend::open(root).unwrap()), None).unwrap()
    };
    store::Repository::init_backend(
        Arc::new(DirBackend::create(&template).unwrap()),
        None,
        false,
        store::ConfigBody::default(),
    )
    .unwrap();
    let trace = load_trace("trace-s1.jsonl");
    {
        let repo = plain(&template);
        let w = Mutex::new(repo.writer("w", store::Durability::Flush).unwrap());
        for part in trace.chunks(200) {
            append_all(&mut w.lock().unwrap(), part);
            store::ops::compact::compact(
                &repo,
                &w,
                &store::ops::compact::CompactOptions {
                    cache_dir: dir.path().join("tcache"),
                    holder: "c".into(),
                },
            )
            .unwrap();
        }
    }
    let last = trace.last().unwrap().data_version;
    let keep = Retention {
        keep_last: 2,
        ..Default::default()
    };
    let mut crashes = 0;
    for k in 1.. {
        let case = dir.path().join(format!("case-{k}"));
        copy_dir(&template, &case);
        let plan = FaultPlan::new();
        let inner: Arc<dyn store::backend::Backend> = Arc::new(DirBackend::open(&case).unwrap());
        let repo =
            store::Repository::open_backend(Arc::new(FaultBackend::new(inner, plan.clone())), None)
                .unwrap();
        plan.set(plan.ops() + k, Fault::Crash);
        let res = prune::plan(&repo, &keep).and_then(|p| prune::apply(&repo, &p, "p"));
        let finished = res.is_ok() && !plan.crashed();
        if finished {
            let r = res.unwrap();
            assert!(r.merged_packs + r.repacked_packs > 0, "{r:?}");
            assert!(
                r.rewritten_indexes > prune::INDEX_OBJECTS_MAX as u64,
                "{r:?}"
            );
        }
        plan.restart();
        let repo = plain(&case);
        let tag = format!("crash at step {k}");
        let v = verify_all(&repo, &dir.path().join("scratch"));
        assert_eq!(v.restored_version, Some(last), "{tag}");
        for s in store::ops::snapshots::list(&repo).unwrap() {
            let out = dir.path().join(format!("{k}-{}.sqlite3", s.id));
            let r = restore(&repo, &out, &RestoreTarget::Snapshot(s.id)).unwrap();
            assert_eq!(r.data_version, s.data_version, "{tag}");
            std::fs::remove_file(out).unwrap();
        }
        // The next prune finishes the job.
        let again = prune::plan(&repo, &keep)
            .and_then(|p| prune::apply(&repo, &p, "again"))
            .unwrap();
        assert!(
            again.packs <= prune::SMALL_PACKS_MAX as u64 + 1,
            "{tag}: {again:?}"
        );
        assert!(
            again.dead_bytes as f64 <= prune::MAX_DEAD_FRACTION * again.pack_bytes as f64,
            "{tag}: {again:?}"
        );
        assert_eq!(again.index_objects, 1, "{tag}: {again:?}");
        std::fs::remove_dir_all(&case).unwrap();
        if finished {
            break;
        }
        crashes += 1;
        assert!(k < 200, "the prune never finished");
    }
    assert!(crashes >= 20, "crashed at only {crashes} points");
}

/// An index object lost (deleted by a bucket's owner, or by damage): the chunks it named look
/// dead, and their packs would be deleted with them. Prune refuses instead, naming what is
/// missing, and deletes no pack.
#[test]
fn a_lost_index_stops_prune_before_it_deletes_a_pack() {
    let env = Env::new(false);
    let trace = load_trace("trace-s1.jsonl");
    let w = Mutex::new(env.writer());
    for part in trace.chunks(800) {
        append_all(&mut w.lock().unwrap(), part);
        env.compact(&w);
    }
    drop(w);
    let index = env.repo.backend().list("index/").unwrap();
    assert!(index.len() >= 2);
    env.repo.backend().delete(&index[0].name).unwrap();
    let packs = count(&env.repo, "packs/");
    let err = prune::collect_garbage(&env.repo, "gc").unwrap_err();
    assert!(matches!(err, store::Error::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains("is in no index"), "{err}");
    assert_eq!(count(&env.repo, "packs/"), packs);
}
