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
    let mut tries = 0;
    let res = loop {
        let _ = std::fs::remove_file(&tmp);
        match restore_into(repo, &tmp, target, opts) {
            // A prune merged journal segments while they were read: the same records, listed
            // anew.
            Err(e) if reader::journal_moved(&e) && tries < 3 => tries += 1,
            other => break other,
        }
    };
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
    let recovery = if accept_damaged_tail {
        Recovery::AcceptDamagedTail
    } else {
        Recovery::TruncateTornTail
    };
    let mut tries = 0;
    loop {
        match newest_once(repo, latest.as_ref(), from_seq, recovery) {
            Err(e) if reader::journal_moved(&e) && tries < 3 => tries += 1,
            other => return other,
        }
    }
}

fn newest_once(
    repo: &Repository,
    latest: Option<&Manifest>,
    from_seq: u64,
    recovery: Recovery,
) -> Result<Newest> {
    let base_v = latest.map(|m| m.data_version).unwrap_or(0);
    let mut j = reader::JournalReader::open(repo, from_seq, recovery)?;
    // The newest real record (a superseding one carries the version it replaces).
    let mut newest: Option<Record> = None;
    for r in j.by_ref() {
        let (_, r) = r?;
        if !r.pragma_only() && r.batch.data_version > base_v {
            newest = Some(r);
        }
    }
    let newest = newest.as_ref();
    let data_version = newest.map_or(base_v, |r| r.batch.data_version);
    if let (Some(m), Some(next)) = (latest, latest.and_then(|m| m.next)) {
        if data_version < next.data_version {
            return Err(cut_back(m, next, data_version, &j.tail));
        }
    }
    Ok(Newest {
        data_version,
        time_ms: newest.map_or(latest.map_or(0, |m| m.data_time_ms), |r| r.time_ms),
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
    if *target == RestoreTarget::Version(0) {
        return Err(Error::VersionNotAvailable {
            asked: 0,
            why: "data_version 0 is an empty database, not a state of the node".into(),
        });
    }
    let with_journal = !matches!(target, RestoreTarget::Snapshot(_));
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
                (Some(o), _) => {
                    format!("older states were pruned: the oldest restorable data_version is {o}")
                }
                (None, Some(f)) => {
                    format!("the journal starts at data_version {f} and no snapshot precedes it")
                }
                (None, None) => "the journal's first segments were pruned".into(),
            },
        }
    };
    // With no snapshot the journal must start at the node's first batch, in segment 0 (a
    // journal whose first segments were pruned cannot rebuild what came before).
    if with_journal && snap.is_none() && reader::segments(repo)?.first().is_some_and(|s| s.seq > 0)
    {
        return Err(not_available(None));
    }
    // The newest batch to apply: the newest the repository holds (as read just above), the
    // snapshot's own, or the one asked for.
    let want = match target {
        RestoreTarget::Latest => newest.data_version.max(base_v),
        RestoreTarget::Snapshot(_) => base_v,
        RestoreTarget::Version(v) => *v,
    };

    if let Some(m) = snap.as_mut() {
        // The list is resolved first (its parent's read), then the index loaded: never both
        // a manifest being decoded and the index at once. The manifest keeps no list copy.
        let refs = manifest::resolve_taken(repo, m)?;
        let index = ChunkIndex::load(repo)?;
        snapshot::materialize(repo, m, &refs, &index, tmp)?;
    }
    let mut rp = Replayer::open(tmp, snap.as_ref().map(|m| m.foreign_keys).unwrap_or(true))?;
    // The journal after the snapshot streams through, one segment in memory at a time: each
    // batch is checked to follow the one before it and applied; past `want` the rest is read
    // only to check that the journal reaches what the snapshot says followed it.
    let mut torn_tail = None;
    let mut damaged_tail = None;
    let mut cur = base_v; // the newest batch applied
    let mut reached = base_v; // the newest batch the journal holds
    let mut any = false;
    let mut restored_time_ms = None;
    if with_journal {
        let recovery = if opts.accept_damaged_tail {
            Recovery::AcceptDamagedTail
        } else {
            Recovery::TruncateTornTail
        };
        let from_seq = snap.as_ref().map(|m| m.journal_segment).unwrap_or(0);
        let mut j = reader::JournalReader::open(repo, from_seq, recovery)?;
        // Records at or below the snapshot's version are in it (and so are the batches they
        // supersede): dropped before supersedes are resolved.
        let records = j.by_ref().filter_map(|r| match r {
            Ok((_, r)) if r.batch.data_version <= base_v => None,
            Ok((_, r)) => Some(Ok(r)),
            Err(e) => Some(Err(e)),
        });
        for r in replay::Effective::new(records, "journal") {
            let r = r?;
            any = true;
            let v = r.batch.data_version;
            if !r.pragma_only() {
                if snap.is_none() && reached == 0 && v != 1 {
                    return Err(not_available(Some(v)));
                }
                reached = reached.max(v);
            }
            if v > want {
                continue;
            }
            if !r.pragma_only() {
                if v != cur.wrapping_add(1) {
                    return Err(Error::corrupt(
                        "journal",
                        format!("batch for data_version {v} follows {cur}: the journal has a gap"),
                    ));
                }
                cur = v;
                if v == want {
                    restored_time_ms = Some(r.time_ms);
                }
            }
            rp.apply(&r)?;
        }
        if let (Some(m), Some(next)) = (&snap, snap.as_ref().and_then(|m| m.next)) {
            if reached < next.data_version {
                return Err(cut_back(m, next, reached, &j.tail));
            }
        }
        match j.tail.take() {
            Some((n, crate::journal::segment::Tail::Torn(t))) => {
                torn_tail = Some(format!("{n}: {t}"))
            }
            Some((n, crate::journal::segment::Tail::Damaged(t))) => {
                damaged_tail = Some(format!("{n}: {t}"))
            }
            None => {}
        }
    }
    if snap.is_none() && !any {
        return Err(match target {
            RestoreTarget::Version(v) => Error::VersionNotAvailable {
                asked: *v,
                why: "the repository holds no snapshot at or below it".into(),
            },
            _ => Error::EmptyRepository,
        });
    }
    if let RestoreTarget::Version(v) = target {
        if cur != *v {
            return Err(if *v > reached {
                Error::VersionNotAvailable {
                    asked: *v,
                    why: format!("the backup ends at data_version {reached}"),
                }
            } else {
                // Inside a gap that a later snapshot bridges.
                repaired_gap(*v)
            });
        }
    }
    let restored_time_ms = restored_time_ms
        .or_else(|| {
            snap.as_ref()
                .filter(|m| m.data_version == want)
                .map(|m| m.data_time_ms)
        })
        .unwrap_or(0);
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

/// A version inside a gap that a later snapshot bridges (`backup-cli repair` cut a damaged end
/// and stored the node's database): no batch of it exists.
fn repaired_gap(v: u32) -> Error {
    Error::VersionNotAvailable {
        asked: v,
        why: "the journal holds no batch for it: a damaged end was cut there (`backup-cli repair`) and a later snapshot holds the node's state after it; restore an earlier state, or that snapshot's".into(),
    }
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
