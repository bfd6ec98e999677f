//! Restore: a snapshot's chunks, then the journal after it, into a new database file.
//!
//! The output is built as a temporary file beside the target, checked (`PRAGMA
//! integrity_check`, and `vars.data_version` equal to the version asked for), synced, then
//! renamed into place and the directory synced. On any failure the temporary file is removed.
//! An existing target is never overwritten.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::{Error, Result};
use crate::journal::reader;
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
    /// A damaged or torn last record of the journal that was left out: after a crash this is a
    /// batch that was never acknowledged; otherwise the newest batch was damaged.
    pub torn_tail: Option<String>,
}

/// Restore into `dest`, a file path that must not exist.
pub fn restore(repo: &Repository, dest: &Path, target: &RestoreTarget) -> Result<RestoreReport> {
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
    let res = restore_into(repo, &tmp, target);
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

fn restore_into(repo: &Repository, tmp: &Path, target: &RestoreTarget) -> Result<RestoreReport> {
    let snap = choose(repo, target)?;
    let from_seq = snap.as_ref().map(|m| m.journal_segment).unwrap_or(0);
    let base_v = snap.as_ref().map(|m| m.data_version).unwrap_or(0);

    // Which journal records to apply.
    let mut torn_tail = None;
    let records = if matches!(target, RestoreTarget::Snapshot(_)) {
        Vec::new()
    } else {
        let (raw, torn) = reader::read_from(repo, from_seq)?;
        torn_tail = torn;
        // Records at or below the snapshot's version are in it (and so are the batches they
        // supersede): drop them before resolving supersedes.
        let raw: Vec<_> = raw
            .into_iter()
            .map(|(_, r)| r)
            .filter(|r| r.batch.data_version > base_v)
            .collect();
        // With no snapshot the journal must start at the node's first batch, in segment 0
        // (a journal whose first segments were pruned cannot rebuild what came before).
        let pruned = reader::segments(repo)?.first().is_some_and(|s| s.seq > 0);
        if snap.is_none() {
            if let Some(first) = raw.iter().find(|r| !r.pragma_only()) {
                if first.batch.data_version != 1 || pruned {
                    let oldest = manifest::list(repo)?.first().map(|m| m.data_version);
                    return Err(Error::VersionNotAvailable {
                        asked: match target {
                            RestoreTarget::Version(v) => *v,
                            _ => 0,
                        },
                        why: match oldest {
                            Some(o) => format!(
                                "older states were pruned: the oldest restorable data_version is {o}"
                            ),
                            None => format!(
                                "the journal starts at data_version {} and no snapshot precedes it",
                                first.batch.data_version
                            ),
                        },
                    });
                }
            }
        }
        replay::effective(raw, "journal")?
    };
    let newest = records
        .iter()
        .filter(|r| !r.pragma_only())
        .map(|r| r.batch.data_version)
        .max()
        .unwrap_or(base_v);
    let want = match target {
        RestoreTarget::Latest => newest,
        RestoreTarget::Snapshot(_) => base_v,
        RestoreTarget::Version(v) => {
            if snap.is_none() && *v > 0 && records.is_empty() {
                return Err(Error::VersionNotAvailable {
                    asked: *v,
                    why: "the repository holds no snapshot at or below it".into(),
                });
            }
            if *v > newest {
                return Err(Error::VersionNotAvailable {
                    asked: *v,
                    why: format!("the backup ends at data_version {newest}"),
                });
            }
            *v
        }
    };
    if snap.is_none() && records.is_empty() {
        return Err(Error::EmptyRepository);
    }

    if let Some(m) = &snap {
        let index = ChunkIndex::load(repo)?;
        let refs = manifest::resolve(repo, m)?;
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
    })
}
