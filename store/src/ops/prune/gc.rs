//! Garbage collection: keep what the kept snapshots need, with every pack's dead space on the
//! books, and keep the number of packs and index objects bounded.
//!
//! **The books.** Index objects name every chunk stored in a kept pack, live or dead: a chunk no
//! kept snapshot references stays indexed while its pack is kept (it is there; a later snapshot
//! may reference it again). Per pack:
//! - its size is what the backend lists: the real bytes, whatever the indexes say;
//! - a blob (up to 16 chunks compressed and sealed together) counts as live for its sealed
//!   length × its live raw bytes / its raw bytes (the raw bytes are those of the chunks indexed
//!   in it);
//! - dead = size − pack prefix − the live share of its blobs. Blobs that no index names (older
//!   versions of this code dropped dead chunks from the index) are dead by this count too.
//!
//! **The choice** (see [`choose`]):
//! - a pack without a live chunk is deleted;
//! - packs are rewritten, most dead first, until the dead bytes left are at most
//!   [`MAX_DEAD_FRACTION`] of the pack bytes, so the packs hold at most 1/(1 − that) of their
//!   live bytes whatever the history;
//! - when more than [`SMALL_PACKS_MAX`] packs are small (under half the pack target), the
//!   smallest are merged until that holds again: the pack count grows with the stored bytes
//!   (one per half pack target, plus [`SMALL_PACKS_MAX`]), not with the number of compactions;
//! - the index objects are rewritten when a pack they name goes, or when there are more than
//!   [`INDEX_OBJECTS_MAX`]; the new ones hold [`INDEX_ENTRIES_PER_OBJECT`] entries each at most.
//!
//! Rewriting ([`super::repack`]) takes the live chunks only: a partly live blob is opened and its
//! live chunks compressed again, in the order of the newest kept snapshot, so neighbouring pages
//! are compressed together as a fresh backup would.
//!
//! Commit order: new packs, then new index objects, then the old index objects are deleted, then
//! the packs no index names. A crash between any two leaves every kept chunk indexed in a pack
//! that exists (docs/format.md, "Prune").

use std::collections::{BTreeMap, HashSet};

use crate::error::{Error, Result};
use crate::ids::{ChunkId, PackId};
use crate::manifest::ChunkRef;
use crate::pack::{self, ChunkIndex, IndexVisit, Location, PACK_PREFIX_LEN};
use crate::repo::Repository;

use super::PruneReport;

/// Dead bytes a collection leaves, as a fraction of the pack bytes.
pub const MAX_DEAD_FRACTION: f64 = 0.10;
/// Small packs (under half the pack target) tolerated before the smallest are merged.
pub const SMALL_PACKS_MAX: usize = 8;
/// Index objects tolerated before they are merged into one.
pub const INDEX_OBJECTS_MAX: usize = 8;
/// Entries per index object written by a collection (about 15 MB of raw entries: under every
/// backend's object size limit).
pub const INDEX_ENTRIES_PER_OBJECT: usize = 262_144;

/// The chunks kept snapshots reference, with the place of each in the newest kept snapshot
/// that has it (rank 0 is the newest kept snapshot): the order rewritten chunks are stored in.
///
/// Held as the first 8 bytes of each id with its place, sorted: 16 bytes a chunk, where the
/// ids with a table cost 56, so that it fits beside the books' index (itself about 56 bytes a
/// chunk) on a small machine. A prefix can only make a chunk look live that is not (another
/// id with the same first 64 bits): such a chunk is kept, never one a snapshot needs deleted.
/// Ids are blake3, keyed in an encrypted repository, so such a pair is chance alone (about
/// one in 10^7 repositories of 10^6 chunks), and costs a dead chunk's bytes.
#[derive(Default)]
pub struct Live {
    /// (id prefix, place), sorted, one per prefix (the lowest place).
    keys: Vec<(u64, u64)>,
}

/// Bits of a place's position in its snapshot (the rank takes the rest): 2^40 chunks, 2^24
/// kept snapshots; beyond, places saturate (they order rewritten chunks, nothing else).
const ORDER_POS_BITS: u32 = 40;

fn prefix(id: &ChunkId) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(id.0.get(..8).unwrap_or(&[0; 8]));
    u64::from_be_bytes(b)
}

impl Live {
    fn place(rank: usize, pos: usize) -> u64 {
        let rank = (rank as u64).min((1 << (64 - ORDER_POS_BITS)) - 1);
        rank << ORDER_POS_BITS | (pos as u64).min((1 << ORDER_POS_BITS) - 1)
    }

    /// Add the chunks of the kept snapshot of `rank` (0: the newest).
    pub fn add(&mut self, rank: usize, refs: &[ChunkRef]) {
        self.keys.reserve_exact(refs.len());
        for (pos, (id, _)) in refs.iter().enumerate() {
            self.keys.push((prefix(id), Self::place(rank, pos)));
        }
        // The lowest place of each prefix sorts first and is the one kept.
        self.keys.sort_unstable();
        self.keys.dedup_by_key(|k| k.0);
        self.keys.shrink_to_fit();
    }

    fn find(&self, id: &ChunkId) -> Option<u64> {
        let p = prefix(id);
        self.keys
            .binary_search_by_key(&p, |k| k.0)
            .ok()
            .and_then(|i| self.keys.get(i))
            .map(|k| k.1)
    }
    pub fn contains(&self, id: &ChunkId) -> bool {
        self.find(id).is_some()
    }
    /// Where `id` sorts among the chunks to rewrite.
    pub fn order(&self, id: &ChunkId) -> (usize, u64) {
        match self.find(id) {
            Some(key) => (
                (key >> ORDER_POS_BITS) as usize,
                key & ((1 << ORDER_POS_BITS) - 1),
            ),
            None => (usize::MAX, 0),
        }
    }

    /// The prefix of a live chunk that no id of `index` starts with, if any: that chunk is in
    /// no index.
    fn unindexed(&self, index: &ChunkIndex) -> Option<u64> {
        let mut seen = vec![false; self.keys.len()];
        for (id, _) in index.iter() {
            if let Ok(i) = self.keys.binary_search_by_key(&prefix(&id), |k| k.0) {
                if let Some(s) = seen.get_mut(i) {
                    *s = true;
                }
            }
        }
        self.keys
            .iter()
            .zip(seen)
            .find(|(_, seen)| !seen)
            .map(|(k, _)| k.0)
    }
}

/// One pack on the books.
#[derive(Clone, Debug)]
pub struct PackBook {
    pub id: PackId,
    pub name: String,
    /// As listed by the backend.
    pub size: u64,
    /// Bytes of its blobs that hold live chunks (each blob pro rata of its raw bytes).
    pub live: u64,
    /// Whether any chunk in it is live.
    pub has_live: bool,
}

impl PackBook {
    pub fn dead(&self) -> u64 {
        self.size.saturating_sub(self.live)
    }
}

/// Every index entry (deduplicated), which of them are live, and the books of every pack.
pub struct Books {
    /// The location each chunk is read from ([`pack::ChunkIndex`]'s rule: the first index
    /// object, in name order, that names it).
    pub canonical: ChunkIndex,
    /// The other distinct locations index objects give a chunk (rare: a chunk stored twice
    /// and indexed in both places).
    others: Vec<(ChunkId, Location)>,
    /// Every distinct (chunk, location), sorted by pack, blob and place in the blob: positions
    /// in `canonical`, then in `others` (after `canonical.len()`). 4 bytes an entry, where a
    /// list of the entries cost 88.
    sorted: Vec<u32>,
    pub packs: BTreeMap<PackId, PackBook>,
    /// The index objects read.
    pub index_objects: Vec<String>,
}

impl Books {
    /// The entry at position `i` (see `sorted`), and whether it is the canonical one.
    fn entry(&self, i: u32) -> Option<(ChunkId, Location, bool)> {
        let i = i as usize;
        match self.canonical.entry_at(i) {
            Some((id, loc)) => Some((id, loc, true)),
            None => self
                .others
                .get(i - self.canonical.len())
                .map(|&(id, loc)| (id, loc, false)),
        }
    }

    /// Every distinct (chunk, location, whether canonical), by pack, blob and place in the blob.
    pub fn entries(&self) -> impl Iterator<Item = (ChunkId, Location, bool)> + '_ {
        self.sorted.iter().filter_map(|&i| self.entry(i))
    }

    /// Whether an entry from [`Self::entries`] is the live copy of a chunk a kept snapshot
    /// references (a chunk is read from its canonical location only).
    fn live_entry(live: &Live, e: &(ChunkId, Location, bool)) -> bool {
        e.2 && live.contains(&e.0)
    }
}

pub fn books(repo: &Repository, live: &Live) -> Result<Books> {
    let mut canonical = ChunkIndex::default();
    let mut others: Vec<(ChunkId, Location)> = Vec::new();
    pack::visit_index_objects(repo, &mut |v| {
        match v {
            IndexVisit::Start => {
                canonical = ChunkIndex::default();
                others.clear();
            }
            IndexVisit::Object { name, count } => {
                canonical.reserve(count);
                canonical.objects.push(name.to_string());
            }
            IndexVisit::Entry(id, loc) => {
                if !canonical.insert(&id, &loc)? && canonical.get(&id) != Some(loc) {
                    others.push((id, loc));
                }
            }
        }
        Ok(())
    })?;
    others.sort_by_key(|(id, l)| (*id, l.pack, l.blob_offset, l.inner_offset));
    others.dedup();
    let index_objects = std::mem::take(&mut canonical.objects);
    let n = canonical.len() + others.len();
    let n = u32::try_from(n).map_err(|_| Error::Invalid("more than 2^32 index entries".into()))?;
    let mut sorted: Vec<u32> = (0..n).collect();
    {
        let key = |i: u32| {
            let i = i as usize;
            canonical
                .entry_at(i)
                .or_else(|| others.get(i - canonical.len()).copied())
                .map(|(id, l)| (l.pack, l.blob_offset, l.inner_offset, id))
        };
        sorted.sort_unstable_by_key(|a| key(*a));
    }

    let mut packs: BTreeMap<PackId, PackBook> = BTreeMap::new();
    for o in repo.backend().list("packs/")? {
        let Some(id) = o
            .name
            .strip_prefix("packs/")
            .and_then(|h| PackId::parse(h).ok())
        else {
            crate::warn::stray(&o.name); // not ours: never deleted
            continue;
        };
        packs.insert(
            id,
            PackBook {
                id,
                name: o.name,
                size: o.size,
                live: 0,
                has_live: false,
            },
        );
    }
    let mut b = Books {
        canonical,
        others,
        sorted,
        packs,
        index_objects,
    };
    // Each blob's live share.
    let mut shares: Vec<(PackId, u64)> = Vec::new();
    let mut entries = b.entries().peekable();
    while let Some(first) = entries.next() {
        let key = (first.1.pack, first.1.blob_offset);
        let blob_len = u64::from(first.1.blob_len);
        let (mut raw, mut live_raw) = (0u64, 0u64);
        let mut e = Some(first);
        while let Some(cur) = e {
            let loc = &cur.1;
            raw = raw.max(u64::from(loc.inner_offset) + u64::from(loc.len));
            if Books::live_entry(live, &cur) {
                live_raw += u64::from(loc.len);
            }
            e = entries.next_if(|n| (n.1.pack, n.1.blob_offset) == key);
        }
        if live_raw > 0 {
            shares.push((
                key.0,
                (blob_len as f64 * live_raw.min(raw) as f64 / raw.max(1) as f64) as u64,
            ));
        }
    }
    drop(entries);
    for (pack, share) in shares {
        if let Some(p) = b.packs.get_mut(&pack) {
            p.has_live = true;
            p.live += share;
        }
    }
    for p in b.packs.values_mut() {
        if p.has_live {
            // The prefix is the pack's: it goes when the pack does.
            p.live = (p.live + PACK_PREFIX_LEN as u64).min(p.size);
        }
    }
    Ok(b)
}

/// What a collection does to the packs.
#[derive(Debug, Default)]
pub struct Choice {
    /// Packs with no live chunk (including orphans no index names): deleted.
    pub delete: HashSet<PackId>,
    /// Packs whose live chunks are rewritten for their dead space.
    pub repack: HashSet<PackId>,
    /// Small packs whose live chunks are rewritten to merge them.
    pub merge: HashSet<PackId>,
}

impl Choice {
    pub fn rewritten(&self, p: &PackId) -> bool {
        self.repack.contains(p) || self.merge.contains(p)
    }
    pub fn goes(&self, p: &PackId) -> bool {
        self.delete.contains(p) || self.rewritten(p)
    }
}

/// Decide from the books (module doc). `small` is the size under which a pack is small.
pub fn choose(packs: &BTreeMap<PackId, PackBook>, small: u64) -> Choice {
    let mut c = Choice::default();
    let mut kept: Vec<&PackBook> = Vec::new();
    for p in packs.values() {
        if p.has_live {
            kept.push(p);
        } else {
            c.delete.insert(p.id);
        }
    }
    // Most dead (as a fraction) first, until what is left is within the bound.
    let mut total: u64 = kept.iter().map(|p| p.size).sum();
    let mut dead: u64 = kept.iter().map(|p| p.dead()).sum();
    let mut by_dead = kept.clone();
    by_dead.sort_by(|a, b| {
        let fa = a.dead() as f64 / a.size.max(1) as f64;
        let fb = b.dead() as f64 / b.size.max(1) as f64;
        fb.total_cmp(&fa).then(b.dead().cmp(&a.dead()))
    });
    for p in by_dead {
        if dead as f64 <= MAX_DEAD_FRACTION * total as f64 {
            break;
        }
        c.repack.insert(p.id);
        dead -= p.dead();
        total -= p.dead();
    }
    // Small packs: merge the smallest, so that at most SMALL_PACKS_MAX are left beside the
    // one the rewrite may end with. Rewrites of dead space land in the same new packs.
    let mut smalls: Vec<&PackBook> = kept
        .iter()
        .filter(|p| p.size < small && !c.repack.contains(&p.id))
        .copied()
        .collect();
    if smalls.len() > SMALL_PACKS_MAX {
        smalls.sort_by_key(|p| (p.size, p.id));
        let n = smalls.len() - SMALL_PACKS_MAX + 1;
        c.merge.extend(smalls.iter().take(n).map(|p| p.id));
    }
    c
}

/// Steps 3-5 of a prune (module doc).
pub fn collect(repo: &Repository, live: &Live, rep: &mut PruneReport) -> Result<()> {
    let books = books(repo, live)?;
    // A chunk a kept snapshot needs that no index names: its pack (if it is there) would look
    // dead and be deleted. Refuse, so that a lost or damaged index never costs a pack.
    if let Some(p) = live.unindexed(&books.canonical) {
        return Err(Error::corrupt(
            "index/",
            format!(
                "chunk {p:016x}…, which a kept snapshot needs, is in no index: prune deletes \
                 nothing until `backup-cli verify` is clean (no pack is deleted while it may hold \
                 that chunk)"
            ),
        ));
    }
    let small = repo.config().body.pack_target / 2;
    let choice = choose(&books.packs, small);

    // 3. The live chunks of the packs rewritten, into new packs.
    let moving: Vec<(ChunkId, Location)> = books
        .entries()
        .filter(|e| choice.rewritten(&e.1.pack) && Books::live_entry(live, e))
        .map(|(id, loc, _)| (id, loc))
        .collect();
    let written = super::repack::rewrite(repo, moving, live)?;
    rep.repacked_packs = choice.repack.len() as u64;
    rep.merged_packs = choice.merge.len() as u64;
    rep.written_packs = written.packs;
    rep.written_bytes = written.bytes;

    // 4. New index objects when a pack goes or there are too many.
    let missing = |p: &PackId| !books.packs.contains_key(p);
    let changes = books.packs.keys().any(|p| choice.goes(p))
        || books
            .entries()
            .any(|e| missing(&e.1.pack) && !Books::live_entry(live, &e));
    let mut index_objects = books.index_objects.len() as u64;
    if changes || books.index_objects.len() > INDEX_OBJECTS_MAX {
        // Every chunk of the packs kept, live or dead (the books), and where the rewritten
        // ones are now. Live chunks indexed in a pack that is missing stay indexed: that damage
        // is verify's to report, and dropping the entries would hide it.
        let entries = books
            .entries()
            .filter(|e| {
                if missing(&e.1.pack) {
                    Books::live_entry(live, e)
                } else {
                    !choice.goes(&e.1.pack)
                }
            })
            .map(|(id, loc, _)| (id, loc))
            .chain(written.entries);
        // One object's entries at a time (a bounded list), not every entry at once.
        let mut published = 0;
        let mut part: Vec<(ChunkId, Location)> = Vec::new();
        let mut publish = |part: &mut Vec<(ChunkId, Location)>| -> Result<()> {
            let name = pack::index_name();
            let data = pack::encode_index(repo.crypto(), &name, part)?;
            repo.backend().put(&name, &data)?;
            published += 1;
            part.clear();
            Ok(())
        };
        for e in entries {
            part.push(e);
            if part.len() == INDEX_ENTRIES_PER_OBJECT {
                publish(&mut part)?;
            }
        }
        if !part.is_empty() {
            publish(&mut part)?;
        }
        for old in &books.index_objects {
            repo.backend().delete(old)?;
        }
        rep.rewritten_indexes = books.index_objects.len() as u64;
        index_objects = published;
    }

    // 5. Packs no index names any more: chosen to go, or orphaned by a crashed compaction.
    let mut packs = 0u64;
    let (mut pack_bytes, mut dead_bytes) = (0u64, 0u64);
    for p in books.packs.values() {
        if choice.goes(&p.id) {
            repo.backend().delete(&p.name)?;
            rep.deleted_packs += 1;
        } else {
            packs += 1;
            pack_bytes += p.size;
            dead_bytes += p.dead();
        }
    }
    rep.packs = packs + written.packs;
    rep.pack_bytes = pack_bytes + written.bytes;
    rep.dead_bytes = dead_bytes;
    rep.index_objects = index_objects;
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn id(head: u64, tail: u8) -> ChunkId {
        let mut b = [tail; 32];
        b[..8].copy_from_slice(&head.to_be_bytes());
        ChunkId(b)
    }

    #[test]
    fn live_keeps_the_newest_place_and_errs_only_towards_keeping() {
        let mut live = Live::default();
        // Oldest kept snapshot (rank 1), then the newest (rank 0), as prune adds them.
        live.add(1, &[(id(7, 1), 10), (id(3, 1), 10), (id(9, 1), 10)]);
        live.add(0, &[(id(9, 1), 10), (id(5, 1), 10)]);
        assert_eq!(
            live.order(&id(9, 1)),
            (0, 0),
            "the newest snapshot's place wins"
        );
        assert_eq!(live.order(&id(3, 1)), (1, 1));
        assert_eq!(live.order(&id(5, 1)), (0, 1));
        assert!(!live.contains(&id(4, 1)));
        assert_eq!(live.order(&id(4, 1)), (usize::MAX, 0));
        // Another id with a live id's first 64 bits looks live: kept, never the reverse.
        assert!(live.contains(&id(7, 2)));
    }
}
