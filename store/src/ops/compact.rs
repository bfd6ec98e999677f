//! Compaction: a snapshot of the database at a recent version, built beside the live journal.
//!
//! Steps (the writer is blocked only for step 2, one stream creation):
//! 1. take the `maintenance` lock;
//! 2. rotate the journal: appends continue in a new segment;
//! 3. read the closed segments since the last snapshot and drop superseded batches; the target
//!    version V is the newest batch known to be committed by lightningd: every batch but the last
//!    (lightningd sends batch N+1 only after committing N; the last may still be superseded);
//! 4. bring the compaction base (a local copy of the database at the last snapshot, checked
//!    against that snapshot's manifest, rebuilt from the repository when missing or wrong) to V
//!    by replaying;
//! 5. write the snapshot (packs, index, manifest: see [`crate::snapshot`]);
//! 6. record the base as being at the new snapshot; seal the closed segments (compressed
//!    objects replacing the streams).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::journal::reader::{self, SegmentData, SegmentRef};
use crate::journal::segment::{self, Recovery, Sealed};
use crate::journal::{stream_name, JournalWriter, Record};
use crate::manifest::{self, Manifest, SnapshotInfo};
use crate::ops::stats::{self, Stats};
use crate::pack::ChunkIndex;
use crate::replay::{self, Replayer};
use crate::repo::{Repository, MAINTENANCE_LOCK};
use crate::snapshot::{self, SnapshotInput};

pub struct CompactOptions {
    /// Where the compaction base lives (beside the node for the plugin).
    pub cache_dir: PathBuf,
    /// Lock holder description.
    pub holder: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct CompactReport {
    pub snapshot: Option<SnapshotInfo>,
    pub before: Stats,
    pub after: Stats,
    pub bytes_added: u64,
    pub dedup_ratio: f64,
    pub duration_ms: u64,
    /// Why no snapshot was made, when none was.
    pub note: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct BaseState {
    snapshot: String,
    data_version: u32,
}

fn base_paths(repo: &Repository, dir: &Path) -> (PathBuf, PathBuf) {
    let id = repo.repo_id();
    (
        dir.join(format!("{id}.base.sqlite3")),
        dir.join(format!("{id}.base.json")),
    )
}

/// Make `base` hold exactly snapshot `m` (or an empty file when `m` is None).
fn prepare_base(
    repo: &Repository,
    dir: &Path,
    m: Option<&Manifest>,
    index: &ChunkIndex,
) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io("create", dir.display().to_string(), e))?;
    let (base, state) = base_paths(repo, dir);
    let Some(m) = m else {
        remove_if_exists(&base)?;
        remove_if_exists(&state)?;
        return Ok(base);
    };
    let refs = manifest::resolve(repo, m)?;
    let claimed: Option<BaseState> = std::fs::read(&state)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    if claimed
        .as_ref()
        .is_some_and(|c| c.snapshot == m.id.to_string())
    {
        // Check the base against the manifest before trusting it.
        let size = std::fs::metadata(&base).map(|md| md.len()).ok();
        if size == Some(m.db_size) {
            if let Ok((_, _, got)) = snapshot::file_chunk_refs(repo, &base) {
                if got == refs {
                    return Ok(base);
                }
            }
        }
    }
    remove_if_exists(&state)?;
    remove_if_exists(&base)?;
    snapshot::materialize(repo, m, &refs, index, &base)?;
    Ok(base)
}

fn remove_if_exists(p: &Path) -> Result<()> {
    match std::fs::remove_file(p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("remove", p.display().to_string(), e)),
    }
}

/// Not synced: a state lost or stale after a crash only costs a rebuild of the base, since the
/// base is checked against the manifest the state names before it is used. Every sync a
/// compaction makes can delay a concurrent hook's fdatasync on this disk.
fn write_state(path: &Path, m: &Manifest) -> Result<()> {
    let tmp = path.with_extension("json.tmp");
    let body = serde_json::to_vec(&BaseState {
        snapshot: m.id.to_string(),
        data_version: m.data_version,
    })
    .unwrap_or_default();
    std::fs::write(&tmp, body)
        .and_then(|_| std::fs::rename(&tmp, path))
        .map_err(|e| Error::io("write", path.display().to_string(), e))
}

/// Seal every closed segment (seq < `current`) that is still an open stream.
pub fn seal_closed_segments(repo: &Repository, current: u64) -> Result<u64> {
    seal_closed_segments_with(repo, current, None)
}

/// [`seal_closed_segments`], with one segment already known (from the writer).
pub fn seal_closed_segments_with(
    repo: &Repository,
    current: u64,
    mut known: Option<(u64, SegmentData)>,
) -> Result<u64> {
    let mut sealed = 0;
    for seg in reader::segments(repo)? {
        if seg.sealed || seg.seq >= current {
            continue;
        }
        let name = crate::journal::sealed_name(seg.seq);
        let level = crate::config::SEGMENT_ZSTD_LEVEL;
        let bytes = match known.take() {
            Some((seq, d)) if seq == seg.seq => segment::encode_sealed(
                repo.crypto(),
                &name,
                &Sealed {
                    first: seg.seq,
                    last: seg.seq,
                    frames: d.frames,
                    chain: d.chain,
                    link: d.link,
                    records: d.records,
                },
                level,
            )?,
            other => {
                known = other;
                // One record at a time: a long segment's statements are never all in memory.
                let mut c = reader::open_segment(repo, &seg, Recovery::Strict)?;
                let head = segment::SealedHead {
                    first: seg.seq,
                    last: seg.seq,
                    frames: c.frames().unwrap_or(0),
                    chain: c.chain,
                    link: c.link,
                };
                match c.remaining() {
                    Some(count) => segment::encode_sealed_records(
                        repo.crypto(),
                        &name,
                        &head,
                        count,
                        c.by_ref().map(|r| r.map(|r| r.encode())),
                        level,
                    )?,
                    // A format-1 object found in its place (sealed since the listing): its
                    // records are counted by reading them.
                    None => {
                        let records: Vec<Vec<u8>> = c
                            .by_ref()
                            .map(|r| r.map(|r| r.encode()))
                            .collect::<Result<_>>()?;
                        let head = segment::SealedHead {
                            frames: records.len() as u64,
                            ..head
                        };
                        segment::encode_sealed_records(
                            repo.crypto(),
                            &name,
                            &head,
                            records.len() as u64,
                            records.into_iter().map(Ok),
                            level,
                        )?
                    }
                }
            }
        };
        repo.backend().put(&name, &bytes)?;
        delete_sealed_stream(repo, seg.seq)?;
        sealed += 1;
    }
    // Streams left beside their sealed copy by a crash between the two steps above.
    for seq in reader::redundant_streams(repo)? {
        if seq < current {
            delete_sealed_stream(repo, seq)?;
        }
    }
    Ok(sealed)
}

/// The records of `segs` in order, with their segment numbers, one segment read at a time;
/// `closed` is a segment the writer kept (not read back: one request per batch on S3).
fn segment_records<'a>(
    repo: &'a Repository,
    segs: &'a [SegmentRef],
    closed: Option<(u64, &'a SegmentData)>,
) -> impl Iterator<Item = Result<(u64, Record)>> + 'a {
    segs.iter().flat_map(
        move |s| -> Box<dyn Iterator<Item = Result<(u64, Record)>> + 'a> {
            let seq = s.seq;
            match closed {
                Some((c, d)) if c == seq && !s.sealed => {
                    Box::new(d.records.iter().cloned().map(move |r| Ok((seq, r))))
                }
                _ => match reader::open_segment(repo, s, Recovery::Strict) {
                    Ok(c) => Box::new(c.map(move |r| r.map(|r| (seq, r)))),
                    Err(e) => Box::new(std::iter::once(Err(e))),
                },
            }
        },
    )
}

/// Delete the stream of a segment whose sealed copy is published. An append-only destination
/// (issue 15: `backup-cli server --append-only`) refuses: the stream then stays beside its
/// sealed copy, which readers use, until prune runs on the server's host. Not an error.
fn delete_sealed_stream(repo: &Repository, seq: u64) -> Result<()> {
    match repo.backend().stream_delete(&stream_name(seq)) {
        Err(Error::AppendOnly { .. }) => Ok(()),
        other => other,
    }
}

pub fn compact(
    repo: &Repository,
    writer: &Mutex<JournalWriter>,
    opts: &CompactOptions,
) -> Result<CompactReport> {
    compact_cancellable(repo, writer, opts, &AtomicBool::new(false))
}

/// [`compact`], stopping with [`Error::Cancelled`] at the next safe point once `cancel` is set:
/// before the journal rotates, between replayed batches, and before the snapshot is written. A
/// stop leaves no partial snapshot (the base it was bringing forward is rebuilt or re-checked by
/// the next compaction), and the maintenance lock is released on return.
pub fn compact_cancellable(
    repo: &Repository,
    writer: &Mutex<JournalWriter>,
    opts: &CompactOptions,
    cancel: &AtomicBool,
) -> Result<CompactReport> {
    let check = || {
        if cancel.load(Ordering::SeqCst) {
            Err(Error::Cancelled("compaction"))
        } else {
            Ok(())
        }
    };
    let started = Instant::now();
    let _lock = repo.lock(MAINTENANCE_LOCK, &opts.holder)?;
    check()?;
    let before = stats::stats(repo)?;
    // The next segment is made outside the writer's lock (a file creation and a directory sync);
    // the hook waits only for the switch itself.
    let (next, durability) = {
        let w = writer
            .lock()
            .map_err(|_| Error::Invalid("journal writer poisoned".into()))?;
        (w.segment() + 1, w.durability())
    };
    let prepared = match crate::journal::writer::prepare_segment(repo, durability, next) {
        Ok(p) => p,
        Err(e) => {
            if let Some(why) = e.leftover {
                if let Ok(mut w) = writer.lock() {
                    w.poison(why);
                }
            }
            return Err(e.error);
        }
    };
    let (closed, closed_records, closed_stream) = {
        let mut w = writer
            .lock()
            .map_err(|_| Error::Invalid("journal writer poisoned".into()))?;
        let (closed, stream) = w.rotate_to(prepared)?;
        (closed, w.take_closed(closed), stream)
    };
    drop(closed_stream);
    let parent = manifest::latest(repo)?;
    let from = parent.as_ref().map(|m| m.journal_segment).unwrap_or(0);
    let segs: Vec<SegmentRef> = reader::segments(repo)?
        .into_iter()
        .filter(|s| s.last >= from && s.seq <= closed)
        .collect();
    let pv = parent.as_ref().map(|m| m.data_version).unwrap_or(0);
    let closed_known = closed_records.as_ref().map(|c| (closed, c));
    // Two passes over the journal since the parent, one segment in memory at a time: the first
    // finds the version to snapshot (the newest but one: the newest batch may still be
    // superseded), the second replays up to it.
    // Where each version begins (segment, version), in journal order, collapsed.
    let mut version_starts: Vec<(u64, u32)> = Vec::new();
    // The newest two real versions above the parent's, and when each was stored (the last
    // record of a version wins: it supersedes).
    let mut real: [Option<(u32, u64)>; 2] = [None, None];
    for r in segment_records(repo, &segs, closed_known) {
        let (seq, r) = r?;
        let v = r.batch.data_version;
        if version_starts.last().is_none_or(|&(_, last)| last != v) {
            version_starts.push((seq, v));
        }
        if r.pragma_only() || v <= pv {
            continue;
        }
        match real[1] {
            Some((newest, _)) if newest == v => real[1] = Some((v, r.time_ms)),
            _ => real = [real[1], Some((v, r.time_ms))],
        }
    }
    let target = real[0].filter(|&(v, _)| v > pv);
    let Some((target, target_time_ms)) = target else {
        let after = stats::stats(repo)?;
        return Ok(CompactReport {
            snapshot: None,
            before,
            after,
            bytes_added: 0,
            dedup_ratio: 0.0,
            duration_ms: started.elapsed().as_millis() as u64,
            note: Some("nothing to compact: fewer than two batches since the last snapshot".into()),
        });
    };
    let newest_real = real[1].map(|(v, _)| v);

    check()?;
    let index = ChunkIndex::load(repo)?;
    let base = prepare_base(repo, &opts.cache_dir, parent.as_ref(), &index)?;
    let (_, state_path) = base_paths(repo, &opts.cache_dir);
    remove_if_exists(&state_path)?; // the base is about to change
    let mut rp = Replayer::open(
        &base,
        parent.as_ref().map(|m| m.foreign_keys).unwrap_or(true),
    )?;
    let above_parent = segment_records(repo, &segs, closed_known).filter_map(|r| match r {
        Ok((_, r)) if r.batch.data_version <= pv => None,
        Ok((_, r)) => Some(Ok(r)),
        Err(e) => Some(Err(e)),
    });
    for (k, r) in replay::Effective::new(above_parent, "journal").enumerate() {
        let r = r?;
        if r.batch.data_version > target {
            continue; // read on: a record that replaces a missing batch is still an error
        }
        if k % 256 == 0 {
            check()?;
        }
        rp.apply(&r)?;
    }
    let got = rp.data_version()?;
    // Not synced: the base is checked against its manifest before every use (`prepare_base`).
    let fk = rp.finish_unsynced()?;
    if got != target {
        return Err(Error::corrupt(
            "journal",
            format!("replay to data_version {target} produced a database at data_version {got}"),
        ));
    }
    // Replay resumes at the segment holding the first record above the target.
    let journal_segment = version_starts
        .iter()
        .find(|(_, v)| *v > target)
        .map(|(s, _)| *s)
        .unwrap_or(closed + 1);
    let parent_refs = match &parent {
        Some(p) => Some(manifest::resolve(repo, p)?),
        None => None,
    };
    check()?;
    let m = snapshot::write_snapshot(
        repo,
        &SnapshotInput {
            path: &base,
            data_version: target,
            journal_segment,
            foreign_keys: fk,
            data_time_ms: target_time_ms,
            next: newest_real.map(|v| crate::manifest::NextBatch {
                data_version: v,
                segment: journal_segment,
            }),
        },
        parent.as_ref(),
        parent_refs.as_deref(),
        &index,
    )?;
    write_state(&state_path, &m)?;
    seal_closed_segments_with(repo, closed + 1, closed_records.map(|r| (closed, r)))?;
    // Closed segments still after the snapshot (listed outside the writer's lock; only the
    // compaction rotates, so the current segment is `closed + 1`).
    let since: u64 = reader::segments(repo)?
        .iter()
        .filter(|s| s.seq > journal_segment && s.seq != closed + 1)
        .map(|s| s.size)
        .sum();
    writer
        .lock()
        .map_err(|_| Error::Invalid("journal writer poisoned".into()))?
        .reset_bytes_since_snapshot(since);
    let after = stats::stats(repo)?;
    let dedup_ratio = if m.stored_bytes > 0 {
        m.db_size as f64 / m.stored_bytes as f64
    } else {
        0.0
    };
    Ok(CompactReport {
        snapshot: Some(m.info()),
        before,
        bytes_added: m.stored_bytes,
        dedup_ratio,
        after,
        duration_ms: started.elapsed().as_millis() as u64,
        note: None,
    })
}
