//! Several destinations per node: a [`MultiBackend`] writes to a list of backends.
//!
//! - **Synchronous** destinations get every write before the call returns (the hook waits for
//!   all of them); the first is the *primary*, and all reads come from it.
//! - **Asynchronous** destinations are replicated in the background by one thread each, in the
//!   order of the calls, never blocking the caller: a write is queued (memory-bounded) and the
//!   call returns. When a destination fails (outage) or the queue overflows, its queue is dropped
//!   and the thread switches to *catch-up*: it compares the destination with the primary and
//!   repairs it (missing or changed objects copied, objects gone from the primary deleted,
//!   stream tails appended from the primary's bytes at the destination's length, streams cut
//!   where they differ), retrying with back-off until it succeeds, then goes back to the queue.
//!   A new `MultiBackend` starts every asynchronous destination in catch-up, so a restart also
//!   repairs what the previous process left behind.
//! - An asynchronous destination listed by URL ([`open_with`]) is opened by its own thread, never
//!   on the caller's path: while it cannot be opened (a server down when the node starts) it is
//!   *down*, its writes are counted as lag, and the thread retries with back-off; once open it
//!   catches up like after an outage. A synchronous destination that cannot be opened is an error.
//! - Locks are taken on the synchronous destinations only (an unreachable asynchronous one must
//!   not stop the node).
//!
//! Invariant: an asynchronous destination is always a state the primary had (a prefix of the
//! history) or, while catching up, a mix of old and new *complete* objects; restore from it gives
//! the newest consistent state it holds (manifests are written after the packs they reference,
//! and replication keeps that order in the queue).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::{Backend, Durability, LockGuard, ObjectInfo, Stream};
use crate::error::{Error, Result};

/// How the node waits for a destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Every write is on it before the call returns.
    Sync,
    /// Replicated in the background, in order; may lag.
    Async,
}

impl Mode {
    pub fn parse(s: &str) -> Option<Mode> {
        match s {
            "sync" => Some(Mode::Sync),
            "async" => Some(Mode::Async),
            _ => None,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Mode::Sync => "sync",
            Mode::Async => "async",
        }
    }
}

pub struct Destination {
    pub backend: Arc<dyn Backend>,
    pub mode: Mode,
}

/// What `backup-status` shows for one destination.
#[derive(Clone, Debug, PartialEq)]
pub struct DestStatus {
    pub url: String,
    pub mode: Mode,
    /// `"live"` (replicating from its queue), `"catching up"` (comparing with the primary),
    /// `"opening"` (not opened yet) or `"down"` (could not be opened yet: see `last_error`).
    pub state: &'static str,
    /// Writes not yet on this destination, and how many of them are journal appends (batches).
    pub lag_writes: u64,
    pub lag_batches: u64,
    /// Bytes of those writes.
    pub lag_bytes: u64,
    /// Age of the oldest write not yet on this destination (0 when caught up).
    pub lag_seconds: f64,
    /// The last failure, kept after recovery for the operator to see.
    pub last_error: Option<String>,
}

/// Directories compared during catch-up (objects); streams are compared separately.
const COMPARED_DIRS: &[&str] = &["", "packs/", "index/", "journal/", "snapshots/"];
/// Queued bytes above which an asynchronous destination drops its queue and catches up instead.
const QUEUE_CAP_BYTES: u64 = 64 << 20;

#[derive(Clone, Debug)]
enum Op {
    Put {
        name: String,
        data: Arc<[u8]>,
    },
    Delete {
        name: String,
    },
    Append {
        stream: String,
        offset: u64,
        data: Arc<[u8]>,
    },
    Truncate {
        stream: String,
        len: u64,
    },
    StreamDelete {
        stream: String,
    },
}

impl Op {
    fn bytes(&self) -> u64 {
        match self {
            Op::Put { data, .. } | Op::Append { data, .. } => data.len() as u64,
            _ => 0,
        }
    }
    fn is_append(&self) -> bool {
        matches!(self, Op::Append { .. })
    }
}

enum Phase {
    /// Not opened yet (its thread retries); writes are counted like in catch-up.
    Down,
    Live,
    CatchUp,
}

/// Opens an asynchronous destination from its replication thread (called again until it works).
pub type Opener = Box<dyn FnMut() -> Result<Arc<dyn Backend>> + Send>;

/// An asynchronous destination as given to the replication thread.
enum Source {
    Open(Arc<dyn Backend>),
    Deferred(Opener),
}

struct ReplicaState {
    queue: VecDeque<(Op, Instant)>,
    queued_bytes: u64,
    phase: Phase,
    /// Catch-up: names written since the outage, compared by content (not only by size).
    dirty_objects: BTreeSet<String>,
    dirty_streams: BTreeSet<String>,
    /// Failed attempts to open the destination (phase `Down`).
    open_failures: u64,
    /// Catch-up: writes (and their bytes, appends) since the outage, and when it began.
    missed_writes: u64,
    missed_batches: u64,
    missed_bytes: u64,
    behind_since: Option<Instant>,
    last_error: Option<String>,
    shutdown: bool,
}

struct Replica {
    url: String,
    state: Mutex<ReplicaState>,
    cv: Condvar,
}

impl Replica {
    fn lock(&self) -> MutexGuard<'_, ReplicaState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn enqueue(&self, op: Op) {
        let mut st = self.lock();
        let now = Instant::now();
        match st.phase {
            Phase::Live if st.queued_bytes + op.bytes() <= QUEUE_CAP_BYTES => {
                st.queued_bytes += op.bytes();
                st.queue.push_back((op, now));
            }
            Phase::Live => {
                st.last_error = Some(format!(
                    "replication queue over {} MiB: catching up by comparison instead",
                    QUEUE_CAP_BYTES >> 20
                ));
                to_catch_up(&mut st);
                mark_dirty(&mut st, &op, now);
            }
            Phase::CatchUp | Phase::Down => mark_dirty(&mut st, &op, now),
        }
        self.cv.notify_all();
    }
}

fn mark_dirty(st: &mut ReplicaState, op: &Op, when: Instant) {
    match op {
        Op::Put { name, .. } | Op::Delete { name } => {
            st.dirty_objects.insert(name.clone());
        }
        Op::Append { stream, .. } | Op::Truncate { stream, .. } | Op::StreamDelete { stream } => {
            st.dirty_streams.insert(stream.clone());
        }
    }
    st.missed_writes += 1;
    st.missed_bytes += op.bytes();
    if op.is_append() {
        st.missed_batches += 1;
    }
    st.behind_since.get_or_insert(when);
}

/// Drop the queue (its writes become dirty names) and switch to catch-up.
fn to_catch_up(st: &mut ReplicaState) {
    let queue = std::mem::take(&mut st.queue);
    st.queued_bytes = 0;
    st.phase = Phase::CatchUp;
    for (op, t) in &queue {
        mark_dirty(st, op, *t);
    }
}

pub struct MultiBackend {
    /// Synchronous destinations; `[0]` is the primary.
    sync: Vec<Arc<dyn Backend>>,
    replicas: Vec<Arc<Replica>>,
    threads: Vec<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
}

impl MultiBackend {
    /// The first destination must be synchronous (it is the primary, read by every operation).
    pub fn new(dests: Vec<Destination>) -> Result<MultiBackend> {
        Self::with_deferred(dests, Vec::new())
    }

    /// [`MultiBackend::new`], plus asynchronous destinations opened by their replication thread
    /// (`(url, opener)`, listed after the others): down until the opener succeeds.
    pub fn with_deferred(
        dests: Vec<Destination>,
        deferred: Vec<(String, Opener)>,
    ) -> Result<MultiBackend> {
        let mut sync = Vec::new();
        let mut asyncs = Vec::new();
        for d in dests {
            match d.mode {
                Mode::Sync => sync.push(d.backend),
                Mode::Async if sync.is_empty() => {
                    return Err(Error::Invalid(format!(
                    "the first destination ({}) must be synchronous: it is the one reads come from",
                    d.backend.url()
                )))
                }
                Mode::Async => asyncs.push((d.backend.url(), Source::Open(d.backend))),
            }
        }
        let Some(primary) = sync.first().cloned() else {
            return Err(Error::Invalid("no destination given".into()));
        };
        asyncs.extend(
            deferred
                .into_iter()
                .map(|(url, open)| (url, Source::Deferred(open))),
        );
        let stop = Arc::new(AtomicBool::new(false));
        let mut replicas = Vec::new();
        let mut threads = Vec::new();
        for (url, source) in asyncs {
            let phase = match source {
                Source::Open(_) => Phase::CatchUp,
                Source::Deferred(_) => Phase::Down,
            };
            let r = Arc::new(Replica {
                url: url.clone(),
                state: Mutex::new(ReplicaState {
                    queue: VecDeque::new(),
                    queued_bytes: 0,
                    phase,
                    dirty_objects: BTreeSet::new(),
                    dirty_streams: BTreeSet::new(),
                    missed_writes: 0,
                    missed_batches: 0,
                    missed_bytes: 0,
                    behind_since: Some(Instant::now()),
                    open_failures: 0,
                    last_error: None,
                    shutdown: false,
                }),
                cv: Condvar::new(),
            });
            let (rc, src) = (r.clone(), primary.clone());
            let t = std::thread::Builder::new()
                .name("cln-backup-replica".into())
                .spawn(move || worker(&rc, &*src, source))
                .map_err(|e| Error::io("start replication", url, e))?;
            replicas.push(r);
            threads.push(t);
        }
        Ok(MultiBackend {
            sync,
            replicas,
            threads,
            stop,
        })
    }

    fn primary(&self) -> &dyn Backend {
        // `new` guarantees at least one synchronous destination.
        match self.sync.first() {
            Some(b) => &**b,
            None => unreachable!("MultiBackend without a primary"),
        }
    }

    fn replicate(&self, op: Op) {
        for r in &self.replicas {
            r.enqueue(op.clone());
        }
    }

    /// Status of every destination, in the configured order (synchronous first).
    pub fn status(&self) -> Vec<DestStatus> {
        let mut out: Vec<DestStatus> = self
            .sync
            .iter()
            .map(|b| DestStatus {
                url: b.url(),
                mode: Mode::Sync,
                state: "live",
                lag_writes: 0,
                lag_batches: 0,
                lag_bytes: 0,
                lag_seconds: 0.0,
                last_error: None,
            })
            .collect();
        for r in &self.replicas {
            let st = r.lock();
            let (state, writes, batches, bytes, since) = match st.phase {
                Phase::Live => (
                    "live",
                    st.queue.len() as u64,
                    st.queue.iter().filter(|(o, _)| o.is_append()).count() as u64,
                    st.queued_bytes,
                    st.queue.front().map(|(_, t)| *t),
                ),
                Phase::CatchUp | Phase::Down => (
                    match st.phase {
                        Phase::Down if st.open_failures == 0 => "opening",
                        Phase::Down => "down",
                        _ => "catching up",
                    },
                    st.missed_writes,
                    st.missed_batches,
                    st.missed_bytes,
                    st.behind_since,
                ),
            };
            out.push(DestStatus {
                url: r.url.clone(),
                mode: Mode::Async,
                state,
                lag_writes: writes,
                lag_batches: batches,
                lag_bytes: bytes,
                lag_seconds: since.map(|t| t.elapsed().as_secs_f64()).unwrap_or(0.0),
                last_error: st.last_error.clone(),
            });
        }
        out
    }

    /// Wait until every asynchronous destination has caught up (queue empty, live), or the
    /// timeout passes. True if caught up.
    pub fn wait_caught_up(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        for r in &self.replicas {
            let mut st = r.lock();
            loop {
                if matches!(st.phase, Phase::Live) && st.queue.is_empty() {
                    break;
                }
                let now = Instant::now();
                if now >= deadline {
                    return false;
                }
                st = match r.cv.wait_timeout(st, deadline - now) {
                    Ok((g, _)) => g,
                    Err(p) => p.into_inner().0,
                };
            }
        }
        true
    }

    /// Give the destinations that are up (not `down`) until `timeout` to take every queued or
    /// missed write; returns the status of those still behind (down ones included), for the
    /// operator. The next start catches up what is left.
    pub fn drain(&self, timeout: Duration) -> Vec<DestStatus> {
        let deadline = Instant::now() + timeout;
        for r in &self.replicas {
            let mut st = r.lock();
            loop {
                let done = match st.phase {
                    Phase::Live => st.queue.is_empty(),
                    Phase::Down => true,
                    Phase::CatchUp => false,
                };
                let now = Instant::now();
                if done || now >= deadline {
                    break;
                }
                st = match r.cv.wait_timeout(st, deadline - now) {
                    Ok((g, _)) => g,
                    Err(p) => p.into_inner().0,
                };
            }
        }
        self.status()
            .into_iter()
            .filter(|d| d.mode == Mode::Async && (d.state != "live" || d.lag_writes > 0))
            .collect()
    }
}

/// Open the primary (synchronous) and the other destinations of a node, as listed in
/// `backup.lock`: `{"backend_url": PRIMARY, "destinations": [{"url": URL, "mode": "sync"|"async"}]}`.
pub fn open(
    primary: &crate::url::BackupUrl,
    others: &[(crate::url::BackupUrl, Mode)],
    link_key: Option<&crate::crypto::MasterKey>,
    create: bool,
) -> Result<MultiBackend> {
    open_with(
        primary,
        others,
        link_key,
        create,
        &super::remote::RemoteOptions::default(),
    )
}

/// [`open`], with the reconnect policy for `socket:` destinations.
pub fn open_with(
    primary: &crate::url::BackupUrl,
    others: &[(crate::url::BackupUrl, Mode)],
    link_key: Option<&crate::crypto::MasterKey>,
    create: bool,
    remote: &super::remote::RemoteOptions,
) -> Result<MultiBackend> {
    let mut dests = vec![Destination {
        backend: super::open_with(primary, link_key, create, remote)?,
        mode: Mode::Sync,
    }];
    let mut deferred: Vec<(String, Opener)> = Vec::new();
    for (url, mode) in others {
        match mode {
            // The node must not run without its synchronous copies: fail now, clearly.
            Mode::Sync => {
                let backend = super::open_with(url, link_key, create, remote).map_err(|e| {
                    Error::Invalid(format!("cannot open synchronous destination {url}: {e}"))
                })?;
                dests.push(Destination {
                    backend,
                    mode: Mode::Sync,
                });
            }
            // Opened by its replication thread, so a destination that is down (or slow to
            // answer, through a reconnect policy) never delays or stops the node.
            Mode::Async => {
                let (u, key, remote) = (url.clone(), link_key.cloned(), remote.clone());
                let open: Opener = Box::new(move || {
                    let fail = |e: Error| {
                        Error::Invalid(format!("cannot open asynchronous destination {u}: {e}"))
                    };
                    if matches!(u, crate::url::BackupUrl::Socket { .. }) {
                        // One quick try first: the reconnect policy (a minute by default) is for
                        // a link that drops, not for waiting here; the thread has its back-off.
                        let once = super::remote::RemoteOptions {
                            tries: 0,
                            ..remote.clone()
                        };
                        super::open_with(&u, key.as_ref(), create, &once).map_err(fail)?;
                    }
                    super::open_with(&u, key.as_ref(), create, &remote).map_err(fail)
                });
                deferred.push((display_url(url), open));
            }
        }
    }
    MultiBackend::with_deferred(dests, deferred)
}

/// The URL as the backend's `url()` shows it once open (no query parameters: they may hold
/// settings that are not for display).
fn display_url(url: &crate::url::BackupUrl) -> String {
    match url {
        crate::url::BackupUrl::S3 { bucket, prefix, .. } if prefix.is_empty() => {
            format!("s3://{bucket}")
        }
        crate::url::BackupUrl::S3 { bucket, prefix, .. } => format!("s3://{bucket}/{prefix}"),
        other => other.to_string(),
    }
}

impl Drop for MultiBackend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Give the queues a moment to drain; what is left is caught up at the next start.
        let _ = self.drain(Duration::from_secs(5));
        for r in &self.replicas {
            r.lock().shutdown = true;
            r.cv.notify_all();
        }
        // A thread inside a slow call (a reconnect policy, a timeout) is left behind rather than
        // waited for without bound: every replication step is safe to cut.
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline && self.threads.iter().any(|t| !t.is_finished()) {
            std::thread::sleep(Duration::from_millis(10));
        }
        for t in self.threads.drain(..) {
            if t.is_finished() {
                let _ = t.join();
            }
        }
    }
}

/// Wait `d` (new writes wake the condvar but do not end the wait: a retry per write would
/// hammer a destination that is down); false if shutting down.
fn pause(r: &Replica, mut st: MutexGuard<'_, ReplicaState>, d: Duration) -> bool {
    let until = Instant::now() + d;
    loop {
        let now = Instant::now();
        if st.shutdown {
            return false;
        }
        if now >= until {
            return true;
        }
        st = match r.cv.wait_timeout(st, until - now) {
            Ok((g, _)) => g,
            Err(p) => p.into_inner().0,
        };
    }
}

/// Open a deferred destination, retrying with back-off until it opens (None: shutting down).
fn open_deferred(r: &Replica, open: &mut Opener) -> Option<Arc<dyn Backend>> {
    let mut backoff = Duration::from_millis(200);
    loop {
        if r.lock().shutdown {
            return None;
        }
        let res = open();
        let mut st = r.lock();
        match res {
            Ok(b) => {
                // Everything written meanwhile is dirty already: compare and repair.
                st.phase = Phase::CatchUp;
                r.cv.notify_all();
                return Some(b);
            }
            Err(e) => {
                st.open_failures += 1;
                st.last_error = Some(e.to_string());
                if !pause(r, st, backoff) {
                    return None;
                }
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    }
}

fn worker(r: &Replica, src: &dyn Backend, source: Source) {
    let backend = match source {
        Source::Open(b) => b,
        Source::Deferred(mut open) => match open_deferred(r, &mut open) {
            Some(b) => b,
            None => return,
        },
    };
    let dst = &*backend;
    let mut streams: HashMap<String, Box<dyn Stream>> = HashMap::new();
    let mut backoff = Duration::from_millis(200);
    loop {
        let mut st = r.lock();
        if st.shutdown {
            return;
        }
        match st.phase {
            Phase::Live => {
                let Some((op, _)) = st.queue.front().cloned() else {
                    r.cv.notify_all(); // wake `wait_caught_up`
                    let _ = r.cv.wait_timeout(st, Duration::from_secs(1));
                    continue;
                };
                drop(st);
                let res = apply(dst, &mut streams, &op);
                let mut st = r.lock();
                match res {
                    Ok(()) => {
                        if let Some((done, _)) = st.queue.pop_front() {
                            st.queued_bytes = st.queued_bytes.saturating_sub(done.bytes());
                        }
                        if st.queue.is_empty() {
                            r.cv.notify_all();
                        }
                    }
                    Err(e) => {
                        st.last_error = Some(e.to_string());
                        streams.clear();
                        to_catch_up(&mut st);
                    }
                }
            }
            Phase::CatchUp | Phase::Down => {
                let dirty_objects = std::mem::take(&mut st.dirty_objects);
                let dirty_streams = std::mem::take(&mut st.dirty_streams);
                let writes_before = st.missed_writes;
                drop(st);
                streams.clear();
                let stopping = || r.lock().shutdown;
                let res = catch_up(src, dst, &dirty_objects, &dirty_streams, &stopping);
                let mut st = r.lock();
                match res {
                    Ok(()) => {
                        backoff = Duration::from_millis(200);
                        if st.missed_writes == writes_before {
                            // Nothing new arrived during the pass: caught up, back to the queue.
                            st.phase = Phase::Live;
                            st.missed_writes = 0;
                            st.missed_batches = 0;
                            st.missed_bytes = 0;
                            st.behind_since = None;
                            r.cv.notify_all();
                        }
                    }
                    Err(e) => {
                        st.last_error = Some(e.to_string());
                        st.dirty_objects.extend(dirty_objects);
                        st.dirty_streams.extend(dirty_streams);
                        pause(r, st, backoff);
                        backoff = (backoff * 2).min(Duration::from_secs(10));
                    }
                }
            }
        }
    }
}

fn apply(dst: &dyn Backend, streams: &mut HashMap<String, Box<dyn Stream>>, op: &Op) -> Result<()> {
    match op {
        Op::Put { name, data } => dst.put(name, data),
        Op::Delete { name } => dst.delete(name),
        Op::StreamDelete { stream } => {
            streams.remove(stream);
            dst.stream_delete(stream)
        }
        Op::Append {
            stream,
            offset,
            data,
        } => {
            let s = open_cached(dst, streams, stream)?;
            let len = s.len();
            let end = offset + data.len() as u64;
            if len == *offset {
                s.append(data)
            } else if len >= end {
                Ok(()) // already copied by a catch-up pass
            } else {
                Err(Error::Invalid(format!(
                    "{} stream {stream} is {len} bytes, expected {offset}: catching up",
                    dst.url()
                )))
            }
        }
        Op::Truncate { stream, len } => {
            let s = open_cached(dst, streams, stream)?;
            if s.len() > *len {
                s.truncate(*len)
            } else {
                Ok(())
            }
        }
    }
}

fn open_cached<'a>(
    dst: &dyn Backend,
    streams: &'a mut HashMap<String, Box<dyn Stream>>,
    stream: &str,
) -> Result<&'a mut Box<dyn Stream>> {
    if !streams.contains_key(stream) {
        let s = dst.stream_open(stream, Durability::Fsync)?;
        streams.insert(stream.to_string(), s);
    }
    streams
        .get_mut(stream)
        .ok_or_else(|| Error::Invalid(format!("stream {stream} vanished from the cache")))
}

/// Make `dst` hold what `src` holds: one comparison pass.
fn catch_up(
    src: &dyn Backend,
    dst: &dyn Backend,
    dirty_objects: &BTreeSet<String>,
    dirty_streams: &BTreeSet<String>,
    stopping: &dyn Fn() -> bool,
) -> Result<()> {
    // Checked before each write, so a pass left behind by a dropped `MultiBackend` (its thread
    // not joined) stops after at most one more call instead of racing the next one.
    let stop_check = || -> Result<()> {
        match stopping() {
            true => Err(Error::Invalid("replication stopped".into())),
            false => Ok(()),
        }
    };
    let copy = |name: &str| -> Result<()> {
        stop_check()?;
        match src.get(name) {
            Ok(data) => dst.put(name, &data),
            Err(Error::NotFound { .. }) => dst.delete(name),
            Err(e) => Err(e),
        }
    };
    // Copies in COMPARED_DIRS order (packs and indexes before the manifests that name them),
    // deletions in the reverse order (manifests before the packs they named).
    let mut seen = BTreeSet::new();
    let mut stale = Vec::new();
    for dir in COMPARED_DIRS {
        let have: BTreeMap<String, u64> = dst
            .list(dir)?
            .into_iter()
            .map(|o| (o.name, o.size))
            .collect();
        let want = src.list(dir)?;
        for o in &want {
            seen.insert(o.name.clone());
            if have.get(&o.name) != Some(&o.size) || dirty_objects.contains(&o.name) {
                copy(&o.name)?;
            }
        }
        let want_names: BTreeSet<&str> = want.iter().map(|o| o.name.as_str()).collect();
        stale.push(
            have.into_keys()
                .filter(|n| !want_names.contains(n.as_str()))
                .collect::<Vec<_>>(),
        );
    }
    for names in stale.iter().rev() {
        for name in names {
            stop_check()?;
            dst.delete(name)?;
        }
    }
    for name in dirty_objects {
        if !seen.contains(name) {
            copy(name)?;
        }
    }

    let want: BTreeMap<String, u64> = src
        .stream_list()?
        .into_iter()
        .map(|o| (o.name, o.size))
        .collect();
    let have: BTreeMap<String, u64> = dst
        .stream_list()?
        .into_iter()
        .map(|o| (o.name, o.size))
        .collect();
    for (name, &size) in &want {
        stop_check()?;
        let dst_len = have.get(name).copied().unwrap_or(0);
        let dirty = dirty_streams.contains(name);
        if dst_len == size && !dirty {
            continue;
        }
        let data = src.stream_read(name)?;
        let mut s = dst.stream_open(name, Durability::Fsync)?;
        // Keep the longest common prefix: equal bytes need no copy, differing ones are cut.
        let common = if dst_len == 0 {
            0
        } else if dirty || dst_len > size {
            let theirs = dst.stream_read(name)?;
            theirs
                .iter()
                .zip(data.iter())
                .take_while(|(a, b)| a == b)
                .count() as u64
        } else {
            dst_len
        };
        if s.len() > common {
            s.truncate(common)?;
        }
        let start = usize::try_from(common).unwrap_or(usize::MAX);
        if let Some(tail) = data.get(start..) {
            if !tail.is_empty() {
                s.append(tail)?;
            }
        }
    }
    for name in have.keys() {
        if !want.contains_key(name) {
            dst.stream_delete(name)?;
        }
    }
    for name in dirty_streams {
        if !want.contains_key(name) && !have.contains_key(name) {
            dst.stream_delete(name)?;
        }
    }
    Ok(())
}

impl Backend for MultiBackend {
    fn url(&self) -> String {
        self.primary().url()
    }

    fn put(&self, name: &str, data: &[u8]) -> Result<()> {
        for b in &self.sync {
            b.put(name, data)?;
        }
        self.replicate(Op::Put {
            name: name.to_string(),
            data: Arc::from(data),
        });
        Ok(())
    }

    fn put_if_absent(&self, name: &str, data: &[u8]) -> Result<bool> {
        // The primary decides; the others follow it.
        if !self.primary().put_if_absent(name, data)? {
            return Ok(false);
        }
        for b in self.sync.iter().skip(1) {
            b.put(name, data)?;
        }
        self.replicate(Op::Put {
            name: name.to_string(),
            data: Arc::from(data),
        });
        Ok(true)
    }

    fn get(&self, name: &str) -> Result<Vec<u8>> {
        self.primary().get(name)
    }

    fn get_range(&self, name: &str, offset: u64, len: u64) -> Result<Vec<u8>> {
        self.primary().get_range(name, offset, len)
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        self.primary().list(prefix)
    }

    fn delete(&self, name: &str) -> Result<()> {
        for b in &self.sync {
            b.delete(name)?;
        }
        self.replicate(Op::Delete {
            name: name.to_string(),
        });
        Ok(())
    }

    fn stream_open(&self, name: &str, durability: Durability) -> Result<Box<dyn Stream>> {
        let mut streams = Vec::new();
        for b in &self.sync {
            streams.push(b.stream_open(name, durability)?);
        }
        // Bring the other synchronous copies to the primary's length (a failed write may have
        // left them behind or ahead).
        let len = streams.first().map(|s| s.len()).unwrap_or(0);
        if streams.iter().any(|s| s.len() != len) {
            let data = self.primary().stream_read(name)?;
            for s in streams.iter_mut().skip(1) {
                if s.len() > len {
                    s.truncate(len)?;
                }
                let from = usize::try_from(s.len()).unwrap_or(usize::MAX);
                if let Some(tail) = data.get(from..) {
                    if !tail.is_empty() {
                        s.append(tail)?;
                    }
                }
            }
        }
        Ok(Box::new(MultiStream {
            streams,
            name: name.to_string(),
            replicas: self.replicas.clone(),
            poisoned: None,
        }))
    }

    fn stream_read(&self, name: &str) -> Result<Vec<u8>> {
        self.primary().stream_read(name)
    }

    fn stream_list(&self) -> Result<Vec<ObjectInfo>> {
        self.primary().stream_list()
    }

    fn stream_delete(&self, name: &str) -> Result<()> {
        for b in &self.sync {
            b.stream_delete(name)?;
        }
        let op = Op::StreamDelete {
            stream: name.to_string(),
        };
        for r in &self.replicas {
            r.enqueue(op.clone());
        }
        Ok(())
    }

    fn lock(&self, name: &str, holder: &str) -> Result<Box<dyn LockGuard>> {
        let mut guards = Vec::new();
        for b in &self.sync {
            guards.push(b.lock(name, holder)?);
        }
        Ok(Box::new(MultiLock { _guards: guards }))
    }
}

struct MultiLock {
    _guards: Vec<Box<dyn LockGuard>>,
}
impl LockGuard for MultiLock {}

struct MultiStream {
    /// One per synchronous destination, primary first.
    streams: Vec<Box<dyn Stream>>,
    name: String,
    replicas: Vec<Arc<Replica>>,
    poisoned: Option<String>,
}

impl Stream for MultiStream {
    fn len(&self) -> u64 {
        self.streams.first().map(|s| s.len()).unwrap_or(0)
    }

    fn append(&mut self, data: &[u8]) -> Result<()> {
        if let Some(why) = &self.poisoned {
            return Err(Error::Invalid(format!(
                "journal stream {} refuses appends: {why}; restart to recover",
                self.name
            )));
        }
        let offset = self.len();
        for (i, s) in self.streams.iter_mut().enumerate() {
            if let Err(e) = s.append(data) {
                if i > 0 {
                    // The primary has it, this copy does not: the copies differ until reopened.
                    self.poisoned = Some(format!("a synchronous destination failed: {e}"));
                }
                return Err(e);
            }
        }
        let op = Op::Append {
            stream: self.name.clone(),
            offset,
            data: Arc::from(data),
        };
        for r in &self.replicas {
            r.enqueue(op.clone());
        }
        Ok(())
    }

    fn truncate(&mut self, len: u64) -> Result<()> {
        for s in self.streams.iter_mut() {
            s.truncate(len)?;
        }
        self.poisoned = None;
        let op = Op::Truncate {
            stream: self.name.clone(),
            len,
        };
        for r in &self.replicas {
            r.enqueue(op.clone());
        }
        Ok(())
    }
}

#[cfg(test)]
mod test {
    use super::*;
    use crate::backend::dir::DirBackend;
    use std::sync::atomic::AtomicU32;

    /// An asynchronous destination that cannot be opened at start: the writes go on, it shows as
    /// down with the opener's error and its lag, and once it opens it catches up.
    #[test]
    fn deferred_destination_down_at_start_catches_up() {
        deferred_destination_catches_up(Durability::Flush);
    }

    /// The same with synced streams, which a local directory writes ahead with zeros: the
    /// catch-up copies the stream, not the zeros.
    #[test]
    fn deferred_destination_catches_up_a_stream_written_ahead() {
        deferred_destination_catches_up(Durability::Fsync);
    }

    fn deferred_destination_catches_up(durability: Durability) {
        let tmp = tempfile::tempdir().unwrap();
        let primary: Arc<dyn Backend> =
            Arc::new(DirBackend::create(&tmp.path().join("primary")).unwrap());
        let second_dir = tmp.path().join("second");
        let up = Arc::new(AtomicBool::new(false));
        let tries = Arc::new(AtomicU32::new(0));
        let (up2, tries2, dir2) = (up.clone(), tries.clone(), second_dir.clone());
        let open: Opener = Box::new(move || {
            tries2.fetch_add(1, Ordering::SeqCst);
            if !up2.load(Ordering::SeqCst) {
                return Err(Error::Invalid("server down (test)".into()));
            }
            Ok(Arc::new(DirBackend::create(&dir2)?) as Arc<dyn Backend>)
        });
        let m = MultiBackend::with_deferred(
            vec![Destination {
                backend: primary.clone(),
                mode: Mode::Sync,
            }],
            vec![("file:///second".into(), open)],
        )
        .unwrap();
        m.put("config", b"cfg").unwrap();
        let mut s = m.stream_open("0000000000000001", durability).unwrap();
        for i in 0..20u8 {
            s.append(&[i; 32]).unwrap();
        }
        m.put("snapshots/a", b"manifest").unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        let down = loop {
            let st = m.status().remove(1);
            if st.state == "down" {
                break st;
            }
            assert!(Instant::now() < deadline, "never reported down: {st:?}");
            std::thread::sleep(Duration::from_millis(10));
        };
        assert_eq!(down.url, "file:///second");
        assert!(
            down.last_error
                .as_deref()
                .is_some_and(|e| e.contains("server down (test)")),
            "{down:?}"
        );
        assert_eq!((down.lag_batches, down.lag_writes), (20, 22), "{down:?}");
        assert!(!m.wait_caught_up(Duration::from_millis(300)));
        // Drain does not wait for a destination that is down; it reports it.
        let behind = m.drain(Duration::from_secs(5));
        assert_eq!(behind.len(), 1);
        assert_eq!(behind[0].state, "down");

        up.store(true, Ordering::SeqCst);
        assert!(
            m.wait_caught_up(Duration::from_secs(30)),
            "{:?}",
            m.status()
        );
        for i in 20..30u8 {
            s.append(&[i; 32]).unwrap();
        }
        assert!(
            m.wait_caught_up(Duration::from_secs(30)),
            "{:?}",
            m.status()
        );
        let second = DirBackend::open(&second_dir).unwrap();
        for dir in COMPARED_DIRS {
            assert_eq!(
                primary.list(dir).unwrap(),
                second.list(dir).unwrap(),
                "{dir}"
            );
        }
        assert_eq!(second.get("snapshots/a").unwrap(), b"manifest");
        let stream: Vec<u8> = (0..30u8).flat_map(|i| [i; 32]).collect();
        assert_eq!(primary.stream_read("0000000000000001").unwrap(), stream);
        assert_eq!(second.stream_read("0000000000000001").unwrap(), stream);
        assert!(tries.load(Ordering::SeqCst) >= 2);
        let st = m.status().remove(1);
        assert_eq!((st.state, st.lag_writes), ("live", 0));
    }

    /// A synchronous destination that cannot be opened is an error (the node must not run
    /// without it); an asynchronous one is not.
    #[test]
    fn open_fails_only_for_a_synchronous_destination() {
        let tmp = tempfile::tempdir().unwrap();
        let primary = crate::url::BackupUrl::File(tmp.path().join("p"));
        DirBackend::create(&tmp.path().join("p")).unwrap();
        let missing = crate::url::BackupUrl::File(tmp.path().join("missing"));
        let err = open(&primary, &[(missing.clone(), Mode::Sync)], None, false)
            .err()
            .unwrap();
        assert!(
            err.to_string()
                .contains("cannot open synchronous destination"),
            "{err}"
        );
        let m = open(&primary, &[(missing, Mode::Async)], None, false).unwrap();
        m.put("config", b"x").unwrap();
        let st = m.status().remove(1);
        assert!(matches!(st.state, "opening" | "down"), "{st:?}");
    }
}
