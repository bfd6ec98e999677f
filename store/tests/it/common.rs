use std::path::{Path, PathBuf};
use std::sync::Mutex;

use store::journal::JournalWriter;
use store::ops::compact::{compact, CompactOptions, CompactReport};
use store::{Batch, ConfigBody, Durability, MasterKey, Repository};

pub fn testdata(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../testdata")
        .join(name)
}

pub fn load_trace(name: &str) -> Vec<Batch> {
    store::journal::trace::load(&testdata(name)).unwrap()
}

pub fn dump(p: &Path) -> String {
    store::dump::dump(p).unwrap()
}

pub struct Env {
    pub dir: tempfile::TempDir,
    pub repo: Repository,
    key: MasterKey,
}

impl Env {
    pub fn new(encrypted: bool) -> Env {
        let dir = tempfile::tempdir().unwrap();
        let url = store::BackupUrl::File(dir.path().join("repo"));
        let key = MasterKey::generate();
        let repo = Repository::init(&url, Some(&key), encrypted, ConfigBody::default()).unwrap();
        Env { dir, repo, key }
    }
    /// Another handle on the same repository, sharing nothing in memory with `repo`.
    pub fn reopen(&self) -> Repository {
        Repository::open_backend(self.repo.backend().clone(), Some(self.key.clone())).unwrap()
    }
    /// The repository opened over `backend` (its own backend wrapped by a test), with its key.
    pub fn open_over(&self, backend: std::sync::Arc<dyn store::backend::Backend>) -> Repository {
        Repository::open_backend(backend, Some(self.key.clone())).unwrap()
    }
    /// A copy of the repository at `dir` (made with [`copy_dir`]), opened with the same key.
    pub fn open_copy(&self, dir: &Path) -> Repository {
        let url = store::BackupUrl::File(dir.to_path_buf());
        Repository::open(&url, Some(self.key.clone())).unwrap()
    }
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
    pub fn writer(&self) -> JournalWriter {
        self.repo.writer("test writer", Durability::Fsync).unwrap()
    }
    pub fn compact(&self, w: &Mutex<JournalWriter>) -> CompactReport {
        compact(
            &self.repo,
            w,
            &CompactOptions {
                cache_dir: self.path("cache"),
                holder: "test compaction".into(),
            },
        )
        .unwrap()
    }
}

pub fn append_all(w: &mut JournalWriter, batches: &[Batch]) {
    for b in batches {
        w.append(b).unwrap();
    }
}

/// lightningd's database after the first `n` batches of `trace`: the batches replayed by the
/// store's replayer into a new file in `dir`, dumped.
pub fn dump_after(trace: &[Batch], n: usize, dir: &Path) -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let k = NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let path = dir.join(format!("expected-{n}-{k}.sqlite3"));
    let mut rp = store::replay::Replayer::open(&path, true).unwrap();
    for b in &trace[..n] {
        rp.apply(&store::journal::Record {
            batch: b.clone(),
            supersedes: false,
            time_ms: 0,
        })
        .unwrap();
    }
    rp.finish(&path).unwrap();
    let d = dump(&path);
    std::fs::remove_file(&path).unwrap();
    d
}

/// Verify reading every indexed chunk and restoring the newest state; asserts it found nothing.
#[track_caller]
pub fn verify_all(repo: &Repository, scratch: &Path) -> store::ops::verify::VerifyReport {
    let v = store::ops::verify::verify(
        repo,
        &store::ops::verify::VerifyOptions {
            read_data: true,
            scratch_dir: scratch.to_path_buf(),
        },
    )
    .unwrap();
    assert!(v.ok, "verify found {:?}", v.problems);
    v
}

pub use testsvc::copy_dir;
