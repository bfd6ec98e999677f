//! Snapshot manifests (`snapshots/<id>`): the commit point of a snapshot.
//!
//! ```text
//! envelope header (16, kind Manifest) | sealed(zstd(body))
//! body: u8 body version (2; 1 before format 2) | snapshot id (8) | u64 time | u32 data_version
//!       | u64 journal segment | u8 flags (bit 0: foreign_keys on) | u64 db size | u32 page size
//!       | u64 chunk count | u64 stored bytes added | u64 chunks added
//!       | [version 2: u64 data time (ms) | u8 has next | u32 next data_version | u64 next segment]
//!       | u8 list kind
//!   list kind 0 (full):  chunk count × (chunk id (32) | u32 length)
//!   list kind 1 (delta): parent id (8) | u32 depth | u64 run count
//!                        | runs: u64 first position | u32 n | n × (chunk id | u32 length)
//! ```
//! A delta lists only the positions whose chunk differs from its parent's (the chunk count gives
//! the new length). Chains are at most `full_manifest_every` long; prune rewrites a kept delta as
//! a full manifest before it deletes its parent.
//!
//! `journal segment` is the first segment replay must read after this snapshot: records with a
//! data_version above the snapshot's are applied from there on. `next` (version 2) is the newest
//! batch the compaction saw and left out (a snapshot never holds the newest batch): it must be in
//! the journal after the snapshot, so a journal cut back to before it is found from the
//! repository alone. `data time` is when the batch at the snapshot's version was stored.

use rayon::prelude::*;
use serde::Serialize;

use crate::codec::{Enc, ReadDec};
use crate::crypto::Crypto;
use crate::envelope::{self, Kind};
use crate::error::{Error, Result};
use crate::ids::{ChunkId, SnapshotId};
use crate::repo::Repository;

pub type ChunkRef = (ChunkId, u32);

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChunkList {
    Full(Vec<ChunkRef>),
    Delta {
        parent: SnapshotId,
        depth: u32,
        runs: Vec<(u64, Vec<ChunkRef>)>,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Manifest {
    pub id: SnapshotId,
    pub time: u64,
    pub data_version: u32,
    pub journal_segment: u64,
    pub foreign_keys: bool,
    pub db_size: u64,
    pub page_size: u32,
    pub chunk_count: u64,
    pub stored_bytes: u64,
    pub new_chunks: u64,
    pub list: ChunkList,
    /// Size of the stored manifest object (filled in when read).
    pub object_size: u64,
    /// Unix milliseconds when the batch at `data_version` was stored (0 when unknown: format 1,
    /// or a snapshot of a database file).
    pub data_time_ms: u64,
    /// The newest batch the compaction saw, which the journal after this snapshot must hold.
    pub next: Option<NextBatch>,
}

/// A batch a manifest says follows it in the journal.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct NextBatch {
    pub data_version: u32,
    /// The segment it was in when the snapshot was made.
    pub segment: u64,
}

/// What users and scripts see of a snapshot (`backup-cli snapshots --json`, `backup-snapshots`).
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct SnapshotInfo {
    pub id: String,
    pub data_version: u32,
    pub time: u64,
    pub db_size: u64,
    /// Bytes this snapshot added to the repository (new packs).
    pub stored_bytes: u64,
    pub chunks: u64,
    pub new_chunks: u64,
    pub manifest_bytes: u64,
    pub journal_segment: u64,
    pub parent: Option<String>,
}

pub fn manifest_name(id: &SnapshotId) -> String {
    format!("snapshots/{id}")
}

impl Manifest {
    pub fn info(&self) -> SnapshotInfo {
        SnapshotInfo {
            id: self.id.to_string(),
            data_version: self.data_version,
            time: self.time,
            db_size: self.db_size,
            stored_bytes: self.stored_bytes,
            chunks: self.chunk_count,
            new_chunks: self.new_chunks,
            manifest_bytes: self.object_size,
            journal_segment: self.journal_segment,
            parent: match &self.list {
                ChunkList::Delta { parent, .. } => Some(parent.to_string()),
                ChunkList::Full(_) => None,
            },
        }
    }

    /// A copy of everything but the chunk list (left empty): a manifest rewritten with another
    /// list is not copied with its own first.
    pub fn clone_header(&self) -> Manifest {
        Manifest {
            list: ChunkList::Full(Vec::new()),
            id: self.id,
            time: self.time,
            data_version: self.data_version,
            journal_segment: self.journal_segment,
            foreign_keys: self.foreign_keys,
            db_size: self.db_size,
            page_size: self.page_size,
            chunk_count: self.chunk_count,
            stored_bytes: self.stored_bytes,
            new_chunks: self.new_chunks,
            object_size: self.object_size,
            data_time_ms: self.data_time_ms,
            next: self.next,
        }
    }

    pub fn depth(&self) -> u32 {
        match &self.list {
            ChunkList::Full(_) => 0,
            ChunkList::Delta { depth, .. } => *depth,
        }
    }

    pub fn encode(&self, crypto: &Crypto) -> Result<Vec<u8>> {
        self.encode_with(crypto, None)
    }

    /// Encode as a full manifest of `refs` (its own list is not used): a delta rewritten as a
    /// full manifest, without its resolved list copied into it first.
    pub fn encode_full(&self, crypto: &Crypto, refs: &[ChunkRef]) -> Result<Vec<u8>> {
        self.encode_with(crypto, Some(refs))
    }

    fn encode_with(&self, crypto: &Crypto, full: Option<&[ChunkRef]>) -> Result<Vec<u8>> {
        let name = manifest_name(&self.id);
        let mut e = Enc::new();
        e.u8(2)
            .bytes(&self.id.0)
            .u64(self.time)
            .u32(self.data_version)
            .u64(self.journal_segment);
        e.u8(u8::from(self.foreign_keys))
            .u64(self.db_size)
            .u32(self.page_size)
            .u64(self.chunk_count);
        e.u64(self.stored_bytes).u64(self.new_chunks);
        let next = self.next.unwrap_or(NextBatch {
            data_version: 0,
            segment: 0,
        });
        e.u64(self.data_time_ms)
            .u8(u8::from(self.next.is_some()))
            .u32(next.data_version)
            .u64(next.segment);
        // zstd writes straight into the object, sealed in place: the chunk list (36 bytes a
        // chunk) is not copied whole into a body, then compressed, then sealed.
        let err = |err| Error::io("compress", &name, err);
        // The list written: `full`, or the manifest's own.
        enum Written<'a> {
            Full(&'a [ChunkRef]),
            Delta(&'a SnapshotId, u32, &'a [(u64, Vec<ChunkRef>)]),
        }
        let list = match (full, &self.list) {
            (Some(refs), _) => Written::Full(refs),
            (None, ChunkList::Full(refs)) => Written::Full(refs),
            (
                None,
                ChunkList::Delta {
                    parent,
                    depth,
                    runs,
                },
            ) => Written::Delta(parent, *depth, runs),
        };
        let refs = match list {
            Written::Full(refs) => refs.len(),
            Written::Delta(_, _, runs) => runs.iter().map(|r| r.1.len()).sum(),
        };
        let buf = envelope::object_buffer(crypto, refs * 36 + 256);
        let mut z = zstd::stream::write::Encoder::new(buf, 3).map_err(err)?;
        let flush = |e: &mut Enc, z: &mut zstd::stream::write::Encoder<'_, Vec<u8>>| {
            use std::io::Write;
            z.write_all(&std::mem::take(e).finish()).map_err(err)
        };
        let put_refs = |e: &mut Enc,
                        z: &mut zstd::stream::write::Encoder<'_, Vec<u8>>,
                        refs: &[ChunkRef]|
         -> Result<()> {
            for part in refs.chunks(1024) {
                for (id, len) in part {
                    e.bytes(&id.0).u32(*len);
                }
                flush(e, z)?;
            }
            Ok(())
        };
        match list {
            Written::Full(refs) => {
                e.u8(0);
                put_refs(&mut e, &mut z, refs)?;
            }
            Written::Delta(parent, depth, runs) => {
                e.u8(1).bytes(&parent.0).u32(depth).u64(runs.len() as u64);
                for (start, refs) in runs {
                    e.u64(*start).u32(refs.len() as u32);
                    put_refs(&mut e, &mut z, refs)?;
                }
            }
        }
        flush(&mut e, &mut z)?;
        let buf = z.finish().map_err(err)?;
        envelope::seal_object_in_place(Kind::Manifest, crypto, &name, buf)
    }

    pub fn decode(crypto: &Crypto, name: &str, data: &[u8]) -> Result<Manifest> {
        Self::decode_owned(crypto, name, data.to_vec())
    }

    /// [`Self::decode`] of a manifest read into `data`, opened in place and decompressed as a
    /// stream: its chunk list (36 bytes a chunk) is the only copy made of it.
    pub fn decode_owned(crypto: &Crypto, name: &str, mut data: Vec<u8>) -> Result<Manifest> {
        let object_size = data.len() as u64;
        let body = envelope::open_object_in_place(Kind::Manifest, crypto, name, &mut data)?;
        let z = data.get(body).unwrap_or_default();
        // What a count may reserve: a chunk reference's 32 id bytes do not compress, so a list
        // is not much smaller than the object; a larger count grows as it is read.
        let cap = z.len() / 32 + 64;
        let dec = zstd::stream::read::Decoder::with_buffer(z)
            .map_err(|e| Error::corrupt(name, format!("zstd: {e}")))?;
        let mut d = ReadDec::new(std::io::BufReader::with_capacity(64 << 10, dec), name);
        let v = d.u8()?;
        if v != 1 && v != 2 {
            return Err(Error::Unsupported {
                object: name.into(),
                what: "manifest version",
                found: v.into(),
                supported: 2,
            });
        }
        let id = SnapshotId(d.array()?);
        if manifest_name(&id) != name {
            return Err(Error::corrupt(
                name,
                format!("holds snapshot {id}, not the one its name says"),
            ));
        }
        let time = d.u64()?;
        let data_version = d.u32()?;
        let journal_segment = d.u64()?;
        let foreign_keys = d.u8()? & 1 != 0;
        let db_size = d.u64()?;
        let page_size = d.u32()?;
        let chunk_count = d.u64()?;
        let stored_bytes = d.u64()?;
        let new_chunks = d.u64()?;
        let (data_time_ms, next) = if v >= 2 {
            let t = d.u64()?;
            let has = d.u8()?;
            let (nv, ns) = (d.u32()?, d.u64()?);
            let next = match has {
                0 => None,
                1 => Some(NextBatch {
                    data_version: nv,
                    segment: ns,
                }),
                x => return Err(d.err(format!("bad next flag {x}"))),
            };
            (t, next)
        } else {
            (0, None)
        };
        type Reader<'z> = std::io::BufReader<zstd::stream::read::Decoder<'z, &'z [u8]>>;
        let read_refs = |d: &mut ReadDec<Reader>, n: usize| -> Result<Vec<ChunkRef>> {
            let mut v = Vec::with_capacity(n.min(cap));
            for _ in 0..n {
                v.push((ChunkId(d.array()?), d.u32()?));
            }
            Ok(v)
        };
        let list = match d.u8()? {
            0 => ChunkList::Full(read_refs(
                &mut d,
                usize::try_from(chunk_count).unwrap_or(usize::MAX),
            )?),
            1 => {
                let parent = SnapshotId(d.array()?);
                let depth = d.u32()?;
                let nruns = d.u64()?;
                let mut runs = Vec::with_capacity(nruns.min(cap as u64) as usize);
                for _ in 0..nruns {
                    let start = d.u64()?;
                    let n = d.u32()? as usize;
                    runs.push((start, read_refs(&mut d, n)?));
                }
                ChunkList::Delta {
                    parent,
                    depth,
                    runs,
                }
            }
            k => return Err(d.err(format!("unknown chunk list kind {k}"))),
        };
        d.end()?;
        Ok(Manifest {
            id,
            time,
            data_version,
            journal_segment,
            foreign_keys,
            db_size,
            page_size,
            chunk_count,
            stored_bytes,
            new_chunks,
            list,
            object_size,
            data_time_ms,
            next,
        })
    }
}

pub fn read(repo: &Repository, id: &SnapshotId) -> Result<Manifest> {
    let name = manifest_name(id);
    let data = match repo.backend().get(&name) {
        Err(Error::NotFound { .. }) => return Err(Error::NoSuchSnapshot(id.to_string())),
        other => other?,
    };
    Manifest::decode_owned(repo.crypto(), &name, data)
}

/// Every manifest, oldest first (by data_version, then time).
pub fn list(repo: &Repository) -> Result<Vec<Manifest>> {
    let names: Vec<String> = repo
        .backend()
        .list("snapshots/")?
        .into_iter()
        .map(|o| o.name)
        .filter(|n| crate::warn::is_object(n, "snapshots/", |h| SnapshotId::parse(h).is_ok()))
        .collect();
    // A manifest listed and then gone was deleted in between by a prune (which takes the
    // maintenance lock; listing does not): it is no longer a snapshot, so it is left out. Found
    // by the long crash campaign (seed 0x18eb43791ad812e2): a prune planning while another pruned.
    let found: Vec<Option<Manifest>> = names
        .par_iter()
        .map(|n| match repo.backend().get(n) {
            Ok(data) => Manifest::decode_owned(repo.crypto(), n, data).map(Some),
            Err(Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        })
        .collect::<Result<_>>()?;
    let mut out: Vec<Manifest> = found.into_iter().flatten().collect();
    out.sort_by_key(|m| (m.data_version, m.time, m.id));
    Ok(out)
}

pub fn latest(repo: &Repository) -> Result<Option<Manifest>> {
    Ok(list(repo)?.pop())
}

/// Find a snapshot by id or unique id prefix.
pub fn find(repo: &Repository, id_or_prefix: &str) -> Result<Manifest> {
    let all = list(repo)?;
    let hits: Vec<Manifest> = all
        .into_iter()
        .filter(|m| m.id.to_string().starts_with(id_or_prefix))
        .collect();
    match hits.len() {
        1 => Ok(hits
            .into_iter()
            .next()
            .ok_or_else(|| Error::NoSuchSnapshot(id_or_prefix.into()))?),
        0 => Err(Error::NoSuchSnapshot(id_or_prefix.into())),
        _ => Err(Error::Invalid(format!(
            "snapshot id prefix '{id_or_prefix}' is ambiguous"
        ))),
    }
}

/// The full chunk list of a manifest, following its delta chain.
pub fn resolve(repo: &Repository, m: &Manifest) -> Result<Vec<ChunkRef>> {
    match &m.list {
        ChunkList::Full(refs) => Ok(refs.clone()),
        ChunkList::Delta { parent, depth, .. } => {
            if *depth > 1024 {
                return Err(Error::corrupt(manifest_name(&m.id), "delta chain too deep"));
            }
            let p = read(repo, parent).map_err(|e| match e {
                Error::NoSuchSnapshot(_) => Error::corrupt(
                    manifest_name(&m.id),
                    format!("its parent snapshot {parent} is missing"),
                ),
                other => other,
            })?;
            resolve_on(m, resolve(repo, &p)?)
        }
    }
}

/// [`resolve`], taking a full manifest's list out of `m` (left empty) rather than copying it:
/// for callers done with the list once resolved (a restore).
pub fn resolve_taken(repo: &Repository, m: &mut Manifest) -> Result<Vec<ChunkRef>> {
    match &mut m.list {
        ChunkList::Full(refs) => Ok(std::mem::take(refs)),
        ChunkList::Delta { .. } => resolve(repo, m),
    }
}

/// The full chunk list of `m` given its parent's (`parent_refs`, ignored for a full manifest):
/// for callers that hold a chain's lists in memory (prune resolves every kept snapshot).
pub fn resolve_on(m: &Manifest, parent_refs: Vec<ChunkRef>) -> Result<Vec<ChunkRef>> {
    let runs = match &m.list {
        ChunkList::Full(refs) => return Ok(refs.clone()),
        ChunkList::Delta { runs, .. } => runs,
    };
    let mut refs = parent_refs;
    let n = usize::try_from(m.chunk_count).unwrap_or(usize::MAX);
    // Exactly: a list a few chunks longer than its parent's would otherwise double.
    refs.reserve_exact(n.saturating_sub(refs.len()));
    refs.resize(n, (ChunkId([0; 32]), 0));
    for (start, run) in runs {
        for (i, r) in run.iter().enumerate() {
            let pos = usize::try_from(*start)
                .unwrap_or(usize::MAX)
                .saturating_add(i);
            let slot = refs.get_mut(pos).ok_or_else(|| {
                Error::corrupt(
                    manifest_name(&m.id),
                    format!("delta position {pos} beyond {} chunks", m.chunk_count),
                )
            })?;
            *slot = *r;
        }
    }
    Ok(refs)
}

/// Express `refs` as runs of positions that differ from `parent`.
pub fn delta_runs(parent: &[ChunkRef], refs: &[ChunkRef]) -> Vec<(u64, Vec<ChunkRef>)> {
    let mut runs: Vec<(u64, Vec<ChunkRef>)> = Vec::new();
    for (i, r) in refs.iter().enumerate() {
        if parent.get(i) == Some(r) {
            continue;
        }
        match runs.last_mut() {
            Some((start, v)) if *start as usize + v.len() == i => v.push(*r),
            _ => runs.push((i as u64, vec![*r])),
        }
    }
    runs
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn refs(n: u32, salt: u8) -> Vec<ChunkRef> {
        (0..n)
            .map(|i| {
                let mut b = [salt; 32];
                b[..4].copy_from_slice(&i.to_le_bytes());
                (ChunkId(b), 4096)
            })
            .collect()
    }

    #[test]
    fn streamed_encoding_round_trips_and_encode_full_is_a_full_manifest() {
        let crypto = Crypto::encrypted(&crate::crypto::MasterKey::generate());
        let parent = refs(3000, 1);
        let mut child = parent.clone();
        child[5] = (ChunkId([9; 32]), 4096);
        child[2500] = (ChunkId([8; 32]), 100);
        let m = Manifest {
            id: SnapshotId([3; 8]),
            time: 7,
            data_version: 42,
            journal_segment: 2,
            foreign_keys: true,
            db_size: 4096 * 2999 + 100,
            page_size: 4096,
            chunk_count: 3000,
            stored_bytes: 11,
            new_chunks: 2,
            list: ChunkList::Delta {
                parent: SnapshotId([2; 8]),
                depth: 1,
                runs: delta_runs(&parent, &child),
            },
            object_size: 0,
            data_time_ms: 5,
            next: Some(NextBatch {
                data_version: 43,
                segment: 2,
            }),
        };
        let name = manifest_name(&m.id);
        let data = m.encode(&crypto).unwrap();
        let back = Manifest::decode(&crypto, &name, &data).unwrap();
        assert_eq!(back.list, m.list);
        assert_eq!(back.object_size, data.len() as u64);
        assert_eq!(resolve_on(&back, parent.clone()).unwrap(), child);

        let full = m.encode_full(&crypto, &child).unwrap();
        let back = Manifest::decode(&crypto, &name, &full).unwrap();
        assert_eq!(back.list, ChunkList::Full(child.clone()));
        let mut owned = m.clone_header();
        owned.list = ChunkList::Full(child);
        assert_eq!(
            Manifest::decode(&crypto, &name, &owned.encode(&crypto).unwrap())
                .unwrap()
                .list,
            back.list
        );
        let mut bad = full.clone();
        let at = bad.len() / 2;
        bad[at] ^= 1;
        assert!(Manifest::decode(&crypto, &name, &bad).is_err());
    }
}
