//! One admitted node's repository on the server, and the requests it may make.
//!
//! Every name a request carries is checked, then resolved inside the node's own repository
//! (its own backend: `ROOT/nodes/NAME`): no name can leave it, and no other node's state is
//! reachable (streams, locks and sessions are per node too). Objects may not take the names of
//! the repository's machinery (`locks/`, `tmp/`, the files of open streams), so a `put` can
//! neither replace a journal stream nor a lock file.
//!
//! Rules per node: a quota in bytes (every put and append is counted; a request that would pass
//! it is refused), and append-only: no delete, no replacement of an object by other bytes, no
//! stream cut below what the server acknowledged (see [`OpenStream::floor`]), never a stream
//! grown by a truncate.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::scan;
use super::{lock, log};
use crate::backend::remote::proto::{self, RemoteError, Request, MAX_DATA};
use crate::backend::{check_name, check_prefix, Backend, Durability, LockGuard, Stream};
use crate::codec::Enc;
use crate::error::{Error, Result};

/// What the auth file (and the server's flags) allow a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rules {
    pub append_only: bool,
    /// Bytes the node may store; 0: no quota.
    pub quota: u64,
}

/// What the server knows of a node, for `backup-cli server status`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Activity {
    /// Unix seconds of the last request (0: none since the server started).
    pub last_contact: u64,
    /// The newest data_version the node said it stored (0: none reported).
    pub data_version: u32,
    /// Journal appends acknowledged since the server started.
    pub appends: u64,
    pub connections: usize,
}

/// An open journal stream of the node.
pub(super) struct OpenStream {
    durability: Durability,
    stream: Box<dyn Stream>,
    /// Under append-only, the stream is never cut below this: every byte the server
    /// acknowledged (in this process), or the frames it found whole when it opened the stream
    /// (see `scan`).
    floor: u64,
}

type SharedStream = Arc<Mutex<OpenStream>>;

struct HeldLock {
    session: [u8; 16],
    holder: String,
    _guard: Box<dyn LockGuard>,
}

pub(super) struct Node {
    pub name: String,
    pub backend: Arc<dyn Backend>,
    rules: Mutex<Rules>,
    /// Streams may hold zeros written ahead (a local directory): find their end by scanning.
    scan: bool,
    streams: Mutex<HashMap<String, SharedStream>>,
    /// Live connections per client session; a session's locks go when its count reaches 0.
    sessions: Mutex<HashMap<[u8; 16], usize>>,
    locks: Mutex<HashMap<String, HeldLock>>,
    used: AtomicU64,
    activity: Mutex<Activity>,
}

fn now() -> u64 {
    crate::config::now()
}

/// Directories of a repository whose objects count toward a node's size (streams are counted by
/// `stream_list`; `locks/` and `tmp/` hold no data).
const DATA_DIRS: &[&str] = &["", "snapshots/", "packs/", "index/", "journal/"];

/// Object names a node may use: valid names, outside the repository's machinery.
fn check_object(name: &str) -> std::result::Result<(), RemoteError> {
    check_name(name).map_err(|e| RemoteError::Refused(e.to_string()))?;
    let machinery = name.starts_with("locks/")
        || name.starts_with("tmp/")
        || (name.starts_with("journal/") && name.ends_with(".log"));
    if machinery {
        return Err(RemoteError::Refused(format!(
            "'{name}' is not an object name (locks, temporary files and open journal streams are not objects)"
        )));
    }
    Ok(())
}

/// Stream and lock names: one path component.
fn check_flat(name: &str, what: &str) -> std::result::Result<(), RemoteError> {
    if name.contains('/') || check_name(name).is_err() {
        return Err(RemoteError::Refused(format!(
            "invalid {what} name '{name}'"
        )));
    }
    Ok(())
}

fn store_err(e: Error) -> RemoteError {
    RemoteError::from_error(&e)
}

fn append_only(object: &str, op: &'static str) -> RemoteError {
    RemoteError::AppendOnly {
        object: object.to_string(),
        op: op.to_string(),
    }
}

fn blob(data: &[u8]) -> Vec<u8> {
    let mut e = Enc::new();
    e.blob(data);
    e.finish()
}

fn too_big(len: u64) -> RemoteError {
    RemoteError::Invalid(format!(
        "a read of {len} bytes exceeds the limit of {MAX_DATA} bytes per response"
    ))
}

fn stream_object(name: &str) -> String {
    format!("journal/{name}.log")
}

impl Node {
    /// Open the node's state: its repository's size is counted once, here.
    pub fn open(name: &str, backend: Arc<dyn Backend>, rules: Rules, scan: bool) -> Result<Node> {
        let mut used = 0u64;
        for d in DATA_DIRS {
            used += backend.list(d)?.iter().map(|o| o.size).sum::<u64>();
        }
        used += backend.stream_list()?.iter().map(|o| o.size).sum::<u64>();
        Ok(Node {
            name: name.to_string(),
            backend,
            rules: Mutex::new(rules),
            scan,
            streams: Mutex::new(HashMap::new()),
            sessions: Mutex::new(HashMap::new()),
            locks: Mutex::new(HashMap::new()),
            used: AtomicU64::new(used),
            activity: Mutex::new(Activity::default()),
        })
    }

    pub fn rules(&self) -> Rules {
        *lock(&self.rules)
    }

    pub fn set_rules(&self, r: Rules) {
        *lock(&self.rules) = r;
    }

    pub fn used(&self) -> u64 {
        self.used.load(Ordering::SeqCst)
    }

    pub fn activity(&self) -> Activity {
        lock(&self.activity).clone()
    }

    pub fn session_start(&self, session: [u8; 16]) {
        *lock(&self.sessions).entry(session).or_insert(0) += 1;
        let mut a = lock(&self.activity);
        a.connections += 1;
        a.last_contact = now();
    }

    /// A connection of `session` ended: the last one releases the session's locks. True if it
    /// released any.
    pub fn session_end(&self, session: [u8; 16]) -> bool {
        lock(&self.activity).connections -= 1;
        let last = {
            let mut s = lock(&self.sessions);
            let n = s.get(&session).copied().unwrap_or(1).saturating_sub(1);
            if n == 0 {
                s.remove(&session);
            } else {
                s.insert(session, n);
            }
            n == 0
        };
        if !last {
            return false;
        }
        let mut locks = lock(&self.locks);
        let before = locks.len();
        locks.retain(|_, l| l.session != session);
        locks.len() != before
    }

    /// Drop every open stream and lock (the server is stopping): a directory cuts the zeros it
    /// wrote ahead, S3 leases are deleted.
    pub fn close(&self) {
        lock(&self.streams).clear();
        lock(&self.locks).clear();
    }

    /// Count `n` more bytes, refusing if that passes the quota.
    fn charge(&self, what: &str, n: u64) -> std::result::Result<(), RemoteError> {
        let quota = self.rules().quota;
        let used = self.used.fetch_add(n, Ordering::SeqCst);
        if quota > 0 && used.saturating_add(n) > quota {
            self.used.fetch_sub(n, Ordering::SeqCst);
            return Err(RemoteError::Refused(format!(
                "node '{}' would pass its quota: it stores {used} of {quota} bytes and {what} adds {n}; \
                 the server's operator raises quota= in its auth file, or prunes the node's repository on the server's host",
                self.name
            )));
        }
        Ok(())
    }

    fn refund(&self, n: u64) {
        let _ = self
            .used
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |u| {
                Some(u.saturating_sub(n))
            });
    }

    /// Open `name` from the backend, at its logical length (a fresh open: nothing of it is in
    /// this process's memory, or the cached length disagrees with the client).
    fn open_stream(&self, name: &str, d: Durability) -> Result<SharedStream> {
        let mut floor = 0;
        let mut cut = None;
        if self.scan {
            if let Some(seq) = crate::journal::parse_stream_name(name) {
                let data = match self.backend.stream_read(name) {
                    Ok(d) => d,
                    Err(Error::NotFound { .. }) => Vec::new(),
                    Err(e) => return Err(e),
                };
                let end = scan::stream_end(&data, seq);
                floor = end.floor;
                if end.zeros_after && end.len < data.len() as u64 {
                    cut = Some((end.len, data.len() as u64));
                }
            }
        }
        let mut stream = self.backend.stream_open(name, d)?;
        if let Some((len, file)) = cut {
            if stream.len() > len {
                // Zeros written ahead before the server stopped: not the stream's.
                stream.truncate(len)?;
                log(
                    6,
                    &format!(
                        "{}: {}: cut {} bytes of zeros written ahead after the last record",
                        self.name,
                        stream_object(name),
                        file - len
                    ),
                );
            }
        }
        if !self.scan {
            floor = stream.len();
        }
        // What this process acknowledged stays protected, whatever the scan could prove.
        let old = lock(&self.streams).get(name).cloned();
        if let Some(old) = old {
            floor = floor.max(lock(&old).floor);
        }
        let s = Arc::new(Mutex::new(OpenStream {
            durability: d,
            floor: floor.min(stream.len()),
            stream,
        }));
        lock(&self.streams).insert(name.to_string(), s.clone());
        Ok(s)
    }

    fn stream(&self, name: &str, d: Durability) -> Result<SharedStream> {
        let cached = lock(&self.streams).get(name).cloned();
        match cached {
            Some(s) if lock(&s).durability == d => Ok(s),
            // Another durability: the same file (its length is shared in this process).
            Some(s) => {
                let floor = lock(&s).floor;
                let stream = self.backend.stream_open(name, d)?;
                let s = Arc::new(Mutex::new(OpenStream {
                    durability: d,
                    floor,
                    stream,
                }));
                lock(&self.streams).insert(name.to_string(), s.clone());
                Ok(s)
            }
            None => self.open_stream(name, d),
        }
    }

    /// Make sure a stream that is read or listed is open here, at its logical length.
    fn ensure_open(&self, name: &str) -> Result<()> {
        if self.scan && !lock(&self.streams).contains_key(name) {
            self.open_stream(name, Durability::Flush)?;
        }
        Ok(())
    }

    /// Answer one request: the ok body, or the error to send.
    pub fn handle(
        &self,
        req: &Request<'_>,
        session: [u8; 16],
    ) -> std::result::Result<Vec<u8>, RemoteError> {
        lock(&self.activity).last_contact = now();
        let b = &self.backend;
        let ao = self.rules().append_only;
        Ok(match *req {
            Request::Ping => Vec::new(),
            Request::Put { name, data } => {
                check_object(name)?;
                self.charge(&format!("put {name}"), data.len() as u64)?;
                let res = if ao {
                    self.put_append_only(name, data)
                } else {
                    b.put(name, data).map_err(store_err)
                };
                if res.is_err() {
                    self.refund(data.len() as u64);
                }
                res?;
                Vec::new()
            }
            Request::PutIfAbsent { name, data } => {
                check_object(name)?;
                self.charge(&format!("put {name}"), data.len() as u64)?;
                let stored = b.put_if_absent(name, data);
                if !matches!(stored, Ok(true)) {
                    self.refund(data.len() as u64);
                }
                vec![u8::from(stored.map_err(store_err)?)]
            }
            Request::Get { name } => {
                check_object(name)?;
                let data = b.get(name).map_err(store_err)?;
                if data.len() > MAX_DATA {
                    return Err(RemoteError::TooLarge(data.len() as u64));
                }
                blob(&data)
            }
            Request::GetRange { name, offset, len } => {
                check_object(name)?;
                if len > MAX_DATA as u64 {
                    return Err(too_big(len));
                }
                blob(&b.get_range(name, offset, len).map_err(store_err)?)
            }
            Request::List { prefix } => {
                check_prefix(prefix).map_err(|e| RemoteError::Refused(e.to_string()))?;
                let mut items = b.list(prefix).map_err(store_err)?;
                items.retain(|o| check_object(&o.name).is_ok());
                proto::encode_list(&items)
            }
            Request::Delete { name } => {
                check_object(name)?;
                if ao {
                    return Err(append_only(name, "delete"));
                }
                let size = b
                    .list(name)
                    .map_err(store_err)?
                    .iter()
                    .find(|o| o.name == name)
                    .map_or(0, |o| o.size);
                b.delete(name).map_err(store_err)?;
                self.refund(size);
                Vec::new()
            }
            Request::StreamOpen { name, durability } => {
                check_flat(name, "stream")?;
                // A fresh open: the length as stored (the client is (re)starting).
                let s = self.open_stream(name, durability).map_err(store_err)?;
                let len = lock(&s).stream.len();
                len.to_le_bytes().to_vec()
            }
            Request::StreamAppend {
                name,
                durability,
                offset,
                data,
                data_version,
            } => {
                check_flat(name, "stream")?;
                let r = self.append(name, durability, offset, data)?;
                let mut a = lock(&self.activity);
                a.appends += 1;
                if data_version > 0 {
                    a.data_version = data_version;
                }
                r
            }
            Request::StreamTruncate {
                name,
                durability,
                len,
            } => {
                check_flat(name, "stream")?;
                let s = self.stream(name, durability).map_err(store_err)?;
                let mut st = lock(&s);
                let cur = st.stream.len();
                if len > cur {
                    return Err(RemoteError::Refused(format!(
                        "{} is {cur} bytes: a truncate to {len} would grow it",
                        stream_object(name)
                    )));
                }
                if ao && len < st.floor {
                    return Err(append_only(&stream_object(name), "cut"));
                }
                st.stream.truncate(len).map_err(store_err)?;
                st.floor = st.floor.min(len);
                self.refund(cur - len);
                Vec::new()
            }
            Request::StreamRead { name, offset, max } => {
                check_flat(name, "stream")?;
                if max > MAX_DATA as u64 {
                    return Err(too_big(max));
                }
                self.ensure_open(name).map_err(store_err)?;
                let all = b.stream_read(name).map_err(store_err)?;
                let start = usize::try_from(offset).unwrap_or(usize::MAX).min(all.len());
                let end = start.saturating_add(max as usize).min(all.len());
                blob(all.get(start..end).unwrap_or_default())
            }
            Request::StreamList => {
                if self.scan {
                    for o in b.stream_list().map_err(store_err)? {
                        self.ensure_open(&o.name).map_err(store_err)?;
                    }
                }
                proto::encode_list(&b.stream_list().map_err(store_err)?)
            }
            Request::StreamDelete { name } => {
                check_flat(name, "stream")?;
                if ao {
                    return Err(append_only(&stream_object(name), "delete stream"));
                }
                let size = b
                    .stream_list()
                    .map_err(store_err)?
                    .iter()
                    .find(|o| o.name == name)
                    .map_or(0, |o| o.size);
                lock(&self.streams).remove(name);
                b.stream_delete(name).map_err(store_err)?;
                self.refund(size);
                Vec::new()
            }
            Request::Lock { name, holder } => {
                check_flat(name, "lock")?;
                let mut locks = lock(&self.locks);
                match locks.get(name) {
                    // Our own session after a reconnect: it keeps the lock.
                    Some(l) if l.session == session => {}
                    Some(l) => {
                        return Err(store_err(Error::Locked {
                            object: format!("locks/{name} (node {})", self.name),
                            holder: l.holder.clone(),
                        }))
                    }
                    None => {
                        let owner = format!("{}/{}", self.name, hex::encode(session));
                        let guard = b.lock_for(name, holder, &owner).map_err(store_err)?;
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
                check_flat(name, "lock")?;
                let mut locks = lock(&self.locks);
                if locks.get(name).is_some_and(|l| l.session == session) {
                    locks.remove(name);
                }
                Vec::new()
            }
        })
    }

    /// Append-only `put`: a new object, or the same bytes again (a request re-sent after a lost
    /// answer); never other bytes over an existing object.
    fn put_append_only(&self, name: &str, data: &[u8]) -> std::result::Result<(), RemoteError> {
        if self.backend.put_if_absent(name, data).map_err(store_err)? {
            return Ok(());
        }
        self.refund(data.len() as u64);
        match self.backend.get(name) {
            Ok(existing) if existing == data => Ok(()),
            Ok(_) => Err(append_only(name, "replace")),
            Err(e) => Err(store_err(e)),
        }
    }

    /// Append iff the stream is `offset` long. If it is longer: "already stored" iff it ends
    /// with `data` at `offset` (a re-sent batch whose acknowledgement was lost); the bytes after
    /// `offset` completed iff they are a torn copy of `data` (its start, then zeros: a crash of
    /// the server while writing it, which it never acknowledged); else a conflict, which says
    /// what the server holds.
    fn append(
        &self,
        name: &str,
        durability: Durability,
        offset: u64,
        data: &[u8],
    ) -> std::result::Result<Vec<u8>, RemoteError> {
        let answer = |already: bool, len: u64| {
            let mut e = Enc::new();
            e.u8(u8::from(already)).u64(len);
            e.finish()
        };
        let object = stream_object(name);
        let n = data.len() as u64;
        self.charge(&format!("an append to {object}"), n)?;
        let append = |st: &mut OpenStream| -> std::result::Result<Vec<u8>, RemoteError> {
            if let Err(e) = st.stream.append(data) {
                self.refund(n);
                return Err(store_err(e));
            }
            st.floor = st.stream.len();
            Ok(answer(false, st.stream.len()))
        };
        let s = self.stream(name, durability).map_err(|e| {
            self.refund(n);
            store_err(e)
        })?;
        {
            let mut st = lock(&s);
            if st.stream.len() == offset {
                return append(&mut st);
            }
        }
        // The cached length disagrees: look at the stream as stored.
        let s = self.open_stream(name, durability).map_err(|e| {
            self.refund(n);
            store_err(e)
        })?;
        let mut st = lock(&s);
        let len = st.stream.len();
        if len == offset {
            return append(&mut st);
        }
        self.refund(n);
        if len < offset {
            return Err(RemoteError::Conflict(format!(
                "{object} on the server is {len} bytes, shorter than the {offset} this client had \
                 stored: the server lost acknowledged appends (its disk lost data, or its directory \
                 was restored or cut by hand). Restart the plugin: it re-reads the journal and \
                 reports what is missing"
            )));
        }
        let stored = self.backend.stream_read(name).map_err(store_err)?;
        let from = usize::try_from(offset).unwrap_or(usize::MAX);
        let tail = stored.get(from..).unwrap_or_default();
        if tail == data {
            log(
                6,
                &format!(
                    "{}: {object}: the append at {offset} was already stored (re-sent after a lost acknowledgement)",
                    self.name
                ),
            );
            return Ok(answer(true, len));
        }
        let nonzero = tail.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
        let torn_copy = nonzero <= data.len() && tail.get(..nonzero) == data.get(..nonzero);
        if torn_copy && offset >= st.floor {
            self.charge(&format!("an append to {object}"), n)?;
            self.refund(len - offset);
            st.stream.truncate(offset).map_err(|e| {
                self.refund(n);
                store_err(e)
            })?;
            log(
                6,
                &format!(
                    "{}: {object}: completing the append at {offset}, torn by a crash ({nonzero} of its {} bytes were stored)",
                    self.name,
                    data.len()
                ),
            );
            return append(&mut st);
        }
        Err(RemoteError::Conflict(format!(
            "{object} holds {} bytes after offset {offset} that this client did not send: another \
             writer appended to it, or it was damaged on the server. Restart the plugin to re-read \
             the journal (a second writer on one repository is refused by its writer lock)",
            len - offset
        )))
    }
}
