//! Prune: a plan computed from a retention policy, shown, then applied; then garbage collection.
//!
//! Apply order (each step atomic; a crash between steps loses nothing a kept snapshot or the
//! journal tail needs, see docs/format.md):
//! 1. rewrite kept delta manifests whose chain passes through a removed snapshot as full ones;
//! 2. delete the removed manifests;
//! 3. repack live chunks out of mostly-dead packs into new packs;
//! 4. publish one new index of every live chunk, then delete the old index objects;
//! 5. delete packs no index names;
//! 6. delete journal segments older than the oldest kept snapshot's resume segment.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::Serialize;

use crate::error::{Error, Result};
use crate::ids::{ChunkId, PackId};
use crate::journal::{reader, stream_name};
use crate::manifest::{self, ChunkList, Manifest, SnapshotInfo};
use crate::pack::{self, ChunkIndex, Location, PackBuilder};
use crate::repo::{Repository, MAINTENANCE_LOCK};

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Retention {
    pub keep_last: u32,
    pub keep_hourly: u32,
    pub keep_daily: u32,
    pub keep_weekly: u32,
    pub keep_monthly: u32,
}

impl Retention {
    pub fn is_empty(&self) -> bool {
        self.keep_last + self.keep_hourly + self.keep_daily + self.keep_weekly + self.keep_monthly
            == 0
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Kept {
    pub snapshot: SnapshotInfo,
    pub reasons: Vec<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct PrunePlan {
    pub keep: Vec<Kept>,
    pub remove: Vec<SnapshotInfo>,
    /// Journal segments that only removed snapshots needed.
    pub remove_segments: Vec<u64>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct PruneReport {
    pub removed_snapshots: u64,
    pub rewritten_manifests: u64,
    pub deleted_packs: u64,
    pub repacked_packs: u64,
    pub deleted_segments: u64,
    pub bytes_before: u64,
    pub bytes_after: u64,
}

/// Days since 1970-01-01 to (year, month).
fn year_month(days: i64) -> (i64, u32) {
    let (y, m, _) = crate::time::civil(days);
    (y, m)
}

pub fn plan(repo: &Repository, retention: &Retention) -> Result<PrunePlan> {
    let infos: Vec<SnapshotInfo> = manifest::list(repo)?.iter().map(|m| m.info()).collect();
    let (keep, remove) = select(&infos, retention)?;
    let min_seg = keep
        .iter()
        .map(|k| k.snapshot.journal_segment)
        .min()
        .unwrap_or(0);
    let remove_segments = reader::segments(repo)?
        .iter()
        .filter(|s| s.last < min_seg)
        .flat_map(|s| s.seq..=s.last)
        .collect();
    Ok(PrunePlan {
        keep,
        remove,
        remove_segments,
    })
}

/// The retention decision alone: which snapshots (oldest first) to keep, and why.
pub fn select(
    snapshots: &[SnapshotInfo],
    retention: &Retention,
) -> Result<(Vec<Kept>, Vec<SnapshotInfo>)> {
    if retention.is_empty() {
        return Err(Error::Invalid(
            "give a retention policy: at least one --keep-* option".into(),
        ));
    }
    let all: Vec<&SnapshotInfo> = snapshots.iter().rev().collect(); // newest first
    let mut reasons: Vec<Vec<String>> = vec![Vec::new(); all.len()];
    if let Some(r) = reasons.first_mut() {
        r.push("newest".into());
    }
    type Bucket<'a> = &'a dyn Fn(u64) -> i64;
    let rules: [(&str, u32, Bucket); 5] = [
        ("last", retention.keep_last, &|_t| 0),
        ("hourly", retention.keep_hourly, &|t| (t / 3600) as i64),
        ("daily", retention.keep_daily, &|t| (t / 86_400) as i64),
        ("weekly", retention.keep_weekly, &|t| {
            ((t / 86_400) as i64 + 3).div_euclid(7)
        }),
        ("monthly", retention.keep_monthly, &|t| {
            let (y, m) = year_month((t / 86_400) as i64);
            y * 12 + i64::from(m)
        }),
    ];
    for (name, n, bucket) in rules {
        let mut last_bucket: Option<i64> = None;
        let mut kept = 0;
        for (i, m) in all.iter().enumerate() {
            if kept >= n {
                break;
            }
            let b = if name == "last" {
                i as i64
            } else {
                bucket(m.time)
            };
            if last_bucket != Some(b) {
                last_bucket = Some(b);
                kept += 1;
                if let Some(r) = reasons.get_mut(i) {
                    r.push(name.to_string());
                }
            }
        }
    }
    let mut keep = Vec::new();
    let mut remove = Vec::new();
    for (m, r) in all.iter().zip(reasons) {
        if r.is_empty() {
            remove.push((*m).clone());
        } else {
            keep.push(Kept {
                snapshot: (*m).clone(),
                reasons: r,
            });
        }
    }
    keep.reverse();
    remove.reverse();
    Ok((keep, remove))
}

fn total_bytes(repo: &Repository) -> Result<u64> {
    Ok(crate::ops::stats::stats(repo)?.backup_size)
}

pub fn apply(repo: &Repository, plan: &PrunePlan, holder: &str) -> Result<PruneReport> {
    let _lock = repo.lock(MAINTENANCE_LOCK, holder)?;
    let mut rep = PruneReport {
        bytes_before: total_bytes(repo)?,
        ..Default::default()
    };
    let removed: HashSet<String> = plan.remove.iter().map(|s| s.id.clone()).collect();
    let kept: Vec<Manifest> = manifest::list(repo)?
        .into_iter()
        .filter(|m| !removed.contains(&m.id.to_string()))
        .collect();

    // 1. Kept deltas that depend on a removed snapshot become full manifests.
    let mut kept_refs: Vec<Vec<manifest::ChunkRef>> = Vec::with_capacity(kept.len());
    for m in &kept {
        let refs = manifest::resolve(repo, m)?;
        if chain_touches(repo, m, &removed)? {
            let mut full = m.clone();
            full.list = ChunkList::Full(refs.clone());
            repo.backend().put(
                &manifest::manifest_name(&m.id),
                &full.encode(repo.crypto())?,
            )?;
            rep.rewritten_manifests += 1;
        }
        kept_refs.push(refs);
    }
    // 2. Remove the snapshots, newest first: a delta is always newer than its parent, so a
    // crash between two deletions never leaves a snapshot whose parent is gone.
    for s in plan.remove.iter().rev() {
        let id = crate::ids::SnapshotId::parse(&s.id)?;
        repo.backend().delete(&manifest::manifest_name(&id))?;
        rep.removed_snapshots += 1;
    }
    gc(
        repo,
        &kept_refs.iter().flatten().map(|r| r.0).collect(),
        &mut rep,
    )?;
    // 6. Journal segments nobody needs.
    let runs: Vec<reader::SegmentRef> = reader::segments(repo)?
        .into_iter()
        .filter(|s| s.sealed && s.last > s.seq)
        .collect();
    for &seq in &plan.remove_segments {
        // A merged run goes with its last segment (all of it is older than what is kept).
        for r in runs.iter().filter(|r| r.last == seq) {
            repo.backend().delete(&r.object_name())?;
        }
        repo.backend().delete(&crate::journal::sealed_name(seq))?;
        repo.backend().stream_delete(&stream_name(seq))?;
        rep.deleted_segments += 1;
    }
    rep.bytes_after = total_bytes(repo)?;
    Ok(rep)
}

fn chain_touches(repo: &Repository, m: &Manifest, removed: &HashSet<String>) -> Result<bool> {
    let mut cur = m.clone();
    while let ChunkList::Delta { parent, .. } = &cur.list {
        if removed.contains(&parent.to_string()) {
            return Ok(true);
        }
        cur = manifest::read(repo, parent)?;
    }
    Ok(false)
}

/// Steps 3-5: keep exactly the live chunks.
fn gc(repo: &Repository, live: &HashSet<ChunkId>, rep: &mut PruneReport) -> Result<()> {
    let index = ChunkIndex::load(repo)?;
    let mut per_pack: HashMap<PackId, (u64, u64)> = HashMap::new(); // (live bytes, total bytes)
    for (id, loc) in &index.map {
        let e = per_pack.entry(loc.pack).or_default();
        e.1 += u64::from(loc.len);
        if live.contains(id) {
            e.0 += u64::from(loc.len);
        }
    }
    let repack: HashSet<PackId> = per_pack
        .iter()
        .filter(|(_, (l, t))| *l > 0 && *l * 2 < *t)
        .map(|(p, _)| *p)
        .collect();

    // 3. Copy live chunks out of mostly-dead packs.
    let mut new_entries: Vec<(ChunkId, Location)> = Vec::new();
    if !repack.is_empty() {
        let mut moving: BTreeMap<(PackId, u64, u32), Vec<(ChunkId, Location)>> = BTreeMap::new();
        for (id, loc) in &index.map {
            if repack.contains(&loc.pack) && live.contains(id) {
                moving
                    .entry((loc.pack, loc.inner_offset as u64 + loc.blob_offset, 0))
                    .or_default()
                    .push((*id, *loc));
            }
        }
        let mut builder = PackBuilder::new(repo.crypto());
        let mut group: Vec<(ChunkId, Vec<u8>)> = Vec::new();
        let mut cache: Option<((PackId, u64), Vec<u8>)> = None;
        let flush_group =
            |group: &mut Vec<(ChunkId, Vec<u8>)>, builder: &mut PackBuilder| -> Result<()> {
                if group.is_empty() {
                    return Ok(());
                }
                let refs: Vec<(ChunkId, &[u8])> =
                    group.iter().map(|(i, b)| (*i, b.as_slice())).collect();
                let g = pack::compress_group(&refs, repo.config().body.zstd_level)?;
                builder.add_group(repo.crypto(), &g)?;
                group.clear();
                Ok(())
            };
        for chunks in moving.values() {
            for (id, loc) in chunks {
                let key = (loc.pack, loc.blob_offset);
                if cache.as_ref().map(|c| c.0) != Some(key) {
                    cache = Some((
                        key,
                        pack::read_blob(repo, &loc.pack, loc.blob_offset, loc.blob_len, 0)?,
                    ));
                }
                let blob = cache.as_ref().map(|c| c.1.as_slice()).unwrap_or_default();
                group.push((*id, pack::chunk_from_blob(repo, blob, id, loc)?));
                if group.len() >= pack::BLOB_CHUNKS {
                    flush_group(&mut group, &mut builder)?;
                }
                if builder.len() as u64 >= repo.config().body.pack_target {
                    let full = std::mem::replace(&mut builder, PackBuilder::new(repo.crypto()));
                    let (pid, data, es) = full.finish();
                    repo.backend().put(&pack::pack_name(&pid), &data)?;
                    new_entries.extend(es);
                }
            }
        }
        flush_group(&mut group, &mut builder)?;
        if !builder.is_empty() {
            let (pid, data, es) = builder.finish();
            repo.backend().put(&pack::pack_name(&pid), &data)?;
            new_entries.extend(es);
        }
        rep.repacked_packs = repack.len() as u64;
    }

    // 4. One index of every live chunk.
    let moved: HashSet<ChunkId> = new_entries.iter().map(|e| e.0).collect();
    let mut entries: Vec<(ChunkId, Location)> = index
        .map
        .iter()
        .filter(|(id, loc)| live.contains(id) && !moved.contains(id) && !repack.contains(&loc.pack))
        .map(|(i, l)| (*i, *l))
        .collect();
    entries.extend(new_entries);
    entries.sort_by_key(|(_, l)| (l.pack, l.blob_offset, l.inner_offset));
    let name = pack::index_name();
    if !entries.is_empty() {
        let data = pack::encode_index(repo.crypto(), &name, &entries)?;
        repo.backend().put(&name, &data)?;
    }
    for old in &index.objects {
        repo.backend().delete(old)?;
    }
    // 5. Packs no index names (dead, repacked, or orphaned by a crashed compaction).
    let named: HashSet<PackId> = entries.iter().map(|(_, l)| l.pack).collect();
    for o in repo.backend().list("packs/")? {
        let Some(id) = o
            .name
            .strip_prefix("packs/")
            .and_then(|h| PackId::parse(h).ok())
        else {
            crate::warn::stray(&o.name); // not ours: never deleted
            continue;
        };
        if !named.contains(&id) {
            repo.backend().delete(&o.name)?;
            rep.deleted_packs += 1;
        }
    }
    Ok(())
}
