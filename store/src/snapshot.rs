//! Writing a snapshot of a database file: chunk, address, store new chunks in packs, publish
//! the index, then the manifest (the commit point).
//!
//! The file is processed in windows ([`WINDOW`] bytes of chunks), each mapped on its own and
//! unmapped before the next, so resident memory stays bounded by a window and the pipeline
//! behind it, not by the database: a 4 GiB file costs no more than a 1 GiB one, besides the
//! per-chunk lists: the chunk list (36 bytes a chunk, which the manifest is) and, for each new
//! chunk, 12 bytes of index entry and a 5-byte slot or two of the set of chunks seen. Page spans
//! are computed, not listed; the index object and the manifest are compressed straight into
//! their objects and sealed in place. Hashing and compression run on all cores (rayon).
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

/// Raw bytes handled per window: bounds memory during a snapshot (the mapped window, its
/// compressed copy, the packs it fills).
const WINDOW: usize = 16 << 20;

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

/// The chunk spans of a file: page-aligned ones are computed from the position (a list of them
/// would cost 16 bytes a chunk: 16 MB for 4 GiB of 4 KiB chunks), content-defined ones listed.
enum Spans {
    Fixed { chunk_size: usize, len: usize },
    Listed(Vec<(usize, usize)>),
}

impl Spans {
    fn len(&self) -> usize {
        match self {
            Spans::Fixed { chunk_size, len } => len.div_ceil((*chunk_size).max(1)),
            Spans::Listed(v) => v.len(),
        }
    }
    /// Offset and length of chunk `i`.
    fn get(&self, i: usize) -> Option<(usize, usize)> {
        match self {
            Spans::Fixed { chunk_size, len } => {
                let cs = (*chunk_size).max(1);
                let o = i.checked_mul(cs).filter(|o| o < len)?;
                Some((o, cs.min(len - o)))
            }
            Spans::Listed(v) => v.get(i).copied(),
        }
    }
    fn to_vec(&self) -> Vec<(usize, usize)> {
        match self {
            Spans::Fixed { chunk_size, len } => chunker::PageChunker {
                chunk_size: *chunk_size,
            }
            .spans_of_len(*len),
            Spans::Listed(v) => v.clone(),
        }
    }
}

/// A database file opened for a snapshot: its length, page size and chunk spans, read without
/// mapping it whole.
struct DbFile {
    file: File,
    object: String,
    len: usize,
    page_size: u32,
    spans: Spans,
}

impl DbFile {
    fn open(repo: &Repository, path: &Path) -> Result<DbFile> {
        use std::os::unix::fs::FileExt;
        let object = path.display().to_string();
        let file = File::open(path).map_err(|e| Error::io("open", &object, e))?;
        let len = file
            .metadata()
            .map_err(|e| Error::io("stat", &object, e))?
            .len();
        if len == 0 {
            return Err(Error::corrupt(&object, "the database file is empty"));
        }
        let len = usize::try_from(len)
            .map_err(|_| Error::corrupt(&object, "too large for this machine"))?;
        let mut header = [0u8; 100];
        let n = file
            .read_at(&mut header, 0)
            .map_err(|e| Error::io("read", &object, e))?;
        let page_size = chunker::sqlite_page_size(header.get(..n).unwrap_or_default(), &object)?;
        let spans = match &repo.config().body.chunker {
            crate::config::ChunkerParams::FastCdc { min, avg, max } => {
                // Content-defined cuts need the bytes: one streaming pass (a max-size buffer).
                let reader = std::io::BufReader::with_capacity(
                    1 << 20,
                    File::open(path).map_err(|e| Error::io("open", &object, e))?,
                );
                fastcdc::v2020::StreamCDC::new(reader, *min, *avg, *max)
                    .map(|c| {
                        c.map(|c| (c.offset as usize, c.length)).map_err(|e| {
                            Error::io("read", &object, std::io::Error::other(e.to_string()))
                        })
                    })
                    .collect::<Result<Vec<_>>>()
                    .map(Spans::Listed)?
            }
            crate::config::ChunkerParams::Pages { pages } => Spans::Fixed {
                chunk_size: (*pages).max(1) as usize * page_size as usize,
                len,
            },
        };
        Ok(DbFile {
            file,
            object,
            len,
            page_size,
            spans,
        })
    }

    /// The chunks `spans[ws..we]`, mapped (read-only; unmapped when dropped), and the offset in
    /// the file of the map's first byte.
    fn window(&self, ws: usize, we: usize) -> Result<(memmap2::Mmap, usize)> {
        let start = self.spans.get(ws).map(|s| s.0).unwrap_or(0);
        let end = we
            .checked_sub(1)
            .and_then(|i| self.spans.get(i))
            .map(|s| s.0 + s.1)
            .unwrap_or(start);
        // SAFETY: the file is private to this process (a compaction base or a temporary copy)
        // and is not modified while mapped.
        #[allow(unsafe_code)]
        let m = unsafe {
            memmap2::MmapOptions::new()
                .offset(start as u64)
                .len(end.saturating_sub(start).max(1))
                .map(&self.file)
        }
        .map_err(|e| Error::io("map", &self.object, e))?;
        Ok((m, start))
    }

    /// The index just past the window that starts at chunk `ws`.
    fn window_end(&self, ws: usize) -> usize {
        let mut we = ws;
        let mut raw = 0;
        let n = self.spans.len();
        while we < n && raw < WINDOW {
            raw += self.spans.get(we).map(|s| s.1).unwrap_or(0);
            we += 1;
        }
        we
    }
}

/// Bytes `o..o + l` of the file, from a window mapped at file offset `base`.
fn bytes_at(window: &[u8], base: usize, o: usize, l: usize) -> &[u8] {
    o.checked_sub(base)
        .and_then(|r| window.get(r..r + l))
        .unwrap_or_default()
}

/// Page size, chunk spans and chunk references of a database image.
pub type Chunked = (u32, Vec<(usize, usize)>, Vec<ChunkRef>);

/// The chunk references of a database file, read window by window as a snapshot reads it.
pub fn file_chunk_refs(repo: &Repository, path: &Path) -> Result<Chunked> {
    let db = DbFile::open(repo, path)?;
    let crypto = repo.crypto();
    let mut refs = Vec::with_capacity(db.spans.len());
    let mut ws = 0;
    while ws < db.spans.len() {
        let we = db.window_end(ws);
        let (map, base) = db.window(ws, we)?;
        let part: Vec<ChunkRef> = (ws..we)
            .into_par_iter()
            .map(|i| {
                let (o, l) = db.spans.get(i).unwrap_or((0, 0));
                (crypto.chunk_id(bytes_at(&map, base, o, l)), l as u32)
            })
            .collect();
        refs.extend(part);
        ws = we;
    }
    Ok((db.page_size, db.spans.to_vec(), refs))
}

/// Write a snapshot of `input.path`, storing the chunks `index` (the repository's chunk index)
/// does not hold. `index` is not updated: the new chunks' index object is published, and the
/// next snapshot loads the index again (no caller keeps one across snapshots, and adding to it
/// here would hold it beside the manifest: about 50 bytes a chunk at the peak).
pub fn write_snapshot(
    repo: &Repository,
    input: &SnapshotInput,
    parent: Option<&Manifest>,
    parent_refs: Option<&[ChunkRef]>,
    index: &ChunkIndex,
) -> Result<Manifest> {
    let db = DbFile::open(repo, input.path)?;
    let page_size = db.page_size;
    let spans = &db.spans;
    let level = repo.config().body.zstd_level;
    let pack_target = repo.config().body.pack_target as usize;
    // Filled window by window below: hashing a window overlaps the disk writing the packs of
    // the previous ones.
    let mut refs: Vec<ChunkRef> = Vec::with_capacity(spans.len());
    let mut new_chunks = 0usize;
    // The new chunks met so far, as positions in `refs` (4 bytes a slot, not a set of ids).
    let mut seen = pack::IdTable::default();
    // Where the new chunks go, recorded as their blobs are placed in packs (12 bytes a chunk:
    // their ids are in `refs`). Written as an index object once every pack is published.
    let mut new_entries = pack::NewEntries::default();

    // Compression (rayon) and publishing run side by side: full packs go to two publisher
    // threads (mostly waiting on the disk), so the disk writes and syncs one pack while the next
    // is written and the cores compress the one after. The channel is a rendezvous: a full pack
    // waits in its builder until a publisher takes it, so few pack buffers live at once.
    let (tx, rx) = std::sync::mpsc::sync_channel::<PackBuilder>(0);
    let rx = std::sync::Mutex::new(rx);
    // The buffers of published packs come back to build the next ones in.
    let (pool_tx, pool_rx) = std::sync::mpsc::channel::<Vec<u8>>();
    let failed = std::sync::atomic::AtomicBool::new(false);
    let mut stored = std::thread::scope(|s| -> Result<u64> {
        let publish = || -> Result<u64> {
            let mut stored = 0u64;
            loop {
                let next = match rx.lock() {
                    Ok(rx) => rx.recv(),
                    Err(_) => break,
                };
                let Ok(full) = next else { break };
                match publish_pack(repo, full) {
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
            Ok(stored)
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
                let we = db.window_end(ws);
                let (map, base) = db.window(ws, we)?;
                let data: &[u8] = &map;
                let wrefs: Vec<ChunkRef> = (ws..we)
                    .into_par_iter()
                    .map(|i| {
                        let (o, l) = spans.get(i).unwrap_or((0, 0));
                        (repo.crypto().chunk_id(bytes_at(data, base, o, l)), l as u32)
                    })
                    .collect();
                refs.extend_from_slice(&wrefs);
                drop(wrefs);
                let mut new = Vec::new();
                for k in ws..we {
                    let Some((id, _)) = refs.get(k) else { continue };
                    if index.contains(id) {
                        continue;
                    }
                    let at = u32::try_from(k)
                        .map_err(|_| Error::Invalid("more than 2^32 chunks".into()))?;
                    if seen
                        .insert(id, at, |i| refs.get(i as usize).map(|r| &r.0))?
                        .is_none()
                    {
                        new.push(k);
                    }
                }
                new_chunks += new.len();
                ws = we;
                let groups = group_neighbours(&new, spans);
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
                            (Some(s), Some(e)) => bytes_at(data, base, s, e - s),
                            _ => &[],
                        };
                        pack::compress_contiguous(&ids, raw, level)
                    })
                    .collect::<Result<_>>()?;
                // Plan where each group lands (which pack, which offset: a sealed blob's size
                // is known in advance) and make room for it there, then seal them all in
                // parallel straight into the packs.
                let overhead = repo.crypto().overhead();
                // The pack being filled goes on (no spare buffer is taken for it).
                let mut builders = vec![builder];
                let mut starts = vec![builders.first().map(PackBuilder::len).unwrap_or(0)];
                let mut plan = Vec::with_capacity(compressed.len());
                for (g, members) in compressed.iter().zip(window) {
                    if builders.last().map(PackBuilder::len).unwrap_or(0) >= pack_target {
                        let b = new_builder();
                        starts.push(b.len());
                        builders.push(b);
                    }
                    let index = builders.len() - 1;
                    if let Some(b) = builders.last_mut() {
                        let sealed_len = g.zdata.len() + overhead;
                        let off = b.place(g, sealed_len);
                        new_entries.add_blob(
                            b.id,
                            off,
                            sealed_len as u32,
                            members.iter().zip(&g.chunks).map(|(&i, c)| (i, c.1)),
                        )?;
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
        let mut published = 0u64;
        for p in publishers {
            published += p
                .join()
                .unwrap_or_else(|_| Err(Error::Invalid("a pack publisher panicked".into())))?;
        }
        // A publish error explains a compression stop; otherwise report the compression error.
        produced?;
        Ok(published)
    })?;
    // The pipeline's buffers (spare packs) and the seen set are done with: the index object and
    // the manifest below are the large objects now.
    drop(seen);
    drop(pool_rx);
    // Index objects of at most INDEX_ENTRIES_PER_OBJECT entries (about 11 MB sealed), as a
    // prune writes them: whoever loads the index holds one or a few such objects at a time
    // beside it, not one object of every chunk of a large first snapshot.
    let per_object = crate::ops::prune::INDEX_ENTRIES_PER_OBJECT;
    let mut start = 0;
    while start < new_entries.len() {
        let end = (start + per_object).min(new_entries.len());
        let name = pack::index_name();
        let idx = pack::encode_new_entries(repo.crypto(), &name, &new_entries, &refs, start..end)?;
        stored += idx.len() as u64;
        repo.backend().put(&name, &idx)?;
        start = end;
    }
    drop(new_entries);

    let id = SnapshotId::random();
    let chunk_count = refs.len() as u64;
    let db_size = db.len as u64;
    drop(db);
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
                ChunkList::Full(refs)
            }
        }
        _ => ChunkList::Full(refs),
    };
    let mut m = Manifest {
        id,
        time: crate::config::now(),
        data_version: input.data_version,
        journal_segment: input.journal_segment,
        foreign_keys: input.foreign_keys,
        db_size,
        page_size,
        chunk_count,
        stored_bytes: 0,
        new_chunks: new_chunks as u64,
        list,
        object_size: 0,
        data_time_ms: input.data_time_ms,
        next: input.next,
    };
    // The manifest's own size counts in what the snapshot added.
    let probe = m.encode(repo.crypto())?.len() as u64;
    m.stored_bytes = stored + probe;
    let bytes = m.encode(repo.crypto())?;
    m.object_size = bytes.len() as u64;
    repo.backend()
        .put(&manifest::manifest_name(&m.id), &bytes)?;
    Ok(m)
}

/// Groups of neighbouring new chunks (indexes into `spans`, ascending), compressed together: at
/// most [`BLOB_CHUNKS`] chunks and [`BLOB_MAX_RAW`] bytes each.
fn group_neighbours(new: &[usize], spans: &Spans) -> Vec<Vec<usize>> {
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
fn publish_pack(repo: &Repository, b: PackBuilder) -> Result<Vec<u8>> {
    let (id, data, _) = b.finish();
    repo.backend().put(&pack::pack_name(&id), &data)?;
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
    // Work in slices of chunks; within a slice, chunks of one blob are decoded once. Each
    // slice's first file offset is listed (8 bytes a slice, not a chunk).
    const SLICE: usize = 1024;
    let mut starts = Vec::with_capacity(refs.len() / SLICE + 1);
    let mut off = 0u64;
    for slice in refs.chunks(SLICE) {
        starts.push(off);
        off += slice.iter().map(|r| u64::from(r.1)).sum::<u64>();
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
    refs.par_chunks(SLICE).zip(starts.par_iter()).try_for_each(
        |(slice, &start)| -> Result<()> {
            let mut cache: Option<((crate::ids::PackId, u64), Vec<u8>)> = None;
            let mut at = start;
            for (id, len) in slice {
                let loc = index.get(id).ok_or_else(|| {
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
                    let blob = pack::read_blob(
                        repo,
                        &loc.pack,
                        loc.blob_offset,
                        loc.blob_len,
                        BLOB_MAX_RAW,
                    )?;
                    cache = Some((key, blob));
                }
                let blob = cache.as_ref().map(|c| c.1.as_slice()).unwrap_or_default();
                let bytes = pack::chunk_from_blob(repo, blob, id, &loc)?;
                f.write_all_at(&bytes, at)
                    .map_err(|e| Error::io("write", dest.display().to_string(), e))?;
                at += u64::from(*len);
            }
            Ok(())
        },
    )?;
    f.sync_all()
        .map_err(|e| Error::io("fsync", dest.display().to_string(), e))?;
    Ok(m.db_size)
}
