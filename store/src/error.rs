//! Errors of the store.
//!
//! Rules:
//! - Every error names the object it is about (`object`: a repository-relative name such as
//!   `packs/ab12…`, `journal/0000000000000003`, or a local path) and, where the operator can act,
//!   says what to do.
//! - Corruption is typed (`Corrupt`, `ChecksumMismatch`, `AuthenticationFailed`): callers and tests
//!   match on the variant, never on the text.
//! - Bytes read from disk or the network never cause a panic: decoders return `Corrupt`.
//! - Binaries (`plugin`, `cli`) wrap these with `anyhow` and add context at the edge.

use std::io;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("{op} {object}: {source}{}", io_hint(source))]
    Io {
        object: String,
        op: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("{object} does not exist")]
    NotFound { object: String },
    #[error("{object} is corrupt: {what}")]
    Corrupt { object: String, what: String },
    #[error("{object} is corrupt: checksum mismatch (expected {expected}, got {got})")]
    ChecksumMismatch {
        object: String,
        expected: String,
        got: String,
    },
    #[error(
        "{object} failed authentication: it was altered, truncated, or sealed with another key"
    )]
    AuthenticationFailed { object: String },
    #[error("wrong key for this repository: it is encrypted with key {expected}, the key given is {got}")]
    WrongKey { expected: String, got: String },
    #[error("this repository is encrypted: give its key (--key-file, CLN_BACKUP_KEY_FILE, --key-phrase, or backup.key beside the node)")]
    KeyRequired,
    #[error("{0}")]
    BadUrl(String),
    #[error("{object} is locked by {holder}; stop that process first (two writers would corrupt the backup)")]
    Locked { object: String, holder: String },
    #[error("no backup repository at {url} (is the path right and its disk mounted?); to create one: `backup-cli init {url}`")]
    NoRepository { url: String },
    #[error("a repository already exists at {url}")]
    RepositoryExists { url: String },
    #[error("unsupported {what} {found} in {object} (this build understands {supported}); upgrade cln-backup")]
    Unsupported {
        object: String,
        what: &'static str,
        found: u32,
        supported: u32,
    },
    #[error("Backup is out of date: the backup ends at data_version {backup} but lightningd is at {node}. {hint}")]
    BackupBehind {
        backup: u32,
        node: u32,
        hint: String,
    },
    #[error("The backup is ahead of lightningd, we lost some state: the backup holds data_version {backup} but lightningd is at {node}. {hint}")]
    BackupAhead {
        backup: u32,
        node: u32,
        hint: String,
    },
    #[error("batch for data_version {got} does not follow the journal (expected {expected}); refusing to store it")]
    VersionGap { expected: u32, got: u32 },
    #[error("no snapshot {0} in this repository (see `backup-cli snapshots`)")]
    NoSuchSnapshot(String),
    #[error("data_version {asked} is not restorable: {why}")]
    VersionNotAvailable { asked: u32, why: String },
    #[error("{0} already exists; refusing to overwrite it")]
    TargetExists(String),
    #[error("nothing to restore: the repository holds no snapshot and no journal record")]
    EmptyRepository,
    #[error("sqlite on {object}: {source}")]
    Sqlite {
        object: String,
        #[source]
        source: rusqlite::Error,
    },
    #[error("restored database {object} failed its check: {what}; it was removed")]
    RestoreCheck { object: String, what: String },
    #[error("{object} records node {recorded}, not {given}: this repository backs up another node (check backup.lock and hsm_secret; never mix two nodes in one repository)")]
    NodeIdMismatch {
        object: String,
        recorded: String,
        given: String,
    },
    #[error("{0}")]
    Remote(String),
    /// The destination keeps everything it was given (`backup-cli server --append-only`, or an
    /// S3 bucket whose credentials cannot delete): it refused to delete, replace or cut
    /// `object`. Prune and GC run where the repository is, by its operator.
    #[error("{object}: the destination is append-only and refuses to {op} it; prune and GC run on the server's host, against its directory (`backup-cli prune file:///...`)")]
    AppendOnly { object: String, op: &'static str },
    #[error("{0}")]
    Invalid(String),
    /// A key was given, but the repository's config is not authenticated by it.
    #[error("this repository is not authenticated by your key: {why}. Someone who can write the storage may have put another repository there (a downgrade to plaintext). If you created it yourself with --no-encryption, open it without a key; for a format-1 plaintext repository of your own, `backup-cli upgrade --bind-plaintext` binds it to your key")]
    Unbound { why: String },
    /// The repository is not the one the node's `backup.lock` (or the caller) expects.
    #[error("{url} does not hold the expected repository: {what}. Check the URL; if the storage was replaced or rolled back, do not write to it")]
    IdentityMismatch { url: String, what: String },
    /// The newest journal record is damaged in a way a crash cannot explain.
    #[error("{object} is damaged at its end: {what}. The batches stored there are lost from this copy: look for a newer copy (another destination), or accept the loss explicitly (--accept-damaged-tail)")]
    DamagedTail { object: String, what: String },
    /// A restore found less than an anchor outside the storage shows.
    #[error("the newest state found is data_version {newest}{when}, older than {expected} ({anchor}): the backup was rolled back, or is a copy that fell behind; look for a newer copy")]
    OlderThanAnchor {
        newest: u32,
        when: String,
        expected: u32,
        anchor: String,
    },
    /// A batch too large for every reader to read back: refused before it is written.
    #[error("batch for data_version {version} is {size} bytes sealed, above the {max}-byte limit of a journal record; refusing to store it")]
    BatchTooLarge { version: u32, size: u64, max: u64 },
    /// A format-1 repository must be upgraded before it is written to.
    #[error("the repository at {url} is at format 1; upgrade it with `backup-cli upgrade {url}` (the plugin does this itself when it opens it)")]
    NeedsUpgrade { url: String },
    /// An operation stopped at a safe point because its caller asked it to (the plugin at
    /// shutdown): nothing half-done is visible, the next run starts over.
    #[error("{0} was cancelled before it finished; nothing it did is visible, and the next one starts over")]
    Cancelled(&'static str),
}

fn io_hint(e: &io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(libc::ENOSPC) | Some(libc::EDQUOT) => {
            " (the disk is full: free space there, then retry)"
        }
        Some(libc::EACCES) | Some(libc::EPERM) | Some(libc::EROFS) => {
            " (permission denied or read-only: check the owner and mount of the backup directory)"
        }
        Some(libc::EIO) => {
            " (I/O error from the device or network mount: check the disk and the mount)"
        }
        _ => "",
    }
}

impl Error {
    pub fn io(op: &'static str, object: impl Into<String>, source: io::Error) -> Self {
        if source.kind() == io::ErrorKind::NotFound && op == "read" {
            return Error::NotFound {
                object: object.into(),
            };
        }
        Error::Io {
            object: object.into(),
            op,
            source,
        }
    }

    pub fn corrupt(object: impl Into<String>, what: impl Into<String>) -> Self {
        Error::Corrupt {
            object: object.into(),
            what: what.into(),
        }
    }

    pub fn sqlite(object: impl Into<String>, source: rusqlite::Error) -> Self {
        Error::Sqlite {
            object: object.into(),
            source,
        }
    }

    /// True for errors that say stored bytes are wrong (as opposed to I/O or usage errors).
    pub fn is_corruption(&self) -> bool {
        matches!(
            self,
            Error::Corrupt { .. }
                | Error::ChecksumMismatch { .. }
                | Error::AuthenticationFailed { .. }
                | Error::DamagedTail { .. }
        )
    }
}
