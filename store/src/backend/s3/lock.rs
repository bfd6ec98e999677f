//! Locks on object storage: `locks/<name>` holds a lease,
//! `{"holder": "...", "token": "<random hex>", "expires_unix": <seconds>}`.
//!
//! - Taking it is a conditional create (If-None-Match: *). If the object exists and its lease has
//!   expired (the holder died without removing it), it is taken over by a conditional update on
//!   the stale ETag (If-Match), so of two takers at most one succeeds.
//! - A thread renews the lease every third of its length with If-Match on the last ETag. If a
//!   renewal finds the object changed, the lock was lost (we were stalled past the lease and
//!   someone took over): this is logged, and the thread stops renewing.
//! - Dropping the guard stops the thread and deletes the object if it still holds our token.
//! - Leases compare wall clocks of different machines: keep them NTP-synchronised; the lease
//!   (`lock_lease=` seconds in the URL, default 60) must exceed the worst clock skew.
//! - Where the service ignores conditional writes, the fallback writes our token, waits, reads
//!   back, and warns that exclusion is best-effort.
//! - A live lease need not be waited out when its holder is known gone: the lease records the
//!   holder's process (boot id, pid namespace, pid and its start time). On the same machine, a
//!   lease whose process no longer runs is taken over at once (a plugin killed, or a process
//!   that exited without releasing); one whose process still runs under the same holder role
//!   (the same lightning-dir's plugin, still shutting down after lightningd restarted) is waited
//!   for, up to [`WAIT_FOR_PREVIOUS`], saying so. Leases from other machines are waited out.
//! - A lease taken for an `owner` ([`Backend::lock_for`](crate::backend::Backend::lock_for): a
//!   `backup-cli server` passes node and client session) is adopted by another process with the
//!   same owner (a second server process behind one address); the first then only watches it,
//!   and re-creates it if it disappears while its session lives.

use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use object_store::{ObjectStoreExt, PutMode, UpdateVersion};

use super::Inner;
use crate::backend::LockGuard;
use crate::error::{Error, Result};

#[derive(serde::Serialize, serde::Deserialize)]
struct Lease {
    holder: String,
    token: String,
    expires_unix: u64,
    /// Whose lease it is across processes (see `lock_for`); absent: this process's only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    owner: Option<String>,
    /// The holder's process, to tell a stale lease on this machine (absent in older leases).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    process: Option<ProcessId>,
}

/// A process, as another process on the same machine can check it is still running.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct ProcessId {
    /// `/proc/sys/kernel/random/boot_id`: the same machine, since the same boot.
    boot: String,
    /// `/proc/self/ns/pid`: the same pid namespace (containers share a boot id).
    pidns: String,
    pid: u32,
    /// Its start time in clock ticks since boot (`/proc/PID/stat` field 22): a pid reused by
    /// another process has another.
    start: u64,
}

/// How long a lock waits for a previous process of the same role (a plugin of the same
/// lightning-dir still shutting down) to exit.
pub(crate) const WAIT_FOR_PREVIOUS: Duration = Duration::from_secs(30);

fn start_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: count after it.
    let rest = stat.get(stat.rfind(')')? + 1..)?;
    rest.split_whitespace().nth(19)?.parse().ok()
}

impl ProcessId {
    pub(crate) fn me() -> Option<ProcessId> {
        let pid = std::process::id();
        Some(ProcessId {
            boot: std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
                .ok()?
                .trim()
                .to_string(),
            pidns: std::fs::read_link("/proc/self/ns/pid")
                .ok()?
                .display()
                .to_string(),
            pid,
            start: start_ticks(pid)?,
        })
    }

    /// `Some(running)` when `self` is on this machine and in this pid namespace; `None` when
    /// that cannot be told from here.
    fn running_here(&self) -> Option<bool> {
        let me = ProcessId::me()?;
        if me.boot != self.boot || me.pidns != self.pidns {
            return None;
        }
        Some(start_ticks(self.pid) == Some(self.start))
    }
}

/// A holder description without its process part: `repo::holder` writes
/// `"<what> (pid N on HOST, since unix time T)"`, and two processes of the same role (the
/// plugin of one lightning-dir) share `<what>`.
fn role(holder: &str) -> &str {
    holder.split(" (pid ").next().unwrap_or(holder)
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub(crate) struct S3Lock {
    inner: Arc<Inner>,
    name: String,
    token: String,
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl LockGuard for S3Lock {}

impl S3Lock {
    pub(crate) fn acquire(
        inner: Arc<Inner>,
        lock: &str,
        holder: &str,
        owner: Option<&str>,
    ) -> Result<S3Lock> {
        let name = format!("locks/{lock}");
        let mut r = [0u8; 16];
        crate::crypto::fill_random(&mut r);
        let token = hex::encode(r);
        let me = Mine {
            holder: holder.to_string(),
            token: token.clone(),
            owner: owner.map(str::to_string),
            process: ProcessId::me(),
            lease: inner.cfg.lock_lease,
        };
        let etag = if inner.conditional {
            take_conditional(&inner, &name, &me)?
        } else {
            take_best_effort(&inner, &name, &token, &me.body()?)?;
            None
        };
        let (tx, rx) = mpsc::channel::<()>();
        let thread = {
            let inner = inner.clone();
            let lock_name = name.clone();
            std::thread::Builder::new()
                .name("cln-backup-s3-lease".into())
                .spawn(move || renew_loop(&inner, &lock_name, &me, etag, &rx))
                .map_err(|e| Error::io("start lease renewal", name.clone(), e))?
        };
        Ok(S3Lock {
            inner,
            name,
            token,
            stop: Some(tx),
            thread: Some(thread),
        })
    }
}

fn locked(inner: &Inner, name: &str, lease: Option<&Lease>) -> Error {
    let holder = match lease {
        Some(l) => format!(
            "{} (lease valid for {} more seconds; renewed while it runs)",
            l.holder,
            l.expires_unix.saturating_sub(now_unix())
        ),
        None => "another process".into(),
    };
    Error::Locked {
        object: inner.obj(name),
        holder,
    }
}

/// What this process writes in its lease.
struct Mine {
    holder: String,
    token: String,
    owner: Option<String>,
    process: Option<ProcessId>,
    lease: Duration,
}

impl Mine {
    fn body(&self) -> Result<Vec<u8>> {
        serde_json::to_vec(&Lease {
            holder: self.holder.clone(),
            token: self.token.clone(),
            expires_unix: now_unix() + self.lease.as_secs(),
            owner: self.owner.clone(),
            process: self.process.clone(),
        })
        .map_err(|e| Error::Invalid(format!("encode lease: {e}")))
    }
}

/// Why a live lease may be taken over now (None: it may not).
fn takeover_reason(l: &Lease, me: &Mine) -> Option<String> {
    if me.owner.is_some() && l.owner == me.owner {
        return Some("held for the same owner by another process".into());
    }
    match l.process.as_ref().map(|p| (p, p.running_here())) {
        Some((p, Some(false))) => Some(format!("its process {} on this machine is gone", p.pid)),
        _ => None,
    }
}

/// The live lease's process runs on this machine in our role: worth waiting for.
fn previous_of_mine(l: &Lease, me: &Mine) -> Option<u32> {
    let p = l.process.as_ref()?;
    let ours = me.process.as_ref().is_some_and(|m| m == p);
    (!ours && p.running_here() == Some(true) && role(&l.holder) == role(&me.holder))
        .then_some(p.pid)
}

/// Returns the ETag of our lease object.
fn take_conditional(inner: &Inner, name: &str, me: &Mine) -> Result<Option<String>> {
    let started = std::time::Instant::now();
    let mut said = false;
    // A few rounds: the holder may release between our create and our read; more while a
    // previous process of our role is waited for.
    let mut rounds = 0;
    while rounds < 3 {
        rounds += 1;
        let body = me.body()?;
        match inner.put_mode(name, &body, PutMode::Create)? {
            Ok(r) => return Ok(r.e_tag),
            Err(object_store::Error::AlreadyExists { .. })
            | Err(object_store::Error::Precondition { .. }) => {}
            Err(e) => return Err(inner.err("lock", name, e)),
        }
        let Some((etag, lease)) = read_lease(inner, name)? else {
            continue;
        };
        let mut why = None;
        if let Some(l) = &lease {
            if l.expires_unix > now_unix() {
                why = takeover_reason(l, me);
                if why.is_none() {
                    match previous_of_mine(l, me) {
                        Some(pid) if started.elapsed() < WAIT_FOR_PREVIOUS => {
                            if !said {
                                eprintln!(
                                    "cln-backup: waiting for pid {pid} ({}) to exit and release {} (at most {} s)",
                                    l.holder,
                                    inner.obj(name),
                                    WAIT_FOR_PREVIOUS.as_secs()
                                );
                                said = true;
                            }
                            std::thread::sleep(Duration::from_millis(50));
                            rounds = 0;
                            continue;
                        }
                        _ => return Err(locked(inner, name, Some(l))),
                    }
                }
            }
        }
        // Expired, unreadable (a torn or foreign object), or its holder is gone: take over on
        // its ETag.
        let mode = PutMode::Update(UpdateVersion {
            e_tag: etag,
            version: None,
        });
        match inner.put_mode(name, &body, mode)? {
            Ok(r) => {
                if let Some(l) = &lease {
                    eprintln!(
                        "cln-backup: took over the lock {} of {} ({})",
                        inner.obj(name),
                        l.holder,
                        why.as_deref().unwrap_or("its lease had expired")
                    );
                }
                return Ok(r.e_tag);
            }
            Err(object_store::Error::Precondition { .. })
            | Err(object_store::Error::AlreadyExists { .. })
            | Err(object_store::Error::NotFound { .. }) => {
                // Someone else renewed or took it first; look again.
            }
            Err(e) => return Err(inner.err("lock", name, e)),
        }
    }
    Err(locked(inner, name, None))
}

/// Where If-None-Match is ignored: write our token if free or expired, wait, read it back.
fn take_best_effort(inner: &Inner, name: &str, token: &str, body: &[u8]) -> Result<()> {
    let read = || -> Result<Option<Lease>> {
        match inner.get_bytes(name) {
            Ok(b) => Ok(serde_json::from_slice(&b).ok()),
            Err(Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    };
    if let Some(l) = read()? {
        if l.expires_unix > now_unix() {
            return Err(locked(inner, name, Some(&l)));
        }
    }
    inner
        .put_mode(name, body, PutMode::Overwrite)?
        .map_err(|e| inner.err("lock", name, e))?;
    // Let a racing taker's write land before reading back; well inside our lease, which is not
    // renewed until we return.
    std::thread::sleep(Duration::from_secs(2).min(inner.cfg.lock_lease / 4));
    match read()? {
        Some(l) if l.token == token => {
            eprintln!(
                "cln-backup: warning: lock {} taken without conditional writes (the service ignores \
                 them): exclusion is best-effort",
                inner.obj(name)
            );
            Ok(())
        }
        other => Err(locked(inner, name, other.as_ref())),
    }
}

/// Read the lease object: its ETag and content (None: absent).
fn read_lease(inner: &Inner, name: &str) -> Result<Option<(Option<String>, Option<Lease>)>> {
    let path = inner.path(name)?;
    let got = inner.run(async {
        let g = inner.store.get(&path).await?;
        let etag = g.meta.e_tag.clone();
        let b = g.bytes().await?;
        Ok::<_, object_store::Error>((etag, b.to_vec()))
    });
    match got {
        Ok((etag, b)) => Ok(Some((etag, serde_json::from_slice(&b).ok()))),
        Err(object_store::Error::NotFound { .. }) => Ok(None),
        Err(e) => Err(inner.err("read", name, e)),
    }
}

fn renew_loop(
    inner: &Inner,
    name: &str,
    me: &Mine,
    mut etag: Option<String>,
    stop: &mpsc::Receiver<()>,
) {
    let every = me.lease / 3;
    // False while another process of our owner renews it (we adopted nothing: it adopted ours).
    let mut renewing = true;
    loop {
        match stop.recv_timeout(every) {
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            _ => return,
        }
        let Ok(body) = me.body() else { return };
        if !renewing {
            // Watching a lease a sibling process of our owner renews: re-create it if it went
            // while we still hold the lock.
            match read_lease(inner, name) {
                Ok(None) => {
                    if let Ok(Ok(r)) = inner.put_mode(name, &body, PutMode::Create) {
                        etag = r.e_tag;
                        renewing = true;
                    }
                }
                Ok(Some((_, Some(l)))) if l.owner == me.owner => {}
                Ok(Some(_)) => {
                    eprintln!(
                        "cln-backup: error: lost the lock {}: another process took it over",
                        inner.obj(name)
                    );
                    return;
                }
                Err(_) => {}
            }
            continue;
        }
        let mode = if inner.conditional {
            PutMode::Update(UpdateVersion {
                e_tag: etag.clone(),
                version: None,
            })
        } else {
            match inner
                .get_bytes(name)
                .ok()
                .and_then(|b| serde_json::from_slice::<Lease>(&b).ok())
            {
                Some(l) if l.token == me.token => PutMode::Overwrite,
                _ => {
                    eprintln!(
                        "cln-backup: error: lost the lock {}: another process took it over",
                        inner.obj(name)
                    );
                    return;
                }
            }
        };
        let res = inner.put_mode(name, &body, mode);
        match res {
            Ok(Ok(r)) => etag = r.e_tag,
            Ok(Err(object_store::Error::Precondition { .. })) => {
                if me.owner.is_some() {
                    match read_lease(inner, name) {
                        // A sibling process of the same owner took it over: it renews now.
                        Ok(Some((_, Some(l)))) if l.owner == me.owner => {
                            renewing = false;
                            continue;
                        }
                        // That sibling released it while our session lives: ours again.
                        Ok(None) => {
                            if let Ok(Ok(r)) = inner.put_mode(name, &body, PutMode::Create) {
                                etag = r.e_tag;
                                continue;
                            }
                        }
                        _ => {}
                    }
                }
                eprintln!(
                    "cln-backup: error: lost the lock {}: it changed since our last renewal (another \
                     process took it over after our lease expired); stop this process",
                    inner.obj(name)
                );
                return;
            }
            // Transient (server down): retry at the next tick; the lease covers two missed ones.
            Ok(Err(e)) => eprintln!(
                "cln-backup: warning: could not renew the lock {}: {}",
                inner.obj(name),
                inner.err("renew", name, e)
            ),
            Err(_) => return,
        }
    }
}

impl Drop for S3Lock {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        // Delete only if it is still ours (a conditional delete is not in the S3 API).
        if let Ok(b) = self.inner.get_bytes(&self.name) {
            if serde_json::from_slice::<Lease>(&b).is_ok_and(|l| l.token == self.token) {
                if let Ok(path) = self.inner.path(&self.name) {
                    let _ = self.inner.run(self.inner.store.delete(&path));
                }
            }
        }
    }
}
