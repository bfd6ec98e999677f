//! Packs hold compressed chunks; indexes say where each chunk is.
//!
//! Pack object `packs/<pack id>`:
//! ```text
//! envelope header (16, kind Pack) | pack id (16) | blob | blob | ...
//! blob = sealed(zstd(chunk ‖ chunk ‖ ...)), associated data = header ‖ pack id ‖ blob offset
//! ```
//! Up to [`BLOB_CHUNKS`] chunks that are new in a snapshot are compressed together (neighbouring
//! pages compress better together than alone) and sealed once.
//!
//! Index object `index/<id>`: `envelope header (16, kind Index) | sealed(zstd(entries))`, entries:
//! ```text
//! u64 pack count, pack ids (16 each)
//! u64 entry count, entries: chunk id (32) | u32 pack number | u64 blob offset | u32 blob length
//!                           | u32 offset in blob | u32 chunk length
//! ```
//! Invariants: a pack is published before any index that names it; an index before any manifest
//! that needs its chunks. No code path rewrites a published pack.

use std::collections::HashMap;

use rayon::prelude::*;

use crate::codec::{Dec, Enc};
use crate::crypto::Crypto;
use crate::envelope::{self, Header, Kind, HEADER_LEN};
use crate::error::{Error, Result};
use crate::ids::{ChunkId, PackId};
use crate::repo::Repository;

pub const BLOB_CHUNKS: usize = 16;
pub const BLOB_MAX_RAW: usize = 256 << 10;
pub const PACK_PREFIX_LEN: usize = HEADER_LEN + 16;

pub fn pack_name(id: &PackId) -> String {
    format!("packs/{id}")
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Location {
    pub pack: PackId,
    pub blob_offset: u64,
    pub blob_len: u32,
    pub inner_offset: u32,
    pub len: u32,
}

/// Builds one pack in memory from groups of new chunks.
pub struct PackBuilder {
    pub id: PackId,
    data: Vec<u8>,
    prefix: Vec<u8>,
    pub entries: Vec<(ChunkId, Location)>,
}

impl PackBuilder {
    pub fn new(crypto: &Crypto) -> Self {
        Self::in_buffer(crypto, Vec::new())
    }
    /// A new pack built in `buffer` (its contents dropped, its capacity reused: memory a
    /// published pack is done with is already mapped, so the next one does not fault it in).
    pub fn in_buffer(crypto: &Crypto, mut buffer: Vec<u8>) -> Self {
        let id = PackId::random();
        buffer.clear();
        buffer.extend_from_slice(&Header::new(Kind::Pack, crypto).encode());
        buffer.extend_from_slice(&id.0);
        PackBuilder {
            id,
            prefix: buffer.clone(),
            data: buffer,
            entries: Vec::new(),
        }
    }
    pub fn len(&self) -> usize {
        self.data.len()
    }
    /// Reserve room for `bytes` more, so a pack of known target size is not regrown.
    pub fn reserve(&mut self, bytes: usize) {
        self.data.reserve(bytes);
    }
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
    /// Add an already compressed group (see [`compress_group`]).
    pub fn add_group(&mut self, crypto: &Crypto, group: &CompressedGroup) -> Result<()> {
        let off = self.place(group, group.zdata.len() + crypto.overhead());
        let aad = self.aad_at(off);
        crypto.seal_into(&aad, &group.zdata, self.tail_mut(off as usize))
    }
    /// Associated data of a blob sealed to sit at `offset` of this pack.
    pub fn aad_at(&self, offset: u64) -> Vec<u8> {
        blob_aad(&self.prefix, offset)
    }
    /// Make room at the end for `group` sealed (`sealed_len` bytes), to be filled by
    /// [`Crypto::seal_into`] with [`Self::aad_at`] of the returned offset (see [`Self::tail_mut`]).
    pub fn place(&mut self, group: &CompressedGroup, sealed_len: usize) -> u64 {
        let off = self.data.len() as u64;
        for (id, inner, len) in &group.chunks {
            self.entries.push((
                *id,
                Location {
                    pack: self.id,
                    blob_offset: off,
                    blob_len: sealed_len as u32,
                    inner_offset: *inner,
                    len: *len,
                },
            ));
        }
        self.data.resize(self.data.len() + sealed_len, 0);
        off
    }
    /// The pack's bytes from `from` on (the room made by [`Self::place`]).
    pub fn tail_mut(&mut self, from: usize) -> &mut [u8] {
        self.data.get_mut(from..).unwrap_or_default()
    }
    pub fn finish(self) -> (PackId, Vec<u8>, Vec<(ChunkId, Location)>) {
        (self.id, self.data, self.entries)
    }
}

pub struct CompressedGroup {
    pub zdata: Vec<u8>,
    pub chunks: Vec<(ChunkId, u32, u32)>,
    pub raw_len: usize,
}

/// Compress a group of chunks (id, bytes) together.
pub fn compress_group(chunks: &[(ChunkId, &[u8])], level: i32) -> Result<CompressedGroup> {
    let mut raw = Vec::with_capacity(chunks.iter().map(|c| c.1.len()).sum());
    let mut ids = Vec::with_capacity(chunks.len());
    for (id, bytes) in chunks {
        ids.push((*id, bytes.len() as u32));
        raw.extend_from_slice(bytes);
    }
    compress_contiguous(&ids, &raw, level)
}

/// Compress chunks that lie one after the other in `raw` (ids with lengths, in order), without
/// copying them first. Each thread keeps one zstd context for all its groups.
pub fn compress_contiguous(
    ids: &[(ChunkId, u32)],
    raw: &[u8],
    level: i32,
) -> Result<CompressedGroup> {
    thread_local! {
        static CCTX: std::cell::RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> =
            const { std::cell::RefCell::new(None) };
    }
    let mut meta = Vec::with_capacity(ids.len());
    let mut at = 0u32;
    for (id, len) in ids {
        meta.push((*id, at, *len));
        at += len;
    }
    if at as usize != raw.len() {
        return Err(Error::Invalid(format!(
            "chunk group of {} bytes holds {at} bytes of chunks",
            raw.len()
        )));
    }
    let err = |e| Error::io("compress", "chunk group", e);
    let zdata = CCTX.with(|c| -> Result<Vec<u8>> {
        let mut c = c.borrow_mut();
        if c.as_ref().map(|(l, _)| *l) != Some(level) {
            *c = Some((level, zstd::bulk::Compressor::new(level).map_err(err)?));
        }
        match c.as_mut() {
            Some((_, z)) => z.compress(raw).map_err(err),
            None => zstd::bulk::compress(raw, level).map_err(err),
        }
    })?;
    Ok(CompressedGroup {
        zdata,
        chunks: meta,
        raw_len: raw.len(),
    })
}

fn blob_aad(prefix: &[u8], offset: u64) -> Vec<u8> {
    let mut aad = prefix.to_vec();
    aad.extend_from_slice(&offset.to_le_bytes());
    aad
}

/// Read and open one blob; returns its decompressed bytes.
pub fn read_blob(
    repo: &Repository,
    pack: &PackId,
    offset: u64,
    len: u32,
    raw_hint: usize,
) -> Result<Vec<u8>> {
    let sealed = repo
        .backend()
        .get_range(&pack_name(pack), offset, u64::from(len))?;
    let _ = raw_hint;
    open_blob(repo, pack, offset, &sealed)
}

/// Open and decompress the sealed blob `sealed`, read from `offset` of `pack`.
pub fn open_blob(repo: &Repository, pack: &PackId, offset: u64, sealed: &[u8]) -> Result<Vec<u8>> {
    // The pack prefix is determined by the key and the pack id: rebuild it rather than read it.
    // A stored prefix that differs makes the seal fail, naming the pack.
    let mut prefix = Header::new(Kind::Pack, repo.crypto()).encode().to_vec();
    prefix.extend_from_slice(&pack.0);
    let object = format!("{} (blob at offset {offset})", pack_name(pack));
    let z = repo
        .crypto()
        .open(&object, &blob_aad(&prefix, offset), sealed)?;
    zstd::stream::decode_all(z.as_slice()).map_err(|e| Error::corrupt(object, format!("zstd: {e}")))
}

/// Extract a chunk from its decompressed blob and check its address.
pub fn chunk_from_blob(
    repo: &Repository,
    blob: &[u8],
    id: &ChunkId,
    loc: &Location,
) -> Result<Vec<u8>> {
    let start = loc.inner_offset as usize;
    let bytes = blob.get(start..start + loc.len as usize).ok_or_else(|| {
        Error::corrupt(
            pack_name(&loc.pack),
            format!("chunk {id} lies outside its blob"),
        )
    })?;
    let got = repo.crypto().chunk_id(bytes);
    if got != *id {
        return Err(Error::ChecksumMismatch {
            object: format!("chunk {id} in {}", pack_name(&loc.pack)),
            expected: id.to_string(),
            got: got.to_string(),
        });
    }
    Ok(bytes.to_vec())
}

/// A map keyed by chunk id. foldhash: several times faster than SipHash on these 32-byte keys,
/// and seeded per process, so crafted page contents cannot degrade it.
pub type IdMap<V> = HashMap<ChunkId, V, foldhash::fast::RandomState>;

/// All chunk locations, from every index object.
#[derive(Default, Clone)]
pub struct ChunkIndex {
    pub map: IdMap<Location>,
    /// Index object names loaded.
    pub objects: Vec<String>,
}

impl ChunkIndex {
    pub fn load(repo: &Repository) -> Result<ChunkIndex> {
        let objects = load_index_objects(repo)?;
        let mut map = IdMap::with_capacity_and_hasher(
            objects.iter().map(|o| o.1.len()).sum(),
            Default::default(),
        );
        let mut names = Vec::with_capacity(objects.len());
        for (name, entries) in objects {
            for (id, loc) in entries {
                map.entry(id).or_insert(loc);
            }
            names.push(name);
        }
        Ok(ChunkIndex {
            map,
            objects: names,
        })
    }
}

/// An index object's name and entries.
pub type IndexObject = (String, Vec<(ChunkId, Location)>);

/// Every index object with its entries, in name order. Where two name the same chunk, the
/// first location is the one [`ChunkIndex`] uses.
pub fn load_index_objects(repo: &Repository) -> Result<Vec<IndexObject>> {
    // A prune's garbage collection (under the maintenance lock, which readers do not take)
    // publishes a replacement index and then deletes the old ones: an index listed and then
    // gone means the listing is stale, so list again (its replacement is there by then).
    let mut tries = 0;
    let (names, parts) = loop {
        tries += 1;
        let names: Vec<String> = repo
            .backend()
            .list("index/")?
            .into_iter()
            .map(|o| o.name)
            .filter(|n| crate::warn::is_object(n, "index/", |h| PackId::parse(h).is_ok()))
            .collect();
        let parts: Vec<Result<Vec<(ChunkId, Location)>>> = names
            .par_iter()
            .map(|n| {
                let data = repo.backend().get(n)?;
                decode_index(repo.crypto(), n, &data)
            })
            .collect();
        let vanished = parts
            .iter()
            .any(|p| matches!(p, Err(Error::NotFound { .. })));
        if !vanished || tries >= 5 {
            break (names, parts);
        }
    };
    names
        .into_iter()
        .zip(parts)
        .map(|(n, p)| p.map(|p| (n, p)))
        .collect()
}

pub fn encode_index(
    crypto: &Crypto,
    name: &str,
    entries: &[(ChunkId, Location)],
) -> Result<Vec<u8>> {
    let mut packs: Vec<PackId> = Vec::new();
    let mut pack_no: HashMap<PackId, u32> = HashMap::new();
    for (_, l) in entries {
        pack_no.entry(l.pack).or_insert_with(|| {
            packs.push(l.pack);
            (packs.len() - 1) as u32
        });
    }
    let mut e = Enc::new();
    e.u64(packs.len() as u64);
    for p in &packs {
        e.bytes(&p.0);
    }
    e.u64(entries.len() as u64);
    for (id, l) in entries {
        e.bytes(&id.0)
            .u32(pack_no.get(&l.pack).copied().unwrap_or(0))
            .u64(l.blob_offset)
            .u32(l.blob_len)
            .u32(l.inner_offset)
            .u32(l.len);
    }
    let z = zstd::bulk::compress(&e.finish(), 3).map_err(|err| Error::io("compress", name, err))?;
    Ok(envelope::seal_object(Kind::Index, crypto, name, &z))
}

pub fn decode_index(crypto: &Crypto, name: &str, data: &[u8]) -> Result<Vec<(ChunkId, Location)>> {
    let z = envelope::open_object(Kind::Index, crypto, name, data)?;
    let raw = zstd::stream::decode_all(z.as_slice())
        .map_err(|e| Error::corrupt(name, format!("zstd: {e}")))?;
    let mut d = Dec::new(&raw, name);
    let np = d.count(16)?;
    let mut packs = Vec::with_capacity(np);
    for _ in 0..np {
        packs.push(PackId(d.array()?));
    }
    let ne = d.count(56)?;
    let mut out = Vec::with_capacity(ne);
    for _ in 0..ne {
        let id = ChunkId(d.array()?);
        let pno = d.u32()? as usize;
        let pack = *packs
            .get(pno)
            .ok_or_else(|| Error::corrupt(name, format!("entry names pack #{pno} of {np}")))?;
        let loc = Location {
            pack,
            blob_offset: d.u64()?,
            blob_len: d.u32()?,
            inner_offset: d.u32()?,
            len: d.u32()?,
        };
        out.push((id, loc));
    }
    d.end()?;
    Ok(out)
}

pub fn index_name() -> String {
    format!("index/{}", PackId::random())
}
