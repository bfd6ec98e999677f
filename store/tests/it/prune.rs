//! Prune: exactly the policy's snapshots survive, every survivor restores exactly, garbage is
//! collected, and the journal tail is kept.

use std::sync::Mutex;

use store::manifest::SnapshotInfo;
use store::ops::prune::{self, Retention};
use store::ops::restore::{restore, RestoreTarget};
use store::ops::verify::{verify, VerifyOptions};

use crate::common::*;

fn info(id: &str, time: u64) -> SnapshotInfo {
    SnapshotInfo {
        id: id.into(),
        data_version: 0,
        time,
        db_size: 0,
        stored_bytes: 0,
        chunks: 0,
        new_chunks: 0,
        manifest_bytes: 0,
        journal_segment: 0,
        parent: None,
    }
}

#[test]
fn retention_buckets() {
    let day = 86_400;
    let t0 = 1_767_225_600; // 2026-01-01 00:00 UTC
                            // Two snapshots a day for 40 days.
    let snaps: Vec<SnapshotInfo> = (0..80)
        .map(|i| info(&format!("{i:02}"), t0 + i * day / 2 + 60))
        .collect();
    let (keep, _) = prune::select(
        &snaps,
        &Retention {
            keep_daily: 7,
            ..Default::default()
        },
    )
    .unwrap();
    let ids: Vec<&str> = keep.iter().map(|k| k.snapshot.id.as_str()).collect();
    assert_eq!(ids, ["67", "69", "71", "73", "75", "77", "79"]); // the last of each of the last 7 days
    let (keep, _) = prune::select(
        &snaps,
        &Retention {
            keep_last: 3,
            keep_monthly: 2,
            ..Default::default()
        },
    )
    .unwrap();
    let ids: Vec<&str> = keep.iter().map(|k| k.snapshot.id.as_str()).collect();
    assert_eq!(ids, ["61", "77", "78", "79"]); // end of January, and the newest 3 (in February)
    let (keep, _) = prune::select(
        &snaps,
        &Retention {
            keep_weekly: 2,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(keep.len(), 2);
    assert!(prune::select(&snaps, &Retention::default()).is_err());
}

#[test]
fn survivors_restore_and_garbage_goes() {
    let env = Env::new(true);
    let s1 = load_trace("trace-s1.jsonl");
    let w = Mutex::new(env.writer());
    let mut snaps = Vec::new();
    for part in s1.chunks(400) {
        append_all(&mut w.lock().unwrap(), part);
        if let Some(s) = env.compact(&w).snapshot {
            snaps.push(s);
        }
    }
    drop(w);
    assert!(snaps.len() >= 4);
    let before = store::ops::stats::stats(&env.repo).unwrap();
    let plan = prune::plan(
        &env.repo,
        &Retention {
            keep_last: 2,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(plan.keep.len(), 2);
    assert_eq!(plan.remove.len(), snaps.len() - 2);
    let rep = prune::apply(&env.repo, &plan, "test prune").unwrap();
    assert_eq!(rep.removed_snapshots as usize, snaps.len() - 2);
    let after = store::ops::stats::stats(&env.repo).unwrap();
    assert!(
        after.backup_size < before.backup_size,
        "{} !< {}",
        after.backup_size,
        before.backup_size
    );
    let left: Vec<String> = store::ops::snapshots::list(&env.repo)
        .unwrap()
        .into_iter()
        .map(|s| s.id)
        .collect();
    let expect: Vec<String> = snaps[snaps.len() - 2..]
        .iter()
        .map(|s| s.id.clone())
        .collect();
    assert_eq!(left, expect);
    for s in &snaps[snaps.len() - 2..] {
        let p = env.path(&format!("{}.sqlite3", s.id));
        let r = restore(&env.repo, &p, &RestoreTarget::Snapshot(s.id.clone())).unwrap();
        assert_eq!(r.data_version, s.data_version);
    }
    let r = restore(
        &env.repo,
        &env.path("latest.sqlite3"),
        &RestoreTarget::Latest,
    )
    .unwrap();
    assert_eq!(
        dump(&env.path("latest.sqlite3")),
        dump(&testdata("db-s1.sqlite3"))
    );
    assert_eq!(r.data_version, s1.last().unwrap().data_version);
    // A version before the oldest kept snapshot is gone with its journal.
    let err = restore(
        &env.repo,
        &env.path("old.sqlite3"),
        &RestoreTarget::Version(10),
    )
    .unwrap_err();
    assert!(
        matches!(err, store::Error::VersionNotAvailable { .. }),
        "{err}"
    );
    let v = verify(
        &env.repo,
        &VerifyOptions {
            read_data: true,
            scratch_dir: env.path("scratch"),
        },
    )
    .unwrap();
    assert!(v.ok, "{:?}", v.problems);
    // Nothing unreferenced remains: a second prune with the same policy deletes nothing.
    let plan = prune::plan(
        &env.repo,
        &Retention {
            keep_last: 2,
            ..Default::default()
        },
    )
    .unwrap();
    let rep = prune::apply(&env.repo, &plan, "again").unwrap();
    assert_eq!(
        (
            rep.removed_snapshots,
            rep.deleted_packs,
            rep.deleted_segments
        ),
        (0, 0, 0)
    );
}
