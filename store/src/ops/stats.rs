//! Repository statistics: logical versus stored bytes, journal since the last snapshot.

use serde::Serialize;

use crate::error::Result;
use crate::journal::reader;
use crate::manifest;
use crate::repo::{Repository, SegmentSummary};

#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Stats {
    /// Every stored byte: packs, indexes, manifests, journal (the old plugin's `backupsize`).
    pub backup_size: u64,
    /// Snapshots plus journal records (the old plugin's `version_count`).
    pub version_count: u64,
    pub snapshot_count: u64,
    pub journal_records: u64,
    pub journal_bytes: u64,
    pub journal_bytes_since_snapshot: u64,
    pub journal_segments: u64,
    pub pack_count: u64,
    pub pack_bytes: u64,
    /// Sum of the database sizes of all snapshots.
    pub logical_bytes: u64,
    /// `logical_bytes` / bytes in packs and manifests.
    pub dedup_ratio: f64,
    pub last_snapshot: Option<manifest::SnapshotInfo>,
    /// The newest data_version held (journal or snapshot).
    pub last_version: Option<u32>,
    /// How far back a restore can go: the oldest data_version restorable, and its time.
    pub oldest_restorable: Option<Restorable>,
    pub encryption: String,
}

/// The oldest state a restore can give.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Restorable {
    pub data_version: u32,
    /// When it was stored (Unix seconds): the oldest snapshot's time; unknown for a journal
    /// that starts at the node's first batch.
    pub time: Option<u64>,
    /// `snapshot` (the oldest snapshot) or `journal` (replayed from the node's first batch).
    pub from: &'static str,
}

pub fn stats(repo: &Repository) -> Result<Stats> {
    let b = repo.backend();
    let mut s = Stats {
        encryption: repo.crypto().encryption().name().to_string(),
        ..Default::default()
    };
    let packs = b.list("packs/")?;
    s.pack_count = packs.len() as u64;
    s.pack_bytes = packs.iter().map(|o| o.size).sum();
    let other: u64 = ["index/", "snapshots/", "config"]
        .iter()
        .map(|p| b.list(p).map(|v| v.iter().map(|o| o.size).sum::<u64>()))
        .sum::<Result<u64>>()?;
    let manifests = manifest::list(repo)?;
    s.snapshot_count = manifests.len() as u64;
    s.logical_bytes = manifests.iter().map(|m| m.db_size).sum();
    let snap_bytes: u64 = s.pack_bytes + manifests.iter().map(|m| m.object_size).sum::<u64>();
    s.dedup_ratio = if snap_bytes > 0 {
        s.logical_bytes as f64 / snap_bytes as f64
    } else {
        0.0
    };
    let segs = reader::segments(repo)?;
    s.journal_segments = segs.len() as u64;
    s.journal_bytes = segs.iter().map(|g| g.size).sum();
    let last = manifests.last();
    let from = last.map(|m| m.journal_segment).unwrap_or(0);
    // The snapshot's resume segment mostly holds batches inside the snapshot: it counts only
    // while it is the open segment (as after a snapshot taken from a database file).
    let newest = segs.last().map(|g| g.seq);
    s.journal_bytes_since_snapshot = segs
        .iter()
        .filter(|g| {
            g.seq > from
                || (last.is_none() || (g.seq == from && Some(g.seq) == newest && !g.sealed))
        })
        .map(|g| g.size)
        .sum();
    let mut last_version = last.map(|m| m.data_version);
    s.oldest_restorable = manifests.first().map(|m| Restorable {
        data_version: m.data_version,
        time: Some(m.time),
        from: "snapshot",
    });
    let n = segs.len();
    for (i, g) in segs.iter().enumerate() {
        let known = g
            .sealed
            .then(|| repo.sealed_summary(g.seq, g.size))
            .flatten();
        let seg = match known {
            Some(k) => k,
            None => {
                let rec = if i + 1 == n {
                    crate::journal::segment::Recovery::TruncateTornTail
                } else {
                    crate::journal::segment::Recovery::Strict
                };
                // One record at a time: the open segment may be long.
                let mut seg = SegmentSummary {
                    size: g.size,
                    records: 0,
                    first_version: None,
                    last_version: None,
                };
                for r in reader::open_segment(repo, g, rec)? {
                    let r = r?;
                    seg.records += 1;
                    if !r.pragma_only() {
                        let v = r.batch.data_version;
                        seg.first_version = Some(seg.first_version.map_or(v, |f| f.min(v)));
                        seg.last_version = Some(seg.last_version.map_or(v, |l| l.max(v)));
                    }
                }
                if g.sealed {
                    repo.remember_sealed(g.seq, seg);
                }
                seg
            }
        };
        s.journal_records += seg.records;
        // A journal from the node's first batch on restores every version (restore replays it
        // onto an empty database), unless its first segment was pruned.
        if i == 0 && g.seq == 0 && seg.first_version == Some(1) {
            s.oldest_restorable = Some(Restorable {
                data_version: 1,
                time: None,
                from: "journal",
            });
        }
        if let Some(v) = seg.last_version {
            last_version = Some(last_version.map_or(v, |l| l.max(v)));
        }
    }
    s.version_count = s.snapshot_count + s.journal_records;
    s.backup_size = s.pack_bytes + other + s.journal_bytes;
    s.last_snapshot = last.map(|m| m.info());
    s.last_version = last_version;
    Ok(s)
}
