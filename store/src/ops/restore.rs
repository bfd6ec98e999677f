//! Restore: a snapshot's chunks, then the journal after it, into a new database file.
//!
//! The output is built as a temporary file beside the target, checked (`PRAGMA
//! integrity_check`, and `vars.data_version` equal to the version asked for), synced, then
//! renamed into place and the directory synced. On any failure the temporary file is removed.
//! An existing target is never overwritten.
//!
//! What restore trusts (docs/format.md "Journal continuity", ARCHITECTURE.md "Threat model"):
//! the journal must be unbroken (consecutive segments, each linking to the one before it), must
//! reach the newest batch the newest snapshot says followed it, and may end in a torn record (a
//! crash) but not in a damaged one unless the caller accepts that loss. The report always says
//! the newest state the repository holds and when it was stored, so an old backup shows as old;
//! [`RestoreOptions::expect_version`] is an anchor from outside the storage.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::{Error, Result};
use crate::journal::reader;
use crate::journal::segment::Recovery;
use crate::journal::Record;
use crate::manifest::{self, Manifest};
use crate::pack::ChunkIndex;
use crate::replay::{self, Replayer};
use crate::repo::Repository;
use crate::snapshot;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RestoreTarget {
    /// The newest state the repository holds.
    Latest,
    /// Exactly a snapshot (id or unique prefix), without the journal after it.
    Snapshot(String),
    /// The state at this data_version: the newest snapshot at or below it, then the journal.
    Version(u32),
}

#[derive(Clone, Debug, Serialize)]
pub struct RestoreReport {
    pub path: String,
    pub data_version: u32,
    pub snapshot: Option<String>,
    pub snapshot_version: Option<u32>,
    pub replayed_batches: u64,
    pub replayed_statements: u64,
    pub db_size: u64,
    pub integrity_check: String,
    /// A torn last record of the journal that was left out: a crash while it was written (never
    /// acknowledged under `fsync` durability).
    pub torn_tail: Option<String>,
    /// A damaged end of the journal that was left out because the caller accepted the loss.
    pub damaged_tail: Option<String>,
    /// The newest data_version the repository holds, and when it was stored (unix ms; 0 when
    /// unknown: a format-1 record or a snapshot of a database file).
    pub newest_version: u32,
    pub newest_time_ms: u64,
    /// When the restored state was stored (unix ms; 0 when unknown).
    pub restored_time_ms: u64,
}

/// What a restore may accept, and what it must find.
#[derive(Clone, Debug, Default)]
pub struct RestoreOptions {
    /// Restore even when the journal's end is damaged (not a torn write): the batches there are
    /// lost from this copy.
    pub accept_damaged_tail: bool,
    /// Refuse unless the repository holds at least this data_version (an anchor from outside
    /// the storage: the node's database, another destination, the operator's own record).
    pub expect_version: Option<u32>,
}

/// Restore into `dest`, a file path that must not exist.
pub fn restore(repo: &Repository, dest: &Path, target: &RestoreTarget) -> Result<RestoreReport> {
    restore_with(repo, dest, target, &RestoreOptions::default())
}

/// [`restore`] with options.
pub fn restore_with(
    repo: &Repository,
    dest: &Path,
    target: &RestoreTarget,
    opts: &RestoreOptions,
) -> Result<RestoreReport> {
    if dest.exists() {
        return Err(Error::TargetExists(dest.display().to_string()));
    }
    let dir = dest
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut r = [0u8; 6];
    crate::crypto::fill_random(&mut r);
    let fname = dest
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_else(|| "restore".into());
    let tmp = dir.join(format!(".{fname}.restore-{}.tmp", hex::encode(r)));
    let res = restore_into(repo, &tmp, target, opts);
    match res {
        Ok(mut rep) => {
            let publish = std::fs::hard_link(&tmp, dest)
                .map_err(|e| {
                    if e.kind() == std::io::ErrorKind::AlreadyExists {
                        Error::TargetExists(dest.display().to_string())
                    } else {
                        Error::io("publish", dest.display().to_string(), e)
                    }
                })
                .and_then(|_| crate::backend::dir::sync_dir(dir));
            let _ = std::fs::remove_file(&tmp);
            publish?;
            rep.path = dest.display().to_string();
            Ok(rep)
        }
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

fn choose(repo: &Repository, target: &RestoreTarget) -> Result<Option<Manifest>> {
    let all = manifest::list(repo)?;
    match target {
        RestoreTarget::Latest => Ok(all.into_iter().last()),
        RestoreTarget::Snapshot(id) => manifest::find(repo, id).map(Some),
        RestoreTarget::Version(v) => Ok(all.into_iter().rev().find(|m| m.data_version <= *v)),
    }
}

/// The newest state a repository holds, as restore would find it.
#[derive(Clone, Debug, Serialize)]
pub struct Newest {
    pub data_version: u32,
    /// When it was stored (unix ms; 0 when unknown).
    pub time_ms: u64,
    /// blake3 of the newest real record's encoding (time included): two copies of one journal
    /// agree on it; two that went different ways do not.
    pub record_hash: Option<String>,
    /// A torn or damaged end left out.
    pub tail: Option<String>,
}

/// What the journal after the newest snapshot says about the newest state.
pub fn newest(repo: &Repository, accept_damaged_tail: bool) -> Result<Newest> {
    let latest = manifest::latest(repo)?;
    // Without a snapshot, the journal as far back as it goes (it may have been pruned).
    let from_seq = match &latest {
        Some(m) => m.journal_segment,
        None => reader::segments(repo)?.first().map_or(0, |s| s.seq),
    };
    let base_v = latest.as_ref().map(|m| m.data_version).unwrap_or(0);
    let recovery = if accept_damaged_tail {
        Recovery::AcceptDamagedTail
    } else {
        Recovery::TruncateTornTail
    };
    let j = reader::read_journal(repo, from_seq, recovery)?;
    // The newest real record (a superseding one carries the version it replaces).
    let newest = j
        .records
        .iter()
        .rev()
        .map(|(_, r)| r)
        .find(|r| !r.pragma_only() && r.batch.data_version > base_v);
    let data_version = newest.map_or(base_v, |r| r.batch.data_version);
    if let (Some(m), Some(next)) = (&latest, latest.as_ref().and_then(|m| m.next)) {
        if data_version < next.data_version {
            return Err(cut_back(m, next, data_version, &j.tail));
        }
    }
    Ok(Newest {
        data_version,
        time_ms: newest.map_or(latest.as_ref().map_or(0, |m| m.data_time_ms), |r| r.time_ms),
        record_hash: newest.map(|r| blake3::hash(&r.encode()).to_hex().to_string()),
        tail: j.tail.map(|(n, t)| format!("{n}: {}", t.describe())),
    })
}

fn cut_back(
    m: &Manifest,
    next: manifest::NextBatch,
    reached: u32,
    tail: &Option<(String, crate::journal::segment::Tail)>,
) -> Error {
    Error::corrupt(
        format!("journal/{}", crate::journal::stream_name(next.segment)),
        format!(
            "ends at data_version {reached}, but {} was made when batch {} was already stored: journal records were deleted or rolled back{}",
            manifest::manifest_name(&m.id),
            next.data_version,
            match tail {
                Some((_, crate::journal::segment::Tail::Damaged(_))) => " (its end is damaged)",
                _ => "",
            }
        ),
    )
}

type JournalAfter = (Vec<Record>, Option<(String, crate::journal::segment::Tail)>);

/// The effective records after snapshot `snap` (or the whole journal), checked: continuity,
/// the batch the snapshot says follows it, and an honest tail.
fn journal_after(
    repo: &Repository,
    snap: Option<&Manifest>,
    accept_damaged_tail: bool,
) -> Result<JournalAfter> {
    let from_seq = snap.map(|m| m.journal_segment).unwrap_or(0);
    let base_v = snap.map(|m| m.data_version).unwrap_or(0);
    let recovery = if accept_damaged_tail {
        Recovery::AcceptDamagedTail
    } else {
        Recovery::TruncateTornTail
    };
    let j = reader::read_journal(repo, from_seq, recovery)?;
    // Records at or below the snapshot's version are in it (and so are the batches they
    // supersede): drop them before resolving supersedes.
    let raw: Vec<Record> = j
        .records
        .into_iter()
        .map(|(_, r)| r)
        .filter(|r| r.batch.data_version > base_v)
        .collect();
    let eff = replay::effective(raw, "journal")?;
    if let (Some(m), Some(next)) = (snap, snap.and_then(|m| m.next)) {
        let reached = eff
            .iter()
            .filter(|r| !r.pragma_only())
            .map(|r| r.batch.data_version)
            .max()
            .unwrap_or(base_v);
        if reached < next.data_version {
            return Err(cut_back(m, next, reached, &j.tail));
        }
    }
    Ok((eff, j.tail))
}

fn restore_into(
    repo: &Repository,
    tmp: &Path,
    target: &RestoreTarget,
    opts: &RestoreOptions,
) -> Result<RestoreReport> {
    let mut snap = choose(repo, target)?;
    let base_v = snap.as_ref().map(|m| m.data_version).unwrap_or(0);
    let newest = newest(repo, opts.accept_damaged_tail)?;
    if let Some(want) = opts.expect_version {
        if newest.data_version < want {
            return Err(Error::OlderThanAnchor {
                newest: newest.data_version,
                when: when(newest.time_ms),
                expected: want,
                anchor: "--expect-version".into(),
            });
        }
    }

    // Which journal records to apply.
    let mut torn_tail = None;
    let mut damaged_tail = None;
    let records = if matches!(target, RestoreTarget::Snapshot(_)) {
        Vec::new()
    } else {
        // With no snapshot the journal must start at the node's first batch, in segment 0
        // (a journal whose first segments were pruned cannot rebuild what came before).
        let pruned = reader::segments(repo)?.first().is_some_and(|s| s.seq > 0);
        let not_available = |first: Option<u32>| -> Error {
            let oldest = manifest::list(repo)
                .ok()
                .and_then(|l| l.first().map(|m| m.data_version));
            Error::VersionNotAvailable {
                asked: match target {
                    RestoreTarget::Version(v) => *v,
                    _ => 0,
                },
                why: match (oldest, first) {
                    (Some(o), _) => format!(
                        "older states were pruned: the oldest restorable data_version is {o}"
                    ),
                    (None, Some(f)) => format!(
                        "the journal starts at data_version {f} and no snapshot precedes it"
                    ),
                    (None, None) => "the journal's first segments were pruned".into(),
                },
            }
        };
        if snap.is_none() && pruned {
            return Err(not_available(None));
        }
        let (eff, tail) = journal_after(repo, snap.as_ref(), opts.accept_damaged_tail)?;
        match tail {
            Some((n, crate::journal::segment::Tail::Torn(t))) => {
                torn_tail = Some(format!("{n}: {t}"))
            }
            Some((n, crate::journal::segment::Tail::Damaged(t))) => {
                damaged_tail = Some(format!("{n}: {t}"))
            }
            None => {}
        }
        if snap.is_none() {
            if let Some(first) = eff.iter().find(|r| !r.pragma_only()) {
                if first.batch.data_version != 1 {
                    return Err(not_available(Some(first.batch.data_version)));
                }
            }
        }
        eff
    };
    let newest_here = records
        .iter()
        .filter(|r| !r.pragma_only())
        .map(|r| r.batch.data_version)
        .max()
        .unwrap_or(base_v);
    let want = match target {
        RestoreTarget::Latest => newest_here,
        RestoreTarget::Snapshot(_) => base_v,
        RestoreTarget::Version(0) => {
            return Err(Error::VersionNotAvailable {
                asked: 0,
                why: "data_version 0 is an empty database, not a state of the node".into(),
            })
        }
        RestoreTarget::Version(v) => {
            if snap.is_none() && records.is_empty() {
                return Err(Error::VersionNotAvailable {
                    asked: *v,
                    why: "the repository holds no snapshot at or below it".into(),
                });
            }
            if *v > newest_here {
                return Err(Error::VersionNotAvailable {
                    asked: *v,
                    why: format!("the backup ends at data_version {newest_here}"),
                });
            }
            *v
        }
    };
    if snap.is_none() && records.is_empty() {
        return Err(Error::EmptyRepository);
    }
    // A version inside a gap that a later snapshot bridges (`backup-cli repair` cut a damaged
    // end and stored the node's database): no batch of it exists.
    if let RestoreTarget::Version(v) = target {
        if *v > base_v
            && !records
                .iter()
                .any(|r| !r.pragma_only() && r.batch.data_version == *v)
        {
            return Err(Error::VersionNotAvailable {
                asked: *v,
                why: "the journal holds no batch for it: a damaged end was cut there (`backup-cli repair`) and a later snapshot holds the node's state after it; restore an earlier state, or that snapshot's".into(),
            });
        }
    }
    let restored_time_ms = records
        .iter()
        .rev()
        .find(|r| !r.pragma_only() && r.batch.data_version == want)
        .map(|r| r.time_ms)
        .or_else(|| {
            snap.as_ref()
                .filter(|m| m.data_version == want)
                .map(|m| m.data_time_ms)
        })
        .unwrap_or(0);

    if let Some(m) = snap.as_mut() {
        // The list is resolved first (its parent's read), then the index loaded: never both
        // a manifest being decoded and the index at once. The manifest keeps no list copy.
        let refs = manifest::resolve_taken(repo, m)?;
        let index = ChunkIndex::load(repo)?;
        snapshot::materialize(repo, m, &refs, &index, tmp)?;
    }
    let mut rp = Replayer::open(tmp, snap.as_ref().map(|m| m.foreign_keys).unwrap_or(true))?;
    // Check continuity while applying: each batch must follow the previous one.
    let mut cur = base_v;
    for r in records.iter().filter(|r| r.batch.data_version <= want) {
        if !r.pragma_only() {
            if r.batch.data_version != cur.wrapping_add(1) {
                return Err(Error::corrupt(
                    "journal",
                    format!(
                        "batch for data_version {} follows {cur}: the journal has a gap",
                        r.batch.data_version
                    ),
                ));
            }
            cur = r.batch.data_version;
        }
        rp.apply(r)?;
    }
    let got = rp.data_version()?;
    let (batches, statements) = (rp.batches, rp.statements);
    rp.finish(tmp)?;
    let object: PathBuf = tmp.to_path_buf();
    if got != want {
        return Err(Error::RestoreCheck {
            object: object.display().to_string(),
            what: format!("vars.data_version is {got}, expected {want}"),
        });
    }
    let ic = replay::integrity_check(tmp)?;
    if ic != "ok" {
        return Err(Error::RestoreCheck {
            object: object.display().to_string(),
            what: format!("integrity_check: {ic}"),
        });
    }
    let db_size = std::fs::metadata(tmp).map(|m| m.len()).unwrap_or(0);
    Ok(RestoreReport {
        path: String::new(),
        data_version: got,
        snapshot: snap.as_ref().map(|m| m.id.to_string()),
        snapshot_version: snap.as_ref().map(|m| m.data_version),
        replayed_batches: batches,
        replayed_statements: statements,
        db_size,
        integrity_check: ic,
        torn_tail,
        damaged_tail,
        newest_version: newest.data_version,
        newest_time_ms: newest.time_ms,
        restored_time_ms,
    })
}

/// " (stored <date>)" for a unix-ms time, or "" when unknown.
pub fn when(time_ms: u64) -> String {
    if time_ms == 0 {
        return String::new();
    }
    format!(", stored {}", utc(time_ms / 1000))
}

/// A unix time as `YYYY-MM-DD HH:MM:SS UTC`.
pub fn utc(secs: u64) -> String {
    crate::time::utc(secs)
}
