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

/// A set of chunk ids kept elsewhere (in a list), as the list's positions: 5 bytes a slot (a
/// position and 8 bits of its hash) where a map keyed by the ids costs their 32 bytes again and
/// its slack. Open addressing, linear probing, at most 3/4 full: a probe walks neighbouring
/// slots and reads an id from the list only when its hash bits match. foldhash, seeded per
/// process: crafted page contents cannot pile their ids onto one run of slots. Membership is
/// exact: a match compares whole ids.
#[derive(Default, Clone)]
pub struct IdTable {
    slots: Vec<u32>,
    tags: Vec<u8>,
    len: usize,
    hasher: foldhash::fast::RandomState,
}

const EMPTY: u32 = u32::MAX;

impl IdTable {
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The home slot of `id` and its hash bits.
    fn home(&self, id: &ChunkId) -> (usize, u8) {
        use std::hash::BuildHasher;
        let h = self.hasher.hash_one(id);
        (
            (h as usize) & (self.slots.len().wrapping_sub(1)),
            (h >> 56) as u8,
        )
    }

    /// The position of `id`, where `key` gives the id at a position.
    pub fn find<'a>(&self, id: &ChunkId, key: impl Fn(u32) -> Option<&'a ChunkId>) -> Option<u32> {
        if self.slots.is_empty() {
            return None;
        }
        let mask = self.slots.len() - 1;
        let (mut i, tag) = self.home(id);
        loop {
            let s = *self.slots.get(i)?;
            if s == EMPTY {
                return None;
            }
            if self.tags.get(i) == Some(&tag) && key(s) == Some(id) {
                return Some(s);
            }
            i = (i + 1) & mask;
        }
    }

    /// Add position `at`, whose id is `id`, unless the id is there already: then its position
    /// is returned and nothing changes.
    pub fn insert<'a>(
        &mut self,
        id: &ChunkId,
        at: u32,
        key: impl Fn(u32) -> Option<&'a ChunkId>,
    ) -> Result<Option<u32>> {
        if at == EMPTY {
            return Err(Error::Invalid(
                "more than 2^32 - 1 chunks in one table".into(),
            ));
        }
        if (self.len + 1) * 4 > self.slots.len() * 3 {
            self.reserve(self.len + 1, &key);
        }
        let mask = self.slots.len() - 1;
        let (mut i, tag) = self.home(id);
        loop {
            let (Some(s), Some(t)) = (self.slots.get_mut(i), self.tags.get_mut(i)) else {
                return Err(Error::Invalid("chunk id table probe out of range".into()));
            };
            if *s == EMPTY {
                *s = at;
                *t = tag;
                self.len += 1;
                return Ok(None);
            }
            if *t == tag && key(*s) == Some(id) {
                return Ok(Some(*s));
            }
            i = (i + 1) & mask;
        }
    }

    /// Make room for `n` positions in all (one rehash instead of several while growing).
    pub fn reserve<'a>(&mut self, n: usize, key: impl Fn(u32) -> Option<&'a ChunkId>) {
        let want = (n.max(12) * 4).div_ceil(3).next_power_of_two();
        if want <= self.slots.len() {
            return;
        }
        let old = std::mem::replace(&mut self.slots, vec![EMPTY; want]);
        self.tags = vec![0; want];
        let mask = want - 1;
        for s in old.into_iter().filter(|&s| s != EMPTY) {
            let Some(id) = key(s) else { continue };
            let (mut i, tag) = self.home(id);
            while let (Some(slot), Some(t)) = (self.slots.get_mut(i), self.tags.get_mut(i)) {
                if *slot == EMPTY {
                    *slot = s;
                    *t = tag;
                    break;
                }
                i = (i + 1) & mask;
            }
        }
    }
}

/// One entry of a [`ChunkIndex`]: 44 bytes (its blob's pack, offset and length are shared by
/// the blob's chunks).
#[derive(Clone, Copy)]
struct IndexEntry {
    id: ChunkId,
    blob: u32,
    inner_offset: u32,
    len: u32,
}

/// A sealed blob: its pack (a number into the pack list), offset and length.
#[derive(Clone, Copy, PartialEq, Eq)]
struct BlobRef {
    offset: u64,
    pack: u32,
    len: u32,
}

/// All chunk locations, from every index object: where a chunk's first location wins (as the
/// index objects are read in name order). Compact, as its size follows the repository's chunk
/// count (a million chunks for 4 GiB of 4 KiB pages): 44 bytes an entry, 16 a blob, and an
/// [`IdTable`] of 5-byte slots, where a map of [`Location`]s by id cost about 150.
#[derive(Default, Clone)]
pub struct ChunkIndex {
    packs: Vec<PackId>,
    pack_no: HashMap<PackId, u32>,
    blobs: Vec<BlobRef>,
    entries: Vec<IndexEntry>,
    table: IdTable,
    /// Index object names loaded.
    pub objects: Vec<String>,
}

impl ChunkIndex {
    pub fn load(repo: &Repository) -> Result<ChunkIndex> {
        let mut index = ChunkIndex::default();
        visit_index_objects(repo, &mut |visit| match visit {
            IndexVisit::Start => {
                index = ChunkIndex::default();
                Ok(())
            }
            IndexVisit::Object { name, count } => {
                index.reserve(count);
                index.objects.push(name.to_string());
                Ok(())
            }
            IndexVisit::Entry(id, loc) => index.insert(&id, &loc).map(|_| ()),
        })?;
        Ok(index)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Room for `n` more entries.
    pub fn reserve(&mut self, n: usize) {
        // Exactly: index objects are loaded one after another, and a small one after the big
        // ones would otherwise double a list of a million entries.
        self.entries.reserve_exact(n);
        let entries = &self.entries;
        self.table.reserve(entries.len() + n, |i| {
            entries.get(i as usize).map(|e| &e.id)
        });
    }

    /// The position of `id`'s entry (its place in [`Self::iter`]).
    pub fn position_of(&self, id: &ChunkId) -> Option<usize> {
        let entries = &self.entries;
        self.table
            .find(id, |i| entries.get(i as usize).map(|e| &e.id))
            .map(|i| i as usize)
    }

    fn position(&self, id: &ChunkId) -> Option<&IndexEntry> {
        let entries = &self.entries;
        let at = self
            .table
            .find(id, |i| entries.get(i as usize).map(|e| &e.id))?;
        entries.get(at as usize)
    }

    pub fn contains(&self, id: &ChunkId) -> bool {
        self.position(id).is_some()
    }

    pub fn get(&self, id: &ChunkId) -> Option<Location> {
        self.position(id).and_then(|e| self.location(e))
    }

    fn location(&self, e: &IndexEntry) -> Option<Location> {
        let b = self.blobs.get(e.blob as usize)?;
        Some(Location {
            pack: *self.packs.get(b.pack as usize)?,
            blob_offset: b.offset,
            blob_len: b.len,
            inner_offset: e.inner_offset,
            len: e.len,
        })
    }

    /// Add a chunk's location unless the chunk has one already (the first location wins).
    /// Returns whether it was added.
    pub fn insert(&mut self, id: &ChunkId, loc: &Location) -> Result<bool> {
        let at = u32::try_from(self.entries.len()).unwrap_or(EMPTY);
        let entries = &self.entries;
        if self
            .table
            .insert(id, at, |i| entries.get(i as usize).map(|e| &e.id))?
            .is_some()
        {
            return Ok(false);
        }
        let pack = match self.pack_no.get(&loc.pack) {
            Some(&p) => p,
            None => {
                let p = self.packs.len() as u32;
                self.packs.push(loc.pack);
                self.pack_no.insert(loc.pack, p);
                p
            }
        };
        let blob = BlobRef {
            offset: loc.blob_offset,
            pack,
            len: loc.blob_len,
        };
        // The chunks of a blob come one after the other (an index object lists them so).
        if self.blobs.last() != Some(&blob) {
            self.blobs.push(blob);
        }
        self.entries.push(IndexEntry {
            id: *id,
            blob: (self.blobs.len() - 1) as u32,
            inner_offset: loc.inner_offset,
            len: loc.len,
        });
        Ok(true)
    }

    /// The chunk added `i`-th, with its location.
    pub fn entry_at(&self, i: usize) -> Option<(ChunkId, Location)> {
        let e = self.entries.get(i)?;
        Some((e.id, self.location(e)?))
    }

    /// Every chunk with its location, in the order added.
    pub fn iter(&self) -> impl Iterator<Item = (ChunkId, Location)> + '_ {
        self.entries
            .iter()
            .filter_map(|e| self.location(e).map(|l| (e.id, l)))
    }
}

/// An index object's name and entries.
pub type IndexObject = (String, Vec<(ChunkId, Location)>);

/// What [`visit_index_objects`] reports, in order.
pub enum IndexVisit<'a> {
    /// A (new) pass over the index objects begins: forget what earlier ones reported (a
    /// listing found stale is read again).
    Start,
    /// The next index object, with its entry count.
    Object { name: &'a str, count: usize },
    /// One of its entries.
    Entry(ChunkId, Location),
}

/// Index objects fetched at once: fetches overlap (an object store's latency), while at most
/// this many sealed objects are held.
const INDEX_FETCH_BATCH: usize = 8;
/// Sealed index bytes fetched at once (unless one object is larger): what a load holds beside
/// the index it builds.
const INDEX_FETCH_BYTES: u64 = 16 << 20;

/// Every index object with its entries, in name order, decoded as it is read (no object's
/// entries are held but by `f`). Where two name the same chunk, the first location is the one
/// [`ChunkIndex`] uses.
pub fn visit_index_objects(
    repo: &Repository,
    f: &mut dyn FnMut(IndexVisit) -> Result<()>,
) -> Result<()> {
    // A prune's garbage collection (under the maintenance lock, which readers do not take)
    // publishes a replacement index and then deletes the old ones: an index listed and then
    // gone means the listing is stale, so list again (its replacement is there by then).
    let mut tries = 0;
    'list: loop {
        tries += 1;
        f(IndexVisit::Start)?;
        let objects: Vec<(String, u64)> = repo
            .backend()
            .list("index/")?
            .into_iter()
            .filter(|o| crate::warn::is_object(&o.name, "index/", |h| PackId::parse(h).is_ok()))
            .map(|o| (o.name, o.size))
            .collect();
        // Batches of at most INDEX_FETCH_BATCH objects and INDEX_FETCH_BYTES (or one object).
        let mut batches: Vec<Vec<String>> = Vec::new();
        let mut bytes = 0u64;
        for (name, size) in objects {
            match batches.last_mut() {
                Some(b) if b.len() < INDEX_FETCH_BATCH && bytes + size <= INDEX_FETCH_BYTES => {
                    bytes += size;
                    b.push(name);
                }
                _ => {
                    bytes = size;
                    batches.push(vec![name]);
                }
            }
        }
        for batch in &batches {
            let data: Vec<Result<Vec<u8>>> =
                batch.par_iter().map(|n| repo.backend().get(n)).collect();
            if tries < 5
                && data
                    .iter()
                    .any(|d| matches!(d, Err(Error::NotFound { .. })))
            {
                continue 'list;
            }
            for (name, data) in batch.iter().zip(data) {
                decode_index_with(repo.crypto(), name, data?, &mut |v| f(v))?;
            }
            // The objects' bytes are freed: give them back before the next batch grows the
            // index (crate::mem).
            crate::mem::release_free();
        }
        return Ok(());
    }
}

/// Every index object with its entries, in name order (see [`visit_index_objects`]).
pub fn load_index_objects(repo: &Repository) -> Result<Vec<IndexObject>> {
    let mut out: Vec<IndexObject> = Vec::new();
    visit_index_objects(repo, &mut |v| {
        match v {
            IndexVisit::Start => out.clear(),
            IndexVisit::Object { name, count } => {
                out.push((name.to_string(), Vec::with_capacity(count)))
            }
            IndexVisit::Entry(id, loc) => {
                if let Some(o) = out.last_mut() {
                    o.1.push((id, loc));
                }
            }
        }
        Ok(())
    })?;
    Ok(out)
}

/// Encoded index entries, given in order as pack ids and then entries (`count` of them).
fn encode_index_stream(
    crypto: &Crypto,
    name: &str,
    packs: &[PackId],
    count: usize,
    entries: &mut dyn Iterator<Item = (ChunkId, u32, Location)>,
) -> Result<Vec<u8>> {
    use std::io::Write;
    let err = |e| Error::io("compress", name, e);
    // zstd writes straight into the object (which is sealed in place): an index of a million
    // chunks is about 40 MB, not held twice or three times.
    let buf = envelope::object_buffer(crypto, count * 40 + packs.len() * 16 + 64);
    let mut z = zstd::stream::write::Encoder::new(buf, 3).map_err(err)?;
    let mut e = Enc::new();
    e.u64(packs.len() as u64);
    for p in packs {
        e.bytes(&p.0);
    }
    e.u64(count as u64);
    let mut written = 0usize;
    for (id, pno, l) in entries {
        e.bytes(&id.0)
            .u32(pno)
            .u64(l.blob_offset)
            .u32(l.blob_len)
            .u32(l.inner_offset)
            .u32(l.len);
        written += 1;
        if written.is_multiple_of(1024) {
            z.write_all(&std::mem::take(&mut e).finish()).map_err(err)?;
        }
    }
    if written != count {
        return Err(Error::Invalid(format!(
            "{name}: {written} entries written, {count} announced"
        )));
    }
    z.write_all(&e.finish()).map_err(err)?;
    let buf = z.finish().map_err(err)?;
    envelope::seal_object_in_place(Kind::Index, crypto, name, buf)
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
    encode_index_stream(
        crypto,
        name,
        &packs,
        entries.len(),
        &mut entries
            .iter()
            .map(|(id, l)| (*id, pack_no.get(&l.pack).copied().unwrap_or(0), *l)),
    )
}

/// Encode an index object of the entries `part` of `new` (ids looked up in `refs`; see
/// [`NewEntries`]), naming only the packs they are in.
pub fn encode_new_entries(
    crypto: &Crypto,
    name: &str,
    new: &NewEntries,
    refs: &[crate::manifest::ChunkRef],
    part: std::ops::Range<usize>,
) -> Result<Vec<u8>> {
    // The entries are in pack order: a part's packs are consecutive in the pack list.
    let pack_of = |i: usize| {
        new.chunks
            .get(i)
            .and_then(|c| new.blobs.get(c.1 as usize))
            .map(|b| b.pack as usize)
    };
    let (first, last) = match (
        pack_of(part.start),
        part.end.checked_sub(1).and_then(pack_of),
    ) {
        (Some(f), Some(l)) if f <= l => (f, l),
        _ => return Err(Error::Invalid(format!("{name}: no entries {part:?}"))),
    };
    let packs = new.packs.get(first..=last).unwrap_or_default();
    let count = part.len();
    let mut it = new
        .iter(refs)
        .skip(part.start)
        .take(count)
        .map(|(id, pno, l)| (id, pno.saturating_sub(first as u32), l));
    encode_index_stream(crypto, name, packs, count, &mut it)
}

/// The index entries of a snapshot's new chunks, as it writes them: positions in its chunk list
/// (where their ids and lengths are), 12 bytes a chunk, and their blobs.
#[derive(Default)]
pub struct NewEntries {
    packs: Vec<PackId>,
    blobs: Vec<BlobRef>,
    chunks: Vec<(u32, u32, u32)>,
}

impl NewEntries {
    pub fn len(&self) -> usize {
        self.chunks.len()
    }
    pub fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }
    /// A blob of `pack` at `offset`, `len` bytes sealed, holding the chunks at positions
    /// `chunks` of the list, at the offsets in the blob given.
    pub fn add_blob(
        &mut self,
        pack: PackId,
        offset: u64,
        len: u32,
        chunks: impl Iterator<Item = (usize, u32)>,
    ) -> Result<()> {
        if self.packs.last() != Some(&pack) {
            self.packs.push(pack);
        }
        let blob = u32::try_from(self.blobs.len())
            .map_err(|_| Error::Invalid("too many blobs in one snapshot".into()))?;
        self.blobs.push(BlobRef {
            offset,
            pack: (self.packs.len() - 1) as u32,
            len,
        });
        for (at, inner) in chunks {
            let at = u32::try_from(at)
                .map_err(|_| Error::Invalid("too many chunks in one snapshot".into()))?;
            self.chunks.push((at, blob, inner));
        }
        Ok(())
    }

    /// The entries with their ids and lengths from `refs`: (id, pack number, location).
    pub fn iter<'a>(
        &'a self,
        refs: &'a [crate::manifest::ChunkRef],
    ) -> impl Iterator<Item = (ChunkId, u32, Location)> + 'a {
        self.chunks.iter().filter_map(move |&(at, blob, inner)| {
            let (id, len) = *refs.get(at as usize)?;
            let b = self.blobs.get(blob as usize)?;
            Some((
                id,
                b.pack,
                Location {
                    pack: *self.packs.get(b.pack as usize)?,
                    blob_offset: b.offset,
                    blob_len: b.len,
                    inner_offset: inner,
                    len,
                },
            ))
        })
    }
}

/// Decode an index object, giving its entries to `f` as they are read (the object is opened in
/// place and decompressed as a stream: no copy of it, nor its entries at once).
fn decode_index_with(
    crypto: &Crypto,
    name: &str,
    mut data: Vec<u8>,
    f: &mut dyn FnMut(IndexVisit) -> Result<()>,
) -> Result<()> {
    let body = envelope::open_object_in_place(Kind::Index, crypto, name, &mut data)?;
    decode_index_body(name, data.get(body).unwrap_or_default(), f)
}

/// [`decode_index_with`], all or nothing: the whole object is decoded and checked before `f`
/// sees an entry (it is decompressed twice, never held decompressed), so a damaged object
/// gives no entry at all.
pub fn decode_index_checked(
    crypto: &Crypto,
    name: &str,
    mut data: Vec<u8>,
    f: &mut dyn FnMut(IndexVisit) -> Result<()>,
) -> Result<()> {
    let body = envelope::open_object_in_place(Kind::Index, crypto, name, &mut data)?;
    let z = data.get(body).unwrap_or_default();
    decode_index_body(name, z, &mut |_| Ok(()))?;
    decode_index_body(name, z, f)
}

fn decode_index_body(
    name: &str,
    z: &[u8],
    f: &mut dyn FnMut(IndexVisit) -> Result<()>,
) -> Result<()> {
    use std::io::Read;
    let dec = zstd::stream::read::Decoder::with_buffer(z)
        .map_err(|e| Error::corrupt(name, format!("zstd: {e}")))?;
    let mut r = std::io::BufReader::with_capacity(64 << 10, dec);
    let mut pos = 0u64;
    let mut read = |buf: &mut [u8]| -> Result<()> {
        r.read_exact(buf).map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                Error::corrupt(
                    name,
                    format!("truncated: needed {} bytes at offset {pos}", buf.len()),
                )
            } else {
                Error::corrupt(name, format!("zstd: {e}"))
            }
        })?;
        pos += buf.len() as u64;
        Ok(())
    };
    let mut u64b = [0u8; 8];
    read(&mut u64b)?;
    let np = u64::from_le_bytes(u64b);
    // Counts only size what is read (and are capped): a corrupt count fails on the bytes
    // missing, not by allocating.
    let mut packs = Vec::with_capacity(np.min(1 << 16) as usize);
    for _ in 0..np {
        let mut p = [0u8; 16];
        read(&mut p)?;
        packs.push(PackId(p));
    }
    read(&mut u64b)?;
    let ne = u64::from_le_bytes(u64b);
    f(IndexVisit::Object {
        name,
        count: ne.min(z.len() as u64) as usize,
    })?;
    let mut rec = [0u8; 56];
    for _ in 0..ne {
        read(&mut rec)?;
        let mut d = Dec::new(&rec, name);
        let id = ChunkId(d.array()?);
        let pno = d.u32()? as usize;
        let pack = *packs.get(pno).ok_or_else(|| {
            Error::corrupt(name, format!("entry names pack #{pno} of {}", packs.len()))
        })?;
        let loc = Location {
            pack,
            blob_offset: d.u64()?,
            blob_len: d.u32()?,
            inner_offset: d.u32()?,
            len: d.u32()?,
        };
        f(IndexVisit::Entry(id, loc))?;
    }
    let mut rest = [0u8; 1];
    let extra = r
        .read(&mut rest)
        .map_err(|e| Error::corrupt(name, format!("zstd: {e}")))?;
    if extra != 0 {
        return Err(Error::corrupt(name, "trailing bytes"));
    }
    Ok(())
}

pub fn decode_index(crypto: &Crypto, name: &str, data: &[u8]) -> Result<Vec<(ChunkId, Location)>> {
    let mut out = Vec::new();
    decode_index_with(crypto, name, data.to_vec(), &mut |v| {
        if let IndexVisit::Entry(id, loc) = v {
            out.push((id, loc));
        }
        Ok(())
    })?;
    Ok(out)
}

pub fn index_name() -> String {
    format!("index/{}", PackId::random())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn id(n: u32) -> ChunkId {
        let mut b = [0u8; 32];
        b[..4].copy_from_slice(&n.to_le_bytes());
        ChunkId(b)
    }

    fn loc(pack: u8, blob: u64, inner: u32) -> Location {
        Location {
            pack: PackId([pack; 16]),
            blob_offset: blob,
            blob_len: 100,
            inner_offset: inner,
            len: 10,
        }
    }

    #[test]
    fn id_table_is_exact_across_growth() {
        let ids: Vec<ChunkId> = (0..5000).map(|n| id(n % 3000)).collect();
        let mut t = IdTable::default();
        for (i, x) in ids.iter().enumerate() {
            let got = t.insert(x, i as u32, |k| ids.get(k as usize)).unwrap();
            // The first position of an id stays; later ones report it.
            assert_eq!(got, (i >= 3000).then_some((i % 3000) as u32));
        }
        assert_eq!(t.len(), 3000);
        for n in 0..3000 {
            assert_eq!(t.find(&id(n), |k| ids.get(k as usize)), Some(n));
        }
        assert_eq!(t.find(&id(3000), |k| ids.get(k as usize)), None);
    }

    #[test]
    fn new_entries_encode_in_parts_naming_their_packs() {
        let crypto = Crypto::plaintext();
        let refs: Vec<crate::manifest::ChunkRef> = (0..100).map(|n| (id(n), 10)).collect();
        let mut new = NewEntries::default();
        let mut want = Vec::new();
        // Chunks 0..100 in blobs of 10, five blobs a pack.
        for b in 0..10u32 {
            let pack = PackId([(b / 5) as u8; 16]);
            let chunks: Vec<(usize, u32)> =
                (0..10).map(|k| ((b * 10 + k) as usize, k * 10)).collect();
            new.add_blob(pack, u64::from(b % 5) * 100, 100, chunks.iter().copied())
                .unwrap();
            for (at, inner) in chunks {
                want.push((
                    id(at as u32),
                    Location {
                        pack,
                        blob_offset: u64::from(b % 5) * 100,
                        blob_len: 100,
                        inner_offset: inner,
                        len: 10,
                    },
                ));
            }
        }
        let mut got = Vec::new();
        for part in [0..30, 30..55, 55..100] {
            let data = encode_new_entries(&crypto, "index/p", &new, &refs, part.clone()).unwrap();
            let entries = decode_index(&crypto, "index/p", &data).unwrap();
            assert_eq!(entries.len(), part.len());
            got.extend(entries);
        }
        assert_eq!(got, want);
        assert!(encode_new_entries(&crypto, "index/p", &new, &refs, 100..101).is_err());
    }

    #[test]
    fn chunk_index_keeps_the_first_location_and_round_trips() {
        let mut index = ChunkIndex::default();
        let mut entries = Vec::new();
        for n in 0..2000u32 {
            let l = loc((n / 700) as u8, u64::from(n / 16) * 100, (n % 16) * 10);
            assert!(index.insert(&id(n), &l).unwrap());
            entries.push((id(n), l));
        }
        assert!(!index.insert(&id(5), &loc(9, 0, 0)).unwrap());
        assert_eq!(index.get(&id(5)), Some(entries[5].1));
        assert!(index.contains(&id(1999)));
        assert!(!index.contains(&id(2000)));
        assert_eq!(index.iter().collect::<Vec<_>>(), entries);

        for crypto in [
            Crypto::plaintext(),
            Crypto::encrypted(&crate::crypto::MasterKey::generate()),
        ] {
            let data = encode_index(&crypto, "index/x", &entries).unwrap();
            assert_eq!(decode_index(&crypto, "index/x", &data).unwrap(), entries);
            let mut bad = data.clone();
            let last = bad.len() - 1;
            bad[last] ^= 1;
            assert!(decode_index(&crypto, "index/x", &bad).is_err());
            assert!(decode_index(&crypto, "index/y", &data).is_err());
        }
    }
}
