//! Writing a snapshot of a database file: chunk, address, store new chunks in packs, publish
//! the index, then the manifest (the commit point).
//!
//! The file is read through a memory map and processed in windows, so memory stays bounded by
//! the window, not the database. Hashing and compression run on all cores (rayon).
//!
//! Crash cases (each step is an atomic, durable publish; see docs/format.md):
//! 1. packs published, no index: orphan packs, deleted by the next prune.
//! 2. index published, no manifest: unreferenced chunks, dropped by the next prune.
//! 3. manifest published: the snapshot exists; everything it names was published before it.

use std::fs::File;
use std::path::Path;

use rayon::prelude::*;

use crate::chunker;
use crate::error::{Error, Result};
use crate::ids::{ChunkId, SnapshotId};
use crate::manifest::{self, ChunkList, ChunkRef, Manifest};
use crate::pack::{self, ChunkIndex, PackBuilder, BLOB_CHUNKS, BLOB_MAX_RAW};
use crate::repo::Repository;

/// Raw bytes handled per window: bounds memory during a snapshot.
const WINDOW: usize = 64 << 20;

pub struct SnapshotInput<'a> {
    pub path: &'a Path,
    pub data_version: u32,
    pub journal_segment: u64,
    pub foreign_keys: bool,
    /// When the batch at `data_version` was stored (unix ms; 0 when unknown).
    pub data_time_ms: u64,
    /// The newest batch the compaction saw and left out (see [`crate::manifest::NextBatch`]).
    pub next: Option<crate::manifest::NextBatch>,
}

/// Map a database file read-only.
pub fn map_file(path: &Path) -> Result<Option<memmap2::Mmap>> {
    let f = File::open(path).map_err(|e| Error::io("open", path.display().to_string(), e))?;
    let len = f
        .metadata()
        .map_err(|e| Error::io("stat", path.display().to_string(), e))?
        .len();
    if len == 0 {
        return Ok(None);
    }
    // SAFETY: the file is private to this process (a compaction base or a temporary copy) and is
    // not modified while mapped.
    #[allow(unsafe_code)]
    let m = unsafe { memmap2::Mmap::map(&f) }
        .map_err(|e| Error::io("map", path.display().to_string(), e))?;
    Ok(Some(m))
}

/// Chunk ids of a file, in order.
/// Page size, chunk spans and chunk references of a database image.
pub type Chunked = (u32, Vec<(usize, usize)>, Vec<ChunkRef>);

pub fn chunk_refs(repo: &Repository, data: &[u8], object: &str) -> Result<Chunked> {
    let page_size = chunker::sqlite_page_size(data, object)?;
    let ch = chunker::for_params(&repo.config().body.chunker, page_size);
    let spans = ch.spans(data);
    let crypto = repo.crypto();
    let refs: Vec<ChunkRef> = spans
        .par_iter()
        .map(|&(o, l)| {
            (
                crypto.chunk_id(data.get(o..o + l).unwrap_or_default()),
                l as u32,
            )
        })
        .collect();
    Ok((page_size, spans, refs))
}

pub fn write_snapshot(
    repo: &Repository,
    input: &SnapshotInput,
    parent: Option<&Manifest>,
    parent_refs: Option<&[ChunkRef]>,
    index: &mut ChunkIndex,
) -> Result<Manifest> {
    let object = input.path.display().to_string();
    let map = map_file(input.path)?
        .ok_or_else(|| Error::corrupt(&object, "the database file is empty"))?;
    let data: &[u8] = &map;
    let page_size = chunker::sqlite_page_size(data, &object)?;
    let spans = chunker::for_params(&repo.config().body.chunker, page_size).spans(data);
    let level = repo.config().body.zstd_level;
    let pack_target = repo.config().body.pack_target as usize;
    // Filled window by window below: hashing a window overlaps the disk writing the packs of
    // the previous ones.
    let mut refs: Vec<ChunkRef> = Vec::with_capacity(spans.len());
    let mut new_chunks = 0usize;
    let mut seen: std::collections::HashSet<ChunkId, foldhash::fast::RandomState> =
        Default::default();

    // Compression (rayon) and publishing run side by side: full packs go through a short queue
    // to two publisher threads (mostly waiting on the disk), so the disk writes and syncs one
    // pack while the next is written and the cores compress the one after.
    let (tx, rx) = std::sync::mpsc::sync_channel::<PackBuilder>(1);
    let rx = std::sync::Mutex::new(rx);
    // The buffers of published packs come back to build the next ones in.
    let (pool_tx, pool_rx) = std::sync::mpsc::channel::<Vec<u8>>();
    let failed = std::sync::atomic::AtomicBool::new(false);
    let (mut stored, entries) = std::thread::scope(|s| -> Result<(u64, Vec<_>)> {
        let publish = || -> Result<(u64, Vec<_>)> {
            let mut stored = 0u64;
            let mut entries = Vec::new();
            loop {
                let next = match rx.lock() {
                    Ok(rx) => rx.recv(),
                    Err(_) => break,
                };
                let Ok(full) = next else { break };
                match publish_pack(repo, full, &mut entries) {
                    Ok(buffer) => {
                        stored += buffer.len() as u64;
                        let _ = pool_tx.send(buffer);
                    }
                    Err(e) => {
                        failed.store(true, std::sync::atomic::Ordering::SeqCst);
                        return Err(e);
                    }
                }
            }
            Ok((stored, entries))
        };
        let publishers = [s.spawn(publish), s.spawn(publish)];
        let produced = (|| -> Result<()> {
            let new_builder = || {
                let mut b =
                    PackBuilder::in_buffer(repo.crypto(), pool_rx.try_recv().unwrap_or_default());
                b.reserve(pack_target + BLOB_MAX_RAW + 4096);
                b
            };
            let mut builder = new_builder();
            let mut ws = 0;
            while ws < spans.len() {
                // The next window of chunks: hash it, find its new chunks (each once, in file
                // order), group neighbouring new chunks, compress, seal, hand over full packs.
                let mut we = ws;
                let mut raw = 0;
                while we < spans.len() && raw < WINDOW {
                    raw += spans.get(we).map(|s| s.1).unwrap_or(0);
                    we += 1;
                }
                let wrefs: Vec<ChunkRef> = spans
                    .get(ws..we)
                    .unwrap_or_default()
                    .par_iter()
                    .map(|&(o, l)| {
                        (
                            repo.crypto()
                                .chunk_id(data.get(o..o + l).unwrap_or_default()),
                            l as u32,
                        )
                    })
                    .collect();
                let mut new = Vec::new();
                for (k, (id, _)) in wrefs.iter().enumerate() {
                    if !index.map.contains_key(id) && seen.insert(*id) {
                        new.push(ws + k);
                    }
                }
                refs.extend_from_slice(&wrefs);
                new_chunks += new.len();
                ws = we;
                let groups = group_neighbours(&new, &spans);
                let window = groups.as_slice();
                let compressed: Vec<pack::CompressedGroup> = window
                    .par_iter()
                    .map(|g| {
                        // A group is neighbouring chunks: one contiguous span of the file.
                        let ids: Vec<(ChunkId, u32)> = g
                            .iter()
                            .map(|&i| {
                                (
                                    refs.get(i).map(|r| r.0).unwrap_or(ChunkId([0; 32])),
                                    spans.get(i).map(|s| s.1 as u32).unwrap_or(0),
                                )
                            })
                            .collect();
                        let start = g.first().and_then(|&i| spans.get(i)).map(|s| s.0);
                        let end = g.last().and_then(|&i| spans.get(i)).map(|s| s.0 + s.1);
                        let raw = match (start, end) {
                            (Some(s), Some(e)) => data.get(s..e).unwrap_or_default(),
                            _ => &[],
                        };
                        pack::compress_contiguous(&ids, raw, level)
                    })
                    .collect::<Result<_>>()?;
                // Plan where each group lands (which pack, which offset: a sealed blob's size
                // is known in advance) and make room for it there, then seal them all in
                // parallel straight into the packs.
                let overhead = repo.crypto().overhead();
                let mut builders = vec![std::mem::replace(&mut builder, new_builder())];
                let mut starts = vec![builders.first().map(PackBuilder::len).unwrap_or(0)];
                let mut plan = Vec::with_capacity(compressed.len());
                for g in &compressed {
                    if builders.last().map(PackBuilder::len).unwrap_or(0) >= pack_target {
                        let b = new_builder();
                        starts.push(b.len());
                        builders.push(b);
                    }
                    let index = builders.len() - 1;
                    if let Some(b) = builders.last_mut() {
                        let off = b.place(g, g.zdata.len() + overhead);
                        plan.push((index, b.aad_at(off)));
                    }
                }
                let mut placed = compressed.iter().zip(&plan).peekable();
                let mut jobs = Vec::with_capacity(compressed.len());
                for ((index, b), &start) in builders.iter_mut().enumerate().zip(&starts) {
                    let mut room = b.tail_mut(start);
                    while let Some((g, (_, aad))) = placed.next_if(|(_, p)| p.0 == index) {
                        let (blob, rest) = std::mem::take(&mut room)
                            .split_at_mut_checked(g.zdata.len() + overhead)
                            .ok_or_else(|| {
                                Error::Invalid("a pack is shorter than planned".into())
                            })?;
                        jobs.push((g, aad, blob));
                        room = rest;
                    }
                }
                jobs.into_par_iter()
                    .map(|(g, aad, blob)| repo.crypto().seal_into(aad, &g.zdata, blob))
                    .collect::<Result<()>>()?;
                builder = builders.pop().unwrap_or_else(new_builder);
                if builder.len() >= pack_target {
                    builders.push(std::mem::replace(&mut builder, new_builder()));
                }
                for full in builders {
                    if failed.load(std::sync::atomic::Ordering::SeqCst) || tx.send(full).is_err() {
                        // A publisher stopped on an error: it is returned below.
                        return Ok(());
                    }
                }
            }
            if !builder.is_empty() {
                let _ = tx.send(builder);
            }
            Ok(())
        })();
        drop(tx);
        let mut published = (0u64, Vec::new());
        for p in publishers {
            let (stored, entries) = p
                .join()
                .unwrap_or_else(|_| Err(Error::Invalid("a pack publisher panicked".into())))?;
            published.0 += stored;
            published.1.extend(entries);
        }
        // A publish error explains a compression stop; otherwise report the compression error.
        produced?;
        Ok(published)
    })?;
    if !entries.is_empty() {
        let name = pack::index_name();
        let idx = pack::encode_index(repo.crypto(), &name, &entries)?;
        stored += idx.len() as u64;
        repo.backend().put(&name, &idx)?;
        index.objects.push(name);
        for (id, loc) in &entries {
            index.map.insert(*id, *loc);
        }
    }

    let id = SnapshotId::random();
    let full_every = repo.config().body.full_manifest_every.max(1);
    let list = match (parent, parent_refs) {
        (Some(p), Some(prefs)) if p.depth() + 1 < full_every => {
            let runs = manifest::delta_runs(prefs, &refs);
            let delta_refs: usize = runs.iter().map(|r| r.1.len()).sum();
            if delta_refs * 2 < refs.len() {
                ChunkList::Delta {
                    parent: p.id,
                    depth: p.depth() + 1,
                    runs,
                }
            } else {
                ChunkList::Full(refs.clone())
            }
        }
        _ => ChunkList::Full(refs.clone()),
    };
    let mut m = Manifest {
        id,
        time: crate::config::now(),
        data_version: input.data_version,
        journal_segment: input.journal_segment,
        foreign_keys: input.foreign_keys,
        db_size: data.len() as u64,
        page_size,
        chunk_count: refs.len() as u64,
        stored_bytes: 0,
        new_chunks: new_chunks as u64,
        list,
        object_size: 0,
        data_time_ms: input.data_time_ms,
        next: input.next,
    };
    // The manifest's own size counts in what the snapshot added.
    let probe = m.encode(repo.crypto())?;
    m.stored_bytes = stored + probe.len() as u64;
    let bytes = m.encode(repo.crypto())?;
    m.object_size = bytes.len() as u64;
    repo.backend()
        .put(&manifest::manifest_name(&m.id), &bytes)?;
    Ok(m)
}

/// Groups of neighbouring new chunks (indexes into `spans`, ascending), compressed together: at
/// most [`BLOB_CHUNKS`] chunks and [`BLOB_MAX_RAW`] bytes each.
fn group_neighbours(new: &[usize], spans: &[(usize, usize)]) -> Vec<Vec<usize>> {
    let mut groups: Vec<Vec<usize>> = Vec::new();
    let mut cur: Vec<usize> = Vec::new();
    let mut cur_raw = 0usize;
    for &i in new {
        let len = spans.get(i).map(|s| s.1).unwrap_or(0);
        let adjacent = cur.last().is_some_and(|&p| p + 1 == i);
        if !cur.is_empty()
            && (!adjacent || cur.len() >= BLOB_CHUNKS || cur_raw + len > BLOB_MAX_RAW)
        {
            groups.push(std::mem::take(&mut cur));
            cur_raw = 0;
        }
        cur.push(i);
        cur_raw += len;
    }
    if !cur.is_empty() {
        groups.push(cur);
    }
    groups
}

/// Publish a full pack; returns its buffer (the pack's bytes, to be built over).
fn publish_pack(
    repo: &Repository,
    b: PackBuilder,
    entries: &mut Vec<(ChunkId, pack::Location)>,
) -> Result<Vec<u8>> {
    let (id, data, es) = b.finish();
    repo.backend().put(&pack::pack_name(&id), &data)?;
    entries.extend(es);
    Ok(data)
}

/// Write the chunks of a snapshot into a new file at `dest` (which must not exist), checking
/// every chunk's address. Returns the bytes written.
pub fn materialize(
    repo: &Repository,
    m: &Manifest,
    refs: &[ChunkRef],
    index: &ChunkIndex,
    dest: &Path,
) -> Result<u64> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(dest)
        .map_err(|e| Error::io("create", dest.display().to_string(), e))?;
    f.set_len(m.db_size)
        .map_err(|e| Error::io("write", dest.display().to_string(), e))?;
    let mut offsets = Vec::with_capacity(refs.len());
    let mut off = 0u64;
    for r in refs {
        offsets.push(off);
        off += u64::from(r.1);
    }
    if off != m.db_size {
        return Err(Error::corrupt(
            manifest::manifest_name(&m.id),
            format!(
                "chunk lengths add up to {off}, the database size is {}",
                m.db_size
            ),
        ));
    }
    // Work in slices of chunks; within a slice, chunks of one blob are decoded once.
    let items: Vec<(usize, &ChunkRef)> = refs.iter().enumerate().collect();
    items.par_chunks(1024).try_for_each(|slice| -> Result<()> {
        let mut cache: Option<((crate::ids::PackId, u64), Vec<u8>)> = None;
        for (i, (id, len)) in slice {
            let loc = index.map.get(id).ok_or_else(|| {
                Error::corrupt(
                    manifest::manifest_name(&m.id),
                    format!("chunk {id} is in no index: its pack is missing"),
                )
            })?;
            if loc.len != *len {
                return Err(Error::corrupt(
                    manifest::manifest_name(&m.id),
                    format!("chunk {id} length differs from the index"),
                ));
            }
            let key = (loc.pack, loc.blob_offset);
            if cache.as_ref().map(|c| c.0) != Some(key) {
                let blob =
                    pack::read_blob(repo, &loc.pack, loc.blob_offset, loc.blob_len, BLOB_MAX_RAW)?;
                cache = Some((key, blob));
            }
            let blob = cache.as_ref().map(|c| c.1.as_slice()).unwrap_or_default();
            let bytes = pack::chunk_from_blob(repo, blob, id, loc)?;
            let at = offsets.get(*i).copied().unwrap_or(0);
            f.write_all_at(&bytes, at)
                .map_err(|e| Error::io("write", dest.display().to_string(), e))?;
        }
        Ok(())
    })?;
    f.sync_all()
        .map_err(|e| Error::io("fsync", dest.display().to_string(), e))?;
    Ok(m.db_size)
}
