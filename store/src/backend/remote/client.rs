//! The `socket:` destination: a [`Backend`] whose every call is a request to a `backup-cli
//! server`.
//!
//! Connections are pooled (a long `put` does not hold up a journal append from another
//! thread); each carries one request at a time. When a request fails in transport (the
//! connection dropped, timed out, or the server restarted) the connection is discarded and the
//! request re-issued on a new one: an idle pooled connection is redialled at once, a fresh one
//! after waiting `first_wait`, then `first_wait * factor`, ... for `tries` waits. Each new
//! connection first re-takes the locks this client holds. Errors the server answers (not
//! found, locked, I/O on its disk) are returned as they are, never retried.
//!
//! Every wait says what it waits for ([`RemoteOptions::notify`]), and
//! [`RemoteOptions::deadline`] bounds all of a request's tries (`backup-cli --connect-timeout`).

use std::io;
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use super::channel::{self, Channel, HandshakeFailure};
use super::proto::{
    self, ClientHello, NodeGrant, RemoteError, Request, ServerHello, MAX_DATA, VERSION,
};
use super::{auth_key, socks};
use crate::backend::{Backend, Durability, LockGuard, ObjectInfo, Stream};
use crate::crypto::MasterKey;
use crate::error::{Error, Result};

/// Where a client says what it waits for (a redial after a failure): the plugin logs it to
/// lightningd, `backup-cli` prints it. Compares equal to any other (it is not a policy).
#[derive(Clone, Default)]
pub struct Notify(Option<Arc<NotifyFn>>);

type NotifyFn = dyn Fn(&str) + Send + Sync;

impl Notify {
    pub fn new(f: impl Fn(&str) + Send + Sync + 'static) -> Notify {
        Notify(Some(Arc::new(f)))
    }
    /// Lines to stderr, prefixed (`backup-cli`).
    pub fn stderr() -> Notify {
        Notify::new(|m| eprintln!("{m}"))
    }
    pub fn say(&self, msg: &str) {
        if let Some(f) = &self.0 {
            f(msg);
        }
    }
}

impl std::fmt::Debug for Notify {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Notify(set)"
        } else {
            "Notify(none)"
        })
    }
}

impl PartialEq for Notify {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

/// Reconnect and timeout policy (defaults: the old plugin's 5 tries, 5 s, factor 1.5).
#[derive(Clone, Debug, PartialEq)]
pub struct RemoteOptions {
    /// How many times to wait and redial after a failure before giving up.
    pub tries: u32,
    /// The first wait; each next one is `factor` times longer.
    pub first_wait: Duration,
    pub factor: f64,
    /// TCP connect (and SOCKS5 negotiation) timeout.
    pub connect_timeout: Duration,
    /// Timeout of each socket read or write once connected (handshake included).
    pub io_timeout: Duration,
    /// All of one request's tries and waits end within this (`None`: only `tries` bounds them).
    pub deadline: Option<Duration>,
    /// Told of each wait before a redial.
    pub notify: Notify,
}

impl Default for RemoteOptions {
    fn default() -> Self {
        RemoteOptions {
            tries: 5,
            first_wait: Duration::from_secs(5),
            factor: 1.5,
            connect_timeout: Duration::from_secs(30),
            io_timeout: Duration::from_secs(120),
            deadline: None,
            notify: Notify::default(),
        }
    }
}

/// Connect straight to `host:port`, trying each address it resolves to.
pub fn connect_direct(host: &str, port: u16, timeout: Duration) -> io::Result<TcpStream> {
    let mut last = None;
    for addr in (host, port).to_socket_addrs()? {
        match TcpStream::connect_timeout(&addr, timeout) {
            Ok(s) => return Ok(s),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::other(format!("{host} resolves to no address"))))
}

/// Why one attempt failed.
enum Fail {
    /// The link failed: retry on another connection.
    Transport(io::Error),
    /// A final answer (server error, refusal, protocol mismatch): return it.
    Final(Error),
}

impl From<io::Error> for Fail {
    fn from(e: io::Error) -> Self {
        Fail::Transport(e)
    }
}

struct Conn {
    chan: Channel,
    next_id: u64,
}

impl Conn {
    /// One request, one response. `Ok(Err(_))` is an error the server answered.
    fn call(
        &mut self,
        req: &Request<'_>,
    ) -> std::result::Result<std::result::Result<Vec<u8>, RemoteError>, Fail> {
        let id = self.next_id;
        self.next_id += 1;
        self.chan.send(&req.encode(id))?;
        let frame = self.chan.recv(proto::MAX_FRAME)?;
        let (rid, res) = proto::decode_response(&frame)
            .map_err(|e| Fail::Transport(io::Error::new(io::ErrorKind::InvalidData, e)))?;
        if rid != id {
            return Err(Fail::Transport(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("response {rid} to request {id}"),
            )));
        }
        Ok(res.map(|b| b.to_vec()))
    }
}

struct Inner {
    host: String,
    port: u16,
    proxy: Option<(String, u16)>,
    psk: [u8; 32],
    opts: RemoteOptions,
    session: [u8; 16],
    url: String,
    idle: Mutex<Vec<Conn>>,
    /// Locks this client holds: (name, holder), re-taken on every new connection.
    locks: Mutex<Vec<(String, String)>>,
    /// What the server said of this node at the last handshake.
    grant: Mutex<Option<NodeGrant>>,
    append_only: AtomicBool,
    /// The newest data_version stored, sent with each append (the server's status shows it).
    data_version: AtomicU32,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A repository served by `backup-cli server`.
pub struct RemoteBackend {
    inner: Arc<Inner>,
}

impl RemoteBackend {
    /// Connect (with the retry policy) and check the server speaks our protocol and admits our
    /// key. `link_key` is the repository key; only its auth subkey is used.
    pub fn connect(
        host: &str,
        port: u16,
        proxy: Option<(String, u16)>,
        link_key: &MasterKey,
        opts: RemoteOptions,
    ) -> Result<RemoteBackend> {
        let url = crate::url::BackupUrl::Socket {
            host: host.to_string(),
            port,
            proxy: proxy.clone(),
        }
        .to_string();
        let mut session = [0u8; 16];
        crate::crypto::fill_random(&mut session);
        let inner = Arc::new(Inner {
            host: host.to_string(),
            port,
            proxy,
            psk: auth_key(link_key),
            opts,
            session,
            url,
            idle: Mutex::new(Vec::new()),
            locks: Mutex::new(Vec::new()),
            grant: Mutex::new(None),
            append_only: AtomicBool::new(false),
            data_version: AtomicU32::new(0),
        });
        inner.call(&Request::Ping)?;
        Ok(RemoteBackend { inner })
    }

    /// How many idle connections the pool holds (for tests).
    pub fn idle_connections(&self) -> usize {
        lock(&self.inner.idle).len()
    }

    /// What the server said of this node at the last handshake: its name there, rules, size.
    pub fn grant(&self) -> Option<NodeGrant> {
        lock(&self.inner.grant).clone()
    }
}

impl Inner {
    fn dial(&self) -> std::result::Result<Conn, Fail> {
        let t = self.opts.connect_timeout;
        let sock = match &self.proxy {
            Some((ph, pp)) => socks::connect((ph, *pp), &self.host, self.port, t)?,
            None => connect_direct(&self.host, self.port, t)?,
        };
        sock.set_nodelay(true)?;
        sock.set_read_timeout(Some(self.opts.io_timeout))?;
        sock.set_write_timeout(Some(self.opts.io_timeout))?;
        let hello = ClientHello {
            version: VERSION,
            session: self.session,
        };
        let (chan, reply) = match channel::client_handshake(sock, &self.psk, &hello.encode()) {
            Ok(x) => x,
            Err(HandshakeFailure::Refused) => {
                return Err(Fail::Final(Error::Remote(format!(
                "the backup server {} refused this node's key: add the node's line (`backup-cli \
                     key export --server NAME` prints it) to the server's auth file, and check \
                     that this node uses the right repository key",
                self.url
            ))))
            }
            Err(HandshakeFailure::Io(e)) => return Err(Fail::Transport(e)),
        };
        let sh = ServerHello::decode(&reply).map_err(|e| {
            Fail::Final(Error::Remote(format!(
                "{} is not a cln-backup server: {e}",
                self.url
            )))
        })?;
        let why = if sh.message.is_empty() {
            String::new()
        } else {
            format!(" ({})", sh.message)
        };
        if sh.version != VERSION {
            let side = if sh.version < VERSION {
                "upgrade backup-cli on the server"
            } else {
                "upgrade cln-backup on this node"
            };
            return Err(Fail::Final(Error::Remote(format!(
                "the backup server {} speaks protocol version {}, this client version {VERSION}: \
                 {side} (both sides run the same cln-backup version){why}",
                self.url, sh.version
            ))));
        }
        match (sh.status, sh.node) {
            (0, Some(grant)) => {
                self.append_only.store(grant.append_only, Ordering::SeqCst);
                *lock(&self.grant) = Some(grant);
            }
            // The server cannot open this node's repository now (its storage is down): a
            // transient failure, retried like a dropped link.
            (2, _) => {
                return Err(Fail::Transport(io::Error::other(format!(
                    "the server answered{why}"
                ))))
            }
            _ => {
                return Err(Fail::Final(Error::Remote(format!(
                    "the backup server {} refused this client{why}",
                    self.url
                ))))
            }
        }
        let mut conn = Conn { chan, next_id: 1 };
        let held = lock(&self.locks).clone();
        for (name, holder) in held {
            let req = Request::Lock {
                name: &name,
                holder: &holder,
            };
            if let Err(e) = conn.call(&req)? {
                return Err(Fail::Final(e.into_error(&self.url)));
            }
        }
        Ok(conn)
    }

    fn give_up(&self, attempts: u32, started: Instant, last: &io::Error, timed_out: bool) -> Error {
        let via = match &self.proxy {
            Some((h, p)) => format!(", that the SOCKS5 proxy (Tor) at {h}:{p} runs"),
            None => String::new(),
        };
        let bound = if timed_out {
            " (the time allowed: --connect-timeout)"
        } else {
            ""
        };
        Error::Remote(format!(
            "cannot reach the backup server {} ({attempts} attempts over {} s{bound}, last error: {last}): \
             check that `backup-cli server` runs there and listens on that address and port{via}, \
             and that the network between is up",
            self.url,
            started.elapsed().as_secs()
        ))
    }

    /// Issue `req` with the retry policy; the ok body or the mapped error.
    fn call(&self, req: &Request<'_>) -> Result<Vec<u8>> {
        self.call_with(req, self.opts.tries)
    }

    fn call_with(&self, req: &Request<'_>, tries: u32) -> Result<Vec<u8>> {
        self.call_raw(req, tries)?
            .map_err(|e| e.into_error(&self.url))
    }

    /// Issue `req`, redialling up to `tries` times; `Ok(Err(_))` is an error the server answered.
    fn call_raw(
        &self,
        req: &Request<'_>,
        tries: u32,
    ) -> Result<std::result::Result<Vec<u8>, RemoteError>> {
        let started = Instant::now();
        let mut wait = self.opts.first_wait;
        let mut waits = 0u32;
        // Connections dialled (a pooled connection found dead is not counted).
        let mut attempts = 0u32;
        loop {
            let pooled = lock(&self.idle).pop();
            let from_pool = pooled.is_some();
            if !from_pool {
                attempts += 1;
            }
            let res = match pooled {
                Some(c) => Ok(c),
                None => self.dial(),
            }
            .and_then(|mut c| c.call(req).map(|r| (c, r)));
            let e = match res {
                Ok((c, r)) => {
                    lock(&self.idle).push(c);
                    return Ok(r);
                }
                Err(Fail::Final(e)) => return Err(e),
                Err(Fail::Transport(e)) => e,
            };
            if from_pool {
                // A pooled connection may have died while idle: the others likely too.
                lock(&self.idle).clear();
                continue;
            }
            if waits >= tries {
                return Err(self.give_up(attempts, started, &e, false));
            }
            if let Some(d) = self.opts.deadline {
                let left = d.saturating_sub(started.elapsed());
                if left.is_zero() {
                    return Err(self.give_up(attempts, started, &e, true));
                }
                wait = wait.min(left);
            }
            self.opts.notify.say(&format!(
                "waiting {:.1} s to redial the backup server {} (try {} of {}; {}): {e}",
                wait.as_secs_f64(),
                self.url,
                waits + 2,
                tries + 1,
                match self.opts.deadline {
                    Some(d) => format!("giving up after {} s", d.as_secs_f64()),
                    None => "then giving up".into(),
                }
            ));
            std::thread::sleep(wait);
            wait = wait.mul_f64(self.opts.factor.max(1.0));
            waits += 1;
        }
    }
}

impl Backend for RemoteBackend {
    fn url(&self) -> String {
        self.inner.url.clone()
    }

    fn put(&self, name: &str, data: &[u8]) -> Result<()> {
        check_size(name, data.len())?;
        self.inner.call(&Request::Put { name, data }).map(|_| ())
    }

    fn put_if_absent(&self, name: &str, data: &[u8]) -> Result<bool> {
        check_size(name, data.len())?;
        let stored = proto::decode_u8(&self.inner.call(&Request::PutIfAbsent { name, data })?)?;
        if stored == 1 {
            return Ok(true);
        }
        // A retry after a lost acknowledgement finds our own object: the same bytes count as
        // stored by us.
        match self.get(name) {
            Ok(existing) => Ok(existing == data),
            Err(Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn get(&self, name: &str) -> Result<Vec<u8>> {
        match self
            .inner
            .call_raw(&Request::Get { name }, self.inner.opts.tries)?
        {
            Ok(b) => proto::decode_blob(&b),
            // Too large for one response: fetch it in pieces.
            Err(RemoteError::TooLarge(size)) => self.get_range(name, 0, size),
            Err(e) => Err(e.into_error(&self.inner.url)),
        }
    }

    fn get_range(&self, name: &str, offset: u64, len: u64) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        let mut at = offset;
        let end = offset
            .checked_add(len)
            .ok_or_else(|| Error::Invalid(format!("{name}: range overflows")))?;
        // At least one request, so a missing object is NotFound even for an empty range.
        loop {
            let n = (end - at).min(MAX_DATA as u64);
            let b = self.inner.call(&Request::GetRange {
                name,
                offset: at,
                len: n,
            })?;
            let piece = proto::decode_blob(&b)?;
            if piece.len() as u64 != n {
                return Err(Error::Remote(format!(
                    "{}: asked {n} bytes of {name} at {at}, got {}",
                    self.inner.url,
                    piece.len()
                )));
            }
            out.extend_from_slice(&piece);
            at += n;
            if at >= end {
                return Ok(out);
            }
        }
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        proto::decode_list(&self.inner.call(&Request::List { prefix })?)
    }

    fn delete(&self, name: &str) -> Result<()> {
        self.inner.call(&Request::Delete { name }).map(|_| ())
    }

    fn stream_open(&self, name: &str, durability: Durability) -> Result<Box<dyn Stream>> {
        let len = proto::decode_u64(&self.inner.call(&Request::StreamOpen { name, durability })?)?;
        Ok(Box::new(RemoteStream {
            inner: self.inner.clone(),
            name: name.to_string(),
            durability,
            len,
        }))
    }

    fn stream_read(&self, name: &str) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        loop {
            let b = self.inner.call(&Request::StreamRead {
                name,
                offset: out.len() as u64,
                max: MAX_DATA as u64,
            })?;
            let piece = proto::decode_blob(&b)?;
            let done = piece.len() < MAX_DATA;
            out.extend_from_slice(&piece);
            if done {
                return Ok(out);
            }
        }
    }

    fn stream_list(&self) -> Result<Vec<ObjectInfo>> {
        proto::decode_list(&self.inner.call(&Request::StreamList)?)
    }

    fn stream_delete(&self, name: &str) -> Result<()> {
        self.inner.call(&Request::StreamDelete { name }).map(|_| ())
    }

    fn append_only(&self) -> bool {
        self.inner.append_only.load(Ordering::SeqCst)
    }

    fn note_data_version(&self, data_version: u32) {
        self.inner
            .data_version
            .store(data_version, Ordering::Relaxed);
    }

    fn lock(&self, name: &str, holder: &str) -> Result<Box<dyn LockGuard>> {
        if lock(&self.inner.locks).iter().any(|(n, _)| n == name) {
            return Err(Error::Locked {
                object: format!("locks/{name} ({})", self.inner.url),
                holder: "this process".into(),
            });
        }
        self.inner.call(&Request::Lock { name, holder })?;
        lock(&self.inner.locks).push((name.to_string(), holder.to_string()));
        Ok(Box::new(RemoteLock {
            inner: self.inner.clone(),
            name: name.to_string(),
        }))
    }
}

fn check_size(name: &str, len: usize) -> Result<()> {
    if len > proto::MAX_REQUEST_DATA {
        return Err(Error::Invalid(format!(
            "{name}: {len} bytes exceed the remote protocol's limit of {} bytes per object",
            proto::MAX_REQUEST_DATA
        )));
    }
    Ok(())
}

struct RemoteLock {
    inner: Arc<Inner>,
    name: String,
}

impl LockGuard for RemoteLock {}

impl Drop for RemoteLock {
    fn drop(&mut self) {
        lock(&self.inner.locks).retain(|(n, _)| n != &self.name);
        // One attempt: if the link is down the server releases the lock with the session.
        if self
            .inner
            .call_with(&Request::Unlock { name: &self.name }, 0)
            .is_err()
        {
            lock(&self.inner.idle).clear();
        }
    }
}

struct RemoteStream {
    inner: Arc<Inner>,
    name: String,
    durability: Durability,
    len: u64,
}

impl Stream for RemoteStream {
    fn len(&self) -> u64 {
        self.len
    }

    fn append(&mut self, data: &[u8]) -> Result<()> {
        check_size(&self.name, data.len())?;
        let b = self.inner.call(&Request::StreamAppend {
            name: &self.name,
            durability: self.durability,
            offset: self.len,
            data,
            data_version: self.inner.data_version.load(Ordering::Relaxed),
        })?;
        let (_already, len) = proto::decode_append(&b)?;
        let want = self.len + data.len() as u64;
        if len != want {
            return Err(Error::Remote(format!(
                "{}: journal/{}.log is {len} bytes after the append, expected {want}",
                self.inner.url, self.name
            )));
        }
        self.len = len;
        Ok(())
    }

    fn truncate(&mut self, len: u64) -> Result<()> {
        self.inner.call(&Request::StreamTruncate {
            name: &self.name,
            durability: self.durability,
            len,
        })?;
        self.len = len;
        Ok(())
    }
}
