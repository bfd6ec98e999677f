//! Remote repositories over real TCP on loopback: a `backup-cli server` (ServerHandle) serving a
//! local directory, and the `socket:` client. What users see: every Backend call works through
//! the server on IPv4 and IPv6; a wrong key gets nothing; a stalled server trips the timeout with
//! a message naming it; a server killed in the middle of appends (even between fsync and
//! acknowledgement) loses nothing and doubles nothing; SOCKS5 proxies work; and a real lightningd
//! trace replayed through a remote repository with a server restart restores exactly.
#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use store::backend::dir::DirBackend;
use store::backend::remote::{
    auth_key, NodeEntry, RemoteBackend, RemoteOptions, ServerAuth, ServerHandle, ServerOptions,
    ServerRoot,
};
use store::backend::{Backend, Durability, LockGuard, ObjectInfo, Stream};
use store::{Error, MasterKey};

fn opts() -> RemoteOptions {
    RemoteOptions {
        tries: 40,
        first_wait: Duration::from_millis(25),
        factor: 1.2,
        connect_timeout: Duration::from_secs(5),
        io_timeout: Duration::from_secs(20),
        ..RemoteOptions::default()
    }
}

/// One node, "node1", whose repository is `backend`.
fn serve(backend: Arc<dyn Backend>, listen: &str, key: &MasterKey) -> ServerHandle {
    ServerHandle::spawn(
        one_backend(backend),
        listen,
        ServerAuth::single("node1", auth_key(key)),
        ServerOptions::default(),
    )
    .unwrap()
}

/// A server root whose every node is `backend` (tests that inject faults into it).
fn one_backend(backend: Arc<dyn Backend>) -> ServerRoot {
    ServerRoot::Custom(Arc::new(move |_| Ok(backend.clone())))
}

fn connect(addr: SocketAddr, key: &MasterKey, o: RemoteOptions) -> Result<RemoteBackend, Error> {
    RemoteBackend::connect(&addr.ip().to_string(), addr.port(), None, key, o)
}

fn names(v: &[ObjectInfo]) -> Vec<(&str, u64)> {
    v.iter().map(|o| (o.name.as_str(), o.size)).collect()
}

/// Every file under `root` with its content, to show a refused peer changed nothing.
fn tree(root: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                dirs.push(p);
            } else {
                let c = std::fs::read(&p).unwrap();
                out.push((p, c));
            }
        }
    }
    out.sort();
    out
}

fn round_trip(listen: &str) {
    let dir = tempfile::tempdir().unwrap();
    let local = Arc::new(DirBackend::create(&dir.path().join("repo")).unwrap());
    let key = MasterKey::generate();
    let server = serve(local.clone(), listen, &key);
    let c = connect(server.addr(), &key, opts()).unwrap();
    assert!(c.url().starts_with("socket:"), "{}", c.url());

    // Objects.
    c.put("config", b"one").unwrap();
    c.put("config", b"two").unwrap();
    assert_eq!(c.get("config").unwrap(), b"two");
    assert!(c.put_if_absent("packs/aa", b"pack a").unwrap());
    assert!(!c.put_if_absent("packs/aa", b"other").unwrap());
    assert!(c.put_if_absent("packs/ab", b"pack ab").unwrap());
    assert_eq!(c.get("packs/aa").unwrap(), b"pack a");
    assert_eq!(c.get_range("packs/ab", 2, 3).unwrap(), b"ck ");
    assert!(matches!(
        c.get("packs/zz").unwrap_err(),
        Error::NotFound { .. }
    ));
    assert!(c.get_range("packs/ab", 5, 10).unwrap_err().is_corruption());
    assert!(matches!(
        c.get_range("packs/zz", 0, 0).unwrap_err(),
        Error::NotFound { .. }
    ));
    assert_eq!(
        names(&c.list("packs/").unwrap()),
        [("packs/aa", 6), ("packs/ab", 7)]
    );
    assert_eq!(names(&c.list("packs/ab").unwrap()), [("packs/ab", 7)]);
    c.delete("packs/aa").unwrap();
    c.delete("packs/aa").unwrap();
    assert_eq!(names(&c.list("packs/").unwrap()), [("packs/ab", 7)]);
    // The server stores exactly the client's bytes.
    assert_eq!(local.get("packs/ab").unwrap(), b"pack ab");
    // Names the directory backend refuses are refused through the server too.
    assert!(c.put("../escape", b"x").is_err());

    // An object larger than one response (16 MiB) comes back in pieces, byte-exact.
    let big: Vec<u8> = (0..(17u32 << 20))
        .map(|i| (i * 7 + i / 4099) as u8)
        .collect();
    c.put("packs/big", &big).unwrap();
    assert!(c.get("packs/big").unwrap() == big);
    assert!(c.get_range("packs/big", (16 << 20) - 3, 10).unwrap() == big[(16 << 20) - 3..][..10]);

    // Streams.
    let mut s = c
        .stream_open("0000000000000001", Durability::Fsync)
        .unwrap();
    assert_eq!(s.len(), 0);
    s.append(b"header").unwrap();
    s.append(b"record1").unwrap();
    assert_eq!(s.len(), 13);
    s.truncate(8).unwrap();
    s.append(b"X").unwrap();
    assert_eq!(c.stream_read("0000000000000001").unwrap(), b"headerreX");
    let s2 = c
        .stream_open("0000000000000001", Durability::Flush)
        .unwrap();
    assert_eq!(s2.len(), 9);
    c.stream_open("0000000000000002", Durability::Fsync)
        .unwrap();
    assert_eq!(
        names(&c.stream_list().unwrap()),
        [("0000000000000001", 9), ("0000000000000002", 0)]
    );
    assert_eq!(local.stream_read("0000000000000001").unwrap(), b"headerreX");
    c.stream_delete("0000000000000002").unwrap();
    c.stream_delete("0000000000000002").unwrap();
    assert_eq!(names(&c.stream_list().unwrap()), [("0000000000000001", 9)]);

    // Locks: a second client is told who holds it; released when the guard drops.
    let other = connect(server.addr(), &key, opts()).unwrap();
    let g = c.lock("writer", "plugin on node A").unwrap();
    match other.lock("writer", "backup-cli compact").map(|_| ()) {
        Err(Error::Locked { holder, .. }) => assert_eq!(holder, "plugin on node A"),
        other => panic!("expected Locked, got {other:?}"),
    }
    // A local process sees the server's lock too.
    assert!(matches!(
        local.lock("writer", "local").map(|_| ()),
        Err(Error::Locked { .. })
    ));
    drop(g);
    let g2 = other.lock("writer", "backup-cli compact").unwrap();
    drop(g2);
}

#[test]
fn every_method_round_trips_over_ipv4() {
    round_trip("127.0.0.1:0");
}

#[test]
fn every_method_round_trips_over_ipv6() {
    if TcpListener::bind("[::1]:0").is_err() {
        panic!("this machine has no IPv6 loopback; the IPv6 test needs [::1]");
    }
    round_trip("[::1]:0");
}

#[test]
fn locks_lapse_when_the_holder_vanishes_and_are_not_retaken_over_another() {
    let dir = tempfile::tempdir().unwrap();
    let local = Arc::new(DirBackend::create(&dir.path().join("repo")).unwrap());
    let key = MasterKey::generate();
    // The server closes connections idle for 200 ms: a vanished client's locks lapse.
    let server = ServerHandle::spawn(
        one_backend(local),
        "127.0.0.1:0",
        ServerAuth::single("node1", auth_key(&key)),
        ServerOptions {
            idle_timeout: Duration::from_millis(200),
            ..ServerOptions::default()
        },
    )
    .unwrap();
    let vanished = connect(server.addr(), &key, opts()).unwrap();
    let guard = vanished.lock("writer", "plugin that hung").unwrap();
    let other = connect(server.addr(), &key, opts()).unwrap();
    let mut taken = None;
    for _ in 0..500 {
        match other.lock("writer", "new plugin") {
            Ok(g) => {
                taken = Some(g);
                break;
            }
            Err(Error::Locked { holder, .. }) => {
                assert_eq!(holder, "plugin that hung");
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert!(taken.is_some(), "the lock of an idle-closed client lapses");
    // The hung client comes back: its next call redials, cannot re-take its lock, and says so.
    let err = vanished.list("packs/").unwrap_err();
    match err {
        Error::Locked { holder, .. } => assert_eq!(holder, "new plugin"),
        e => panic!("expected Locked, got {e}"),
    }
    drop(guard);
}

/// Two nodes on one server (a directory root): a stranger's key gets nothing; each node sees
/// only its own repository; names and prefixes that would leave it are refused.
#[test]
fn a_wrong_key_gets_nothing_and_nodes_see_only_their_own() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let (a, b) = (MasterKey::generate(), MasterKey::generate());
    let server = ServerHandle::spawn(
        ServerRoot::Dir(root.clone()),
        "127.0.0.1:0",
        ServerAuth::from_nodes(vec![
            NodeEntry::new("alice", auth_key(&a)),
            NodeEntry::new("bob", auth_key(&b)),
        ])
        .unwrap(),
        ServerOptions::default(),
    )
    .unwrap();
    let ca = connect(server.addr(), &a, opts()).unwrap();
    ca.put("config", b"alice's sealed config").unwrap();
    let mut s = ca
        .stream_open("0000000000000000", Durability::Fsync)
        .unwrap();
    s.append(b"alice's record").unwrap();
    let before = tree(&root);

    let stranger = MasterKey::generate();
    let err = connect(server.addr(), &stranger, opts())
        .map(|_| ())
        .unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("refused this node's key"), "{msg}");
    assert!(msg.contains(&server.addr().port().to_string()), "{msg}");
    // The repository key itself is not the auth key either.
    let as_auth = MasterKey::from_bytes(auth_key(&a));
    assert!(connect(server.addr(), &as_auth, opts()).is_err());
    assert_eq!(tree(&root), before);

    // Bob's repository is his own: alice's objects, streams and locks are not in it.
    let cb = connect(server.addr(), &b, opts()).unwrap();
    assert_eq!(cb.grant().unwrap().name, "bob");
    assert!(matches!(cb.get("config"), Err(Error::NotFound { .. })));
    assert!(cb.list("").unwrap().is_empty());
    assert!(cb.stream_list().unwrap().is_empty());
    assert!(cb.stream_read("0000000000000000").unwrap().is_empty());
    let _g = ca.lock("writer", "alice's plugin").unwrap();
    drop(cb.lock("writer", "bob's plugin").unwrap());
    // Names that would leave it are refused, list prefixes included.
    for bad in [
        "../alice/config",
        "/etc/passwd",
        "nodes/../../x",
        "locks/writer",
        "journal/0000000000000000.log",
        "tmp/x",
    ] {
        assert!(cb.get(bad).is_err(), "{bad}");
        assert!(cb.put(bad, b"x").is_err(), "{bad}");
        assert!(cb.delete(bad).is_err(), "{bad}");
    }
    for bad in ["../", "../alice/", "/", "..", "nodes/../../"] {
        let e = cb.list(bad).unwrap_err().to_string();
        assert!(e.contains("invalid list prefix"), "{bad}: {e}");
    }
    for bad in ["../alice/journal/0000000000000000", "a/b"] {
        assert!(cb.stream_read(bad).is_err(), "{bad}");
        assert!(cb.stream_open(bad, Durability::Fsync).is_err(), "{bad}");
    }
    assert_eq!(ca.get("config").unwrap(), b"alice's sealed config");
    assert_eq!(
        ca.stream_read("0000000000000000").unwrap(),
        b"alice's record"
    );
}

#[test]
fn garbage_bytes_are_refused_and_the_server_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("repo");
    let local = Arc::new(DirBackend::create(&root).unwrap());
    local.put("config", b"sealed").unwrap();
    let key = MasterKey::generate();
    let server = serve(local, "127.0.0.1:0", &key);
    let before = tree(&root);
    for garbage in [
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        vec![0xff; 70_000],
        vec![0, 0],
        b"\x05\x01\x00".to_vec(),
    ] {
        let mut s = TcpStream::connect(server.addr()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let _ = s.write_all(&garbage);
        let _ = s.shutdown(std::net::Shutdown::Write);
        let mut got = Vec::new();
        let _ = s.read_to_end(&mut got);
        // Nothing but (at most) the two-byte refusal marker.
        assert!(got.is_empty() || got == [0, 0], "{got:?}");
    }
    assert_eq!(tree(&root), before);
    let c = connect(server.addr(), &key, opts()).unwrap();
    assert_eq!(c.get("config").unwrap(), b"sealed");
}

#[test]
fn a_stalled_server_trips_the_timeout_with_a_clear_error() {
    // Accepts, then never answers.
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let held = Arc::new(Mutex::new(Vec::new()));
    let h2 = held.clone();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            h2.lock().unwrap().push(s);
        }
    });
    let o = RemoteOptions {
        tries: 1,
        first_wait: Duration::from_millis(10),
        factor: 1.5,
        connect_timeout: Duration::from_secs(5),
        io_timeout: Duration::from_millis(300),
        ..RemoteOptions::default()
    };
    let err = connect(addr, &MasterKey::generate(), o)
        .map(|_| ())
        .unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("cannot reach the backup server"), "{msg}");
    assert!(
        msg.contains(&format!("socket:127.0.0.1:{}", addr.port())),
        "{msg}"
    );
    assert!(msg.contains("2 attempts"), "{msg}");
    assert!(
        msg.contains("timed out") || msg.contains("temporarily unavailable"),
        "{msg}"
    );
    assert_eq!(held.lock().unwrap().len(), 2, "one connection per attempt");
}

/// Wait until `worker` reaches the gate. If it ends first (an append failed and it panicked:
/// its message is printed above), fail at once instead of waiting out the limit: the gate's
/// sender lives in the server, so the channel alone would wait the whole time.
fn wait_for_gate<T>(reached: &Receiver<()>, worker: &std::thread::JoinHandle<T>, limit: Duration) {
    let deadline = std::time::Instant::now() + limit;
    loop {
        match reached.recv_timeout(Duration::from_millis(50)) {
            Ok(()) => return,
            Err(_) if worker.is_finished() => {
                panic!("the client ended before it reached the gate (its error is above)")
            }
            Err(_) if std::time::Instant::now() > deadline => {
                panic!("the client did not reach the gate in {limit:?}")
            }
            Err(_) => {}
        }
    }
}

/// A backend whose `n`-th stream append completes (durably) and then waits for the test: the
/// test kills the server meanwhile, so the acknowledgement is lost. With `torn`, that append
/// stores only its start, as a server losing power in the middle of the write leaves it.
struct Gate {
    inner: Arc<DirBackend>,
    appends: Arc<Mutex<u32>>,
    hold_at: u32,
    reached: Sender<()>,
    release: Arc<Mutex<Receiver<()>>>,
    torn: Option<Torn>,
}

/// What the held append stores: its first `keep` bytes, those from `other_from` on changed
/// (bytes the node never sent: another writer's torn append, or damage).
#[derive(Clone, Copy)]
struct Torn {
    keep: usize,
    other_from: Option<usize>,
}

impl Gate {
    fn new(
        inner: Arc<DirBackend>,
        hold_at: u32,
        reached: Sender<()>,
        release: Receiver<()>,
    ) -> Gate {
        Gate {
            inner,
            appends: Arc::new(Mutex::new(0)),
            hold_at,
            reached,
            release: Arc::new(Mutex::new(release)),
            torn: None,
        }
    }
}

struct GateStream {
    inner: Box<dyn Stream>,
    appends: Arc<Mutex<u32>>,
    hold_at: u32,
    reached: Sender<()>,
    release: Arc<Mutex<Receiver<()>>>,
    torn: Option<Torn>,
}

impl Stream for GateStream {
    fn len(&self) -> u64 {
        self.inner.len()
    }
    fn append(&mut self, data: &[u8]) -> store::Result<()> {
        let n = {
            let mut a = self.appends.lock().unwrap();
            *a += 1;
            *a
        };
        let torn = self.torn.filter(|_| n == self.hold_at);
        match torn {
            None => self.inner.append(data)?,
            Some(t) => {
                let mut part = data[..t.keep.min(data.len() - 1)].to_vec();
                if let Some(from) = t.other_from {
                    for b in &mut part[from..] {
                        *b = if *b == 1 { 2 } else { 1 };
                    }
                }
                self.inner.append(&part)?;
            }
        }
        if n == self.hold_at {
            self.reached.send(()).unwrap();
            self.release.lock().unwrap().recv().unwrap();
        }
        match torn {
            None => Ok(()),
            Some(_) => Err(Error::Invalid("the server lost power in this write".into())),
        }
    }
    fn truncate(&mut self, len: u64) -> store::Result<()> {
        self.inner.truncate(len)
    }
}

impl Backend for Gate {
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
        self.inner.get(n)
    }
    fn get_range(&self, n: &str, o: u64, l: u64) -> store::Result<Vec<u8>> {
        self.inner.get_range(n, o, l)
    }
    fn list(&self, p: &str) -> store::Result<Vec<ObjectInfo>> {
        self.inner.list(p)
    }
    fn delete(&self, n: &str) -> store::Result<()> {
        self.inner.delete(n)
    }
    fn stream_open(&self, n: &str, d: Durability) -> store::Result<Box<dyn Stream>> {
        Ok(Box::new(GateStream {
            inner: self.inner.stream_open(n, d)?,
            appends: self.appends.clone(),
            hold_at: self.hold_at,
            reached: self.reached.clone(),
            release: self.release.clone(),
            torn: self.torn,
        }))
    }
    fn stream_read(&self, n: &str) -> store::Result<Vec<u8>> {
        self.inner.stream_read(n)
    }
    fn stream_list(&self) -> store::Result<Vec<ObjectInfo>> {
        self.inner.stream_list()
    }
    fn stream_delete(&self, n: &str) -> store::Result<()> {
        self.inner.stream_delete(n)
    }
    fn lock(&self, n: &str, h: &str) -> store::Result<Box<dyn LockGuard>> {
        self.inner.lock(n, h)
    }
}

fn record(i: u32) -> Vec<u8> {
    format!("batch {i:05} ")
        .repeat(1 + (i as usize % 7))
        .into_bytes()
}

#[test]
fn server_killed_mid_stream_loses_nothing_and_doubles_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let local = Arc::new(DirBackend::create(&dir.path().join("repo")).unwrap());
    let key = MasterKey::generate();
    let (reached_tx, reached_rx) = channel();
    let (release_tx, release_rx) = channel();
    let gate = Arc::new(Gate::new(local.clone(), 40, reached_tx, release_rx));
    let server = serve(gate, "127.0.0.1:0", &key);
    let addr = server.addr();

    let writer = std::thread::spawn({
        let key = key.clone();
        move || {
            let c = connect(addr, &key, opts()).unwrap();
            let _lock = c.lock("writer", "plugin").unwrap();
            let mut s = c
                .stream_open("0000000000000000", Durability::Fsync)
                .unwrap();
            for i in 0..100 {
                s.append(&record(i)).unwrap();
            }
            // The lock was re-taken on reconnect: another client is refused.
            let other = connect(addr, &key, opts()).unwrap();
            assert!(matches!(
                other.lock("writer", "intruder").map(|_| ()),
                Err(Error::Locked { .. })
            ));
        }
    });

    // Append #40 is durable on the server; kill it before it answers.
    wait_for_gate(&reached_rx, &writer, Duration::from_secs(60));
    server.close_connections();
    release_tx.send(()).unwrap();
    server.stop();

    // Restart on the same address, without the gate: the client redials and re-sends #40.
    let server = serve(local.clone(), &addr.to_string(), &key);
    assert_eq!(server.addr(), addr);
    writer.join().unwrap();

    let want: Vec<u8> = (0..100).flat_map(record).collect();
    let got = local.stream_read("0000000000000000").unwrap();
    assert_eq!(got.len(), want.len(), "nothing lost, nothing doubled");
    assert!(got == want);
}

/// A re-sent append (its acknowledgement lost) is answered "already stored" only when the
/// stream ends with exactly its bytes at its offset; other bytes of the same length there are a
/// second writer's, and the append is refused (a conflict naming the stream), never
/// acknowledged: acknowledging them would tell the plugin a batch is stored that is not.
#[test]
fn already_stored_is_answered_only_for_the_same_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let local = Arc::new(DirBackend::create(&dir.path().join("repo")).unwrap());
    let key = MasterKey::generate();
    let server = serve(local.clone(), "127.0.0.1:0", &key);
    let c = connect(server.addr(), &key, opts()).unwrap();
    let name = "0000000000000000";
    // Two handles opened at length 0: the second sends its appends at offset 0 again, as a
    // client re-sending after a lost acknowledgement does.
    let mut writer = c.stream_open(name, Durability::Fsync).unwrap();
    let mut resend_same = c.stream_open(name, Durability::Fsync).unwrap();
    let mut resend_other = c.stream_open(name, Durability::Fsync).unwrap();
    writer.append(&record(1)).unwrap();

    let mut other = record(1);
    other[3] ^= 0x20;
    let err = resend_other.append(&other).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains(&format!("journal/{name}.log")) && msg.contains("another writer"),
        "{msg}"
    );
    resend_same.append(&record(1)).unwrap();
    assert_eq!(resend_same.len(), record(1).len() as u64);
    // Stored once, the writer's bytes.
    assert_eq!(local.stream_read(name).unwrap(), record(1));
    writer.append(&record(2)).unwrap();
    let want: Vec<u8> = [record(1), record(2)].concat();
    assert_eq!(local.stream_read(name).unwrap(), want);
}

/// The server restarted over a disk that lost acknowledged appends (its directory restored from
/// an older copy, or cut by hand): the client's next append, at the offset it had stored to, is
/// refused naming the stream and the loss, and the server neither fills the gap nor stores the
/// batch after it, which would acknowledge a journal with a hole.
#[test]
fn a_server_that_lost_acknowledged_appends_refuses_the_next_one() {
    let dir = tempfile::tempdir().unwrap();
    let local = Arc::new(DirBackend::create(&dir.path().join("repo")).unwrap());
    let key = MasterKey::generate();
    let server = serve(local.clone(), "127.0.0.1:0", &key);
    let addr = server.addr();
    let name = "0000000000000000";
    // Few tries: a server that fails the append (a panic, a dropped connection) is not waited
    // out for minutes.
    let o = RemoteOptions {
        tries: 3,
        first_wait: Duration::from_millis(10),
        ..opts()
    };
    let c = connect(addr, &key, o).unwrap();
    let mut s = c.stream_open(name, Durability::Fsync).unwrap();
    for i in 1..=3 {
        s.append(&record(i)).unwrap();
    }
    server.close_connections();
    server.stop();
    // The disk as it was before the last two appends.
    let kept = record(1).len() as u64;
    local
        .stream_open(name, Durability::Fsync)
        .unwrap()
        .truncate(kept)
        .unwrap();
    let server = serve(local.clone(), &addr.to_string(), &key);
    assert_eq!(server.addr(), addr);

    let msg = s.append(&record(4)).unwrap_err().to_string();
    assert!(
        msg.contains(&format!("journal/{name}.log"))
            && msg.contains(&format!("is {kept} bytes, shorter than the"))
            && msg.contains("lost acknowledged appends"),
        "{msg}"
    );
    assert_eq!(
        local.stream_read(name).unwrap(),
        record(1),
        "nothing stored after the loss"
    );
}

#[test]
fn retries_run_out_with_a_message_naming_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let local = Arc::new(DirBackend::create(&dir.path().join("repo")).unwrap());
    let key = MasterKey::generate();
    let server = serve(local, "127.0.0.1:0", &key);
    let addr = server.addr();
    let o = RemoteOptions {
        tries: 2,
        first_wait: Duration::from_millis(10),
        ..opts()
    };
    let c = connect(addr, &key, o).unwrap();
    let mut s = c
        .stream_open("0000000000000000", Durability::Fsync)
        .unwrap();
    s.append(b"acknowledged").unwrap();
    server.stop();
    let err = s.append(b"never acknowledged").unwrap_err().to_string();
    assert!(
        err.contains(&format!("socket:127.0.0.1:{}", addr.port())),
        "{err}"
    );
    assert!(err.contains("3 attempts"), "{err}");
    assert!(err.contains("backup-cli server"), "{err}");
}

// ---- SOCKS5 ----

/// A minimal SOCKS5 relay (no auth, CONNECT) that sends every request to `target`, the way Tor
/// resolves an .onion name itself; it records the address type and name it was asked for.
/// (address type, address) of each CONNECT the relay received.
type Seen = Arc<Mutex<Vec<(u8, String)>>>;

fn socks_relay(target: SocketAddr) -> (SocketAddr, Seen) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let seen2 = seen.clone();
    std::thread::spawn(move || {
        for c in l.incoming().flatten() {
            let seen = seen2.clone();
            std::thread::spawn(move || {
                let mut c = c;
                let mut b = [0u8; 3];
                c.read_exact(&mut b).unwrap();
                c.write_all(&[5, 0]).unwrap();
                let mut h = [0u8; 4];
                c.read_exact(&mut h).unwrap();
                let name = match h[3] {
                    3 => {
                        let mut n = [0u8; 1];
                        c.read_exact(&mut n).unwrap();
                        let mut v = vec![0u8; n[0] as usize];
                        c.read_exact(&mut v).unwrap();
                        String::from_utf8(v).unwrap()
                    }
                    1 => {
                        let mut v = [0u8; 4];
                        c.read_exact(&mut v).unwrap();
                        std::net::Ipv4Addr::from(v).to_string()
                    }
                    _ => panic!("address type {}", h[3]),
                };
                let mut port = [0u8; 2];
                c.read_exact(&mut port).unwrap();
                seen.lock().unwrap().push((h[3], name));
                let up = TcpStream::connect(target).unwrap();
                c.write_all(&[5, 0, 0, 1, 127, 0, 0, 1, 0, 0]).unwrap();
                let (mut r1, mut w1) = (c.try_clone().unwrap(), up.try_clone().unwrap());
                let (mut r2, mut w2) = (up, c);
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut r1, &mut w1);
                    let _ = w1.shutdown(std::net::Shutdown::Write);
                });
                let _ = std::io::copy(&mut r2, &mut w2);
                let _ = w2.shutdown(std::net::Shutdown::Write);
            });
        }
    });
    (addr, seen)
}

#[test]
fn onion_names_go_to_the_proxy_unresolved() {
    let dir = tempfile::tempdir().unwrap();
    let local = Arc::new(DirBackend::create(&dir.path().join("repo")).unwrap());
    let key = MasterKey::generate();
    let server = serve(local, "127.0.0.1:0", &key);
    let (proxy, seen) = socks_relay(server.addr());
    let onion = "abcdefghijklmnopqrstuvwxyz234567abcdefghijklmnopqrstuvwx.onion";
    let url = store::BackupUrl::parse(&format!(
        "socket:{onion}:9735?proxy=socks5:127.0.0.1:{}",
        proxy.port()
    ))
    .unwrap();
    let c = store::backend::open(&url, Some(&key), false).unwrap();
    c.put("config", b"over tor").unwrap();
    assert_eq!(c.get("config").unwrap(), b"over tor");
    let seen = seen.lock().unwrap();
    assert!(!seen.is_empty());
    assert!(seen.iter().all(|(t, n)| *t == 3 && n == onion), "{seen:?}");
}

/// Through a real SOCKS5 proxy (the `fast-socks5` crate's server, started in this process by
/// `testsvc`), with the server named by a host name the proxy resolves, as Tor resolves a
/// `.onion`: the proxy must see the name, not an address resolved by the client.
#[test]
fn through_a_real_socks5_proxy() {
    let dir = tempfile::tempdir().unwrap();
    let local = Arc::new(DirBackend::create(&dir.path().join("repo")).unwrap());
    let key = MasterKey::generate();
    // On every address `localhost` resolves to (the proxy connects to one of them).
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let server = serve(local.clone(), &format!("localhost:{port}"), &key);
    let proxy = testsvc::socks5::Socks5Proxy::start();
    let url = store::BackupUrl::parse(&format!(
        "socket:localhost:{}?proxy=socks5:127.0.0.1:{}",
        server.addr().port(),
        proxy.addr().port()
    ))
    .unwrap();
    let c = store::backend::open(&url, Some(&key), false).unwrap();
    let mut s = c
        .stream_open("0000000000000000", Durability::Fsync)
        .unwrap();
    s.append(b"via a SOCKS5 proxy").unwrap();
    assert!(matches!(
        c.get_range("nonexistent", 0, 1),
        Err(Error::NotFound { .. })
    ));
    assert_eq!(
        local.stream_read("0000000000000000").unwrap(),
        b"via a SOCKS5 proxy"
    );
    let targets = proxy.targets();
    let want = format!("localhost:{}", server.addr().port());
    assert!(
        !targets.is_empty() && targets.iter().all(|t| *t == want),
        "{targets:?}"
    );
}

// ---- end to end ----

fn load_trace(name: &str) -> Vec<store::Batch> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../testdata")
        .join(name);
    store::journal::trace::load(&p).unwrap()
}

/// The real session-1 trace through an encrypted remote repository: a snapshot over the link,
/// the server killed between fsync and acknowledgement of one batch and restarted, the rest of
/// the trace, then a restore through the server equal to the database lightningd produced.
#[test]
fn a_real_trace_through_a_restarted_server_restores_exactly() {
    use store::ops::compact::{compact, CompactOptions};
    use store::ops::restore::{restore, RestoreTarget};

    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("server-repo");
    let local = Arc::new(DirBackend::create(&root).unwrap());
    let key = MasterKey::generate();
    let trace = load_trace("trace-s1.jsonl");
    let kill_at = trace.len() as u32 * 2 / 3;
    let (reached_tx, reached_rx) = channel();
    let (release_tx, release_rx) = channel();
    let gate = Arc::new(Gate::new(local.clone(), kill_at, reached_tx, release_rx));
    let server = serve(gate, "127.0.0.1:0", &key);
    let addr = server.addr();

    let node = std::thread::spawn({
        let key = key.clone();
        let cache = dir.path().join("compaction-base");
        move || {
            let remote = Arc::new(connect(addr, &key, opts()).unwrap());
            let repo = store::Repository::init_backend(
                remote,
                Some(&key),
                true,
                store::ConfigBody::default(),
            )
            .unwrap();
            let w = Mutex::new(repo.writer("plugin", Durability::Fsync).unwrap());
            let half = trace.len() / 2;
            for b in &trace[..half] {
                w.lock().unwrap().append(b).unwrap();
            }
            let rep = compact(
                &repo,
                &w,
                &CompactOptions {
                    cache_dir: cache,
                    holder: "compaction".into(),
                },
            )
            .unwrap();
            assert!(rep.snapshot.is_some());
            for b in &trace[half..] {
                w.lock().unwrap().append(b).unwrap();
            }
            trace.last().unwrap().data_version
        }
    });

    wait_for_gate(&reached_rx, &node, Duration::from_secs(300));
    server.close_connections();
    release_tx.send(()).unwrap();
    server.stop();
    let server = serve(local.clone(), &addr.to_string(), &key);
    let last = node.join().unwrap();

    // Restore through the server, as `backup-cli restore socket:...` does.
    let url = store::BackupUrl::parse(&format!("socket:127.0.0.1:{}", addr.port())).unwrap();
    let repo = store::Repository::open(&url, Some(key.clone())).unwrap();
    let dest = dir.path().join("restored.sqlite3");
    let rep = restore(&repo, &dest, &RestoreTarget::Latest).unwrap();
    assert_eq!(rep.data_version, last);
    assert_eq!(rep.integrity_check, "ok");
    let want = Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata/db-s1.sqlite3");
    assert!(
        store::dump::dump(&dest).unwrap() == store::dump::dump(&want).unwrap(),
        "the restored database differs from the one lightningd wrote"
    );
    // What the server stored is sealed: no SQL of the trace in any byte of it.
    for (path, bytes) in tree(&root) {
        for needle in [&b"INSERT INTO"[..], b"UPDATE vars", b"CREATE TABLE"] {
            assert!(
                !bytes.windows(needle.len()).any(|w| w == needle),
                "{} holds plaintext",
                path.display()
            );
        }
    }
    drop(server);
}

/// What [`through_a_torn_append`] leaves: the node's result (the newest version stored), the
/// test's directory, the server's backend, the restarted server, the key, and the stream's bytes
/// right after the power cut.
struct TornRun {
    res: Result<u32, Error>,
    dir: tempfile::TempDir,
    local: Arc<DirBackend>,
    server: ServerHandle,
    key: MasterKey,
    cut: Vec<u8>,
}

/// The first 400 batches of the session-1 trace through a repository on a server that loses
/// power in the middle of writing the `hold_at`-th frame (storing `torn`), then restarts over
/// what its disk kept; the node re-sends the batch and goes on.
fn through_a_torn_append(torn: Torn, hold_at: u32) -> TornRun {
    let dir = tempfile::tempdir().unwrap();
    let local = Arc::new(DirBackend::create(&dir.path().join("server-repo")).unwrap());
    let key = MasterKey::generate();
    let trace = load_trace("trace-s1.jsonl");
    let (reached_tx, reached_rx) = channel();
    let (release_tx, release_rx) = channel();
    let mut gate = Gate::new(local.clone(), hold_at, reached_tx, release_rx);
    gate.torn = Some(torn);
    let server = serve(Arc::new(gate), "127.0.0.1:0", &key);
    let addr = server.addr();
    let node = std::thread::spawn({
        let key = key.clone();
        move || -> Result<u32, Error> {
            let remote = Arc::new(connect(addr, &key, opts())?);
            let repo = store::Repository::init_backend(
                remote,
                Some(&key),
                true,
                store::ConfigBody::default(),
            )?;
            let mut w = repo.writer("plugin", Durability::Fsync)?;
            for b in &trace[..400] {
                w.append(b)?;
            }
            Ok(trace[399].data_version)
        }
    });
    wait_for_gate(&reached_rx, &node, Duration::from_secs(300));
    let cut = local.stream_read("0000000000000000").unwrap();
    server.close_connections();
    release_tx.send(()).unwrap();
    server.stop();
    let server = serve(local.clone(), &addr.to_string(), &key);
    let res = node.join().unwrap();
    TornRun {
        res,
        dir,
        local,
        server,
        key,
        cut,
    }
}

/// What the node's repository holds on the server's disk, as the server counts it for a quota.
fn bytes_on_disk(b: &DirBackend) -> u64 {
    let objects: u64 = ["", "snapshots/", "packs/", "index/", "journal/"]
        .iter()
        .map(|p| b.list(p).unwrap().iter().map(|o| o.size).sum::<u64>())
        .sum();
    objects + b.stream_list().unwrap().iter().map(|o| o.size).sum::<u64>()
}

/// The server lost power while writing a batch's frame: its disk holds the frame's start. The
/// node's re-sent batch completes it (the torn bytes are its own), the session goes on, the
/// restore through the server is exact, and the server's count of the node's bytes (for its
/// quota) is what its disk holds.
#[test]
fn a_batch_torn_by_a_server_power_cut_is_completed_by_the_node() {
    use store::ops::restore::{restore, RestoreTarget};
    let torn = Torn {
        keep: 40,
        other_from: None,
    };
    let t = through_a_torn_append(torn, 300);
    let last = t.res.unwrap();
    let after = t.local.stream_read("0000000000000000").unwrap();
    assert!(after.len() > t.cut.len());
    let torn_at = t.cut.len() - torn.keep;
    assert_eq!(
        after[torn_at..t.cut.len()],
        t.cut[torn_at..],
        "completed in place"
    );

    let url =
        store::BackupUrl::parse(&format!("socket:127.0.0.1:{}", t.server.addr().port())).unwrap();
    let repo = store::Repository::open(&url, Some(t.key.clone())).unwrap();
    let dest = t.dir.path().join("restored.sqlite3");
    let rep = restore(&repo, &dest, &RestoreTarget::Latest).unwrap();
    assert_eq!(rep.data_version, last);
    let want = t.dir.path().join("want.sqlite3");
    let mut rp = store::replay::Replayer::open(&want, true).unwrap();
    for b in &load_trace("trace-s1.jsonl")[..400] {
        rp.apply(&store::journal::Record {
            batch: b.clone(),
            supersedes: false,
            time_ms: 0,
        })
        .unwrap();
    }
    rp.finish(&want).unwrap();
    assert!(
        store::dump::dump(&dest).unwrap() == store::dump::dump(&want).unwrap(),
        "the restored database differs from the trace's"
    );
    drop(repo);
    assert_eq!(
        t.server.status().nodes[0].used,
        Some(bytes_on_disk(&t.local)),
        "the server's count of the node's bytes"
    );
}

/// The server lost power while writing a frame of bytes the node never sent (another writer's,
/// or damage), after the frame's header, or only in its last byte: the node's batch at that
/// offset is refused as a conflict naming the stream, the node stops there, and the torn bytes
/// are left as they are for the node to read with its key.
#[test]
fn a_torn_frame_of_other_bytes_is_a_conflict_never_overwritten() {
    for from in [8, 39] {
        let torn = Torn {
            keep: 40,
            other_from: Some(from),
        };
        let t = through_a_torn_append(torn, 300);
        let msg = t.res.unwrap_err().to_string();
        assert!(
            msg.contains("journal/0000000000000000.log") && msg.contains("did not send"),
            "{from}: {msg}"
        );
        let now = t.local.stream_read("0000000000000000").unwrap();
        assert!(
            now == t.cut,
            "{from}: the stream is as the power cut left it"
        );
    }
}

/// An append-only node (and a quota): it creates objects and appends; a delete, a replacement
/// by other bytes, a stream deleted or cut below what the server acknowledged are refused with
/// a typed error, and nothing on disk changes. A truncate never grows a stream, append-only or
/// not; the quota refuses what would pass it.
#[test]
fn append_only_refuses_delete_replace_and_cut() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let (a, b) = (MasterKey::generate(), MasterKey::generate());
    let mut locked = NodeEntry::new("locked", auth_key(&a));
    locked.append_only = true;
    let mut small = NodeEntry::new("small", auth_key(&b));
    small.quota = Some(1000);
    let server = ServerHandle::spawn(
        ServerRoot::Dir(root.clone()),
        "127.0.0.1:0",
        ServerAuth::from_nodes(vec![locked, small]).unwrap(),
        ServerOptions::default(),
    )
    .unwrap();
    let c = connect(server.addr(), &a, opts()).unwrap();
    assert!(c.append_only());
    c.put("config", b"v1").unwrap();
    // The same bytes again (a request re-sent after a lost answer) are fine.
    c.put("config", b"v1").unwrap();
    assert!(c.put_if_absent("packs/aa", b"pack").unwrap());
    let mut s = c
        .stream_open("0000000000000000", Durability::Fsync)
        .unwrap();
    s.append(b"header and records").unwrap();
    s.append(b" and more").unwrap();
    let before = tree(&root.join("nodes/locked"));
    let refused = |r: Result<(), Error>, op: &str| match r {
        Err(Error::AppendOnly { op: o, .. }) => assert_eq!(o, op),
        other => panic!("expected an append-only refusal of {op}, got {other:?}"),
    };
    refused(c.put("config", b"v2"), "replace");
    refused(c.delete("config"), "delete");
    refused(c.delete("packs/aa"), "delete");
    refused(c.stream_delete("0000000000000000"), "delete stream");
    refused(s.truncate(5), "cut");
    let e = s.truncate(1 << 30).unwrap_err().to_string();
    assert!(e.contains("would grow it"), "{e}");
    assert_eq!(tree(&root.join("nodes/locked")), before);
    assert_eq!(c.get("config").unwrap(), b"v1");
    assert_eq!(
        c.stream_read("0000000000000000").unwrap(),
        b"header and records and more"
    );
    // Appends go on.
    s.append(b"!").unwrap();

    // The other node is not append-only; its quota is 1000 bytes.
    let q = connect(server.addr(), &b, opts()).unwrap();
    assert!(!q.append_only());
    q.put("config", &[7; 600]).unwrap();
    let e = q.put("packs/x", &[7; 600]).unwrap_err().to_string();
    assert!(e.contains("quota") && e.contains("small"), "{e}");
    let mut qs = q
        .stream_open("0000000000000000", Durability::Fsync)
        .unwrap();
    qs.append(&[1; 300]).unwrap();
    assert!(qs
        .append(&[1; 300])
        .unwrap_err()
        .to_string()
        .contains("quota"));
    // Deleting makes room again.
    q.delete("config").unwrap();
    q.put("packs/x", &[7; 600]).unwrap();
    qs.truncate(100).unwrap();
    assert!(qs
        .truncate(200)
        .unwrap_err()
        .to_string()
        .contains("would grow it"));
}
