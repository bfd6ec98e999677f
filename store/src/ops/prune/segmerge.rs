//! Merging sealed journal segments into runs, so that their number follows the journal's bytes,
//! not the number of compactions (issue 18).
//!
//! Every compaction seals the segment it rotated away from: one more object, however few
//! batches it held. Prune (and garbage collection without a policy) merges runs of consecutive
//! sealed segments into one sealed run `journal/<first>-<last>.seg` (docs/format.md, "Sealed
//! segment"): the members' records, in order, with the first member's link and the last
//! member's frame count and chain, sealed under the repository key with that name. The links
//! between the members are checked when the run is made (they are what a reader would have
//! checked), and the neighbours' links are checked against the run as before.
//!
//! **What is merged.** Only sealed segments entirely before the newest snapshot's resume segment
//! (`journal segment` of its manifest): never an open stream, nothing the writer or the next
//! compaction reads, and only segments of format 2 (`chain_from` on). Nothing at all on an
//! append-only destination.
//!
//! **The choice.** Over each stretch of consecutive eligible objects, from the oldest: an object
//! joins the run being formed while the run's listed bytes stay within [`RUN_MAX_BYTES`]. Two
//! neighbouring runs then always hold more than [`RUN_MAX_BYTES`] together, so a stretch of B
//! bytes is left in at most B / ([`RUN_MAX_BYTES`] / 2) + 1 objects, and a second pass changes
//! nothing but the newest run (which new segments join). A pass runs only when the eligible
//! objects number more than that plus [`SMALL_SEGMENTS_MAX`], so a run is rewritten once per
//! that many new segments, not after every compaction.
//!
//! **Commit order.** Publish the run (the backend's atomic, durable publish), read it back and
//! check it, then delete the objects it replaces, oldest first. Readers prefer the widest object
//! (`reader::segments`), so a crash after the publish leaves the run and some of its members,
//! read once, from the run. The next collection deletes objects a wider one holds, after checking
//! that one (a run that fails its seal is reported, and its members are kept).

use std::collections::HashSet;

use crate::error::{Error, Result};
use crate::journal::reader::{self, SegmentRef};
use crate::journal::record::Predecessor;
use crate::journal::segment::{self, Recovery};
use crate::journal::{parse_sealed_name, sealed_run_name};
use crate::repo::Repository;

use super::PruneReport;

/// The listed bytes of a merged run at most (a run is made only of objects that fit together).
pub const RUN_MAX_BYTES: u64 = 16 << 20;
/// Journal bytes per sealed object the merges aim at: neighbouring runs hold more than
/// [`RUN_MAX_BYTES`] together.
pub const SEGMENT_BYTES_PER_OBJECT: u64 = RUN_MAX_BYTES / 2;
/// Sealed segment objects tolerated beyond one per [`SEGMENT_BYTES_PER_OBJECT`] (plus one)
/// before a merge runs.
pub const SMALL_SEGMENTS_MAX: u64 = 8;

/// A sealed object as listed.
#[derive(Clone, Debug)]
struct Listed {
    first: u64,
    last: u64,
    name: String,
}

/// Merge small sealed segments (module doc). `resume` is the newest kept snapshot's resume
/// segment: only segments entirely before it are merged.
pub fn merge(repo: &Repository, resume: Option<u64>, rep: &mut PruneReport) -> Result<()> {
    if repo.backend().append_only() || repo.format() < 2 {
        rep.journal_objects = journal_objects(repo)?;
        return Ok(());
    }
    rep.deleted_leftover_segments = delete_held(repo)?;
    let Some(resume) = resume else {
        rep.journal_objects = journal_objects(repo)?;
        return Ok(());
    };
    let chain_from = repo.config().body.chain_from;
    let eligible: Vec<SegmentRef> = reader::segments(repo)?
        .into_iter()
        .filter(|s| s.sealed && s.seq >= chain_from && s.last < resume)
        .collect();
    for group in choose(&eligible) {
        merge_run(repo, &group)?;
        rep.merged_segments += group.iter().map(|s| s.last - s.seq + 1).sum::<u64>();
        rep.merged_objects += group.len() as u64;
        rep.written_runs += 1;
    }
    rep.journal_objects = journal_objects(repo)?;
    Ok(())
}

/// The runs to make from `eligible` (sealed, oldest first), each of at least two objects; none
/// when the objects are within the bound (module doc).
fn choose(eligible: &[SegmentRef]) -> Vec<Vec<SegmentRef>> {
    let bytes: u64 = eligible.iter().map(|s| s.size).sum();
    let bound = bytes / SEGMENT_BYTES_PER_OBJECT + 1 + SMALL_SEGMENTS_MAX;
    if (eligible.len() as u64) <= bound {
        return Vec::new();
    }
    let mut groups: Vec<Vec<SegmentRef>> = Vec::new();
    let mut cur: Vec<SegmentRef> = Vec::new();
    let mut size = 0u64;
    for s in eligible {
        let follows = cur
            .last()
            .is_some_and(|p| p.last.checked_add(1) == Some(s.seq));
        if !cur.is_empty() && (!follows || size.saturating_add(s.size) > RUN_MAX_BYTES) {
            groups.push(std::mem::take(&mut cur));
            size = 0;
        }
        size = size.saturating_add(s.size);
        cur.push(s.clone());
    }
    groups.push(cur);
    groups.retain(|g| g.len() >= 2);
    groups
}

/// Read the members, check the links between them, publish the run, check it, delete them.
/// One record at a time: the members are read twice (to check and count them, then to
/// compress them into the run) and the run once, compared by a digest of its records.
fn merge_run(repo: &Repository, members: &[SegmentRef]) -> Result<()> {
    let (Some(first), Some(last)) = (members.first(), members.last()) else {
        return Ok(());
    };
    let name = sealed_run_name(first.seq, last.last);
    let mut prev: Option<Predecessor> = None;
    let mut head = segment::SealedHead {
        first: first.seq,
        last: last.last,
        frames: 0,
        chain: None,
        link: None,
    };
    let mut count = 0u64;
    let mut digest = blake3::Hasher::new();
    for (i, m) in members.iter().enumerate() {
        let mut c = reader::open_segment(repo, m, Recovery::Strict)?;
        if let (Some(link), Some(p)) = (&c.link, &prev) {
            reader::check_link(m.seq, link, p, &m.object_name())?;
        }
        if i == 0 {
            head.link = c.link;
        }
        for r in c.by_ref() {
            add_record(&mut digest, &r?.encode());
            count += 1;
        }
        let p = c.as_predecessor(m.last);
        head.frames = p.frames;
        head.chain = c.chain;
        prev = Some(p);
    }
    let records = members
        .iter()
        .flat_map(|m| -> Box<dyn Iterator<Item = Result<Vec<u8>>>> {
            match reader::open_segment(repo, m, Recovery::Strict) {
                Ok(c) => Box::new(c.map(|r| r.map(|r| r.encode()))),
                Err(e) => Box::new(std::iter::once(Err(e))),
            }
        });
    let bytes = segment::encode_sealed_records(
        repo.crypto(),
        &name,
        &head,
        count,
        records,
        crate::config::SEGMENT_ZSTD_LEVEL,
    )?;
    repo.backend().put(&name, &bytes)?;
    drop(bytes);
    // What readers will read instead of the members: it must be there and whole before they go.
    let back = repo.backend().get(&name)?;
    let mut got = segment::SealedStream::open(repo.crypto(), &name, head.first, head.last, &back)?;
    let mut got_digest = blake3::Hasher::new();
    let mut got_count = 0u64;
    for r in got.by_ref() {
        add_record(&mut got_digest, &r?.encode());
        got_count += 1;
    }
    if got.frames != Some(head.frames)
        || got.chain != head.chain
        || got.link != head.link
        || got_count != count
        || got_digest.finalize() != digest.finalize()
    {
        return Err(Error::corrupt(
            &name,
            "reads back other than what was written: the segments it merges are kept",
        ));
    }
    for m in members {
        delete_if_present(repo, &m.object_name())?;
    }
    Ok(())
}

/// One record into a digest of a run's records (length-prefixed, so records cannot run together).
fn add_record(h: &mut blake3::Hasher, encoded: &[u8]) {
    h.update(&(encoded.len() as u64).to_le_bytes());
    h.update(encoded);
}

fn delete_if_present(repo: &Repository, name: &str) -> Result<()> {
    match repo.backend().delete(name) {
        Err(Error::NotFound { .. }) => Ok(()),
        other => other,
    }
}

/// Delete sealed objects whose segments a wider sealed object holds (left by a crash between a
/// run's publish and the deletion of its members), once that wider one reads back whole.
fn delete_held(repo: &Repository) -> Result<u64> {
    let mut listed: Vec<Listed> = repo
        .backend()
        .list("journal/")?
        .into_iter()
        .filter_map(|o| {
            parse_sealed_name(&o.name).map(|(first, last)| Listed {
                first,
                last,
                name: o.name,
            })
        })
        .collect();
    // Widest first at each start, as readers order them.
    listed.sort_by_key(|s| (s.first, std::cmp::Reverse(s.last)));
    let mut holder: Option<Listed> = None;
    let mut checked: HashSet<String> = HashSet::new();
    let mut deleted = 0;
    for s in listed {
        match &holder {
            Some(h) if s.first >= h.first && s.last <= h.last => {
                if !checked.contains(&h.name) {
                    let data = repo.backend().get(&h.name)?;
                    segment::decode_sealed(repo.crypto(), &h.name, h.first, h.last, &data)
                        .map_err(|e| {
                            Error::corrupt(
                                &h.name,
                                format!(
                                    "{e}; it holds segments also stored apart ({}), which are kept",
                                    s.name
                                ),
                            )
                        })?;
                    checked.insert(h.name.clone());
                }
                delete_if_present(repo, &s.name)?;
                deleted += 1;
            }
            _ => holder = Some(s),
        }
    }
    Ok(deleted)
}

/// Journal objects as readers see them: sealed objects and streams.
fn journal_objects(repo: &Repository) -> Result<u64> {
    Ok(reader::segments(repo)?.len() as u64)
}

#[cfg(test)]
mod test {
    use super::*;

    fn seg(seq: u64, size: u64) -> SegmentRef {
        SegmentRef {
            seq,
            last: seq,
            sealed: true,
            size,
        }
    }

    #[test]
    fn few_objects_are_left_alone() {
        let segs: Vec<SegmentRef> = (0..=SMALL_SEGMENTS_MAX).map(|i| seg(i, 1000)).collect();
        assert!(choose(&segs).is_empty());
    }

    #[test]
    fn small_ones_merge_up_to_the_run_size_and_gaps_split() {
        let mut segs: Vec<SegmentRef> = (0..40).map(|i| seg(i, 1 << 20)).collect();
        segs.push(seg(50, 1 << 20)); // after a gap
        segs.push(seg(51, 1 << 20));
        let g = choose(&segs);
        let sizes: Vec<(u64, u64)> = g
            .iter()
            .map(|g| (g.first().unwrap().seq, g.last().unwrap().last))
            .collect();
        assert_eq!(sizes, vec![(0, 15), (16, 31), (32, 39), (50, 51)]);
    }

    #[test]
    fn a_second_pass_changes_only_the_newest_run() {
        let mut segs = vec![
            SegmentRef {
                seq: 0,
                last: 15,
                sealed: true,
                size: 15 << 20,
            },
            SegmentRef {
                seq: 16,
                last: 30,
                sealed: true,
                size: 10 << 20,
            },
        ];
        segs.extend((31..45).map(|i| seg(i, 100_000)));
        let g = choose(&segs);
        assert_eq!(g.len(), 1);
        assert_eq!(g[0].first().unwrap().seq, 16);
        assert_eq!(g[0].last().unwrap().last, 44);
    }
}
