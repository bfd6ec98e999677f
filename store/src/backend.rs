//! The storage seam: every byte the store reads or writes goes through [`Backend`].
//!
//! Two kinds of things live in a backend:
//! - **objects**, immutable once published (config, manifests, indexes, packs, sealed journal
//!   segments): `put` publishes atomically and durably (a reader sees the old object, or the whole
//!   new one, never a mix; after `put` returns the object survives a crash);
//! - **streams**, the open journal segments: appended to by one writer, each `append` durable on
//!   return under [`Durability::Fsync`]; `truncate` cuts a torn tail.
//!
//! Implementations: [`dir::DirBackend`] (a local directory), the remote client (`socket:` URLs),
//! S3, and [`fault::FaultBackend`], which wraps another to inject errors and crashes in tests.
//! Contract for all of them:
//! - names are `/`-separated, ASCII, without `..`; `list` returns names under a prefix, sorted;
//! - `get` of a missing object is [`Error::NotFound`](crate::Error::NotFound);
//! - `delete` of a missing object succeeds;
//! - no method panics on I/O failure: it returns an error naming the object.

pub mod dir;
pub mod fault;
pub mod multi;
pub mod remote;
pub mod s3;

use crate::error::Result;

/// How far an append must get before it returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// fdatasync (or the remote/object-store equivalent) before returning: survives power loss.
    Fsync,
    /// Written to the operating system only (page cache): survives a crash of the process, not of
    /// the machine. For operators on network mounts who accept that.
    Flush,
}

impl Durability {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "fsync" => Some(Durability::Fsync),
            "flush" => Some(Durability::Flush),
            _ => None,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Durability::Fsync => "fsync",
            Durability::Flush => "flush",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectInfo {
    pub name: String,
    pub size: u64,
}

pub trait Backend: Send + Sync {
    /// The URL, for messages.
    fn url(&self) -> String;
    /// Publish an object atomically and durably, replacing any previous one.
    fn put(&self, name: &str, data: &[u8]) -> Result<()>;
    /// Publish only if no object of that name exists. `Ok(false)` if one did.
    fn put_if_absent(&self, name: &str, data: &[u8]) -> Result<bool>;
    fn get(&self, name: &str) -> Result<Vec<u8>>;
    fn get_range(&self, name: &str, offset: u64, len: u64) -> Result<Vec<u8>>;
    /// Objects whose name starts with `prefix`, sorted by name.
    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>>;
    fn delete(&self, name: &str) -> Result<()>;

    /// Open (creating if absent) an append stream, positioned at its end.
    fn stream_open(&self, name: &str, durability: Durability) -> Result<Box<dyn Stream>>;
    /// The whole content of a stream.
    fn stream_read(&self, name: &str) -> Result<Vec<u8>>;
    /// All streams with their lengths, sorted by name.
    fn stream_list(&self) -> Result<Vec<ObjectInfo>>;
    fn stream_delete(&self, name: &str) -> Result<()>;

    /// Take the named exclusive lock, recording `holder` (who, where, since when) so that a refused
    /// second taker can be told who holds it. Released when the guard drops or the process dies.
    fn lock(&self, name: &str, holder: &str) -> Result<Box<dyn LockGuard>>;

    /// [`lock`](Backend::lock) on behalf of `owner`, a stable id of who holds it across
    /// processes (a `backup-cli server` passes the node and its client session): a lock held
    /// under the same owner by another process (a second server process behind one address,
    /// serving the same session) is taken over instead of refused. Backends whose locks cannot
    /// outlive their process (a directory's flock) do as `lock`.
    fn lock_for(&self, name: &str, holder: &str, owner: &str) -> Result<Box<dyn LockGuard>> {
        let _ = owner;
        self.lock(name, holder)
    }

    /// True when the destination refuses deletes, replacements and cuts below what it
    /// acknowledged (a `backup-cli server` run with `--append-only`): prune cannot run through it,
    /// and compaction leaves sealed streams in place. Known only where the destination says so.
    fn append_only(&self) -> bool {
        false
    }

    /// The newest data_version stored through this backend, for a destination that reports it
    /// (a `backup-cli server` shows each node's in its status; it cannot read the records).
    fn note_data_version(&self, _data_version: u32) {}
}

pub trait Stream: Send {
    fn len(&self) -> u64;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Append `data` at the end. Durable on return under [`Durability::Fsync`]. On error the
    /// stream is either back at its previous length or refuses further appends.
    fn append(&mut self, data: &[u8]) -> Result<()>;
    /// Cut the stream to `len` bytes (a torn tail), durably.
    fn truncate(&mut self, len: u64) -> Result<()>;
}

pub trait LockGuard: Send {}

/// Object and stream names every backend accepts: `/`-separated ASCII (letters, digits, `._-`)
/// without empty, `.` or `..` parts.
pub fn check_name(name: &str) -> Result<()> {
    if name.is_empty()
        || name.starts_with('/')
        || name
            .split('/')
            .any(|p| p.is_empty() || p == "." || p == "..")
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-".contains(&b))
    {
        return Err(crate::Error::Invalid(format!(
            "invalid object name '{name}'"
        )));
    }
    Ok(())
}

/// A `list` prefix every backend accepts: a valid name (see [`check_name`]), or a valid name
/// followed by `/`, or empty (the whole repository). A prefix can never reach outside the
/// repository (`..`, an absolute path).
pub fn check_prefix(prefix: &str) -> Result<()> {
    match prefix.strip_suffix('/').unwrap_or(prefix) {
        "" if prefix.is_empty() => Ok(()),
        p => check_name(p)
            .map_err(|_| crate::Error::Invalid(format!("invalid list prefix '{prefix}'"))),
    }
}

/// Open the backend a URL names. `link_key` is the repository key, which remote destinations use
/// to authenticate (it never leaves this process: only subkeys derived from it are used).
pub fn open(
    url: &crate::url::BackupUrl,
    link_key: Option<&crate::crypto::MasterKey>,
    create: bool,
) -> Result<std::sync::Arc<dyn Backend>> {
    open_with(url, link_key, create, &remote::RemoteOptions::default())
}

/// [`open`], with the reconnect policy for `socket:` destinations.
pub fn open_with(
    url: &crate::url::BackupUrl,
    link_key: Option<&crate::crypto::MasterKey>,
    create: bool,
    remote_options: &remote::RemoteOptions,
) -> Result<std::sync::Arc<dyn Backend>> {
    use crate::url::BackupUrl;
    let _ = link_key;
    match url {
        BackupUrl::File(path) => {
            let b = if create {
                dir::DirBackend::create(path)?
            } else {
                dir::DirBackend::open(path)?
            };
            Ok(std::sync::Arc::new(b))
        }
        BackupUrl::Socket { host, port, proxy } => {
            // The server creates its repository directory; `create` has nothing to do here.
            let key = link_key.ok_or_else(|| {
                crate::Error::Invalid(format!(
                    "{url}: a socket destination needs the repository key to authenticate to the server"
                ))
            })?;
            Ok(std::sync::Arc::new(remote::RemoteBackend::connect(
                host,
                *port,
                proxy.clone(),
                key,
                remote_options.clone(),
            )?))
        }
        // The bucket must exist: `create` has nothing to do here.
        BackupUrl::S3 {
            bucket,
            prefix,
            params,
        } => Ok(std::sync::Arc::new(s3::S3Backend::open(
            bucket, prefix, params,
        )?)),
    }
}
