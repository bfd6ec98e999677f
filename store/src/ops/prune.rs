//! Prune: a plan computed from a retention policy, shown, then applied; then garbage collection.
//!
//! Apply order (each step atomic; a crash between steps loses nothing a kept snapshot or the
//! journal tail needs, see docs/format.md):
//! 1. rewrite kept delta manifests whose chain passes through a removed snapshot as full ones;
//! 2. delete the removed manifests;
//! 3. rewrite the live chunks of packs with dead space, and of small packs, into new packs
//!    ([`gc`], [`repack`]);
//! 4. publish new index objects naming every chunk of the kept packs, then delete the old ones;
//! 5. delete packs no index names;
//! 6. delete journal segments older than the oldest kept snapshot's resume segment;
//! 7. merge runs of small sealed journal segments before the newest snapshot's resume segment
//!    into one sealed run each ([`segmerge`]).
//!
//! [`collect_garbage`] runs steps 3-5 and 7 alone (after a compaction when no retention is set),
//! so the pack, index and journal object counts stay bounded without a policy.

mod gc;
mod repack;
mod segmerge;

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use serde::Serialize;

use crate::error::{Error, Result};
use crate::ids::SnapshotId;
use crate::journal::{reader, stream_name};
use crate::manifest::{self, ChunkList, ChunkRef, Manifest, SnapshotInfo};
use crate::repo::{Repository, MAINTENANCE_LOCK};

pub use gc::{INDEX_ENTRIES_PER_OBJECT, INDEX_OBJECTS_MAX, MAX_DEAD_FRACTION, SMALL_PACKS_MAX};
pub use segmerge::{RUN_MAX_BYTES, SEGMENT_BYTES_PER_OBJECT, SMALL_SEGMENTS_MAX};

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Retention {
    pub keep_last: u32,
    pub keep_hourly: u32,
    pub keep_daily: u32,
    pub keep_weekly: u32,
    pub keep_monthly: u32,
    /// Seconds (0: none): keep every snapshot newer than now minus this, and the newest one at
    /// or before it, so every data_version of that span stays restorable.
    pub keep_within: u64,
}

impl Retention {
    pub fn is_empty(&self) -> bool {
        self.keep_last + self.keep_hourly + self.keep_daily + self.keep_weekly + self.keep_monthly
            == 0
            && self.keep_within == 0
    }
}

/// A span of time as `keep-within` takes it: a whole number and a unit, `s`, `m`, `h`, `d`,
/// `w` or `y` (365 days): `30d`, `12h`, `2w`. Returns seconds.
pub fn parse_duration(s: &str) -> Result<u64> {
    let s = s.trim();
    let bad = || {
        Error::Invalid(format!(
            "'{s}' is not a span of time: a whole number and a unit (s, m, h, d, w, y), like 30d"
        ))
    };
    let split = s.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().map_err(|_| bad())?;
    let unit: u64 = match unit.trim() {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        "y" => 365 * 86_400,
        _ => return Err(bad()),
    };
    match n.checked_mul(unit) {
        Some(0) => Err(Error::Invalid(format!("'{s}' is no time at all"))),
        Some(v) => Ok(v),
        None => Err(bad()),
    }
}

/// `secs` in the largest unit of [`parse_duration`] that divides it.
pub fn format_duration(secs: u64) -> String {
    for (unit, n) in [
        ("y", 365 * 86_400),
        ("w", 7 * 86_400),
        ("d", 86_400),
        ("h", 3600),
        ("m", 60),
    ] {
        if secs > 0 && secs.is_multiple_of(n) {
            return format!("{}{unit}", secs / n);
        }
    }
    format!("{secs}s")
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
    /// Packs deleted: those with no live chunk, those rewritten, and orphans.
    pub deleted_packs: u64,
    /// Packs rewritten for their dead space.
    pub repacked_packs: u64,
    /// Small packs merged into larger ones.
    pub merged_packs: u64,
    /// New packs written by the rewrite, and their bytes.
    pub written_packs: u64,
    pub written_bytes: u64,
    /// Index objects replaced by new ones.
    pub rewritten_indexes: u64,
    pub deleted_segments: u64,
    /// Journal segments merged into sealed runs (a run counts for every segment it holds),
    /// the sealed objects they were in, and the runs written.
    pub merged_segments: u64,
    pub merged_objects: u64,
    pub written_runs: u64,
    /// Sealed objects deleted because a run published before a crash holds their segments.
    pub deleted_leftover_segments: u64,
    /// Journal objects left (sealed segments, runs and open streams).
    pub journal_objects: u64,
    /// Packs and index objects left.
    pub packs: u64,
    pub index_objects: u64,
    /// Bytes of the packs left, and how many of them hold no live chunk (estimated per blob;
    /// at most [`MAX_DEAD_FRACTION`] of them after a prune).
    pub pack_bytes: u64,
    pub dead_bytes: u64,
    pub bytes_before: u64,
    pub bytes_after: u64,
    pub duration_ms: u64,
}

/// Days since 1970-01-01 to (year, month).
fn year_month(days: i64) -> (i64, u32) {
    let (y, m, _) = crate::time::civil(days);
    (y, m)
}

pub fn plan(repo: &Repository, retention: &Retention) -> Result<PrunePlan> {
    let infos: Vec<SnapshotInfo> = manifest::list(repo)?.iter().map(|m| m.info()).collect();
    let (keep, remove) = select_at(&infos, retention, crate::clock::now())?;
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

/// The retention decision alone, as of now: which snapshots (oldest first) to keep, and why.
pub fn select(
    snapshots: &[SnapshotInfo],
    retention: &Retention,
) -> Result<(Vec<Kept>, Vec<SnapshotInfo>)> {
    select_at(snapshots, retention, crate::clock::now())
}

/// [`select`] as of `now` (Unix seconds).
pub fn select_at(
    snapshots: &[SnapshotInfo],
    retention: &Retention,
    now: u64,
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
    if retention.keep_within > 0 {
        // Every snapshot after the cutoff, and the newest at or before it: replay from there
        // reaches every data_version of the span.
        let cutoff = now.saturating_sub(retention.keep_within);
        let reason = format!("within {}", format_duration(retention.keep_within));
        for (i, m) in all.iter().enumerate() {
            if let Some(r) = reasons.get_mut(i) {
                r.push(reason.clone());
            }
            if m.time <= cutoff {
                break;
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

/// Bytes of every stored object, from the backend's listing: packs, indexes, manifests, the
/// config and the journal.
fn listed_bytes(repo: &Repository) -> Result<u64> {
    let objects = ["packs/", "index/", "snapshots/", "config"]
        .iter()
        .map(|p| Ok(repo.backend().list(p)?.iter().map(|o| o.size).sum::<u64>()))
        .sum::<Result<u64>>()?;
    let journal: u64 = reader::segments(repo)?.iter().map(|s| s.size).sum();
    Ok(objects + journal)
}

pub fn apply(repo: &Repository, plan: &PrunePlan, holder: &str) -> Result<PruneReport> {
    let _lock = repo.lock(MAINTENANCE_LOCK, holder)?;
    apply_locked(repo, plan)
}

/// Steps 3-5 and 7 alone (no snapshot removed): reclaim dead space, merge small packs,
/// indexes and sealed journal segments.
pub fn collect_garbage(repo: &Repository, holder: &str) -> Result<PruneReport> {
    apply(
        repo,
        &PrunePlan {
            keep: Vec::new(),
            remove: Vec::new(),
            remove_segments: Vec::new(),
        },
        holder,
    )
}

fn apply_locked(repo: &Repository, plan: &PrunePlan) -> Result<PruneReport> {
    let started = Instant::now();
    let mut rep = PruneReport {
        bytes_before: listed_bytes(repo)?,
        ..Default::default()
    };
    let removed: HashSet<String> = plan.remove.iter().map(|s| s.id.clone()).collect();
    let all = manifest::list(repo)?;
    let kept: Vec<SnapshotId> = all
        .iter()
        .filter(|m| !removed.contains(&m.id.to_string()))
        .map(|m| m.id)
        .collect();
    let resume = all
        .iter()
        .filter(|m| !removed.contains(&m.id.to_string()))
        .map(|m| m.journal_segment)
        .max();

    // 1. Kept deltas that depend on a removed snapshot become full manifests. Every kept
    // snapshot's chunks are live; the newest's order is the order rewritten chunks are stored in.
    let mut live = gc::Live::default();
    let mut chains = Chains::new(all, &kept)?;
    for (i, id) in kept.iter().enumerate() {
        let rank = kept.len() - 1 - i; // 0: the newest
        let refs = chains.resolve(id)?;
        if chains.touches(id, &removed)? {
            // Encoded from the resolved list (no copy of it into a manifest), and let go of
            // before the list goes into `live`: never held together.
            let bytes = chains.get(id)?.encode_full(repo.crypto(), &refs)?;
            repo.backend().put(&manifest::manifest_name(id), &bytes)?;
            drop(bytes);
            rep.rewritten_manifests += 1;
        }
        live.add(rank, &refs);
    }
    drop(chains);
    drop(kept);
    // The manifests' chunk lists are done with: only `live` is held below, with the books.
    // Their bytes go back to the system before the books are loaded (crate::mem).
    crate::mem::release_free();
    // 2. Remove the snapshots, newest first: a delta is always newer than its parent, so a
    // crash between two deletions never leaves a snapshot whose parent is gone.
    for s in plan.remove.iter().rev() {
        let id = SnapshotId::parse(&s.id)?;
        repo.backend().delete(&manifest::manifest_name(&id))?;
        rep.removed_snapshots += 1;
    }
    // 3-5.
    gc::collect(repo, &live, &mut rep)?;
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
    // 7. Small sealed segments into runs, before the newest kept snapshot's resume segment.
    segmerge::merge(repo, resume, &mut rep)?;
    rep.bytes_after = listed_bytes(repo)?;
    rep.duration_ms = started.elapsed().as_millis() as u64;
    Ok(rep)
}

fn missing_parent(m: &Manifest, parent: &SnapshotId) -> Error {
    Error::corrupt(
        manifest::manifest_name(&m.id),
        format!("its parent snapshot {parent} is missing"),
    )
}

/// Resolves the kept snapshots' chunk lists from the manifests already in memory, keeping a
/// list only while a later snapshot of the chain still needs it (a chain is resolved once, not
/// once per snapshot, and without reading any manifest again). A full manifest's list is taken
/// out of it, not copied: nothing reads it again.
struct Chains {
    by_id: HashMap<SnapshotId, Manifest>,
    /// How many snapshots still to resolve name each one as their parent.
    children: HashMap<SnapshotId, usize>,
    cache: HashMap<SnapshotId, std::rc::Rc<Vec<ChunkRef>>>,
}

impl Chains {
    fn new(all: Vec<Manifest>, kept: &[SnapshotId]) -> Result<Chains> {
        let by_id: HashMap<SnapshotId, Manifest> = all.into_iter().map(|m| (m.id, m)).collect();
        // Every manifest some kept snapshot's chain passes through, each counted once per
        // child in that set.
        let mut needed: HashSet<SnapshotId> = HashSet::new();
        for id in kept {
            let mut cur = by_id
                .get(id)
                .ok_or_else(|| Error::NoSuchSnapshot(id.to_string()))?;
            while needed.insert(cur.id) {
                let ChunkList::Delta { parent, .. } = &cur.list else {
                    break;
                };
                cur = by_id
                    .get(parent)
                    .ok_or_else(|| missing_parent(cur, parent))?;
            }
        }
        let mut children: HashMap<SnapshotId, usize> = HashMap::new();
        for m in by_id.values().filter(|m| needed.contains(&m.id)) {
            if let ChunkList::Delta { parent, .. } = &m.list {
                *children.entry(*parent).or_default() += 1;
            }
        }
        Ok(Chains {
            by_id,
            children,
            cache: HashMap::new(),
        })
    }

    fn get(&self, id: &SnapshotId) -> Result<&Manifest> {
        self.by_id
            .get(id)
            .ok_or_else(|| Error::NoSuchSnapshot(id.to_string()))
    }

    /// Whether the chain of `id` passes through a removed snapshot.
    fn touches(&self, id: &SnapshotId, removed: &HashSet<String>) -> Result<bool> {
        let mut cur = self.get(id)?;
        let mut steps = 0;
        while let ChunkList::Delta { parent, .. } = &cur.list {
            if removed.contains(&parent.to_string()) {
                return Ok(true);
            }
            steps += 1;
            cur = self
                .by_id
                .get(parent)
                .filter(|_| steps <= 1024)
                .ok_or_else(|| missing_parent(cur, parent))?;
        }
        Ok(false)
    }

    /// The chunk list of `id`. Resolve oldest first: a parent's list is then cached until its
    /// last child has used it.
    fn resolve(&mut self, id: &SnapshotId) -> Result<std::rc::Rc<Vec<ChunkRef>>> {
        if let Some(r) = self.cache.get(id) {
            return Ok(r.clone());
        }
        let parent = match &self.get(id)?.list {
            ChunkList::Full(_) => None,
            ChunkList::Delta { depth, .. } if *depth > 1024 => {
                return Err(Error::corrupt(
                    manifest::manifest_name(id),
                    "delta chain too deep",
                ))
            }
            ChunkList::Delta { parent, .. } => Some(*parent),
        };
        let refs = match parent {
            None => match self.by_id.get_mut(id).map(|m| &mut m.list) {
                Some(ChunkList::Full(refs)) => std::rc::Rc::new(std::mem::take(refs)),
                _ => return Err(Error::NoSuchSnapshot(id.to_string())),
            },
            Some(parent) => {
                if !self.by_id.contains_key(&parent) {
                    return Err(missing_parent(self.get(id)?, &parent));
                }
                let prefs = self.resolve(&parent)?;
                self.release(&parent);
                // The last child takes the parent's list without copying it.
                let base = std::rc::Rc::try_unwrap(prefs).unwrap_or_else(|rc| (*rc).clone());
                std::rc::Rc::new(manifest::resolve_on(self.get(id)?, base)?)
            }
        };
        if self.children.get(id).copied().unwrap_or(0) > 0 {
            self.cache.insert(*id, refs.clone());
        }
        Ok(refs)
    }

    /// One child of `id` is resolved: drop its list once no child needs it.
    fn release(&mut self, id: &SnapshotId) {
        if let Some(n) = self.children.get_mut(id) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.cache.remove(id);
            }
        }
    }
}
