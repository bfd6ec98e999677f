//! `backup-cli server`: one repository per admitted node, served over Noise, a thread per
//! connection.
//!
//! Read first: [`auth`] (who is admitted, under which name and rules), then [`node`] (one
//! node's repository and the requests it may make), then this file (connections).
//!
//! The server holds only auth keys (one per node); it cannot derive the seal or chunk-id keys
//! and stores exactly the bytes clients send. The key a client proves in the handshake names
//! its node, and the node names its repository: `ROOT/nodes/NAME` (a directory, or a prefix in
//! S3). Nothing a node sends reaches another node's repository, streams, locks or sessions.
//!
//! A connection is: handshake (refused unless the peer proves one of the auth keys), hellos
//! (refused on another protocol version, with a message saying which side to upgrade), then
//! requests answered in order. Garbage, an oversize frame, a timeout or a closed socket end
//! that connection only.
//!
//! Strangers: the whole handshake has one deadline ([`ServerOptions::handshake_timeout`]),
//! however slowly the peer sends. Connections that have not authenticated are capped in
//! number, in total and per source address; past a cap the *oldest* of them is dropped, so a
//! crowd of slow strangers cannot keep a node out: a node's handshake completes in one round
//! trip, long before it would be the oldest. Authenticated connections are never counted
//! against strangers; a node's own connections are capped (its least recently active one
//! goes).
//!
//! Log lines go to stderr with sd-daemon priority prefixes (`<6>` info, `<4>` warning, `<3>`
//! error, `<7>` debug) and no timestamps: journald adds them.

pub mod auth;
mod conn;
mod node;
pub mod scan;
pub mod status;

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use super::channel::{self, Channel};
use super::proto::{self, ClientHello, NodeGrant, Request, ServerHello, VERSION};
use crate::backend::dir::DirBackend;
use crate::backend::{Backend, LockGuard};
use crate::error::{Error, Result};

pub use auth::{auth_line, check_node_name, parse_size, NodeEntry, ServerAuth};
pub use node::{Activity, Rules};

/// Opens a node's backend by its name (tests and embedding).
pub type NodeOpener = Arc<dyn Fn(&str) -> Result<Arc<dyn Backend>> + Send + Sync>;

/// Where the nodes' repositories live.
#[derive(Clone)]
pub enum ServerRoot {
    /// `ROOT/nodes/NAME`, each a repository directory (made at the node's first connection).
    Dir(PathBuf),
    /// `s3://BUCKET/PREFIX/nodes/NAME`: the server keeps nothing of its own; several server
    /// processes may serve one bucket (locks are leases in the bucket).
    S3 {
        bucket: String,
        prefix: String,
        params: Vec<(String, String)>,
    },
    /// Any backend per node name (tests, embedding).
    Custom(NodeOpener),
}

impl std::fmt::Debug for ServerRoot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

/// The subdirectory (or S3 prefix) of the nodes' repositories.
pub const NODES_DIR: &str = "nodes";

impl ServerRoot {
    pub fn describe(&self) -> String {
        match self {
            ServerRoot::Dir(p) => format!("file://{}", p.display()),
            ServerRoot::S3 { bucket, prefix, .. } => format!("s3://{bucket}/{prefix}"),
            ServerRoot::Custom(_) => "(embedded backends)".into(),
        }
    }

    /// Where node `name`'s repository is, for messages.
    pub fn node_url(&self, name: &str) -> String {
        match self {
            ServerRoot::Dir(p) => format!("file://{}", p.join(NODES_DIR).join(name).display()),
            ServerRoot::S3 { bucket, prefix, .. } => {
                format!("s3://{bucket}/{}", node_prefix(prefix, name))
            }
            ServerRoot::Custom(_) => format!("(embedded backend of {name})"),
        }
    }

    fn open_node(&self, name: &str) -> Result<Arc<dyn Backend>> {
        check_node_name(name)?;
        match self {
            ServerRoot::Dir(p) => Ok(Arc::new(DirBackend::create(&p.join(NODES_DIR).join(name))?)),
            ServerRoot::S3 {
                bucket,
                prefix,
                params,
            } => Ok(Arc::new(crate::backend::s3::S3Backend::open(
                bucket,
                &node_prefix(prefix, name),
                params,
            )?)),
            ServerRoot::Custom(f) => f(name),
        }
    }

    /// Streams there may hold zeros written ahead (a directory's): their end is found by a
    /// scan at open. S3 streams are their parts, nothing more.
    fn scans_streams(&self) -> bool {
        !matches!(self, ServerRoot::S3 { .. })
    }
}

fn node_prefix(prefix: &str, name: &str) -> String {
    let p = prefix.trim_matches('/');
    if p.is_empty() {
        format!("{NODES_DIR}/{name}")
    } else {
        format!("{p}/{NODES_DIR}/{name}")
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerOptions {
    /// Time a new connection has, in all, to complete its handshake.
    pub handshake_timeout: Duration,
    /// A connection with no request for this long is closed (the client redials).
    pub idle_timeout: Duration,
    /// Timeout of each read within a frame and of each write, once authenticated.
    pub io_timeout: Duration,
    /// Connections not yet authenticated, in all; past it the oldest is dropped.
    pub max_unauthenticated: usize,
    /// The same, per source address.
    pub max_unauthenticated_per_address: usize,
    /// Connections of one node; past it its least recently active is closed.
    pub max_connections_per_node: usize,
    /// Every node append-only, whatever its auth line says.
    pub append_only: bool,
    /// The quota of a node whose auth line sets none (bytes; `None`: no limit).
    pub quota: Option<u64>,
    /// Re-read when a handshake matches no key and the file changed (a node just added).
    pub auth_file: Option<PathBuf>,
    /// Where the server writes its status (each node's last contact, size, data_version).
    pub status_file: Option<PathBuf>,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(600),
            io_timeout: Duration::from_secs(60),
            max_unauthenticated: 64,
            max_unauthenticated_per_address: 16,
            max_connections_per_node: 32,
            append_only: false,
            quota: None,
            auth_file: None,
            status_file: None,
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

pub(crate) fn log(prio: u8, msg: &str) {
    eprintln!("<{prio}>{msg}");
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum ConnState {
    /// Not authenticated yet, from this address.
    Stranger(IpAddr),
    /// A connection of this node.
    Node(String),
    /// Told to close; no longer counted.
    Closing,
}

/// A live connection: a handle on its socket (to shut it down), its thread, what it is.
struct LiveConn {
    sock: TcpStream,
    thread: Option<JoinHandle<()>>,
    state: ConnState,
    since: Instant,
    /// Milliseconds since the server started, at its last request.
    active: Arc<AtomicU64>,
}

impl LiveConn {
    fn close(&mut self) {
        self.state = ConnState::Closing;
        let _ = self.sock.shutdown(std::net::Shutdown::Both);
    }
}

struct AuthState {
    auth: ServerAuth,
    keys: Vec<[u8; 32]>,
    modified: Option<SystemTime>,
}

struct Shared {
    root: ServerRoot,
    auth: Mutex<AuthState>,
    opts: ServerOptions,
    stop: AtomicBool,
    next_conn: AtomicU64,
    started: Instant,
    conns: Mutex<HashMap<u64, LiveConn>>,
    nodes: Mutex<HashMap<String, Arc<node::Node>>>,
    /// What the status file said at start (nodes not seen since keep their last contact).
    previous: Vec<status::NodeStatus>,
    addrs: Mutex<Vec<SocketAddr>>,
}

impl Shared {
    fn rules_of(&self, e: &NodeEntry) -> Rules {
        Rules {
            append_only: e.append_only || self.opts.append_only,
            quota: e.quota.or(self.opts.quota).unwrap_or(0),
        }
    }

    /// The node's state, opened at its first connection.
    fn node(&self, e: &NodeEntry) -> Result<Arc<node::Node>> {
        if let Some(n) = lock(&self.nodes).get(&e.name) {
            return Ok(n.clone());
        }
        // Opened outside the map's lock (counting a repository lists it).
        let backend = self.root.open_node(&e.name)?;
        let n = Arc::new(node::Node::open(
            &e.name,
            backend,
            self.rules_of(e),
            self.root.scans_streams(),
        )?);
        let mut nodes = lock(&self.nodes);
        let n = nodes.entry(e.name.clone()).or_insert(n).clone();
        Ok(n)
    }

    fn millis(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Re-read the auth file if it changed (a stat per unknown key; parsed only when its
    /// modification time changed). True if it was re-read.
    fn reload_auth(&self) -> bool {
        let Some(path) = &self.opts.auth_file else {
            return false;
        };
        let mut st = lock(&self.auth);
        let modified = std::fs::metadata(path).and_then(|m| m.modified()).ok();
        if modified == st.modified {
            return false;
        }
        match ServerAuth::from_file(path) {
            Ok(a) => {
                st.modified = modified;
                st.keys = a.keys();
                st.auth = a;
            }
            Err(e) => {
                log(
                    3,
                    &format!(
                        "the auth file changed but cannot be used, keeping the previous one: {e}"
                    ),
                );
                st.modified = modified;
                return false;
            }
        }
        let auth = st.auth.clone();
        drop(st);
        log(
            6,
            &format!(
                "re-read the auth file {}: {} nodes",
                path.display(),
                auth.len()
            ),
        );
        // Nodes removed or re-keyed lose their connections; the others get their new rules.
        let nodes = lock(&self.nodes).clone();
        for (name, n) in nodes {
            match auth.nodes().iter().find(|e| e.name == name) {
                Some(e) => n.set_rules(self.rules_of(e)),
                None => {
                    lock(&self.nodes).remove(&name);
                    self.close_node(&name);
                    log(
                        6,
                        &format!("{name}: no longer in the auth file: its connections are closed"),
                    );
                }
            }
        }
        true
    }

    fn close_node(&self, name: &str) {
        for c in lock(&self.conns).values_mut() {
            if c.state == ConnState::Node(name.to_string()) {
                c.close();
            }
        }
    }

    /// Past a cap on strangers (in all, or from `ip`), drop the oldest.
    fn admit_stranger(&self, id: u64, ip: IpAddr) {
        let mut conns = lock(&self.conns);
        for (per_address, cap) in [
            (true, self.opts.max_unauthenticated_per_address),
            (false, self.opts.max_unauthenticated),
        ] {
            let strangers = |c: &&LiveConn| match &c.state {
                ConnState::Stranger(a) => !per_address || *a == ip,
                _ => false,
            };
            let n = conns.values().filter(strangers).count();
            if n <= cap.max(1) {
                continue;
            }
            let oldest = conns
                .iter()
                .filter(|(k, c)| **k != id && strangers(c))
                .min_by_key(|(_, c)| c.since)
                .map(|(k, _)| *k);
            if let Some(k) = oldest {
                if let Some(c) = conns.get_mut(&k) {
                    c.close();
                    log(
                        7,
                        &format!(
                            "dropped the oldest unauthenticated connection{}: over the cap of {cap}",
                            if per_address { format!(" from {ip}") } else { String::new() }
                        ),
                    );
                }
            }
        }
    }

    /// Connection `id` authenticated as `name`: past the node's cap, its least recently
    /// active other connection goes.
    fn admit_node(&self, id: u64, name: &str) {
        let mut conns = lock(&self.conns);
        if let Some(c) = conns.get_mut(&id) {
            c.state = ConnState::Node(name.to_string());
        }
        let mine = |c: &&LiveConn| c.state == ConnState::Node(name.to_string());
        if conns.values().filter(mine).count() <= self.opts.max_connections_per_node.max(1) {
            return;
        }
        let idlest = conns
            .iter()
            .filter(|(k, c)| **k != id && mine(c))
            .min_by_key(|(_, c)| c.active.load(Ordering::Relaxed))
            .map(|(k, _)| *k);
        if let Some(c) = idlest.and_then(|k| conns.get_mut(&k)) {
            c.close();
        }
    }

    fn status(&self) -> status::ServerStatus {
        let auth = lock(&self.auth).auth.clone();
        let nodes = lock(&self.nodes).clone();
        let list = auth
            .nodes()
            .iter()
            .map(|e| {
                let rules = self.rules_of(e);
                let prev = self.previous.iter().find(|p| p.name == e.name);
                match nodes.get(&e.name) {
                    Some(n) => {
                        let a = n.activity();
                        status::NodeStatus {
                            name: e.name.clone(),
                            repository: self.root.node_url(&e.name),
                            append_only: rules.append_only,
                            quota: rules.quota,
                            used: Some(n.used()),
                            last_contact: if a.last_contact > 0 {
                                a.last_contact
                            } else {
                                prev.map_or(0, |p| p.last_contact)
                            },
                            data_version: if a.data_version > 0 {
                                a.data_version
                            } else {
                                prev.map_or(0, |p| p.data_version)
                            },
                            appends: a.appends,
                            connections: a.connections,
                        }
                    }
                    None => status::NodeStatus {
                        name: e.name.clone(),
                        repository: self.root.node_url(&e.name),
                        append_only: rules.append_only,
                        quota: rules.quota,
                        used: prev.and_then(|p| p.used),
                        last_contact: prev.map_or(0, |p| p.last_contact),
                        data_version: prev.map_or(0, |p| p.data_version),
                        appends: 0,
                        connections: 0,
                    },
                }
            })
            .collect();
        status::ServerStatus {
            root: self.root.describe(),
            listening: lock(&self.addrs).iter().map(|a| a.to_string()).collect(),
            pid: std::process::id(),
            written: crate::config::now(),
            running: !self.stop.load(Ordering::SeqCst),
            nodes: list,
        }
    }

    fn write_status(&self) {
        if let Some(p) = &self.opts.status_file {
            if let Err(e) = status::write(p, &self.status()) {
                log(4, &format!("cannot write the status file: {e}"));
            }
        }
    }
}

/// A running server (for tests and embedding): stops when dropped.
pub struct ServerHandle {
    shared: Arc<Shared>,
    addrs: Vec<SocketAddr>,
    threads: Vec<JoinHandle<()>>,
    /// A directory root is served by one process: this lock says so to a second one.
    _root_lock: Option<Box<dyn LockGuard>>,
}

impl ServerHandle {
    /// Bind every address `listen` (`HOST:PORT`, `[v6]:PORT`; port 0 picks one) resolves to
    /// and serve in background threads.
    pub fn spawn(
        root: ServerRoot,
        listen: &str,
        auth: ServerAuth,
        opts: ServerOptions,
    ) -> Result<ServerHandle> {
        if auth.is_empty() {
            return Err(Error::Invalid(
                "the server needs at least one node to admit".into(),
            ));
        }
        let root_lock = match &root {
            ServerRoot::Dir(p) => Some(claim_dir_root(p)?),
            _ => None,
        };
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
        let modified = opts
            .auth_file
            .as_ref()
            .and_then(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok());
        let previous = opts
            .status_file
            .as_ref()
            .and_then(|p| status::read(p).ok())
            .map(|s| s.nodes)
            .unwrap_or_default();
        let shared = Arc::new(Shared {
            root,
            auth: Mutex::new(AuthState {
                keys: auth.keys(),
                auth,
                modified,
            }),
            opts,
            stop: AtomicBool::new(false),
            next_conn: AtomicU64::new(1),
            started: Instant::now(),
            conns: Mutex::new(HashMap::new()),
            nodes: Mutex::new(HashMap::new()),
            previous,
            addrs: Mutex::new(Vec::new()),
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
        *lock(&shared.addrs) = bound.clone();
        let mut threads = Vec::new();
        let n = lock(&shared.auth).auth.len();
        for (l, a) in listeners.into_iter().zip(&bound) {
            log(
                6,
                &format!(
                    "listening on {a}, serving {} nodes' repositories under {}",
                    n,
                    shared.root.describe()
                ),
            );
            let sh = shared.clone();
            threads.push(std::thread::spawn(move || conn::accept_loop(sh, l)));
        }
        if shared.opts.status_file.is_some() {
            let sh = shared.clone();
            threads.push(std::thread::spawn(move || {
                let mut last = None;
                while !sh.stop.load(Ordering::SeqCst) {
                    let s = sh.status();
                    let key = (s.nodes.clone(), s.listening.clone());
                    if last.as_ref() != Some(&key) {
                        sh.write_status();
                        last = Some(key);
                    }
                    for _ in 0..20 {
                        if sh.stop.load(Ordering::SeqCst) {
                            return;
                        }
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
            }));
        }
        shared.write_status();
        Ok(ServerHandle {
            shared,
            addrs: bound,
            threads,
            _root_lock: root_lock,
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

    /// The status the server would write now.
    pub fn status(&self) -> status::ServerStatus {
        self.shared.status()
    }

    /// Close every live connection now (clients see the link drop, as on a crash) without
    /// waiting for their threads; the server keeps accepting.
    pub fn close_connections(&self) {
        for c in lock(&self.shared.conns).values_mut() {
            c.close();
        }
    }

    /// Stop accepting, close every connection (releasing their locks), close the streams
    /// (a directory cuts the zeros it wrote ahead), write the status, wait for the threads.
    pub fn stop(mut self) {
        self.shutdown();
    }

    /// A handle that stops the server from another thread (a signal handler's thread).
    pub fn stopper(&self) -> Stopper {
        Stopper {
            shared: self.shared.clone(),
            addrs: self.addrs.clone(),
        }
    }

    /// Block until the server stops ([`Stopper::stop`], or an error in an accept loop), then
    /// finish stopping it.
    pub fn wait(mut self) {
        let accepters: Vec<JoinHandle<()>> = self.threads.drain(..).collect();
        for t in accepters {
            let _ = t.join();
        }
        self.shutdown();
    }

    fn shutdown(&mut self) {
        Stopper {
            shared: self.shared.clone(),
            addrs: self.addrs.clone(),
        }
        .stop();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        let threads: Vec<JoinHandle<()>> = {
            let mut conns = lock(&self.shared.conns);
            conns
                .values_mut()
                .filter_map(|c| {
                    c.close();
                    c.thread.take()
                })
                .collect()
        };
        for t in threads {
            let _ = t.join();
        }
        let nodes: Vec<Arc<node::Node>> = lock(&self.shared.nodes).values().cloned().collect();
        for n in &nodes {
            n.close();
        }
        self.shared.write_status();
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Stops a server from another thread.
#[derive(Clone)]
pub struct Stopper {
    shared: Arc<Shared>,
    addrs: Vec<SocketAddr>,
}

impl Stopper {
    /// Stop accepting (the accept loops end); [`ServerHandle::wait`] then closes the rest.
    pub fn stop(&self) {
        if self.shared.stop.swap(true, Ordering::SeqCst) {
            return;
        }
        for a in &self.addrs {
            // Wake the accept loop.
            let _ = TcpStream::connect_timeout(a, Duration::from_secs(1));
        }
    }
}

/// Take the root's `server.lock`: two processes serving one directory would each think its
/// streams and locks were theirs.
fn claim_dir_root(root: &std::path::Path) -> Result<Box<dyn LockGuard>> {
    if root.join("config").exists() {
        return Err(Error::Invalid(format!(
            "{} holds one repository at its top (the layout of protocol version 1, which every \
             admitted key shared): move it under the node that owns it with `backup-cli server \
             migrate file://{} NAME` (NAME as in the auth file), then start the server again",
            root.display(),
            root.display()
        )));
    }
    std::fs::create_dir_all(root.join(NODES_DIR))
        .map_err(|e| Error::io("create", root.join(NODES_DIR).display().to_string(), e))?;
    let d = DirBackend::open(root)?;
    std::fs::create_dir_all(root.join("locks"))
        .map_err(|e| Error::io("create", root.join("locks").display().to_string(), e))?;
    d.lock(
        "server",
        &crate::repo::holder(&format!("backup-cli server of {}", root.display())),
    )
    .map_err(|e| match e {
        Error::Locked { holder, .. } => Error::Invalid(format!(
            "{} is already served by {holder}: one server process per directory",
            root.display()
        )),
        e => e,
    })
}

/// Serve the nodes' repositories under `root` on `listen` (`HOST:PORT`) until the process ends.
pub fn serve(root: ServerRoot, listen: &str, auth: ServerAuth, opts: ServerOptions) -> Result<()> {
    ServerHandle::spawn(root, listen, auth, opts)?.wait();
    Ok(())
}
