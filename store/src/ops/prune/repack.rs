//! Rewriting live chunks into new packs: the dead-space repack and the merge of small packs.
//!
//! The chunks are stored in the order of the newest kept snapshot (where their pages sit), in
//! groups of up to [`BLOB_CHUNKS`] chunks and [`BLOB_MAX_RAW`] raw bytes compressed together,
//! as a snapshot stores new neighbouring chunks: a blob that was only partly live is opened and
//! its live chunks compressed again without the dead ones, and single-page blobs left by small
//! compactions are grouped with their neighbours.
//!
//! Memory is bounded by a window of [`WINDOW_RAW`] raw bytes of chunks at a time, plus the
//! ranges being read. Reads are ranges of neighbouring blobs of one pack (one request each on
//! S3), at most [`MAX_RANGE`] bytes (the `socket:` protocol's limit of one read).

use rayon::prelude::*;

use std::collections::BTreeMap;

use crate::error::{Error, Result};
use crate::ids::{ChunkId, PackId};
use crate::pack::{self, IdMap, Location, PackBuilder, BLOB_CHUNKS, BLOB_MAX_RAW};
use crate::repo::Repository;

use super::gc::Live;

/// Raw chunk bytes rewritten per window.
pub const WINDOW_RAW: u64 = 32 << 20;
/// The most one read asks for.
pub const MAX_RANGE: u64 = 16 << 20;
/// Blobs closer than this in a pack are read in one range (the gap is read and dropped).
const RANGE_GAP: u64 = 256 << 10;

#[derive(Debug, Default)]
pub struct Written {
    pub packs: u64,
    pub bytes: u64,
    /// Where each rewritten chunk is now.
    pub entries: Vec<(ChunkId, Location)>,
}

/// Rewrite the chunks at `moving` (one location per chunk) into new packs, published before
/// this returns. The caller indexes them and then deletes the old packs.
pub fn rewrite(
    repo: &Repository,
    mut moving: Vec<(ChunkId, Location)>,
    live: &Live,
) -> Result<Written> {
    let mut out = Written::default();
    if moving.is_empty() {
        return Ok(out);
    }
    moving.sort_by_key(|(id, l)| (live.order(id), l.pack, l.blob_offset, l.inner_offset));
    moving.dedup_by_key(|e| e.0);
    let level = repo.config().body.zstd_level;
    let target = repo.config().body.pack_target as usize;
    let mut builder = PackBuilder::new(repo.crypto());
    let publish = |b: PackBuilder, out: &mut Written| -> Result<()> {
        let (id, data, entries) = b.finish();
        repo.backend().put(&pack::pack_name(&id), &data)?;
        out.packs += 1;
        out.bytes += data.len() as u64;
        out.entries.extend(entries);
        Ok(())
    };
    let mut rest: &[(ChunkId, Location)] = &moving;
    while !rest.is_empty() {
        let mut n = 0;
        let mut raw = 0u64;
        for (_, l) in rest {
            if n > 0 && raw + u64::from(l.len) > WINDOW_RAW {
                break;
            }
            raw += u64::from(l.len);
            n += 1;
        }
        let (window, after) = rest.split_at(n);
        rest = after;
        let chunks = fetch(repo, window)?;
        let groups = groups(window);
        let compressed: Vec<pack::CompressedGroup> = groups
            .par_iter()
            .map(|g| {
                let refs: Vec<(ChunkId, &[u8])> = g
                    .iter()
                    .map(|(id, _)| {
                        chunks.get(id).map(|b| (*id, b.as_slice())).ok_or_else(|| {
                            Error::Invalid(format!("chunk {id} was not read for the rewrite"))
                        })
                    })
                    .collect::<Result<_>>()?;
                pack::compress_group(&refs, level)
            })
            .collect::<Result<_>>()?;
        drop(chunks);
        for g in &compressed {
            builder.add_group(repo.crypto(), g)?;
            if builder.len() >= target {
                let full = std::mem::replace(&mut builder, PackBuilder::new(repo.crypto()));
                publish(full, &mut out)?;
            }
        }
    }
    if !builder.is_empty() {
        publish(builder, &mut out)?;
    }
    Ok(out)
}

/// Consecutive chunks of `window`, at most [`BLOB_CHUNKS`] and [`BLOB_MAX_RAW`] raw bytes each.
fn groups(window: &[(ChunkId, Location)]) -> Vec<&[(ChunkId, Location)]> {
    let mut out = Vec::new();
    let mut rest = window;
    while !rest.is_empty() {
        let mut n = 0;
        let mut raw = 0usize;
        for (_, l) in rest {
            if n > 0 && (n >= BLOB_CHUNKS || raw + l.len as usize > BLOB_MAX_RAW) {
                break;
            }
            raw += l.len as usize;
            n += 1;
        }
        let (g, after) = rest.split_at(n);
        out.push(g);
        rest = after;
    }
    out
}

/// Read the chunks of `window` (each address checked), with as few requests as the blobs'
/// places allow.
fn fetch(repo: &Repository, window: &[(ChunkId, Location)]) -> Result<IdMap<Vec<u8>>> {
    // The blobs needed, by pack and offset: their length and the chunks wanted from each.
    type Wanted = (u32, Vec<(ChunkId, Location)>);
    let mut blobs: BTreeMap<(PackId, u64), Wanted> = BTreeMap::new();
    for (id, l) in window {
        blobs
            .entry((l.pack, l.blob_offset))
            .or_insert_with(|| (l.blob_len, Vec::new()))
            .1
            .push((*id, *l));
    }
    // Ranges of neighbouring blobs of one pack.
    type Blob = (u64, u32, Vec<(ChunkId, Location)>);
    let mut ranges: Vec<(PackId, u64, u64, Vec<Blob>)> = Vec::new();
    for ((pack, off), (len, want)) in blobs {
        let end = off + u64::from(len);
        match ranges.last_mut() {
            Some((p, start, stop, bs))
                if *p == pack && off <= *stop + RANGE_GAP && end - *start <= MAX_RANGE =>
            {
                *stop = (*stop).max(end);
                bs.push((off, len, want));
            }
            _ => ranges.push((pack, off, end, vec![(off, len, want)])),
        }
    }
    let parts: Vec<Vec<(ChunkId, Vec<u8>)>> = ranges
        .par_iter()
        .map(|(pack, start, stop, bs)| {
            let name = pack::pack_name(pack);
            let data = repo.backend().get_range(&name, *start, stop - start)?;
            let mut got = Vec::new();
            for (off, len, want) in bs {
                let from = usize::try_from(off - start).unwrap_or(usize::MAX);
                let sealed = data
                    .get(from..from.saturating_add(*len as usize))
                    .ok_or_else(|| {
                        Error::corrupt(&name, format!("the blob at offset {off} is cut short"))
                    })?;
                let blob = pack::open_blob(repo, pack, *off, sealed)?;
                for (id, l) in want {
                    got.push((*id, pack::chunk_from_blob(repo, &blob, id, l)?));
                }
            }
            Ok(got)
        })
        .collect::<Result<_>>()?;
    Ok(parts.into_iter().flatten().collect())
}
