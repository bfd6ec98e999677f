//! The open backup: found through `backup.lock` at the first `db_write`, held for the plugin's life.
//!
//! Invariant: the plugin answers `continue` only after `JournalWriter::append` returned Ok, that
//! is after the batch is durable (fdatasync under `fsync` durability). Every other path answers
//! an error, and after a failed append every later call is refused too (fail-stop): lightningd
//! stops without committing, and nothing is acknowledged that is not stored.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use store::backend::multi::{self, Mode, MultiBackend};
use store::backend::remote::RemoteOptions;
use store::backend::{Backend, Durability};
use store::journal::JournalWriter;
use store::{AppendOutcome, BackupUrl, Batch, MasterKey, Repository};

pub const KEY_FILE: &str = "backup.key";

pub struct Backup {
    pub repo: Repository,
    /// The destinations, when `backup.lock` lists more than the primary.
    pub multi: Option<Arc<MultiBackend>>,
    /// The reconnect policy the backend was opened with.
    pub remote: RemoteOptions,
    pub writer: Arc<Mutex<JournalWriter>>,
    pub network_dir: PathBuf,
    /// Whether the first real (non-PRAGMA) batch of this run was stored.
    pub first_done: bool,
    /// What opening did that lightningd's log should say (an upgrade, a new pin).
    pub notes: Vec<String>,
}

/// The message when `backup.lock` is missing: what it means and what to run. A node restored
/// from a backup has no backup.lock either: the restore path continues that repository, and
/// `init` would start an unrelated one (nothing would connect it to the old backup).
pub fn missing_lock_message(dir: &Path) -> String {
    format!(
        "Could not find backup.lock in the lightning-dir ({d}). cln-backup refuses to let lightningd \
         write without a backup. Stop lightningd. If this node's database came from a cln-backup \
         repository (a restore), or backup.lock was lost: `backup-cli restore URL --lightning-dir {d}` \
         checks the node and writes backup.lock, and the same repository continues. If this node has \
         no backup yet: `backup-cli init --lightning-dir {d} file:///path/to/backup`. Then start \
         lightningd again.",
        d = dir.display()
    )
}

/// The lock holder text: who holds the repository's writer lock.
pub fn holder(dir: &Path) -> String {
    store::repo::holder(&format!(
        "cln-backup plugin, lightning-dir {}",
        dir.display()
    ))
}

impl Backup {
    /// Read `backup.lock` (and `backup.key` if present) in `dir`, open the repository and take
    /// its writer lock.
    pub fn open(dir: &Path, durability: Durability, remote: &RemoteOptions) -> Result<Backup> {
        let lock_path = store::lockfile::path(dir);
        let lock = store::lockfile::read(dir)?
            .ok_or_else(|| anyhow::anyhow!(missing_lock_message(dir)))?;
        let url = BackupUrl::parse(&lock.backend_url)
            .with_context(|| format!("backend_url in {}", lock_path.display()))?;
        let key = read_key(dir)?;
        let (repo, multi) = if lock.destinations.is_empty() {
            let repo = Repository::open_with(&url, key, remote)
                .with_context(|| format!("opening the backup at {}", lock.backend_url))?;
            (repo, None)
        } else {
            let mut others = Vec::new();
            for d in &lock.destinations {
                let u = BackupUrl::parse(&d.url)
                    .with_context(|| format!("a destination in {}", lock_path.display()))?;
                let mode = match d.mode.as_deref() {
                    None => Mode::Sync,
                    Some(m) => Mode::parse(m).with_context(|| {
                        format!(
                            "destination {} in {}: mode must be \"sync\" or \"async\", not {m:?}",
                            d.url,
                            lock_path.display()
                        )
                    })?,
                };
                others.push((u, mode));
            }
            let m = Arc::new(
                multi::open_with(&url, &others, key.as_ref(), false, remote).with_context(
                    || format!("opening the destinations in {}", lock_path.display()),
                )?,
            );
            let backend: Arc<dyn Backend> = m.clone();
            let repo = Repository::open_backend(backend, key)
                .with_context(|| format!("opening the backup at {}", lock.backend_url))?;
            (repo, Some(m))
        };
        let mut notes = Vec::new();
        // The repository must be the one this node pinned (checked before anything is written).
        if let Some(pin) = &lock.repository {
            repo.check_identity(pin).with_context(|| {
                format!(
                    "{} pins repository {}; refusing to write to another",
                    lock_path.display(),
                    pin.id
                )
            })?;
        }
        let repo = if repo.format() < 2 {
            let (r, rep) = store::ops::upgrade::upgrade(&repo, &holder(dir), None)
                .with_context(|| format!("upgrading the backup at {} to format 2", repo.url()))?;
            notes.push(format!(
                "upgraded the backup at {} from format {} to format {} ({} journal segments sealed; records are chained from segment {})",
                r.url(),
                rep.from_format,
                r.format(),
                rep.sealed_streams,
                rep.chain_from
            ));
            r
        } else {
            repo
        };
        // Pin what was opened (first open of a repository created before pins, or after an
        // upgrade raised its format), so a later swap or downgrade is refused.
        let identity = repo.identity();
        if lock.repository.as_ref() != Some(&identity) {
            let mut pinned = lock.clone();
            pinned.repository = Some(identity.clone());
            store::lockfile::write(dir, &pinned)
                .with_context(|| format!("pinning the repository in {}", lock_path.display()))?;
            notes.push(format!(
                "{} now pins repository {} (key {}, {}, format {}): another repository at that URL will be refused",
                lock_path.display(),
                identity.id,
                identity.key_id.as_deref().unwrap_or("none"),
                if identity.encrypted { "encrypted" } else { "not encrypted" },
                identity.format
            ));
        }
        let writer = repo
            .writer(&holder(dir), durability)
            .with_context(|| format!("taking the writer lock of {}", repo.url()))?;
        Ok(Backup {
            repo,
            multi,
            remote: remote.clone(),
            writer: Arc::new(Mutex::new(writer)),
            network_dir: dir.to_path_buf(),
            first_done: false,
            notes,
        })
    }

    pub fn durability(&self) -> Option<Durability> {
        self.writer.lock().ok().map(|w| w.durability())
    }

    /// Re-open the journal with another durability (options arrive only at init, after the
    /// first calls). The caller ensures no one else holds the writer (no compaction runs before
    /// init). The old writer is closed first: its lock must be released before it is taken again.
    pub fn reopen(self, durability: Durability) -> Result<Backup> {
        let Backup {
            repo,
            multi,
            remote,
            writer,
            network_dir,
            first_done,
            ..
        } = self;
        drop(writer);
        let writer = repo
            .writer(&holder(&network_dir), durability)
            .with_context(|| format!("re-opening the journal of {}", repo.url()))?;
        Ok(Backup {
            repo,
            multi,
            remote,
            writer: Arc::new(Mutex::new(writer)),
            network_dir,
            first_done,
            notes: Vec::new(),
        })
    }

    /// Store one batch durably. Returns the outcome and the journal bytes since the last snapshot.
    pub fn append(&mut self, batch: &Batch) -> store::Result<(AppendOutcome, u64)> {
        let mut w = self
            .writer
            .lock()
            .map_err(|_| store::Error::Invalid("journal writer poisoned".into()))?;
        // A backup server shows each node's newest data_version, which it cannot read
        // (issue 15): sent with the append.
        self.repo.backend().note_data_version(batch.data_version);
        let o = w.append(batch)?;
        Ok((o, w.bytes_since_snapshot()))
    }
}

fn read_key(dir: &Path) -> Result<Option<MasterKey>> {
    let mut path = dir.join(KEY_FILE);
    if !path.exists() {
        match std::env::var_os("CLN_BACKUP_KEY_FILE") {
            Some(p) => path = PathBuf::from(p),
            None => return Ok(None),
        }
    }
    Ok(Some(MasterKey::read_file(&path)?))
}
