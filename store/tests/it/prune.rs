//! Prune: exactly the policy's snapshots survive, every survivor restores exactly, garbage is
//! collected, and the journal tail is kept.

use std::sync::Mutex;

use store::manifest::SnapshotInfo;
use store::ops::prune::{self, Retention};
use store::ops::restore::{restore, RestoreTarget};

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

/// keep-within: every snapshot after now minus the span, and the newest at or before it (replay
/// starts there); with none before the span, all are kept.
#[test]
fn retention_within() {
    let day = 86_400;
    let t0 = 1_767_225_600;
    // One snapshot a day for 60 days; now is the end of day 59.
    let snaps: Vec<SnapshotInfo> = (0..60)
        .map(|i| info(&format!("{i:02}"), t0 + i * day))
        .collect();
    let now = t0 + 59 * day + 3600;
    let within = |secs: u64, last: u32| Retention {
        keep_last: last,
        keep_within: secs,
        ..Default::default()
    };
    let (keep, remove) = prune::select_at(&snaps, &within(30 * day, 0), now).unwrap();
    let ids: Vec<&str> = keep.iter().map(|k| k.snapshot.id.as_str()).collect();
    // The cutoff is day 29 + 1 h: day 29's snapshot is the newest at or before it.
    assert_eq!(ids.first(), Some(&"29"));
    assert_eq!(ids.len(), 31);
    assert_eq!(remove.len(), 29);
    assert!(keep[0].reasons.contains(&"within 30d".to_string()));
    // A snapshot exactly at the cutoff is the one replay starts from.
    let (keep, _) = prune::select_at(&snaps, &within(30 * day, 0), t0 + 59 * day).unwrap();
    assert_eq!(keep[0].snapshot.id, "29");
    // The span reaches before the oldest snapshot: everything is kept.
    let (keep, remove) = prune::select_at(&snaps, &within(365 * day, 0), now).unwrap();
    assert_eq!((keep.len(), remove.len()), (60, 0));
    // With other rules, the union.
    let (keep, _) = prune::select_at(&snaps, &within(2 * day, 5), now).unwrap();
    let ids: Vec<&str> = keep.iter().map(|k| k.snapshot.id.as_str()).collect();
    assert_eq!(ids, ["55", "56", "57", "58", "59"]);
    assert_eq!(prune::parse_duration("30d").unwrap(), 30 * day);
    assert_eq!(prune::format_duration(30 * day), "30d");
    assert_eq!(prune::format_duration(14 * day), "2w");
    assert!(prune::parse_duration("30").is_err());
    assert!(prune::parse_duration("0d").is_err());
    assert!(prune::parse_duration("99999999999999999y").is_err());
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
    // The handle that compacted counted each sealed segment once; a new one reads them all.
    assert_eq!(before, store::ops::stats::stats(&env.reopen()).unwrap());
    assert!(before.journal_records >= s1.len() as u64, "{before:?}");
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
    assert_eq!(after, store::ops::stats::stats(&env.reopen()).unwrap());
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
    verify_all(&env.repo, &env.path("scratch"));
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

/// A backend whose listing of `snapshots/` still names a manifest that is gone by the time it
/// is read: what a planning prune (which lists without the maintenance lock) sees while another
/// prune deletes. Found by the long crash campaign (seed 0x18eb43791ad812e2).
struct ListsADeletedManifest(std::sync::Arc<dyn store::backend::Backend>);

impl store::backend::Backend for ListsADeletedManifest {
    fn url(&self) -> String {
        self.0.url()
    }
    fn put(&self, n: &str, d: &[u8]) -> store::Result<()> {
        self.0.put(n, d)
    }
    fn put_if_absent(&self, n: &str, d: &[u8]) -> store::Result<bool> {
        self.0.put_if_absent(n, d)
    }
    fn get(&self, n: &str) -> store::Result<Vec<u8>> {
        self.0.get(n)
    }
    fn get_range(&self, n: &str, o: u64, l: u64) -> store::Result<Vec<u8>> {
        self.0.get_range(n, o, l)
    }
    fn list(&self, p: &str) -> store::Result<Vec<store::backend::ObjectInfo>> {
        let mut l = self.0.list(p)?;
        if p == "snapshots/" {
            l.insert(
                0,
                store::backend::ObjectInfo {
                    name: "snapshots/0123456789abcdef".into(),
                    size: 100,
                },
            );
        }
        Ok(l)
    }
    fn delete(&self, n: &str) -> store::Result<()> {
        self.0.delete(n)
    }
    fn stream_open(
        &self,
        n: &str,
        d: store::Durability,
    ) -> store::Result<Box<dyn store::backend::Stream>> {
        self.0.stream_open(n, d)
    }
    fn stream_read(&self, n: &str) -> store::Result<Vec<u8>> {
        self.0.stream_read(n)
    }
    fn stream_list(&self) -> store::Result<Vec<store::backend::ObjectInfo>> {
        self.0.stream_list()
    }
    fn stream_delete(&self, n: &str) -> store::Result<()> {
        self.0.stream_delete(n)
    }
    fn lock(&self, n: &str, h: &str) -> store::Result<Box<dyn store::backend::LockGuard>> {
        self.0.lock(n, h)
    }
}

#[test]
fn a_snapshot_deleted_while_listing_is_left_out_not_an_error() {
    let env = Env::new(false);
    let s1 = load_trace("trace-s1.jsonl");
    let w = Mutex::new(env.writer());
    for part in s1.chunks(800) {
        append_all(&mut w.lock().unwrap(), part);
        env.compact(&w);
    }
    drop(w);
    let root = env.path("repo");
    let racing = store::Repository::open_backend(
        std::sync::Arc::new(ListsADeletedManifest(std::sync::Arc::new(
            store::backend::dir::DirBackend::open(&root).unwrap(),
        ))),
        None,
    )
    .unwrap();
    let real = store::manifest::list(&env.repo).unwrap();
    assert!(real.len() >= 2);
    let seen = store::manifest::list(&racing).unwrap();
    assert_eq!(
        seen.iter().map(|m| m.id).collect::<Vec<_>>(),
        real.iter().map(|m| m.id).collect::<Vec<_>>()
    );
    let plan = prune::plan(
        &racing,
        &Retention {
            keep_last: 1,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(plan.keep.len() + plan.remove.len(), real.len());
    prune::apply(&racing, &plan, "test prune").unwrap();
    assert_eq!(store::manifest::list(&env.repo).unwrap().len(), 1);
}
