//! Helpers: run the binary, build repositories from the real traces, compare databases.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use store::{Batch, Durability, MasterKey, Repository};

pub const BIN: &str = env!("CARGO_BIN_EXE_backup-cli");

/// Tests run in threads of one process: a child forked by one thread holds copies of every open
/// file of the others until it execs, including a writer lock another thread holds (flock
/// follows the open file description). So the test process holds repository locks and forks
/// only under this mutex. (Not a concern of the binaries: they do not fork while holding locks.)
pub static FORK: std::sync::Mutex<()> = std::sync::Mutex::new(());

pub fn fork_guard() -> std::sync::MutexGuard<'static, ()> {
    FORK.lock().unwrap_or_else(|e| e.into_inner())
}

pub fn spawn(c: &mut Command) -> std::process::Child {
    let _g = fork_guard();
    c.spawn().expect("spawn backup-cli")
}

/// The plugin binary, built beside backup-cli.
pub fn plugin() -> PathBuf {
    let plugin = Path::new(BIN).with_file_name("cln-backup");
    assert!(
        plugin.exists(),
        "{} is missing: build the plugin first (`cargo build -p cln-backup`; `cargo test --workspace` does)",
        plugin.display()
    );
    plugin
}

pub fn testdata(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../testdata")
        .join(name)
}

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(self.stdout.trim()).unwrap_or_else(|e| {
            panic!(
                "stdout is not one JSON object ({e}):\n{}\nstderr: {}",
                self.stdout, self.stderr
            )
        })
    }
    #[track_caller]
    pub fn ok(self) -> Run {
        assert_eq!(
            self.code, 0,
            "expected success\nstdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        self
    }
    /// Fails with `code`, and says why on one line of stderr containing `needle`.
    #[track_caller]
    pub fn fails(self, code: i32, needle: &str) -> Run {
        assert_eq!(
            self.code, code,
            "expected exit {code}\nstdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        let lines: Vec<&str> = self.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "one line of stderr: {}", self.stderr);
        assert!(
            self.stderr.contains(needle),
            "stderr lacks {needle:?}: {}",
            self.stderr
        );
        self
    }
}

fn finish(o: Output) -> Run {
    Run {
        code: o.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

pub fn cmd(args: &[&str]) -> Command {
    let mut c = Command::new(BIN);
    c.args(args).env_remove("CLN_BACKUP_KEY_FILE");
    c
}

pub fn run(args: &[&str]) -> Run {
    run_env::<&str>(args, &[])
}

/// [`run`] with more environment (e.g. a PATH with a stand-in tool, a simulated clock).
pub fn run_env<V: AsRef<std::ffi::OsStr>>(args: &[&str], env: &[(&str, V)]) -> Run {
    let mut c = cmd(args);
    for (k, v) in env {
        c.env(k, v);
    }
    let child = spawn(
        c.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    );
    finish(child.wait_with_output().expect("run backup-cli"))
}

pub fn run_with_stdin(args: &[&str], input: &str) -> Run {
    use std::io::Write;
    let mut child = spawn(
        cmd(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    );
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    finish(child.wait_with_output().unwrap())
}

pub fn url(p: &Path) -> String {
    format!("file://{}", p.display())
}

pub fn p(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The batches of a trace, in order.
pub fn trace(session: u32) -> Vec<Batch> {
    store::journal::trace::load(&testdata(&format!("trace-s{session}.jsonl"))).unwrap()
}

pub fn last_version(session: u32) -> u32 {
    trace(session).last().unwrap().data_version
}

/// Append a session's batches as the plugin would (one writer per session).
pub fn append_session(repo: &Repository, session: u32) {
    let _g = fork_guard();
    let mut w = repo.writer("test", Durability::Flush).unwrap();
    for b in trace(session) {
        w.append(&b).unwrap();
    }
}

/// A test node: a network dir with `backup-cli init` done (encrypted), and the repository.
pub struct Node {
    pub tmp: tempfile::TempDir,
    pub dir: PathBuf,
    pub repo_path: PathBuf,
}

impl Node {
    pub fn new() -> Node {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("node");
        std::fs::create_dir(&dir).unwrap();
        let repo_path = tmp.path().join("repo");
        run(&["init", "--lightning-dir", p(&dir), &url(&repo_path)]).ok();
        Node {
            tmp,
            dir,
            repo_path,
        }
    }
    pub fn url(&self) -> String {
        url(&self.repo_path)
    }
    pub fn key_file(&self) -> PathBuf {
        self.dir.join("backup.key")
    }
    pub fn key(&self) -> MasterKey {
        let t = std::fs::read_to_string(self.key_file()).unwrap();
        MasterKey::from_file_text(&t, "backup.key").unwrap()
    }
    pub fn repo(&self) -> Repository {
        Repository::open(
            &store::BackupUrl::parse(&self.url()).unwrap(),
            Some(self.key()),
        )
        .unwrap()
    }
    pub fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }
}

#[track_caller]
pub fn assert_same_db(got: &Path, want: &Path) {
    let a = store::dump::dump(got).unwrap();
    let b = store::dump::dump(want).unwrap();
    assert!(a == b, "{} differs from {}", got.display(), want.display());
}

/// A lightningd stand-in for the running check: holds a POSIX lock on its pid file, as
/// lightningd does for its whole life (`pidfile_create`), until dropped. The lock belongs to this
/// test process, so the backup-cli child sees it held.
pub struct PidFileLock(#[allow(dead_code)] std::fs::File);

impl PidFileLock {
    pub fn hold(path: &Path) -> PidFileLock {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(path)
            .unwrap();
        rustix::fs::fcntl_lock(&f, rustix::fs::FlockOperation::NonBlockingLockExclusive).unwrap();
        // Through the locked file: closing any other descriptor of it would drop the lock.
        use std::io::Write;
        (&f).write_all(format!("{}\n", std::process::id()).as_bytes())
            .unwrap();
        PidFileLock(f)
    }
}

/// A file of the real channel fixtures (testdata/channels/); `.zst` files are decompressed
/// into `into`.
pub fn channels(name: &str) -> PathBuf {
    testdata(&format!("channels/{name}"))
}

pub fn unzstd(src: &Path, dest: &Path) {
    let f = std::fs::File::open(src).unwrap();
    let mut out = std::fs::File::create(dest).unwrap();
    zstd::stream::copy_decode(f, &mut out).unwrap();
}

pub use testsvc::copy_dir;
