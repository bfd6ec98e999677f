//! `backup-cli server` with the real binaries on loopback: one server, many nodes.
//!
//! Why: the offsite copy is the one that matters when the node's disk dies, and an operator
//! restarts servers, shares one among nodes, and exposes it to strangers. Each of these used to
//! stop a node or expose another's backup: a server restarted (SIGKILL or SIGTERM) answered the
//! node's re-sent append with "another writer"; every node shared one repository (one could cut
//! another's journal); a crowd of slow strangers locked every node out; onboarding needed the
//! key before the repository existed, and init towards a dead server waited 65 s in silence.

use std::io::{BufRead, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use emulator::{load_trace, DbWrite, Emulator};
use serde_json::{json, Value};

use crate::common::*;

/// A `backup-cli server` process; killed when dropped.
pub struct Server {
    child: Child,
    pub addr: String,
    pub stderr: PathBuf,
}

impl Server {
    /// Start `backup-cli server ROOT LISTEN --auth-file AUTH` (plus `extra`) and wait until it
    /// listens (its first line of stdout says where).
    pub fn start(root: &Path, listen: &str, auth: &Path, extra: &[&str], log: &Path) -> Server {
        Server::start_url(&url(root), listen, auth, extra, log)
    }

    /// [`Server::start`] with the root as a URL (`s3://...`).
    pub fn start_url(root: &str, listen: &str, auth: &Path, extra: &[&str], log: &Path) -> Server {
        let mut args = vec!["server", "--json", root, listen, "--auth-file", p(auth)];
        args.extend_from_slice(extra);
        let err = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let mut child = spawn(
            cmd(&args)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::from(err)),
        );
        let mut first = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut first)
            .unwrap();
        let j: Value = serde_json::from_str(&first).unwrap_or_else(|e| {
            panic!(
                "server did not start ({e}): {}",
                std::fs::read_to_string(log).unwrap_or_default()
            )
        });
        Server {
            child,
            addr: j["listening"][0].as_str().unwrap().to_string(),
            stderr: log.to_path_buf(),
        }
    }

    pub fn url(&self) -> String {
        format!("socket:{}", self.addr)
    }

    pub fn signal(&mut self, sig: &str) -> std::process::ExitStatus {
        let ok = std::process::Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
        self.child.wait().unwrap()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A temporary root served to nodes `names` (each made by [`node_with_key`]; `rules` appended
/// to its auth line): the temp dir, the server, the nodes' network directories, the auth file.
pub fn served(names: &[(&str, &str)]) -> (tempfile::TempDir, Server, Vec<PathBuf>, PathBuf) {
    let t = tempfile::tempdir().unwrap();
    let auth = t.path().join("auth");
    let mut lines = String::new();
    let mut nets = Vec::new();
    for (name, rules) in names {
        let (net, line) = node_with_key(t.path(), name);
        lines.push_str(&format!("{line} {rules}\n"));
        nets.push(net);
    }
    std::fs::write(&auth, lines).unwrap();
    let server = Server::start(
        &t.path().join("root"),
        "127.0.0.1:0",
        &auth,
        &[],
        &t.path().join("server.log"),
    );
    (t, server, nets, auth)
}

/// A node's network directory with a key made by `backup-cli key create`; the line for the
/// server's auth file.
pub fn node_with_key(dir: &Path, name: &str) -> (PathBuf, String) {
    let net = dir.join(name);
    std::fs::create_dir_all(&net).unwrap();
    let r = run(&["key", "create", "--lightning-dir", p(&net), "--name", name]).ok();
    let line = r.stdout.trim().to_string();
    assert!(line.starts_with(&format!("{name} ")), "{line}");
    assert!(
        r.stderr.contains("WRITE DOWN THIS KEY PHRASE"),
        "{}",
        r.stderr
    );
    (net, line)
}

fn trace_writes(session: u32) -> Vec<DbWrite> {
    load_trace(&testdata(&format!("trace-s{session}.jsonl"))).unwrap()
}

/// The reconnect policy the tests give the plugin: quick retries, for long enough.
fn quick_reconnect() -> Vec<(String, Value)> {
    vec![
        ("backup-reconnect-tries".into(), json!(60)),
        ("backup-reconnect-wait".into(), json!("0.05")),
        ("backup-reconnect-factor".into(), json!("1.2")),
        ("backup-compact-journal-bytes".into(), json!(0)),
    ]
}

/// Run session `n` of the real trace through the plugin (session 1 as a fresh node, 9 hooks
/// before init; later ones as a restart, 3), calling `at(i)` before batch `i`; every hook must
/// answer continue. Returns the plugin's log.
fn session(n: u32, net: &Path, mut at: impl FnMut(usize, &mut Emulator)) -> String {
    let pre_init = if n == 1 { 9 } else { 3 };
    let mut ld = Emulator::spawn(&plugin(), net, &[]).unwrap();
    ld.set_timeout(Duration::from_secs(300));
    ld.getmanifest().unwrap();
    for (i, b) in trace_writes(n).iter().enumerate() {
        if i == pre_init {
            ld.init(&quick_reconnect(), net).unwrap();
        }
        at(i, &mut ld);
        let reply = ld.db_write(b.data_version, &b.writes).unwrap();
        assert!(
            reply.is_continue(),
            "batch {i} (data_version {}): {reply:?}\n{}\n{}",
            b.data_version,
            ld.log_text(),
            ld.stderr_text()
        );
    }
    let log = ld.log_text();
    assert!(ld.close_stdin_and_wait().unwrap().success());
    log
}

fn restore_equals(u: &str, net: &Path, out: &Path, want: &str) {
    run(&["restore", u, p(out), "--lightning-dir", p(net)]).ok();
    assert_same_db(out, &testdata(want));
}

/// Onboarding in three steps, the first with no server anywhere: `key create` on the node, its
/// line in the server's auth file (re-read when the node first connects: no restart), `init`
/// against `socket:`; then restore. A stranger's key is refused, and the server's files hold
/// none of the database's text.
#[test]
fn onboarding_in_three_steps_then_init_and_restore() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("root");
    let auth = t.path().join("auth");
    // A server already runs for another node.
    let (_other, other_line) = node_with_key(t.path(), "other");
    std::fs::write(&auth, format!("{other_line}\n")).unwrap();
    let server = Server::start(
        &root,
        "127.0.0.1:0",
        &auth,
        &[],
        &t.path().join("server.log"),
    );
    let u = server.url();

    // 1. On the node: the key and the line, nothing contacted.
    let (net, line) = node_with_key(t.path(), "alice");
    std::fs::copy(testdata("db-s2.sqlite3"), net.join("lightningd.sqlite3")).unwrap();
    // Before step 2 the server refuses the node, and says what to do.
    let r = run(&["init", "--lightning-dir", p(&net), &u]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("refused this node's key"), "{}", r.stderr);
    assert!(r.stderr.contains("auth file"), "{}", r.stderr);
    // 2. On the server: add the line.
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&auth)
        .unwrap();
    writeln!(f, "{line}").unwrap();
    drop(f);
    // 3. On the node: init (the key file is reused), then restore.
    let r = run(&["init", "--lightning-dir", p(&net), &u]).ok();
    assert!(r.stdout.contains("Using the existing key"), "{}", r.stdout);
    restore_equals(&u, &net, &t.path().join("out.sqlite3"), "db-s2.sqlite3");
    assert!(root.join("nodes/alice/config").exists());
    // The node's next session streams its batches through the server, as the plugin does.
    let key_text = std::fs::read_to_string(net.join("backup.key")).unwrap();
    let key = store::MasterKey::from_file_text(&key_text, "backup.key").unwrap();
    let repo = store::Repository::open(&store::BackupUrl::parse(&u).unwrap(), Some(key)).unwrap();
    append_session(&repo, 3);
    drop(repo);
    restore_equals(&u, &net, &t.path().join("out3.sqlite3"), "db-s3.sqlite3");
    // The server stored only sealed bytes: neither the database's pages nor the statements of
    // the batches are in its files.
    let files = tree_files(&root);
    assert!(files.len() >= 5, "only {} files served", files.len());
    for (path, bytes) in files {
        for needle in [
            &b"SQLite format 3"[..],
            b"CREATE TABLE",
            b"INSERT INTO",
            b"UPDATE vars SET",
        ] {
            assert!(
                !bytes.windows(needle.len()).any(|w| w == needle),
                "{} holds {:?} in plaintext",
                path.display(),
                String::from_utf8_lossy(needle)
            );
        }
    }
    // A key the auth file does not name gets nothing.
    let stranger = t.path().join("stranger.key");
    run(&["key", "create", "--key-file", p(&stranger)]).ok();
    let r = run(&["info", "--key-file", p(&stranger), &u]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("refused this node's key"), "{}", r.stderr);
    // `key create` never overwrites; `key export --server` prints the same line again.
    run(&["key", "create", "--lightning-dir", p(&net)]).fails(4, "never overwritten");
    let again = run(&[
        "key",
        "export",
        "--server",
        "--name",
        "alice",
        "--lightning-dir",
        p(&net),
    ])
    .ok();
    assert_eq!(again.stdout.trim(), line);
    // The status shows the node once the server has written it (every 2 s when it changed).
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let (st, alice) = loop {
        let st = run(&["server", "status", "--json", &url(&root)])
            .ok()
            .json();
        let alice = st["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["name"] == "alice")
            .cloned();
        if let Some(a) = alice.filter(|a| a["last_contact"].as_u64() > Some(0)) {
            break (st, a);
        }
        assert!(std::time::Instant::now() < deadline, "{st}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(alice["used"].as_u64().unwrap() > 100_000, "{st}");
    let text = run(&["server", "status", &url(&root)]).ok().stdout;
    assert!(
        text.contains("alice") && text.contains("LAST CONTACT"),
        "{text}"
    );

    // Usage: a server keeps repositories in a directory or S3, and needs an auth file.
    run(&["server", &u, "127.0.0.1:0", "--auth-file", p(&auth)]).fails(2, "local directory");
    run(&["server", &url(&t.path().join("r2")), "127.0.0.1:0"]).fails(2, "auth file");
}

/// Every file under `root` with its content.
fn tree_files(root: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                dirs.push(p);
            } else {
                out.push((p.clone(), std::fs::read(&p).unwrap()));
            }
        }
    }
    out
}

/// `init` towards a server that does not answer: each wait is shown with what it waits for,
/// and `--connect-timeout` bounds them (it used to wait 65 s without a word).
#[test]
fn init_towards_an_unreachable_server_says_what_it_waits_for() {
    let t = tempfile::tempdir().unwrap();
    let (net, _) = node_with_key(t.path(), "alice");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let u = format!("socket:127.0.0.1:{port}");
    let r = run(&[
        "init",
        "--connect-timeout",
        "3",
        "--lightning-dir",
        p(&net),
        &u,
    ]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("waiting"), "{}", r.stderr);
    assert!(
        r.stderr
            .contains(&format!("to redial the backup server {u}")),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("giving up after 3 s"), "{}", r.stderr);
    assert!(r.stderr.contains("--connect-timeout"), "{}", r.stderr);
    assert!(
        r.stderr.contains("Connection refused") || r.stderr.contains("connection refused"),
        "{}",
        r.stderr
    );
    assert!(!net.join("backup.lock").exists());
}

/// The server killed with SIGKILL, restarted, then stopped with SIGTERM and restarted, each
/// while the plugin streams a real lightningd session through it: every hook answers
/// continue (the server finds each stream's end after the zeros it wrote ahead, and takes the
/// re-sent append), and the restore is exact.
#[test]
fn server_killed_and_stopped_mid_session_never_stops_the_node() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("root");
    let auth = t.path().join("auth");
    let log = t.path().join("server.log");
    let (net, line) = node_with_key(t.path(), "alice");
    std::fs::write(&auth, format!("{line}\n")).unwrap();
    let server = Server::start(&root, "127.0.0.1:0", &auth, &[], &log);
    let addr = server.addr.clone();
    let u = server.url();
    run(&["init", "--lightning-dir", p(&net), &u]).ok();

    let done = Arc::new(AtomicUsize::new(0));
    let server = Arc::new(Mutex::new(Some(server)));
    let restarts = Arc::new(AtomicUsize::new(0));
    let killer = {
        let (done, server, restarts) = (done.clone(), server.clone(), restarts.clone());
        let (root, auth, log, addr) = (root.clone(), auth.clone(), log.clone(), addr.clone());
        std::thread::spawn(move || {
            for (at, sig) in [(700, "KILL"), (1500, "TERM")] {
                while done.load(Ordering::SeqCst) < at {
                    std::thread::sleep(Duration::from_millis(1));
                }
                let mut s = server.lock().unwrap().take().unwrap();
                let status = s.signal(sig);
                if sig == "TERM" {
                    // A clean stop: exit 0, after closing its streams and connections.
                    assert!(status.success(), "{status:?}\n{}", s.log());
                    assert!(s.log().contains("stopped"), "{}", s.log());
                }
                drop(s);
                let s = Server::start(&root, &addr, &auth, &[], &log);
                *server.lock().unwrap() = Some(s);
                restarts.fetch_add(1, Ordering::SeqCst);
            }
        })
    };
    let plugin_log = session(1, &net, |i, _| done.store(i, Ordering::SeqCst));
    killer.join().unwrap();
    assert_eq!(restarts.load(Ordering::SeqCst), 2);
    let server_log = std::fs::read_to_string(&log).unwrap();
    assert!(!server_log.contains("another writer"), "{server_log}");
    assert!(!plugin_log.contains("another writer"), "{plugin_log}");
    restore_equals(&u, &net, &t.path().join("out.sqlite3"), "db-s1.sqlite3");
    drop(server);
}

/// Two nodes on one server: each restores exactly its own database; neither sees the other's
/// snapshots, and their repositories are apart on disk.
#[test]
fn two_nodes_on_one_server_each_restore_their_own() {
    let (t, server, nets, _) = served(&[("alice", ""), ("bob", "quota=64M")]);
    let (na, nb, root) = (nets[0].clone(), nets[1].clone(), t.path().join("root"));
    let u = server.url();
    std::fs::copy(testdata("db-s1.sqlite3"), na.join("lightningd.sqlite3")).unwrap();
    std::fs::copy(testdata("db-s3.sqlite3"), nb.join("lightningd.sqlite3")).unwrap();
    run(&["init", "--lightning-dir", p(&na), &u]).ok();
    run(&["init", "--lightning-dir", p(&nb), &u]).ok();
    restore_equals(&u, &na, &t.path().join("a.sqlite3"), "db-s1.sqlite3");
    restore_equals(&u, &nb, &t.path().join("b.sqlite3"), "db-s3.sqlite3");
    let sa = run(&["snapshots", "--json", "--lightning-dir", p(&na), &u])
        .ok()
        .json();
    let sb = run(&["snapshots", "--json", "--lightning-dir", p(&nb), &u])
        .ok()
        .json();
    let ids = |j: &Value| -> Vec<String> {
        j["snapshots"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["id"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!((ids(&sa).len(), ids(&sb).len()), (1, 1));
    assert_ne!(ids(&sa), ids(&sb));
    assert!(root.join("nodes/alice/config").exists() && root.join("nodes/bob/config").exists());
    // Bob's key opens only bob's repository: alice's snapshot id is not there.
    let r = run(&[
        "restore",
        &u,
        p(&t.path().join("x.sqlite3")),
        "--snapshot",
        &ids(&sa)[0],
        "--lightning-dir",
        p(&nb),
    ]);
    assert_ne!(r.code, 0, "{}", r.stdout);
    let st = run(&["server", "status", "--json", &url(&root)])
        .ok()
        .json();
    let bob = st["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == "bob")
        .unwrap()
        .clone();
    assert_eq!(bob["quota"], json!(64u64 << 20), "{st}");
}

/// 200 slow strangers (two bytes, then one byte every few seconds, reconnecting as soon as
/// they are dropped) held open against the server while a node starts, streams a real
/// session and restores: every hook answers continue and the restore is exact.
#[test]
fn two_hundred_slow_strangers_do_not_keep_a_node_out() {
    let (t, server, nets, _) = served(&[("alice", "")]);
    let net = nets[0].clone();
    let u = server.url();
    let addr: std::net::SocketAddr = server.addr.parse().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let opened = Arc::new(AtomicUsize::new(0));
    let mut strangers = Vec::new();
    for _ in 0..200 {
        let (stop, opened) = (stop.clone(), opened.clone());
        strangers.push(std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let Ok(mut s) = TcpStream::connect(addr) else {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                };
                opened.fetch_add(1, Ordering::SeqCst);
                // A length of 1000, then a byte now and then: never a whole message.
                if s.write_all(&[0xe8, 0x03]).is_err() {
                    continue;
                }
                while !stop.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(50));
                    if s.write_all(&[7]).is_err() {
                        break;
                    }
                }
            }
        }));
    }
    while opened.load(Ordering::SeqCst) < 200 {
        std::thread::sleep(Duration::from_millis(5));
    }
    std::fs::copy(testdata("db-s1.sqlite3"), net.join("lightningd.sqlite3")).unwrap();
    run(&["init", "--lightning-dir", p(&net), &u]).ok();
    std::fs::remove_file(net.join("lightningd.sqlite3")).unwrap();
    // The node starts (a restart: s2 follows the s1 snapshot) and writes.
    session(2, &net, |_, _| {});
    restore_equals(&u, &net, &t.path().join("out.sqlite3"), "db-s2.sqlite3");
    // The strangers were there all along, and kept being dropped.
    assert!(opened.load(Ordering::SeqCst) > 200);
    stop.store(true, Ordering::SeqCst);
    for s in strangers {
        s.join().unwrap();
    }
    drop(server);
}

/// A node on an append-only server: every hook answers continue, compaction makes its
/// snapshots (the sealed streams stay, as the server refuses their deletion) and the plugin's
/// retention prune is skipped with a log line saying why; the restore is exact. The operator
/// then prunes on the server's host, against the directory.
#[test]
fn an_append_only_node_compacts_and_its_operator_prunes() {
    let (t, server, nets, _) = served(&[("alice", "append-only")]);
    let net = nets[0].clone();
    let u = server.url();
    run(&["init", "--lightning-dir", p(&net), &u]).ok();
    let mut ld = Emulator::spawn(&plugin(), &net, &[]).unwrap();
    ld.set_timeout(Duration::from_secs(300));
    ld.getmanifest().unwrap();
    let mut options = quick_reconnect();
    options.push(("backup-retention".into(), json!("last=1")));
    let s1 = trace_writes(1);
    for (n, part) in s1.chunks(1200).enumerate() {
        for (i, b) in part.iter().enumerate() {
            if n == 0 && i == 9 {
                ld.init(&options, &net).unwrap();
            }
            let reply = ld.db_write(b.data_version, &b.writes).unwrap();
            assert!(
                reply.is_continue(),
                "batch {i}: {reply:?}\n{}",
                ld.log_text()
            );
        }
        let r = ld.rpc_ok("backup-compact", json!({})).unwrap();
        assert!(r["snapshot"].is_string(), "{r}\n{}", ld.log_text());
    }
    let log = ld.log_text();
    assert!(ld.close_stdin_and_wait().unwrap().success());
    assert!(
        log.contains("the retention prune is skipped") && log.contains("append-only"),
        "{log}"
    );
    restore_equals(&u, &net, &t.path().join("out.sqlite3"), "db-s1.sqlite3");
    let repo = t.path().join("root/nodes/alice");
    let snaps = run(&[
        "snapshots",
        "--json",
        "--lightning-dir",
        p(&net),
        &url(&repo),
    ])
    .ok()
    .json();
    assert_eq!(snaps["snapshots"].as_array().unwrap().len(), 2, "{snaps}");
    // The first segment's stream was left beside its sealed copy.
    assert!(repo.join("journal/0000000000000000.log").exists());
    assert!(repo.join("journal/0000000000000000.seg").exists());
    // On the server's host, against the directory, with the node's key: prune works.
    run(&[
        "prune",
        "--keep-last",
        "1",
        "--lightning-dir",
        p(&net),
        &url(&repo),
    ])
    .ok();
    assert!(!repo.join("journal/0000000000000000.log").exists());
    let snaps = run(&["snapshots", "--json", "--lightning-dir", p(&net), &u])
        .ok()
        .json();
    assert_eq!(snaps["snapshots"].as_array().unwrap().len(), 1, "{snaps}");
    restore_equals(&u, &net, &t.path().join("out2.sqlite3"), "db-s1.sqlite3");
}

/// The S3 server the tests use (`testsvc::s3`: SeaweedFS started by the tests, or
/// `CLN_BACKUP_S3_URL`), as a fresh prefix; panics with the fix when there is none.
fn s3_root(test: &str) -> String {
    let u = testsvc::s3::server_url();
    let (base, query) = u.split_once('?').unwrap_or((&u, ""));
    let prefixed = format!(
        "{}/server-{test}-{}",
        base.trim_end_matches('/'),
        store::ids::SnapshotId::random()
    );
    if query.is_empty() {
        prefixed
    } else {
        format!("{prefixed}?{query}")
    }
}

/// A TCP relay on one address that sends each new connection to the next of `targets` in
/// turn: two server processes behind one address.
fn round_robin(targets: Vec<std::net::SocketAddr>) -> std::net::SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for (n, c) in l.incoming().flatten().enumerate() {
            let Ok(up) = TcpStream::connect(targets[n % targets.len()]) else {
                continue;
            };
            let (mut r1, mut w1) = (c.try_clone().unwrap(), up.try_clone().unwrap());
            let (mut r2, mut w2) = (up, c);
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut r1, &mut w1);
                let _ = w1.shutdown(std::net::Shutdown::Both);
            });
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut r2, &mut w2);
                let _ = w2.shutdown(std::net::Shutdown::Both);
            });
        }
    });
    addr
}

/// `backup-cli server s3://...`: the server keeps nothing itself. Two server processes behind
/// one address (each connection to the other in turn) serve a node's whole session: every hook
/// answers continue, the restore is exact, and a second writer for the same node is refused by
/// the writer lock, which lives in the bucket.
#[test]
#[cfg_attr(
    no_s3_tests,
    ignore = "CLN_BACKUP_NO_S3_TESTS is set: not tested against S3"
)]
fn two_s3_backed_server_processes_behind_one_address() {
    let root = s3_root("two");
    let t = tempfile::tempdir().unwrap();
    let (net, line) = node_with_key(t.path(), "alice");
    let auth = t.path().join("auth");
    std::fs::write(&auth, format!("{line}\n")).unwrap();
    let servers: Vec<Server> = (0..2)
        .map(|i| {
            let status = t.path().join(format!("status{i}.json"));
            Server::start_url(
                &root,
                "127.0.0.1:0",
                &auth,
                &["--status-file", p(&status)],
                &t.path().join(format!("server{i}.log")),
            )
        })
        .collect();
    let front = round_robin(servers.iter().map(|s| s.addr.parse().unwrap()).collect());
    let u = format!("socket:{front}");
    std::fs::copy(testdata("db-s1.sqlite3"), net.join("lightningd.sqlite3")).unwrap();
    run(&["init", "--lightning-dir", p(&net), &u]).ok();
    std::fs::remove_file(net.join("lightningd.sqlite3")).unwrap();
    session(2, &net, |i, ld| {
        if i == 400 {
            // Another writer for the same node, through either process: refused.
            for _ in 0..2 {
                let r = run(&["compact", "--lightning-dir", p(&net), &u]);
                assert_ne!(r.code, 0, "{}", r.stdout);
                assert!(r.stderr.contains("locked"), "{}", r.stderr);
            }
            let r = ld.rpc_ok("backup-compact", json!({})).unwrap();
            assert!(r["snapshot"].is_string(), "{r}");
        }
    });
    restore_equals(&u, &net, &t.path().join("out.sqlite3"), "db-s2.sqlite3");
    drop(servers);
}

/// contrib/cln-backup-server.service: systemd accepts it (`systemd-analyze verify`), its
/// sandbox's exposure is at most 2.0 of 10 (`systemd-analyze security`, whose threshold counts
/// tenths; 1.2 when written), and its ExecStart command line starts this
/// server (with the paths moved into a temporary directory), which SIGTERM stops with exit 0.
#[test]
fn the_systemd_unit_verifies_and_its_command_runs() {
    let unit_path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../contrib/cln-backup-server.service");
    let unit = std::fs::read_to_string(&unit_path).unwrap();
    let analyze = Path::new("/usr/bin/systemd-analyze");
    assert!(
        analyze.exists(),
        "this test needs systemd-analyze (Debian package systemd)"
    );
    let t = tempfile::tempdir().unwrap();
    let unit_copy = t.path().join("cln-backup-server.service");
    std::fs::write(&unit_copy, unit.replace("/usr/local/bin/backup-cli", BIN)).unwrap();
    let out = std::process::Command::new(analyze)
        .arg("verify")
        .arg(&unit_copy)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.trim().is_empty(), "{text}");
    let out = std::process::Command::new(analyze)
        .args(["security", "--offline=yes", "--threshold=20"])
        .arg(&unit_copy)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // The ExecStart line, with its state and credentials directories here.
    let exec = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .unwrap();
    let (_, line) = node_with_key(t.path(), "alice");
    std::fs::write(t.path().join("auth"), format!("{line}\n")).unwrap();
    let exec = exec
        .replace("${CREDENTIALS_DIRECTORY}", p(t.path()))
        .replace("/var/lib/cln-backup-server", p(&t.path().join("state")))
        .replace("127.0.0.1:9735", "127.0.0.1:0");
    let mut words = exec.split_whitespace();
    assert_eq!(words.next(), Some("/usr/local/bin/backup-cli"));
    let args: Vec<&str> = words.collect();
    let mut c = cmd(&args);
    let mut child = spawn(c.stdout(Stdio::piped()).stderr(Stdio::null()));
    let mut first = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert!(
        first.starts_with("Serving the repositories of 1 node(s)"),
        "{first}"
    );
    std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(child.wait().unwrap().success());
}

/// A root served by an older server (one repository at its top, shared by every key): the
/// server refuses it, naming `server migrate`; a bare-key auth line is refused with the line to
/// write; after `migrate ROOT alice` the node's socket URL restores exactly as before.
#[test]
fn an_old_single_repository_root_is_migrated_under_its_node() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("root");
    let (net, line) = node_with_key(t.path(), "alice");
    std::fs::copy(testdata("db-s2.sqlite3"), net.join("lightningd.sqlite3")).unwrap();
    // The old layout: the node's repository is the root itself (with the s2 database).
    run(&["init", "--lightning-dir", p(&net), &url(&root)]).ok();
    let key_hex = line.split_whitespace().nth(1).unwrap().to_string();
    let auth = t.path().join("auth");
    std::fs::write(&auth, format!("{key_hex}\n")).unwrap();
    let serve = |auth: &Path| run(&["server", &url(&root), "127.0.0.1:0", "--auth-file", p(auth)]);
    let r = serve(&auth);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("without a node name") && r.stderr.contains(&format!("NAME {key_hex}")),
        "{}",
        r.stderr
    );
    std::fs::write(&auth, format!("{line}\n")).unwrap();
    let r = serve(&auth);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("backup-cli server migrate"),
        "{}",
        r.stderr
    );
    let j = run(&["server", "migrate", "--json", &url(&root), "alice"])
        .ok()
        .json();
    assert!(
        j["moved"].as_array().unwrap().iter().any(|m| m == "config"),
        "{j}"
    );
    assert!(!root.join("config").exists() && root.join("nodes/alice/config").exists());
    // Again: nothing left to move.
    run(&["server", "migrate", &url(&root), "alice"]).fails(4, "nothing to migrate");
    let server = Server::start(
        &root,
        "127.0.0.1:0",
        &auth,
        &[],
        &t.path().join("server.log"),
    );
    let u = server.url();
    let snaps = run(&["snapshots", "--json", "--lightning-dir", p(&net), &u])
        .ok()
        .json();
    assert_eq!(snaps["snapshots"].as_array().unwrap().len(), 1, "{snaps}");
    restore_equals(&u, &net, &t.path().join("out.sqlite3"), "db-s2.sqlite3");
    // A second server on the same directory is refused.
    let r = serve(&auth);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("already served"), "{}", r.stderr);
}
