//! A repository handle: backend, keys, config, and its locks.
//!
//! Locks: `writer` is held by whoever appends to the journal (the plugin, or an offline
//! `backup-cli compact`); `maintenance` by whoever publishes or deletes snapshots, packs and
//! segments (compaction, prune). The plugin holds `writer` for its life and takes `maintenance`
//! while it compacts, so `backup-cli prune` can run beside a live node but never beside a
//! compaction.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::backend::{self, Backend, Durability, LockGuard};
use crate::config::{Config, ConfigBody, CONFIG_NAME};
use crate::crypto::{Crypto, Encryption, MasterKey};
use crate::error::{Error, Result};
use crate::ids::RepoId;
use crate::journal::JournalWriter;
use crate::url::BackupUrl;

pub const WRITER_LOCK: &str = "writer";

/// A repository's identity as a node pins it (`backup.lock`'s `"repository"`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Identity {
    /// The repository id (32 hex digits).
    pub id: String,
    /// The id of the key that seals it (16 hex digits); absent for a plaintext repository.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    pub encrypted: bool,
    /// The newest format the node has seen it at.
    pub format: u8,
}
pub const MAINTENANCE_LOCK: &str = "maintenance";

#[derive(Clone)]
pub struct Repository {
    inner: Arc<Inner>,
}

struct Inner {
    backend: Arc<dyn Backend>,
    crypto: Crypto,
    /// The key it was opened with (an upgrade re-opens the repository with it).
    key: Option<MasterKey>,
    config: Config,
    /// Sealed journal segments already counted by [`crate::ops::stats::stats`], by number.
    sealed: Mutex<HashMap<u64, SegmentSummary>>,
}

/// What a sealed journal segment holds, as `stats` counts it. A sealed segment is never
/// replaced (docs/format.md), so it is read once per process: a compaction asks for stats twice
/// and the journal kept by the retention policy can be months of batches.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SegmentSummary {
    /// The object's size when it was read: a different size is a different object.
    pub size: u64,
    pub records: u64,
    /// The oldest data_version of a batch that is not only a pragma.
    pub first_version: Option<u32>,
    /// The newest data_version of a batch that is not only a pragma.
    pub last_version: Option<u32>,
}

impl std::fmt::Debug for Repository {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Repository({}, {:?})", self.url(), self.inner.crypto)
    }
}

impl Repository {
    /// Create a repository at `url`. With `encrypt`, objects are sealed with `key` (required);
    /// without, they are plaintext with checksums. `key`, when given, also authenticates remote links.
    pub fn init(
        url: &BackupUrl,
        key: Option<&MasterKey>,
        encrypt: bool,
        body: ConfigBody,
    ) -> Result<Repository> {
        let backend = backend::open(url, key, true)?;
        Self::init_backend(backend, key, encrypt, body)
    }

    pub fn init_backend(
        backend: Arc<dyn Backend>,
        key: Option<&MasterKey>,
        encrypt: bool,
        mut body: ConfigBody,
    ) -> Result<Repository> {
        let crypto = match (encrypt, key) {
            (true, Some(k)) => Crypto::encrypted(k),
            (true, None) => return Err(Error::KeyRequired),
            // A key beside a plaintext repository (a `socket:` destination's authentication)
            // binds its config, so that key's holders can tell it from a planted one.
            (false, Some(k)) => Crypto::plaintext_bound(k),
            (false, None) => Crypto::plaintext(),
        };
        let repo_id = RepoId::random();
        let crypto = crypto.for_repository(repo_id, false);
        body.format = crate::envelope::FORMAT_VERSION;
        body.encrypted = encrypt;
        body.chain_from = 0;
        body.upgraded = None;
        let config = Config {
            repo_id,
            header: crate::envelope::Header::new(crate::envelope::Kind::Config, &crypto),
            body,
        };
        if !backend.put_if_absent(CONFIG_NAME, &config.encode(&crypto))? {
            return Err(Error::RepositoryExists { url: backend.url() });
        }
        Ok(Repository {
            inner: Arc::new(Inner {
                backend,
                crypto,
                key: key.cloned(),
                config,
                sealed: Mutex::default(),
            }),
        })
    }

    pub fn open(url: &BackupUrl, key: Option<MasterKey>) -> Result<Repository> {
        Self::open_with(url, key, &backend::remote::RemoteOptions::default())
    }

    /// [`Repository::open`] with the reconnect policy for `socket:` destinations.
    pub fn open_with(
        url: &BackupUrl,
        key: Option<MasterKey>,
        remote: &backend::remote::RemoteOptions,
    ) -> Result<Repository> {
        let backend = match backend::open_with(url, key.as_ref(), false, remote) {
            Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::NoRepository {
                    url: url.to_string(),
                })
            }
            other => other?,
        };
        Self::open_backend(backend, key)
    }

    pub fn open_backend(backend: Arc<dyn Backend>, key: Option<MasterKey>) -> Result<Repository> {
        let data = match backend.get(CONFIG_NAME) {
            Err(Error::NotFound { .. }) => return Err(Error::NoRepository { url: backend.url() }),
            other => other?,
        };
        let (header, repo_id) = Config::peek(&data)?;
        let crypto = match (header.encryption, &key) {
            (Encryption::None, None) => Crypto::plaintext(),
            (Encryption::None, Some(k)) => Crypto::plaintext_bound(k),
            (_, Some(k)) => Crypto::encrypted(k),
            (_, None) => return Err(Error::KeyRequired),
        };
        let config = Config::decode(&data, &crypto.clone().for_repository(repo_id, true))?;
        // Format-1 objects are expected only in a repository that began at format 1.
        let format1 = config.format() < 2 || config.body.upgraded.is_some();
        let crypto = crypto.for_repository(repo_id, format1);
        Ok(Repository {
            inner: Arc::new(Inner {
                backend,
                crypto,
                key,
                config,
                sealed: Mutex::default(),
            }),
        })
    }

    /// The key the repository was opened with.
    pub fn key(&self) -> Option<&MasterKey> {
        self.inner.key.as_ref()
    }

    /// The repository's format (1 until upgraded, see [`crate::ops::upgrade`]).
    pub fn format(&self) -> u8 {
        self.inner.config.format()
    }

    /// What a node pins of this repository in its `backup.lock`.
    pub fn identity(&self) -> Identity {
        Identity {
            id: self.repo_id().to_string(),
            key_id: self
                .is_encrypted()
                .then(|| self.inner.crypto.key_id().to_string()),
            encrypted: self.is_encrypted(),
            format: self.format(),
        }
    }

    /// Refuse a repository that is not the one `expected` pins: another repository (a copied
    /// or mistyped `backup.lock`, a swapped destination), another key, a plaintext one where an
    /// encrypted one was (a downgrade), or one at an older format than the node has seen (a
    /// rollback to before an upgrade).
    pub fn check_identity(&self, expected: &Identity) -> Result<()> {
        let got = self.identity();
        let what = if got.id != expected.id {
            format!("its repository id is {}, expected {}", got.id, expected.id)
        } else if got.encrypted != expected.encrypted {
            if expected.encrypted {
                "it is not encrypted, but the repository pinned is (a downgrade)".to_string()
            } else {
                "it is encrypted, but the repository pinned is not".to_string()
            }
        } else if got.key_id != expected.key_id {
            format!(
                "it is sealed with key {}, expected key {}",
                got.key_id.as_deref().unwrap_or("none"),
                expected.key_id.as_deref().unwrap_or("none")
            )
        } else if got.format < expected.format {
            format!(
                "it is at format {}, but this node has seen it at format {} (rolled back to an older copy?)",
                got.format, expected.format
            )
        } else {
            return Ok(());
        };
        Err(Error::IdentityMismatch {
            url: self.url(),
            what,
        })
    }

    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.inner.backend
    }

    /// The summary of sealed segment `seq` if it was read before at this `size`.
    pub(crate) fn sealed_summary(&self, seq: u64, size: u64) -> Option<SegmentSummary> {
        let m = self.inner.sealed.lock().ok()?;
        m.get(&seq).copied().filter(|s| s.size == size)
    }

    pub(crate) fn remember_sealed(&self, seq: u64, summary: SegmentSummary) {
        if let Ok(mut m) = self.inner.sealed.lock() {
            m.insert(seq, summary);
        }
    }
    pub fn crypto(&self) -> &Crypto {
        &self.inner.crypto
    }
    pub fn config(&self) -> &Config {
        &self.inner.config
    }
    pub fn repo_id(&self) -> RepoId {
        self.inner.config.repo_id
    }
    pub fn url(&self) -> String {
        self.inner.backend.url()
    }
    pub fn is_encrypted(&self) -> bool {
        self.inner.crypto.encryption() != Encryption::None
    }

    /// Take the writer lock and open the journal for appending.
    pub fn writer(&self, holder: &str, durability: Durability) -> Result<JournalWriter> {
        JournalWriter::open(self, holder, durability)
    }

    pub fn lock(&self, name: &str, holder: &str) -> Result<Box<dyn LockGuard>> {
        self.inner.backend.lock(name, holder)
    }
}

/// A lock holder description: who, where, since when.
pub fn holder(what: &str) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "unknown host".into());
    format!(
        "{what} (pid {} on {host}, since unix time {})",
        std::process::id(),
        crate::config::now()
    )
}
