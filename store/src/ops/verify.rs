//! Verify: every object's seal, every manifest's references, journal continuity (consecutive
//! segments, each linking to the one before it; every snapshot's next batch present; an honest
//! end), each pack's header and the seal of its last blob; with `read_data`, every blob's seal,
//! every chunk's address and a full restore of the newest state.

use std::collections::HashMap;
use std::path::PathBuf;

use serde::Serialize;

use crate::error::{Error, Result};
use crate::journal::reader;
use crate::journal::segment::{Recovery, Tail};
use crate::manifest::{self, ChunkList, Manifest};
use crate::pack::{self, Location};
use crate::replay;
use crate::repo::Repository;
use rayon::prelude::*;

pub struct VerifyOptions {
    pub read_data: bool,
    /// Where `read_data` restores the newest state to check it (a temporary file is made there).
    pub scratch_dir: PathBuf,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct VerifyReport {
    pub ok: bool,
    pub problems: Vec<String>,
    pub warnings: Vec<String>,
    pub snapshots: u64,
    pub index_objects: u64,
    pub packs: u64,
    pub chunks_referenced: u64,
    pub chunks_read: u64,
    pub journal_segments: u64,
    pub journal_records: u64,
    pub restored_version: Option<u32>,
}

pub fn verify(repo: &Repository, opts: &VerifyOptions) -> Result<VerifyReport> {
    // Verify lists without the maintenance lock (so it never stops a node's compaction), and a
    // prune may delete objects it listed, or replace them, while it reads. Damage stays put and a
    // race does not: a report with problems is confirmed by a second pass before it is believed.
    let first = verify_once(repo, opts)?;
    if first.problems.is_empty() {
        return Ok(first);
    }
    verify_once(repo, opts)
}

fn verify_once(repo: &Repository, opts: &VerifyOptions) -> Result<VerifyReport> {
    let mut rep = VerifyReport::default();
    let b = repo.backend();

    // Manifests, each on its own so one bad object does not hide the others.
    let mut manifests: Vec<Manifest> = Vec::new();
    for o in b.list("snapshots/")? {
        if o.name
            .strip_prefix("snapshots/")
            .and_then(|h| crate::ids::SnapshotId::parse(h).ok())
            .is_none()
        {
            rep.warnings.push(stray(&o.name));
            continue;
        }
        match b
            .get(&o.name)
            .and_then(|d| Manifest::decode(repo.crypto(), &o.name, &d))
        {
            Ok(m) => manifests.push(m),
            Err(e) => rep.problems.push(e.to_string()),
        }
    }
    manifests.sort_by_key(|m| (m.data_version, m.time));
    rep.snapshots = manifests.len() as u64;

    // Indexes and packs.
    let mut packs: HashMap<String, u64> = HashMap::new();
    for o in b.list("packs/")? {
        match o.name.strip_prefix("packs/").map(crate::ids::PackId::parse) {
            Some(Ok(_)) => {
                packs.insert(o.name, o.size);
            }
            _ => rep.warnings.push(stray(&o.name)),
        }
    }
    rep.packs = packs.len() as u64;
    // Where each chunk is read from (the first location, in list order), compact: its size
    // follows the chunk count.
    let mut index = pack::ChunkIndex::default();
    for o in b.list("index/")? {
        if o.name
            .strip_prefix("index/")
            .map(crate::ids::PackId::parse)
            .is_none_or(|r| r.is_err())
        {
            rep.warnings.push(stray(&o.name));
            continue;
        }
        rep.index_objects += 1;
        // A damaged object adds no entry (it is checked whole before its entries are taken).
        let mut problems = Vec::new();
        let res = b.get(&o.name).and_then(|d| {
            pack::decode_index_checked(repo.crypto(), &o.name, d, &mut |v| {
                match v {
                    pack::IndexVisit::Object { count, .. } => index.reserve(count),
                    pack::IndexVisit::Entry(id, loc) => {
                        let pn = pack::pack_name(&loc.pack);
                        match packs.get(&pn) {
                            None => {
                                problems.push(format!("{}: names {pn}, which is missing", o.name))
                            }
                            Some(&size) if loc.blob_offset + u64::from(loc.blob_len) > size => {
                                problems.push(format!(
                                    "{pn} is truncated: {} bytes, a blob ends at {}",
                                    size,
                                    loc.blob_offset + u64::from(loc.blob_len)
                                ))
                            }
                            _ => {}
                        }
                        index.insert(&id, &loc)?;
                    }
                    pack::IndexVisit::Start => {}
                }
                Ok(())
            })
        });
        rep.problems.extend(problems);
        if let Err(e) = res {
            rep.problems.push(e.to_string());
        }
    }

    // Every manifest resolves and every chunk it names is indexed. Referenced chunks are
    // counted as bits by index position (those in no index, a problem each, by id); the lists
    // are taken out of the manifests as they are checked (only their headers are used below).
    let mut referenced = vec![0u64; index.len().div_ceil(64)];
    let mut unindexed = pack::IdTable::default();
    let mut unindexed_ids: Vec<crate::ids::ChunkId> = Vec::new();
    // A delta's list is resolved on its parent's, kept from when the parent was checked (oldest
    // first) until its last child is: one list at a time on a chain, none read twice. A parent
    // not among the manifests read is read from the repository, as ever (naming it if missing).
    let mut children: HashMap<crate::ids::SnapshotId, usize> = HashMap::new();
    for m in &manifests {
        if let ChunkList::Delta { parent, .. } = &m.list {
            *children.entry(*parent).or_default() += 1;
        }
    }
    let mut kept: HashMap<crate::ids::SnapshotId, Vec<manifest::ChunkRef>> = HashMap::new();
    for m in manifests.iter_mut() {
        let resolved = match &m.list {
            ChunkList::Delta { parent, depth, .. } if *depth <= 1024 => {
                let left = children.get_mut(parent).map(|n| {
                    *n = n.saturating_sub(1);
                    *n
                });
                let base = match left {
                    Some(0) => kept.remove(parent),
                    _ => kept.get(parent).cloned(),
                };
                match base {
                    Some(base) => manifest::resolve_on(m, base),
                    None => manifest::resolve(repo, m),
                }
            }
            _ => manifest::resolve_taken(repo, m),
        };
        match resolved {
            Ok(refs) => {
                let total: u64 = refs.iter().map(|r| u64::from(r.1)).sum();
                if total != m.db_size {
                    rep.problems.push(format!(
                        "{}: chunks add up to {total} bytes, not {}",
                        manifest::manifest_name(&m.id),
                        m.db_size
                    ));
                }
                for &(id, _) in &refs {
                    match index.position_of(&id) {
                        Some(i) => {
                            if let Some(w) = referenced.get_mut(i / 64) {
                                *w |= 1 << (i % 64);
                            }
                        }
                        None => {
                            rep.problems.push(format!(
                                "{}: chunk {id} is in no index",
                                manifest::manifest_name(&m.id)
                            ));
                            let at = unindexed_ids.len() as u32;
                            let ids = &unindexed_ids;
                            if unindexed
                                .insert(&id, at, |i| ids.get(i as usize))?
                                .is_none()
                            {
                                unindexed_ids.push(id);
                            }
                        }
                    }
                }
                if children.get(&m.id).is_some_and(|&n| n > 0) {
                    kept.insert(m.id, refs);
                }
            }
            Err(e) => rep.problems.push(e.to_string()),
        }
        *m = m.clone_header();
    }
    drop(kept);
    rep.chunks_referenced = referenced
        .iter()
        .map(|w| u64::from(w.count_ones()))
        .sum::<u64>()
        + unindexed_ids.len() as u64;
    drop(referenced);
    drop(unindexed);
    drop(unindexed_ids);

    // Journal: every segment readable and linked to the one before it; versions continuous
    // from the oldest snapshot on; every snapshot's next batch present; an honest end.
    let segs = reader::segments(repo)?;
    rep.journal_segments = segs.len() as u64;
    let from = manifests.first().map(|m| m.journal_segment).unwrap_or(0);
    // Records are numbered by the object they were read from: a merged run that holds the
    // oldest snapshot's resume segment numbers them all by its first segment.
    let from = segs
        .iter()
        .find(|s| s.seq <= from && from <= s.last)
        .map_or(from, |s| s.seq);
    let first = segs.first().map(|s| s.seq).unwrap_or(0);
    // Read as a stream (one segment in memory at a time); read again from the listing when a
    // prune merged segments meanwhile.
    let mut tries = 0;
    let journal = loop {
        let j = check_journal(repo, first, from, &manifests);
        match &j.error {
            Some(e) if reader::journal_moved(e) && tries < 3 => tries += 1,
            _ => break j,
        }
    };
    rep.journal_records = journal.records;
    rep.warnings.extend(journal.warnings);
    rep.problems.extend(journal.problems);
    if let Some(e) = journal.error {
        rep.problems.push(e.to_string());
    }
    if journal.versions_known {
        let reached = journal.reached;
        for m in &manifests {
            if let Some(next) = m.next {
                if reached < next.data_version {
                    rep.problems.push(format!(
                        "{}: was made when batch {} was stored, but the journal after it ends at data_version {reached}: journal records were deleted or rolled back",
                        manifest::manifest_name(&m.id),
                        next.data_version
                    ));
                }
            }
        }
    }

    // Each pack's header, and the seal of its last blob (cheap: two ranged reads a pack).
    let mut last_blob: HashMap<crate::ids::PackId, Location> = HashMap::new();
    for (_, loc) in index.iter() {
        let e = last_blob.entry(loc.pack).or_insert(loc);
        if loc.blob_offset > e.blob_offset {
            *e = loc;
        }
    }
    let prefix_len = crate::pack::PACK_PREFIX_LEN as u64;
    for name in packs.keys() {
        let Some(id) = name
            .strip_prefix("packs/")
            .and_then(|h| crate::ids::PackId::parse(h).ok())
        else {
            continue;
        };
        let mut want = crate::envelope::Header::new(crate::envelope::Kind::Pack, repo.crypto())
            .encode()
            .to_vec();
        want.extend_from_slice(&id.0);
        match b.get_range(name, 0, prefix_len) {
            Ok(got) if got == want => {}
            Ok(_) => rep.problems.push(format!("{name}: header is damaged")),
            Err(e) => rep.problems.push(e.to_string()),
        }
        if !opts.read_data {
            if let Some(loc) = last_blob.get(&id) {
                if let Err(e) = pack::read_blob(repo, &id, loc.blob_offset, loc.blob_len, 0) {
                    rep.problems.push(e.to_string());
                }
            }
        }
    }

    if opts.read_data {
        // Every blob of every indexed chunk: seal and address. The index holds a blob's chunks
        // one after the other: each run of them is read once, the runs in parallel.
        let mut runs: Vec<(usize, usize)> = Vec::new();
        let mut prev: Option<(crate::ids::PackId, u64)> = None;
        for (i, (_, loc)) in index.iter().enumerate() {
            let key = Some((loc.pack, loc.blob_offset));
            match runs.last_mut() {
                Some(r) if key == prev => r.1 = i + 1,
                _ => runs.push((i, i + 1)),
            }
            prev = key;
        }
        let (read, problems) = runs
            .par_iter()
            .map(|&(start, end)| {
                let mut read = 0u64;
                let mut problems = Vec::new();
                let Some((_, first)) = index.entry_at(start) else {
                    return (read, problems);
                };
                match pack::read_blob(repo, &first.pack, first.blob_offset, first.blob_len, 0) {
                    Ok(blob) => {
                        for (id, loc) in (start..end).filter_map(|i| index.entry_at(i)) {
                            match pack::chunk_from_blob(repo, &blob, &id, &loc) {
                                Ok(_) => read += 1,
                                Err(e) => problems.push(e.to_string()),
                            }
                        }
                    }
                    Err(e) => problems.push(e.to_string()),
                }
                (read, problems)
            })
            .reduce(
                || (0, Vec::new()),
                |mut a, b| {
                    a.0 += b.0;
                    a.1.extend(b.1);
                    a
                },
            );
        rep.chunks_read += read;
        rep.problems.extend(problems);
        // The trial restore loads its own index.
        drop(runs);
        drop(index);
        if rep.problems.is_empty() && (!manifests.is_empty() || rep.journal_records > 0) {
            std::fs::create_dir_all(&opts.scratch_dir)
                .map_err(|e| Error::io("create", opts.scratch_dir.display().to_string(), e))?;
            let mut r = [0u8; 6];
            crate::crypto::fill_random(&mut r);
            let dest = opts
                .scratch_dir
                .join(format!("verify-{}.sqlite3", hex::encode(r)));
            match crate::ops::restore::restore(
                repo,
                &dest,
                &crate::ops::restore::RestoreTarget::Latest,
            ) {
                Ok(r) => rep.restored_version = Some(r.data_version),
                Err(e) => rep
                    .problems
                    .push(format!("restore of the newest state failed: {e}")),
            }
            let _ = std::fs::remove_file(&dest);
        }
    }
    rep.ok = rep.problems.is_empty();
    Ok(rep)
}

fn stray(name: &str) -> String {
    format!("{name}: not an object of this repository (a stray file), skipped; remove it if you did not put it there")
}

/// What reading the whole journal found.
#[derive(Default)]
struct JournalCheck {
    records: u64,
    warnings: Vec<String>,
    problems: Vec<String>,
    /// The error that stopped the reading.
    error: Option<Error>,
    /// The newest batch read (the oldest snapshot's version when none is newer).
    reached: u32,
    /// False when a record replaced a batch that is not there: versions are not meaningful.
    versions_known: bool,
}

/// Read the journal from segment `first`, checking that versions continue from the oldest
/// snapshot on (records numbered `from` or later, above its version) and its end.
fn check_journal(
    repo: &Repository,
    first: u64,
    from: u64,
    manifests: &[manifest::Manifest],
) -> JournalCheck {
    let mut out = JournalCheck {
        versions_known: true,
        ..Default::default()
    };
    let from_version = manifests.first().map(|m| m.data_version).unwrap_or(0);
    let mut j = match reader::JournalReader::open(repo, first, Recovery::AcceptDamagedTail) {
        Ok(j) => j,
        Err(e) => {
            out.error = Some(e);
            out.reached = from_version;
            return out;
        }
    };
    let mut count = 0u64;
    let mut read_error = None;
    let records = j.by_ref().filter_map(|r| match r {
        Ok((seq, r)) => {
            count += 1;
            (seq >= from && r.batch.data_version > from_version).then_some(Ok(r))
        }
        Err(e) => {
            read_error = Some(e);
            None
        }
    });
    let mut prev: Option<u32> = manifests.first().map(|m| m.data_version);
    for r in replay::Effective::new(records, "journal") {
        let r = match r {
            Ok(r) => r,
            Err(e) => {
                out.problems.push(e.to_string());
                out.versions_known = false;
                break;
            }
        };
        if r.pragma_only() {
            continue;
        }
        let v = r.batch.data_version;
        match prev {
            Some(p) if v <= p => {} // already in the snapshot
            // A snapshot at v-1 bridges a gap: a damaged end cut by `backup-cli repair`, whose
            // batches only that snapshot (of the node's database) holds.
            Some(p) if v != p + 1 => match manifests.iter().find(|m| m.data_version == v - 1) {
                Some(m) => out.warnings.push(format!(
                    "journal: data_version {v} follows {p}; batches {} to {} are only in snapshot {} (a damaged end was cut: `backup-cli repair`), so no state between {p} and {} is restorable",
                    p + 1,
                    v - 1,
                    m.id,
                    v - 1
                )),
                None => out.problems.push(format!(
                    "journal: data_version {v} follows {p}: batches are missing"
                )),
            },
            None if v != 1 => out.warnings.push(format!(
                "journal starts at data_version {v} with no snapshot before it: only later snapshots restore"
            )),
            _ => {}
        }
        prev = Some(v.max(prev.unwrap_or(0)));
    }
    out.reached = prev.unwrap_or(0);
    out.records = count;
    out.error = read_error;
    match j.tail.take() {
        Some((name, Tail::Torn(t))) => out.warnings.insert(0, format!(
            "{name}: {t}: a crash while the newest record was written (never acknowledged under fsync durability); the plugin cuts it when it next starts"
        )),
        Some((name, Tail::Damaged(t))) => out.problems.insert(0, format!(
            "{name}: {t}: the newest record(s) are damaged, not torn by a crash"
        )),
        None => {}
    }
    out
}
