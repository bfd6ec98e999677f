//! `backup-cli server`: one repository served to many clients, a thread per connection.
//!
//! The server holds only auth keys (one per node); it cannot derive the seal or chunk-id keys
//! and stores exactly the bytes clients send. A connection is: handshake (refused unless the
//! peer proves one of the auth keys), hellos (refused on an unknown protocol version), then
//! requests answered in order. Garbage, an oversize frame, a timeout or a closed socket end
//! that connection only. Log lines go to stderr with sd-daemon priority prefixes (`<6>` info,
//! `<4>` warning, `<3>` error) and no timestamps: journald adds them.
//!
//! Shared state across connections: the open streams (one per name, so an append's offset is
//! checked against the true length, and a stream that failed an fdatasync stays refused) and
//! the locks, owned by a client session (see the parent module).

use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use super::channel::{self, Channel};
use super::proto::{self, ClientHello, RemoteError, Request, ServerHello, MAX_DATA, VERSION};
use crate::backend::{Backend, Durability, LockGuard, Stream};
use crate::codec::Enc;
use crate::error::{Error, Result};

/// The auth keys of the nodes a server admits.
#[derive(Clone)]
pub struct ServerAuth {
    keys: Vec<[u8; 32]>,
}

impl std::fmt::Debug for ServerAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ServerAuth({} keys)", self.keys.len())
    }
}

impl ServerAuth {
    pub fn from_keys(keys: Vec<[u8; 32]>) -> ServerAuth {
        ServerAuth { keys }
    }

    /// Parse an auth key file: one key per line as 64 hex digits (`backup-cli key
    /// server-auth` prints it); blank lines and lines starting with `#` are ignored.
    pub fn parse(text: &str, path: &str) -> Result<ServerAuth> {
        let mut keys = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let l = line.trim();
            if l.is_empty() || l.starts_with('#') {
                continue;
            }
            let mut k = [0u8; 32];
            hex::decode_to_slice(l, &mut k).map_err(|_| {
                Error::Invalid(format!(
                    "{path} line {}: expected an auth key of 64 hex digits (from `backup-cli key server-auth`)",
                    i + 1
                ))
            })?;
            keys.push(k);
        }
        if keys.is_empty() {
            return Err(Error::Invalid(format!(
                "{path} holds no auth key: add the line `backup-cli key server-auth` prints on each node"
            )));
        }
        Ok(ServerAuth { keys })
    }

    pub fn from_file(path: &Path) -> Result<ServerAuth> {
        // One 64-hex-digit line per node: 1 MiB is thousands of nodes.
        let text = crate::crypto::read_small_file(path, 1 << 20, "an auth key file")
            .map_err(|e| Error::io("read", path.display().to_string(), e))?;
        Self::parse(&text, &path.display().to_string())
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerOptions {
    /// Time a new connection has to complete its handshake.
    pub handshake_timeout: Duration,
    /// A connection with no request for this long is closed (the client redials).
    pub idle_timeout: Duration,
    /// Timeout of each read within a frame and of each write.
    pub io_timeout: Duration,
    /// Connections beyond this are closed at once.
    pub max_connections: usize,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            handshake_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(600),
            io_timeout: Duration::from_secs(60),
            max_connections: 64,
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

type SharedStream = Arc<Mutex<(Durability, Box<dyn Stream>)>>;
/// A live connection: a handle on its socket (to shut it down) and its thread.
type LiveConn = (TcpStream, Option<JoinHandle<()>>);

struct HeldLock {
    session: [u8; 16],
    holder: String,
    _guard: Box<dyn LockGuard>,
}

struct Shared {
    backend: Arc<dyn Backend>,
    auth: ServerAuth,
    opts: ServerOptions,
    stop: AtomicBool,
    next_conn: AtomicU64,
    /// Live connections (for stop) and their threads.
    conns: Mutex<HashMap<u64, LiveConn>>,
    streams: Mutex<HashMap<String, SharedStream>>,
    /// Live connections per session; a session's locks go when its count reaches 0.
    sessions: Mutex<HashMap<[u8; 16], usize>>,
    locks: Mutex<HashMap<String, HeldLock>>,
}

fn log(prio: u8, msg: &str) {
    eprintln!("<{prio}>{msg}");
}

/// A running server (for tests and embedding): stops when dropped.
pub struct ServerHandle {
    shared: Arc<Shared>,
    addrs: Vec<SocketAddr>,
    accepters: Vec<JoinHandle<()>>,
}

impl ServerHandle {
    /// Bind every address `listen` (`HOST:PORT`, `[v6]:PORT`; port 0 picks one) resolves to
    /// and serve in background threads.
    pub fn spawn(
        backend: Arc<dyn Backend>,
        listen: &str,
        auth: ServerAuth,
        opts: ServerOptions,
    ) -> Result<ServerHandle> {
        if auth.is_empty() {
            return Err(Error::Invalid(
                "the server needs at least one auth key".into(),
            ));
        }
        let (host, port) = crate::url::split_host_port(listen)
            .or_else(|| {
                // Port 0 (pick one) is fine here.
                let (h, p) = listen.rsplit_once(':')?;
                let h = h.trim_start_matches('[').trim_end_matches(']');
                (p == "0").then(|| (h.to_string(), 0))
            })
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "bad listen address '{listen}': expected HOST:PORT or [IPv6]:PORT"
                ))
            })?;
        let addrs: Vec<SocketAddr> = (host.as_str(), port)
            .to_socket_addrs()
            .map_err(|e| Error::io("resolve", listen, e))?
            .collect();
        let shared = Arc::new(Shared {
            backend,
            auth,
            opts,
            stop: AtomicBool::new(false),
            next_conn: AtomicU64::new(1),
            conns: Mutex::new(HashMap::new()),
            streams: Mutex::new(HashMap::new()),
            sessions: Mutex::new(HashMap::new()),
            locks: Mutex::new(HashMap::new()),
        });
        let mut bound = Vec::new();
        let mut listeners = Vec::new();
        for a in addrs {
            let l = TcpListener::bind(a).map_err(|e| Error::io("listen on", a.to_string(), e))?;
            let local = l
                .local_addr()
                .map_err(|e| Error::io("listen on", a.to_string(), e))?;
            bound.push(local);
            listeners.push(l);
        }
        let mut accepters = Vec::new();
        for (l, a) in listeners.into_iter().zip(&bound) {
            log(
                6,
                &format!(
                    "listening on {a}, serving {} to {} auth key(s)",
                    shared.backend.url(),
                    shared.auth.len()
                ),
            );
            let sh = shared.clone();
            accepters.push(std::thread::spawn(move || accept_loop(sh, l)));
        }
        Ok(ServerHandle {
            shared,
            addrs: bound,
            accepters,
        })
    }

    /// The first bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addrs
            .first()
            .copied()
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    pub fn addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// Close every live connection now (clients see the link drop, as on a crash) without
    /// waiting for their threads; the server keeps accepting.
    pub fn close_connections(&self) {
        for (s, _) in lock(&self.shared.conns).values() {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }

    /// Stop accepting, close every connection (releasing their locks), wait for the threads.
    pub fn stop(mut self) {
        self.shutdown();
    }

    /// Block until the server stops (it does not, short of an error in an accept loop).
    pub fn wait(mut self) {
        for t in self.accepters.drain(..) {
            let _ = t.join();
        }
    }

    fn shutdown(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        for a in &self.addrs {
            // Wake the accept loop.
            let _ = TcpStream::connect_timeout(a, Duration::from_secs(1));
        }
        for t in self.accepters.drain(..) {
            let _ = t.join();
        }
        let threads: Vec<JoinHandle<()>> = {
            let mut conns = lock(&self.shared.conns);
            conns
                .values_mut()
                .filter_map(|(s, t)| {
                    let _ = s.shutdown(std::net::Shutdown::Both);
                    t.take()
                })
                .collect()
        };
        for t in threads {
            let _ = t.join();
        }
        lock(&self.shared.streams).clear();
        lock(&self.shared.locks).clear();
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        if !self.accepters.is_empty() {
            self.shutdown();
        }
    }
}

/// Serve `backend` on `listen` (`HOST:PORT`) until the process ends.
pub fn serve(
    backend: Arc<dyn Backend>,
    listen: &str,
    auth: ServerAuth,
    opts: ServerOptions,
) -> Result<()> {
    ServerHandle::spawn(backend, listen, auth, opts)?.wait();
    Ok(())
}

fn accept_loop(sh: Arc<Shared>, l: TcpListener) {
    loop {
        let (sock, peer) = match l.accept() {
            Ok(x) => x,
            Err(e) => {
                if sh.stop.load(Ordering::SeqCst) {
                    return;
                }
                log(4, &format!("accept failed: {e}"));
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        if sh.stop.load(Ordering::SeqCst) {
            return;
        }
        let id = sh.next_conn.fetch_add(1, Ordering::SeqCst);
        let clone = match sock.try_clone() {
            Ok(c) => c,
            Err(e) => {
                log(3, &format!("{peer}: cannot register the connection: {e}"));
                continue;
            }
        };
        let mut conns = lock(&sh.conns);
        conns.retain(|_, (_, t)| t.as_ref().is_some_and(|t| !t.is_finished()));
        if conns.len() >= sh.opts.max_connections {
            log(
                4,
                &format!(
                    "{peer}: refused, already {} connections (the limit)",
                    conns.len()
                ),
            );
            continue;
        }
        let sh2 = sh.clone();
        let t = std::thread::spawn(move || {
            connection(&sh2, sock, peer);
            lock(&sh2.conns).remove(&id);
        });
        conns.insert(id, (clone, Some(t)));
    }
}

fn connection(sh: &Shared, mut sock: TcpStream, peer: SocketAddr) {
    let setup = (|| -> io::Result<()> {
        sock.set_nodelay(true)?;
        sock.set_read_timeout(Some(sh.opts.handshake_timeout))?;
        sock.set_write_timeout(Some(sh.opts.io_timeout))
    })();
    if let Err(e) = setup {
        log(3, &format!("{peer}: socket setup failed: {e}"));
        return;
    }
    let (hs, hello, key) = match channel::server_accept(&mut sock, &sh.auth.keys) {
        Ok(x) => x,
        Err(e) => {
            log(4, &format!("{peer}: refused: {e}"));
            return;
        }
    };
    let hello = match ClientHello::decode(&hello) {
        Ok(h) => h,
        Err(e) => {
            log(4, &format!("{peer}: refused: {e}"));
            return;
        }
    };
    let ok = hello.version == VERSION;
    let reply = ServerHello {
        version: VERSION,
        status: if ok { 0 } else { 1 },
        message: if ok {
            String::new()
        } else {
            format!(
                "protocol version {} is not supported (this server speaks {VERSION})",
                hello.version
            )
        },
    };
    let mut chan = match channel::server_finish(sock, hs, &reply.encode()) {
        Ok(c) => c,
        Err(e) => {
            log(4, &format!("{peer}: handshake failed: {e}"));
            return;
        }
    };
    if !ok {
        log(4, &format!("{peer}: refused: {}", reply.message));
        return;
    }
    log(
        6,
        &format!("{peer}: connected (auth key #{})", key.saturating_add(1)),
    );
    *lock(&sh.sessions).entry(hello.session).or_insert(0) += 1;
    let why = serve_requests(sh, &mut chan, hello.session);
    match why {
        Ok(()) => log(6, &format!("{peer}: disconnected")),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::TimedOut => {
            log(
                6,
                &format!("{peer}: closed after idle or stalled I/O ({e})"),
            )
        }
        Err(e) if e.kind() == io::ErrorKind::InvalidData => {
            log(4, &format!("{peer}: dropped: {e}"))
        }
        Err(e) => log(6, &format!("{peer}: disconnected: {e}")),
    }
    let last = {
        let mut s = lock(&sh.sessions);
        let n = s
            .get(&hello.session)
            .copied()
            .unwrap_or(1)
            .saturating_sub(1);
        if n == 0 {
            s.remove(&hello.session);
        } else {
            s.insert(hello.session, n);
        }
        n == 0
    };
    if last {
        let mut locks = lock(&sh.locks);
        let before = locks.len();
        locks.retain(|_, l| l.session != hello.session);
        if locks.len() != before {
            log(6, &format!("{peer}: released its locks"));
        }
    }
}

/// Answer requests until the peer leaves (`Ok`) or the link fails.
fn serve_requests(sh: &Shared, chan: &mut Channel, session: [u8; 16]) -> io::Result<()> {
    loop {
        chan.socket().set_read_timeout(Some(sh.opts.idle_timeout))?;
        let frame = match chan.recv(proto::MAX_FRAME) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        };
        let (id, req) = Request::decode(&frame)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
        let resp = match handle(sh, &req, session) {
            Ok(body) => proto::encode_ok(id, &body),
            Err(e) => proto::encode_err(id, &e),
        };
        chan.send(&resp)?;
    }
}

enum Answer {
    Store(Error),
    Wire(RemoteError),
}

impl From<Error> for Answer {
    fn from(e: Error) -> Self {
        Answer::Store(e)
    }
}

fn handle(sh: &Shared, req: &Request<'_>, session: [u8; 16]) -> Result<Vec<u8>, RemoteError> {
    match handle_inner(sh, req, session) {
        Ok(b) => Ok(b),
        Err(Answer::Wire(w)) => Err(w),
        Err(Answer::Store(e)) => {
            if let Error::Io { .. } = e {
                log(3, &format!("{} failed: {e}", req.op_name()));
            }
            Err(RemoteError::from_error(&e))
        }
    }
}

fn blob(data: &[u8]) -> Vec<u8> {
    let mut e = Enc::new();
    e.blob(data);
    e.finish()
}

fn u64_body(v: u64) -> Vec<u8> {
    v.to_le_bytes().to_vec()
}

fn too_big(len: u64) -> Answer {
    Answer::Wire(RemoteError::Invalid(format!(
        "a read of {len} bytes exceeds the limit of {MAX_DATA} bytes per response"
    )))
}

fn open_stream(sh: &Shared, name: &str, d: Durability) -> Result<SharedStream> {
    let s = sh.backend.stream_open(name, d)?;
    let s = Arc::new(Mutex::new((d, s)));
    lock(&sh.streams).insert(name.to_string(), s.clone());
    Ok(s)
}

fn cached_stream(sh: &Shared, name: &str, d: Durability) -> Result<SharedStream> {
    let cached = lock(&sh.streams).get(name).cloned();
    match cached {
        Some(s) if lock(&s).0 == d => Ok(s),
        _ => open_stream(sh, name, d),
    }
}

fn handle_inner(sh: &Shared, req: &Request<'_>, session: [u8; 16]) -> Result<Vec<u8>, Answer> {
    let b = &sh.backend;
    Ok(match *req {
        Request::Ping => Vec::new(),
        Request::Put { name, data } => {
            b.put(name, data)?;
            Vec::new()
        }
        Request::PutIfAbsent { name, data } => vec![u8::from(b.put_if_absent(name, data)?)],
        Request::Get { name } => {
            let data = b.get(name)?;
            if data.len() > MAX_DATA {
                return Err(Answer::Wire(RemoteError::TooLarge(data.len() as u64)));
            }
            blob(&data)
        }
        Request::GetRange { name, offset, len } => {
            if len > MAX_DATA as u64 {
                return Err(too_big(len));
            }
            blob(&b.get_range(name, offset, len)?)
        }
        Request::List { prefix } => proto::encode_list(&b.list(prefix)?),
        Request::Delete { name } => {
            b.delete(name)?;
            Vec::new()
        }
        Request::StreamOpen { name, durability } => {
            // A fresh open reads the true length from the backend.
            let s = open_stream(sh, name, durability)?;
            let len = lock(&s).1.len();
            u64_body(len)
        }
        Request::StreamAppend {
            name,
            durability,
            offset,
            data,
        } => append(sh, name, durability, offset, data)?,
        Request::StreamTruncate {
            name,
            durability,
            len,
        } => {
            let s = cached_stream(sh, name, durability)?;
            lock(&s).1.truncate(len)?;
            Vec::new()
        }
        Request::StreamRead { name, offset, max } => {
            if max > MAX_DATA as u64 {
                return Err(too_big(max));
            }
            let all = b.stream_read(name)?;
            let start = usize::try_from(offset).unwrap_or(usize::MAX).min(all.len());
            let end = start.saturating_add(max as usize).min(all.len());
            blob(all.get(start..end).unwrap_or_default())
        }
        Request::StreamList => proto::encode_list(&b.stream_list()?),
        Request::StreamDelete { name } => {
            lock(&sh.streams).remove(name);
            b.stream_delete(name)?;
            Vec::new()
        }
        Request::Lock { name, holder } => {
            let mut locks = lock(&sh.locks);
            match locks.get(name) {
                // Our own session after a reconnect: it keeps the lock.
                Some(l) if l.session == session => {}
                Some(l) => {
                    return Err(Answer::Store(Error::Locked {
                        object: format!("locks/{name} ({})", b.url()),
                        holder: l.holder.clone(),
                    }))
                }
                None => {
                    let guard = b.lock(name, holder)?;
                    locks.insert(
                        name.to_string(),
                        HeldLock {
                            session,
                            holder: holder.to_string(),
                            _guard: guard,
                        },
                    );
                }
            }
            Vec::new()
        }
        Request::Unlock { name } => {
            let mut locks = lock(&sh.locks);
            if locks.get(name).is_some_and(|l| l.session == session) {
                locks.remove(name);
            }
            Vec::new()
        }
    })
}

/// Append iff the stream is `offset` long; "already stored" iff it already ends with `data` at
/// `offset` (a re-sent batch whose acknowledgement was lost); else a conflict.
fn append(
    sh: &Shared,
    name: &str,
    durability: Durability,
    offset: u64,
    data: &[u8],
) -> Result<Vec<u8>, Answer> {
    let answer = |already: bool, len: u64| {
        let mut e = Enc::new();
        e.u8(u8::from(already)).u64(len);
        e.finish()
    };
    let s = cached_stream(sh, name, durability)?;
    {
        let mut st = lock(&s);
        if st.1.len() == offset {
            st.1.append(data)?;
            return Ok(answer(false, st.1.len()));
        }
    }
    // The cached length disagrees: look at the stream as stored.
    let s = open_stream(sh, name, durability)?;
    let mut st = lock(&s);
    let len = st.1.len();
    if len == offset {
        st.1.append(data)?;
        return Ok(answer(false, st.1.len()));
    }
    let end = offset.checked_add(data.len() as u64);
    if end == Some(len) {
        let stored = sh.backend.stream_read(name)?;
        let from = usize::try_from(offset).unwrap_or(usize::MAX);
        if stored.get(from..) == Some(data) {
            log(
                6,
                &format!("journal/{name}.log: the append at {offset} was already stored (re-sent after a lost acknowledgement)"),
            );
            return Ok(answer(true, len));
        }
    }
    Err(Answer::Wire(RemoteError::Conflict(format!(
        "journal/{name}.log is {len} bytes but this client expected {offset}: another writer \
         appended to or cut the journal; restart the plugin to re-read it"
    ))))
}
