//! A repository in S3-compatible object storage (`s3://bucket/prefix?endpoint=...&region=...`),
//! through the `object_store` crate.
//!
//! Layout under `<prefix>/`: objects keep their names (`config`, `snapshots/..`, `packs/..`,
//! `index/..`, `journal/<seq>.seg`); a stream `S` is the objects `journal/S/<offset:016x>`, one
//! per append, created with If-None-Match so that two writers can never both extend it; locks
//! are `locks/<name>` objects holding a lease (see [`lock`]).
//!
//! Guarantees (and what they rest on):
//! - `put` is one PUT: S3 publishes an object whole or not at all, durably once it answers.
//! - an `append` is one PUT of a new object; it is durable when the PUT returns. A stream reads
//!   as its objects in offset order; a hole is reported as `Corrupt`, never skipped.
//! - conditional writes (`put_if_absent`, stream parts, locks) use If-None-Match / If-Match.
//!   They are probed once at open (create a random key twice: the second must fail). Services
//!   that silently ignore them (Garage 2.x) get a best-effort fallback, announced on stderr and
//!   in lock errors: check then write then read back. `conditional=off` in the URL forces the
//!   fallback, `conditional=on` refuses to open where the probe finds them ignored.
//! - every HTTP request is counted by kind ([`S3Backend::request_counts`], see [`counter`]).
//!
//! The [`Backend`] trait is synchronous: the backend owns a small tokio runtime and blocks on
//! each request (on a helper thread when called from inside another runtime). Every request has a
//! connect timeout, a request timeout and a few retries with back-off.

pub mod config;
pub mod counter;
mod lock;
mod stream;

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as OsPath;
use object_store::{
    ClientOptions, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, RetryConfig,
};

use super::{check_name, Backend, Durability, LockGuard, ObjectInfo, Stream};
use crate::error::{Error, Result};
pub use config::{Addressing, Conditional, S3Config};
pub use counter::RequestCounts;

/// Shared by the backend, its streams and its lock renewal threads.
pub(crate) struct Inner {
    pub(crate) store: AmazonS3,
    pub(crate) cfg: S3Config,
    /// `Some` until drop; `shutdown_background` then, so that dropping never blocks or panics.
    rt: Option<tokio::runtime::Runtime>,
    /// If-None-Match / If-Match are in use (honoured by the probe, and not `conditional=off`).
    pub(crate) conditional: bool,
    /// What the probe at open found: the service honours If-None-Match.
    honoured: bool,
    counters: Arc<counter::Counters>,
    /// The stream parts this process appended (see [`stream`]).
    pub(crate) part_cache: stream::PartCache,
}

pub struct S3Backend {
    inner: Arc<Inner>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

impl S3Backend {
    /// Connect, check the bucket answers, and probe conditional writes.
    pub fn open(bucket: &str, prefix: &str, params: &[(String, String)]) -> Result<S3Backend> {
        let cfg = S3Config::from_url(bucket, prefix, params)?;
        Self::with_config(cfg)
    }

    pub fn with_config(cfg: S3Config) -> Result<S3Backend> {
        let mut b = AmazonS3Builder::from_env().with_bucket_name(&cfg.bucket);
        if std::env::var_os("AWS_ACCESS_KEY_ID").is_none() {
            let p = config::read_profile(cfg.profile.as_deref());
            if let (Some(k), Some(s)) = (p.access_key_id, p.secret_access_key) {
                b = b.with_access_key_id(k).with_secret_access_key(s);
                if let Some(t) = p.session_token {
                    b = b.with_token(t);
                }
            }
            if std::env::var_os("AWS_REGION").is_none()
                && std::env::var_os("AWS_DEFAULT_REGION").is_none()
            {
                if let Some(r) = p.region {
                    b = b.with_region(r);
                }
            }
            if cfg.endpoint.is_none() && std::env::var_os("AWS_ENDPOINT").is_none() {
                if let Some(e) = p.endpoint_url {
                    b = b.with_endpoint(e);
                }
            }
        }
        if let Some(r) = &cfg.region {
            b = b.with_region(r);
        }
        if let Some(e) = &cfg.endpoint {
            b = b.with_endpoint(e);
        }
        let counters = Arc::new(counter::Counters::default());
        b = b
            .with_http_connector(counter::CountingConnector(counters.clone()))
            .with_allow_http(cfg.allow_http)
            .with_virtual_hosted_style_request(cfg.addressing == Addressing::VirtualHosted)
            .with_client_options(
                ClientOptions::new()
                    .with_allow_http(cfg.allow_http)
                    .with_connect_timeout(Duration::from_secs(5))
                    .with_timeout(Duration::from_secs(30)),
            )
            .with_retry(RetryConfig {
                backoff: object_store::BackoffConfig {
                    init_backoff: Duration::from_millis(100),
                    max_backoff: Duration::from_secs(2),
                    base: 2.0,
                },
                max_retries: 3,
                retry_timeout: Duration::from_secs(20),
            });
        let store = b.build().map_err(|e| {
            Error::BadUrl(format!(
                "cannot set up {}: {e} (check the URL's endpoint= and region=, and the AWS_* environment)",
                cfg.short_url()
            ))
        })?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("cln-backup-s3")
            .enable_all()
            .build()
            .map_err(|e| Error::io("start runtime", cfg.short_url(), e))?;
        let mut inner = Inner {
            store,
            cfg,
            rt: Some(rt),
            conditional: true,
            honoured: true,
            counters,
            part_cache: stream::PartCache::default(),
        };
        inner.honoured = inner.probe_conditional()?;
        inner.conditional = inner.honoured && inner.cfg.conditional != Conditional::Off;
        let url = inner.cfg.short_url();
        match (inner.cfg.conditional, inner.honoured) {
            (Conditional::Required, false) => {
                return Err(Error::Invalid(format!(
                    "{url} ignores conditional writes (If-None-Match), and the URL says \
                     conditional=on: use a service that honours them, or conditional=auto to accept \
                     the best-effort fallback"
                )))
            }
            (Conditional::Off, _) => eprintln!(
                "cln-backup: warning: conditional writes are off for {url} (conditional=off): locks \
                 and create-if-absent use write-then-read-back, which is best-effort: make sure only \
                 one node writes to this repository"
            ),
            (_, false) => eprintln!(
                "cln-backup: warning: {url} ignores conditional writes (If-None-Match): locks and \
                 create-if-absent fall back to write-then-read-back, which is best-effort: make sure \
                 only one node writes to this repository"
            ),
            _ => {}
        }
        Ok(S3Backend {
            inner: Arc::new(inner),
        })
    }

    /// Whether conditional writes are in use (false: the best-effort fallback is in use, because
    /// the service ignores them or the URL says `conditional=off`).
    pub fn conditional_writes(&self) -> bool {
        self.inner.conditional
    }

    /// Whether the probe at open found that the service honours If-None-Match.
    pub fn service_honours_conditional(&self) -> bool {
        self.inner.honoured
    }

    /// The HTTP requests this backend (and its streams and locks) has sent so far, by kind.
    pub fn request_counts(&self) -> RequestCounts {
        self.inner.counters.read()
    }

    pub fn config(&self) -> &S3Config {
        &self.inner.cfg
    }
}

impl Inner {
    /// Run a future to completion on our runtime. Never `block_on` from a thread that is already
    /// inside a runtime (that panics): such callers get a helper thread.
    pub(crate) fn run<F>(&self, f: F) -> F::Output
    where
        F: Future + Send,
        F::Output: Send,
    {
        let Some(rt) = self.rt.as_ref() else {
            unreachable!("the runtime lives until Inner drops")
        };
        if tokio::runtime::Handle::try_current().is_ok() {
            std::thread::scope(|s| match s.spawn(|| rt.block_on(f)).join() {
                Ok(v) => v,
                Err(p) => std::panic::resume_unwind(p),
            })
        } else {
            rt.block_on(f)
        }
    }

    pub(crate) fn path(&self, name: &str) -> Result<OsPath> {
        check_name(name)?;
        let full = if self.cfg.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}/{name}", self.cfg.prefix)
        };
        OsPath::parse(&full)
            .map_err(|e| Error::Invalid(format!("invalid object name '{name}': {e}")))
    }

    /// The repository-relative name of a listed key (None if outside the prefix).
    pub(crate) fn rel_name(&self, p: &OsPath) -> Option<String> {
        let s = p.as_ref();
        if self.cfg.prefix.is_empty() {
            return Some(s.to_string());
        }
        s.strip_prefix(self.cfg.prefix.as_str())
            .and_then(|r| r.strip_prefix('/'))
            .map(str::to_string)
    }

    /// The name used in messages: `s3://bucket/prefix/name`.
    pub(crate) fn obj(&self, name: &str) -> String {
        format!("{}/{name}", self.cfg.short_url())
    }

    /// Map an object_store error to a store error naming the object and what to do.
    pub(crate) fn err(&self, op: &'static str, name: &str, e: object_store::Error) -> Error {
        let text = chain_text(&e);
        let endpoint = self.cfg.endpoint_for_messages();
        let bucket = &self.cfg.bucket;
        let (kind, msg) = if text.contains("NoSuchBucket") {
            (
                io::ErrorKind::Other,
                format!("bucket '{bucket}' does not exist at {endpoint}: create it, or fix the bucket in the URL"),
            )
        } else if matches!(
            e,
            object_store::Error::PermissionDenied { .. }
                | object_store::Error::Unauthenticated { .. }
        ) || text.contains("InvalidAccessKeyId")
            || text.contains("SignatureDoesNotMatch")
            || text.contains("AccessDenied")
        {
            (
                io::ErrorKind::PermissionDenied,
                format!(
                    "access denied by {endpoint}: check the credentials (AWS_ACCESS_KEY_ID and \
                     AWS_SECRET_ACCESS_KEY, or the profile) and that they may use bucket '{bucket}' ({})",
                    first_line(&text)
                ),
            )
        } else if let object_store::Error::NotFound { .. } = e {
            return Error::NotFound {
                object: self.obj(name),
            };
        } else if text.contains("onnection refused") {
            (
                io::ErrorKind::ConnectionRefused,
                format!("cannot connect to {endpoint} (connection refused): is the S3 server running, and is endpoint= right?"),
            )
        } else if text.contains("dns error") || text.contains("failed to lookup") {
            (
                io::ErrorKind::Other,
                format!(
                    "cannot resolve the host of {endpoint}: check endpoint= and region= in the URL"
                ),
            )
        } else if text.contains("timed out") || text.contains("Timeout") || text.contains("timeout")
        {
            (
                io::ErrorKind::TimedOut,
                format!("no answer from {endpoint} in time (after retries): check the network and the server"),
            )
        } else {
            (io::ErrorKind::Other, first_line(&text).to_string())
        };
        Error::Io {
            object: self.obj(name),
            op,
            source: io::Error::new(kind, msg),
        }
    }

    /// Create a random key twice under `locks/`: a service that honours If-None-Match refuses
    /// the second. Also the first request at open, so a wrong endpoint, bucket or key fails here.
    fn probe_conditional(&self) -> Result<bool> {
        let mut r = [0u8; 8];
        crate::crypto::fill_random(&mut r);
        let name = format!("locks/probe-{}", hex::encode(r));
        let path = self.path(&name)?;
        let put = |data: &'static [u8]| {
            self.store.put_opts(
                &path,
                PutPayload::from_static(data),
                PutOptions::from(PutMode::Create),
            )
        };
        self.run(put(b"1"))
            .map_err(|e| self.err("probe", &name, e))?;
        let second = self.run(put(b"2"));
        let _ = self.run(self.store.delete(&path));
        match second {
            Err(object_store::Error::AlreadyExists { .. })
            | Err(object_store::Error::Precondition { .. }) => Ok(true),
            Ok(_) => Ok(false),
            Err(e) => Err(self.err("probe", &name, e)),
        }
    }

    pub(crate) fn put_mode(
        &self,
        name: &str,
        data: &[u8],
        mode: PutMode,
    ) -> Result<std::result::Result<object_store::PutResult, object_store::Error>> {
        let path = self.path(name)?;
        let payload = PutPayload::from(data.to_vec());
        Ok(self.run(self.store.put_opts(&path, payload, PutOptions::from(mode))))
    }

    pub(crate) fn get_bytes(&self, name: &str) -> Result<Vec<u8>> {
        let path = self.path(name)?;
        self.run(async {
            let r = self.store.get(&path).await?;
            r.bytes().await
        })
        .map(|b| b.to_vec())
        .map_err(|e| self.err("read", name, e))
    }

    /// All objects under a directory (recursive), as (relative name, size).
    pub(crate) fn list_recursive(&self, dir: &str) -> Result<Vec<(String, u64)>> {
        let path = self.path(dir)?;
        let metas: Vec<object_store::ObjectMeta> = self
            .run(self.store.list(Some(&path)).try_collect())
            .map_err(|e| self.err("list", dir, e))?;
        let mut out: Vec<(String, u64)> = metas
            .iter()
            .filter_map(|m| self.rel_name(&m.location).map(|n| (n, m.size)))
            .collect();
        out.sort();
        Ok(out)
    }

    /// Delete objects, highest name first in batches (a crash leaves a prefix of them).
    pub(crate) fn delete_many(&self, what: &str, mut names: Vec<String>) -> Result<()> {
        names.sort();
        names.reverse();
        for batch in names.chunks(500) {
            let paths = batch
                .iter()
                .map(|n| self.path(n))
                .collect::<Result<Vec<_>>>()?;
            let results: Vec<_> = self.run(
                self.store
                    .delete_stream(futures::stream::iter(paths.into_iter().map(Ok)).boxed())
                    .collect(),
            );
            for r in results {
                match r {
                    Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
                    Err(e) => return Err(self.err("delete", what, e)),
                }
            }
        }
        Ok(())
    }
}

fn chain_text(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or(s)
}

impl Backend for S3Backend {
    fn url(&self) -> String {
        self.inner.cfg.short_url()
    }

    fn put(&self, name: &str, data: &[u8]) -> Result<()> {
        self.inner
            .put_mode(name, data, PutMode::Overwrite)?
            .map(|_| ())
            .map_err(|e| self.inner.err("put", name, e))
    }

    fn put_if_absent(&self, name: &str, data: &[u8]) -> Result<bool> {
        let inner = &self.inner;
        if !inner.conditional {
            return stream::put_if_absent_fallback(inner, name, data);
        }
        match inner.put_mode(name, data, PutMode::Create)? {
            Ok(_) => Ok(true),
            Err(object_store::Error::AlreadyExists { .. })
            | Err(object_store::Error::Precondition { .. }) => Ok(false),
            Err(e) => Err(inner.err("put", name, e)),
        }
    }

    fn get(&self, name: &str) -> Result<Vec<u8>> {
        self.inner.get_bytes(name)
    }

    fn get_range(&self, name: &str, offset: u64, len: u64) -> Result<Vec<u8>> {
        let inner = &self.inner;
        if len == 0 {
            return Ok(Vec::new());
        }
        let path = inner.path(name)?;
        let end = offset
            .checked_add(len)
            .ok_or_else(|| Error::Invalid(format!("range {offset}+{len} of {name} overflows")))?;
        let short = || {
            Error::corrupt(
                inner.obj(name),
                format!("shorter than expected: cannot read {len} bytes at offset {offset}"),
            )
        };
        match inner.run(inner.store.get_range(&path, offset..end)) {
            Ok(b) if b.len() as u64 == len => Ok(b.to_vec()),
            Ok(_) => Err(short()),
            Err(e) => {
                let t = chain_text(&e);
                if t.contains("InvalidRange") || t.contains("416") || t.contains("range") {
                    // Either out of range, or some other failure: tell them apart by the size.
                    match inner.run(inner.store.head(&path)) {
                        Ok(m) if m.size < end => Err(short()),
                        _ => Err(inner.err("read", name, e)),
                    }
                } else {
                    Err(inner.err("read", name, e))
                }
            }
        }
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        // Like the directory backend: the objects directly in the prefix's directory whose name
        // starts with the prefix (stream parts, one level deeper, are not objects).
        let inner = &self.inner;
        let (dir, _) = match prefix.rfind('/') {
            Some(i) => prefix.split_at(i),
            None => ("", prefix),
        };
        let dir_path = if dir.is_empty() {
            if inner.cfg.prefix.is_empty() {
                None
            } else {
                Some(OsPath::parse(&inner.cfg.prefix).map_err(|e| {
                    Error::Invalid(format!("invalid prefix '{}': {e}", inner.cfg.prefix))
                })?)
            }
        } else {
            Some(inner.path(dir)?)
        };
        let res = inner
            .run(inner.store.list_with_delimiter(dir_path.as_ref()))
            .map_err(|e| inner.err("list", prefix, e))?;
        let mut out: Vec<ObjectInfo> = res
            .objects
            .iter()
            .filter_map(|m| {
                let name = inner.rel_name(&m.location)?;
                name.starts_with(prefix)
                    .then_some(ObjectInfo { name, size: m.size })
            })
            .filter(|o| !o.name.starts_with("locks/probe-"))
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    fn delete(&self, name: &str) -> Result<()> {
        let inner = &self.inner;
        let path = inner.path(name)?;
        match inner.run(inner.store.delete(&path)) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(inner.err("delete", name, e)),
        }
    }

    fn stream_open(&self, name: &str, durability: Durability) -> Result<Box<dyn Stream>> {
        Ok(Box::new(stream::S3Stream::open(
            self.inner.clone(),
            name,
            durability,
        )?))
    }

    fn stream_read(&self, name: &str) -> Result<Vec<u8>> {
        stream::read(&self.inner, name)
    }

    fn stream_list(&self) -> Result<Vec<ObjectInfo>> {
        stream::list(&self.inner)
    }

    fn stream_delete(&self, name: &str) -> Result<()> {
        stream::delete(&self.inner, name)
    }

    fn lock(&self, name: &str, holder: &str) -> Result<Box<dyn LockGuard>> {
        Ok(Box::new(lock::S3Lock::acquire(
            self.inner.clone(),
            name,
            holder,
            None,
        )?))
    }

    fn lock_for(&self, name: &str, holder: &str, owner: &str) -> Result<Box<dyn LockGuard>> {
        Ok(Box::new(lock::S3Lock::acquire(
            self.inner.clone(),
            name,
            holder,
            Some(owner),
        )?))
    }
}
