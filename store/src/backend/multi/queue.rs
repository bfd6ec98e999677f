//! An asynchronous destination's replication: its queue of writes, its phases (down, live,
//! catching up, refused) and the thread that works them off.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::catch_up::{apply, catch_up};
use super::identity;
use crate::backend::{Backend, Stream};
use crate::error::Result;

/// Queued bytes above which an asynchronous destination drops its queue and catches up instead.
const QUEUE_CAP_BYTES: u64 = 64 << 20;

#[derive(Clone, Debug)]
pub(super) enum Op {
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
    pub(super) fn bytes(&self) -> u64 {
        match self {
            Op::Put { data, .. } | Op::Append { data, .. } => data.len() as u64,
            _ => 0,
        }
    }
    pub(super) fn is_append(&self) -> bool {
        matches!(self, Op::Append { .. })
    }
}

pub(super) enum Phase {
    /// Not opened yet (its thread retries); writes are counted like in catch-up.
    Down,
    Live,
    CatchUp,
    /// It holds another repository (or something that is not a repository): nothing is written
    /// or deleted there; checked again now and then, writes counted like in catch-up.
    Refused,
}

/// How often a refused destination is looked at again (emptied or fixed by its operator).
const REFUSED_RECHECK: Duration = Duration::from_secs(60);

/// Opens an asynchronous destination from its replication thread (called again until it works).
pub type Opener = Box<dyn FnMut() -> Result<Arc<dyn Backend>> + Send>;

/// An asynchronous destination as given to the replication thread.
pub(super) enum Source {
    Open(Arc<dyn Backend>),
    Deferred(Opener),
}

pub(super) struct ReplicaState {
    pub(super) queue: VecDeque<(Op, Instant)>,
    pub(super) queued_bytes: u64,
    pub(super) phase: Phase,
    /// Catch-up: names written since the outage, compared by content (not only by size).
    pub(super) dirty_objects: BTreeSet<String>,
    pub(super) dirty_streams: BTreeSet<String>,
    /// Failed attempts to open the destination (phase `Down`).
    pub(super) open_failures: u64,
    /// Catch-up: writes (and their bytes, appends) since the outage, and when it began.
    pub(super) missed_writes: u64,
    pub(super) missed_batches: u64,
    pub(super) missed_bytes: u64,
    pub(super) behind_since: Option<Instant>,
    pub(super) last_error: Option<String>,
    pub(super) shutdown: bool,
}

pub(super) struct Replica {
    pub(super) url: String,
    pub(super) state: Mutex<ReplicaState>,
    pub(super) cv: Condvar,
}

impl Replica {
    pub(super) fn lock(&self) -> MutexGuard<'_, ReplicaState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn enqueue(&self, op: Op) {
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
            Phase::CatchUp | Phase::Down | Phase::Refused => mark_dirty(&mut st, &op, now),
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
pub(super) fn to_catch_up(st: &mut ReplicaState) {
    let queue = std::mem::take(&mut st.queue);
    st.queued_bytes = 0;
    st.phase = Phase::CatchUp;
    for (op, t) in &queue {
        mark_dirty(st, op, *t);
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

pub(super) fn worker(r: &Replica, src: &dyn Backend, source: Source) {
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
        let st = r.lock();
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
            Phase::CatchUp | Phase::Down | Phase::Refused => {
                drop(st);
                // Before anything is written or deleted there: is it ours, or empty?
                let verdict = identity::primary_config(src)
                    .and_then(|ours| identity::check(ours.as_deref(), dst));
                let mut st = r.lock();
                match verdict {
                    Ok(identity::Verdict::Foreign(why)) => {
                        st.phase = Phase::Refused;
                        st.last_error = Some(format!(
                            "refused: {} is not this repository's destination: {why}; nothing is written or deleted there (point backup.lock elsewhere, or empty it)",
                            r.url
                        ));
                        r.cv.notify_all();
                        pause(r, st, REFUSED_RECHECK);
                        continue;
                    }
                    Ok(_) => {
                        if matches!(st.phase, Phase::Refused | Phase::Down) {
                            st.phase = Phase::CatchUp;
                        }
                    }
                    Err(e) => {
                        st.last_error = Some(e.to_string());
                        pause(r, st, backoff);
                        backoff = (backoff * 2).min(Duration::from_secs(10));
                        continue;
                    }
                }
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
