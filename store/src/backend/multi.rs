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

mod catch_up;
mod identity;
mod queue;
mod status;

use std::collections::{BTreeSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::{Backend, Durability, LockGuard, ObjectInfo, Stream};
use crate::error::{Error, Result};
pub use identity::Verdict;
pub use queue::Opener;
use queue::{worker, Op, Phase, Replica, ReplicaState, Source};
pub use status::DestStatus;

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
        // A synchronous destination that holds another repository is never written to: the
        // node stops (the hook fails) with the destination named.
        if sync.len() > 1 {
            let ours = identity::primary_config(&*primary)?;
            for b in sync.iter().skip(1) {
                if let identity::Verdict::Foreign(what) = identity::check(ours.as_deref(), &**b)? {
                    return Err(Error::IdentityMismatch {
                        url: b.url(),
                        what: format!("{what}; it is a synchronous destination in backup.lock, and nothing is written there"),
                    });
                }
            }
        }
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

    fn lock_for(&self, name: &str, holder: &str, owner: &str) -> Result<Box<dyn LockGuard>> {
        let mut guards = Vec::new();
        for b in &self.sync {
            guards.push(b.lock_for(name, holder, owner)?);
        }
        Ok(Box::new(MultiLock { _guards: guards }))
    }

    /// Any synchronous destination refusing deletes makes a prune through this one fail: the
    /// plugin then leaves pruning to that destination's operator.
    fn append_only(&self) -> bool {
        self.sync.iter().any(|b| b.append_only())
    }

    fn note_data_version(&self, data_version: u32) {
        for b in &self.sync {
            b.note_data_version(data_version);
        }
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
mod test;
