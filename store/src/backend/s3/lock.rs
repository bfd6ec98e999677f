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
    pub(crate) fn acquire(inner: Arc<Inner>, lock: &str, holder: &str) -> Result<S3Lock> {
        let name = format!("locks/{lock}");
        let mut r = [0u8; 16];
        crate::crypto::fill_random(&mut r);
        let token = hex::encode(r);
        let lease_len = inner.cfg.lock_lease;
        let body = |token: &str| -> Result<Vec<u8>> {
            serde_json::to_vec(&Lease {
                holder: holder.to_string(),
                token: token.to_string(),
                expires_unix: now_unix() + lease_len.as_secs(),
            })
            .map_err(|e| Error::Invalid(format!("encode lease: {e}")))
        };
        let etag = if inner.conditional {
            take_conditional(&inner, &name, &body(&token)?)?
        } else {
            take_best_effort(&inner, &name, &token, &body(&token)?)?;
            None
        };
        let (tx, rx) = mpsc::channel::<()>();
        let thread = {
            let inner = inner.clone();
            let lock_name = name.clone();
            let token = token.clone();
            let holder = holder.to_string();
            std::thread::Builder::new()
                .name("cln-backup-s3-lease".into())
                .spawn(move || renew_loop(&inner, &lock_name, &token, &holder, etag, &rx))
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

/// Returns the ETag of our lease object.
fn take_conditional(inner: &Inner, name: &str, body: &[u8]) -> Result<Option<String>> {
    // A few rounds: the holder may release between our create and our read.
    for _ in 0..3 {
        match inner.put_mode(name, body, PutMode::Create)? {
            Ok(r) => return Ok(r.e_tag),
            Err(object_store::Error::AlreadyExists { .. })
            | Err(object_store::Error::Precondition { .. }) => {}
            Err(e) => return Err(inner.err("lock", name, e)),
        }
        let path = inner.path(name)?;
        let got = inner.run(async {
            let g = inner.store.get(&path).await?;
            let etag = g.meta.e_tag.clone();
            let b = g.bytes().await?;
            Ok::<_, object_store::Error>((etag, b.to_vec()))
        });
        let (etag, bytes) = match got {
            Ok(v) => v,
            Err(object_store::Error::NotFound { .. }) => continue,
            Err(e) => return Err(inner.err("lock", name, e)),
        };
        let lease: Option<Lease> = serde_json::from_slice(&bytes).ok();
        if let Some(l) = &lease {
            if l.expires_unix > now_unix() {
                return Err(locked(inner, name, Some(l)));
            }
        }
        // Expired (or unreadable: a torn or foreign object): take over on its ETag.
        let mode = PutMode::Update(UpdateVersion {
            e_tag: etag,
            version: None,
        });
        match inner.put_mode(name, body, mode)? {
            Ok(r) => {
                if let Some(l) = &lease {
                    eprintln!(
                        "cln-backup: took over the expired lock {} of {}",
                        inner.obj(name),
                        l.holder
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

fn renew_loop(
    inner: &Inner,
    name: &str,
    token: &str,
    holder: &str,
    mut etag: Option<String>,
    stop: &mpsc::Receiver<()>,
) {
    let lease_len = inner.cfg.lock_lease;
    let every = lease_len / 3;
    loop {
        match stop.recv_timeout(every) {
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            _ => return,
        }
        let body = match serde_json::to_vec(&Lease {
            holder: holder.to_string(),
            token: token.to_string(),
            expires_unix: now_unix() + lease_len.as_secs(),
        }) {
            Ok(b) => b,
            Err(_) => return,
        };
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
                Some(l) if l.token == token => PutMode::Overwrite,
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
