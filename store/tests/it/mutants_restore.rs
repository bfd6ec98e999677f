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

/// A backend whose sealed journal objects are gone for `vanish` reads, of every `stride`-th read
/// of one: what a restore sees when a prune merges journal segments while it reads them (the
/// object it listed is gone; the merged one holds the same records under another name).
struct Merging {
    inner: std::sync::Arc<dyn store::backend::Backend>,
    stride: u32,
    reads: std::sync::atomic::AtomicU32,
    vanish: std::sync::atomic::AtomicU32,
}

impl Merging {
    fn gone(&self, name: &str) -> Result<(), Error> {
        use std::sync::atomic::Ordering::SeqCst;
        if store::journal::parse_sealed_name(name).is_none() {
            return Ok(());
        }
        let n = self.reads.fetch_add(1, SeqCst) + 1;
        let vanish = || {
            self.vanish
                .fetch_update(SeqCst, SeqCst, |k| k.checked_sub(1))
        };
        if n.is_multiple_of(self.stride) && vanish().is_ok() {
            return Err(Error::NotFound {
                object: name.to_string(),
            });
        }
        Ok(())
    }
}

impl store::backend::Backend for Merging {
    fn url(&self) -> String {
        self.inner.url()
    }
    fn put(&self, n: &str, d: &[u8]) -> store::Result<()> {
        self.inner.put(n, d)
    }
    fn put_if_absent(&self, n: &str, d: &[u8]) -> store::Result<bool> {
        self.inner.put_if_absent(n, d)
    }
    fn get(&self, n: &str) -> store::Result<Vec<u8>> {
        self.gone(n)?;
        self.inner.get(n)
    }
    fn get_range(&self, n: &str, o: u64, l: u64) -> store::Result<Vec<u8>> {
        self.gone(n)?;
        self.inner.get_range(n, o, l)
    }
    fn list(&self, p: &str) -> store::Result<Vec<store::backend::ObjectInfo>> {
        self.inner.list(p)
    }
    fn delete(&self, n: &str) -> store::Result<()> {
        self.inner.delete(n)
    }
    fn stream_open(
        &self,
        n: &str,
        d: store::Durability,
    ) -> store::Result<Box<dyn store::backend::Stream>> {
        self.inner.stream_open(n, d)
    }
    fn stream_read(&self, n: &str) -> store::Result<Vec<u8>> {
        self.inner.stream_read(n)
    }
    fn stream_list(&self) -> store::Result<Vec<store::backend::ObjectInfo>> {
        self.inner.stream_list()
    }
    fn stream_delete(&self, n: &str) -> store::Result<()> {
        self.inner.stream_delete(n)
    }
    fn lock(&self, n: &str, h: &str) -> store::Result<Box<dyn store::backend::LockGuard>> {
        self.inner.lock(n, h)
    }
}

/// A restore, and the newest-state check `backup-cli status` and the drills run, read the
/// journal again when a sealed segment vanishes under them (a prune merged it meanwhile): up to
/// three times, with the same result as an undisturbed read. A sealed segment that stays gone
/// is an error naming it, after those three, never a restore that loops or one that returns less.
#[test]
fn a_journal_merged_while_it_is_read_is_read_again_three_times_at_most() {
    use store::ops::restore::newest;
    let s1 = load_trace("trace-s1.jsonl");
    let env = Env::new(true);
    let w = Mutex::new(env.writer());
    append_all(&mut w.lock().unwrap(), &s1[..60]);
    env.compact(&w);
    append_all(&mut w.lock().unwrap(), &s1[60..80]);
    drop(w);
    let sealed: Vec<_> = reader::segments(&env.repo)
        .unwrap()
        .into_iter()
        .filter(|s| s.sealed)
        .collect();
    assert!(!sealed.is_empty());
    let want = dump_after(&s1, 80, env.dir.path());
    let calm = newest(&env.repo, false).unwrap();
    let over = |stride, vanish| {
        env.open_over(std::sync::Arc::new(Merging {
            inner: env.repo.backend().clone(),
            stride,
            reads: Default::default(),
            vanish: std::sync::atomic::AtomicU32::new(vanish),
        }))
    };
    for vanish in 0..=4 {
        let out = env.path(&format!("out-{vanish}.sqlite3"));
        // A restore reads the sealed segment twice a try: to find the newest state (which
        // reads again by itself), then to replay it. Every second read vanishes: the replay's.
        let r = restore(&over(2, vanish), &out, &RestoreTarget::Latest);
        let n = newest(&over(1, vanish), false);
        if vanish <= 3 {
            let r = r.unwrap_or_else(|e| panic!("{vanish} vanished: {e}"));
            assert_eq!(r.data_version, s1[79].data_version);
            assert_eq!(dump(&out), want, "{vanish} vanished");
            let n = n.unwrap();
            assert_eq!(
                (n.data_version, &n.record_hash),
                (calm.data_version, &calm.record_hash)
            );
        } else {
            let e = r.unwrap_err();
            assert!(
                matches!(&e, Error::NotFound { object } if object.starts_with("journal/") && object.ends_with(".seg")),
                "{e}"
            );
            assert!(!out.exists());
            assert!(matches!(n.unwrap_err(), Error::NotFound { .. }));
        }
    }
}

/// The destination appeared between restore's first check and its publish (here a dangling
/// symbolic link, which the first check does not see): refused as "exists", the restored file
/// never put there, whatever the link points to.
#[test]
fn a_destination_that_appears_during_the_restore_is_refused_as_existing() {
    let env = Env::new(true);
    let s1 = load_trace("trace-s1.jsonl");
    append_all(&mut env.writer(), &s1[..20]);
    let out = env.path("out.sqlite3");
    let target = env.path("elsewhere.sqlite3");
    std::os::unix::fs::symlink(&target, &out).unwrap();
    match restore(&env.repo, &out, &RestoreTarget::Latest) {
        Err(Error::TargetExists(p)) => assert_eq!(p, out.display().to_string()),
        other => panic!("{other:?}"),
    }
    assert!(!target.exists());
    assert!(std::fs::symlink_metadata(&out).unwrap().is_symlink());
    let left: Vec<_> = std::fs::read_dir(env.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".restore-"))
        .collect();
    assert!(left.is_empty(), "temporary files left: {left:?}");
}

/// A restore to another filesystem than the working directory's (an operator restoring onto a
/// USB disk or a tmpfs): the file is built beside its destination and linked into place, never
/// built in the working directory, from which a link across filesystems fails.
#[test]
fn a_restore_onto_another_filesystem_than_the_working_directorys_succeeds() {
    use std::os::unix::fs::MetadataExt;
    let env = Env::new(true);
    let s1 = load_trace("trace-s1.jsonl");
    append_all(&mut env.writer(), &s1[..20]);
    let cwd = std::env::current_dir().unwrap();
    // /dev/shm: the tmpfs every Linux system mounts (POSIX shared memory lives there).
    let other = tempfile::tempdir_in("/dev/shm").expect("a directory in /dev/shm");
    let dev = |p: &std::path::Path| std::fs::metadata(p).unwrap().dev();
    assert_ne!(
        dev(&cwd),
        dev(other.path()),
        "/dev/shm is another filesystem than {cwd:?}"
    );
    let out = other.path().join("restored.sqlite3");
    let r = restore(&env.repo, &out, &RestoreTarget::Latest).unwrap();
    assert_eq!(r.data_version, s1[19].data_version);
    assert_eq!(dump(&out), dump_after(&s1, 20, env.dir.path()));
}
