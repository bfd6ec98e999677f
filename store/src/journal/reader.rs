//! Reading journal segments back, in order, and checking that they form one unbroken journal.
//!
//! Continuity rules (format 2; docs/format.md "Journal continuity"):
//! - segment numbers are consecutive from the first segment read to the newest;
//! - the newest segment is an open stream: a sealed segment always has a successor (compaction
//!   seals only segments it rotated away from), so a newest segment that is sealed means the
//!   ones after it are missing;
//! - each format-2 segment's link names its predecessor's frame count, last frame's tag and
//!   newest data_version; where the predecessor is present they must match, so a segment that
//!   was cut at a frame boundary, emptied or rolled back to an older copy is found as soon as a
//!   later segment exists.
//!
//! What no rule here can find is a rollback of the newest segment to a prefix of itself, or of
//! the whole repository to an older copy: the anchors outside the storage do (restore's other
//! destinations, the node's own database, `--expect-version`, and the time of the newest batch).

use super::record::{Chain, Link, Predecessor, Record};
use super::segment::{self, Recovery, Sealed, Tail};
use super::{parse_sealed_name, parse_stream_name, sealed_run_name, stream_name};
use crate::error::{Error, Result};
use crate::repo::Repository;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentRef {
    /// The (first) segment number.
    pub seq: u64,
    /// The last segment number this object holds (`seq` unless it is a merged sealed run).
    pub last: u64,
    /// Sealed (compressed object) rather than an open stream.
    pub sealed: bool,
    pub size: u64,
}

impl SegmentRef {
    pub fn object_name(&self) -> String {
        if self.sealed {
            sealed_run_name(self.seq, self.last)
        } else {
            format!("journal/{}.log", stream_name(self.seq))
        }
    }
}

/// One segment's content and what links it to its neighbours.
#[derive(Clone, Debug, Default)]
pub struct SegmentData {
    pub records: Vec<Record>,
    pub link: Option<Link>,
    pub frames: u64,
    /// The last frame's tag, when known (not for format-1 sealed objects or empty streams).
    pub chain: Option<Chain>,
    /// A torn or damaged tail left out (only the newest stream may have one).
    pub tail: Option<Tail>,
}

impl SegmentData {
    pub fn last_version(&self) -> Option<u32> {
        super::record::newest_real(&self.records)
    }

    /// What a link to the segment after this one (number `seq`) must say.
    pub fn as_predecessor(&self, seq: u64) -> Predecessor {
        Predecessor {
            seq,
            frames: self.frames,
            chain: self.chain,
            last_version: self.last_version(),
        }
    }
}

/// Every segment, oldest first. Where a segment exists both sealed and as a stream (a crash
/// between sealing and deleting the stream), the sealed one is listed and the stream is not;
/// a merged sealed run hides the objects it replaces. Names that are not segments are skipped
/// (with a warning).
pub fn segments(repo: &Repository) -> Result<Vec<SegmentRef>> {
    // Streams first, then sealed objects: a compaction sealing a segment meanwhile publishes the
    // sealed copy before deleting the stream, so every segment is seen in one form or the other
    // (the other order could miss one sealed between the two listings).
    let mut by_seq: std::collections::BTreeMap<u64, SegmentRef> = Default::default();
    for s in repo.backend().stream_list()? {
        match parse_stream_name(&s.name) {
            Some(seq) => {
                by_seq.insert(
                    seq,
                    SegmentRef {
                        seq,
                        last: seq,
                        sealed: false,
                        size: s.size,
                    },
                );
            }
            None => crate::warn::stray(&format!("journal/{}", s.name)),
        }
    }
    let mut sealed: Vec<SegmentRef> = Vec::new();
    for o in repo.backend().list("journal/")? {
        match parse_sealed_name(&o.name) {
            Some((first, last)) => sealed.push(SegmentRef {
                seq: first,
                last,
                sealed: true,
                size: o.size,
            }),
            None if o.name.ends_with(".log") => {} // a stream, as some backends list them
            None => crate::warn::stray(&o.name),
        }
    }
    // Wider runs first, so a merged object replaces the single ones it holds.
    sealed.sort_by_key(|s| (s.seq, std::cmp::Reverse(s.last)));
    let mut covered_to: Option<u64> = None;
    for s in sealed {
        if covered_to.is_some_and(|c| s.last <= c) {
            continue; // held by a merged run listed before it
        }
        for q in s.seq..=s.last {
            by_seq.remove(&q);
        }
        covered_to = Some(s.last);
        by_seq.insert(s.seq, s);
    }
    Ok(by_seq.into_values().collect())
}

/// Streams that also exist sealed: left by a crash between sealing and deleting; safe to delete.
pub fn redundant_streams(repo: &Repository) -> Result<Vec<u64>> {
    let sealed: Vec<(u64, u64)> = repo
        .backend()
        .list("journal/")?
        .iter()
        .filter_map(|o| parse_sealed_name(&o.name))
        .collect();
    Ok(repo
        .backend()
        .stream_list()?
        .iter()
        .filter_map(|s| parse_stream_name(&s.name))
        .filter(|seq| sealed.iter().any(|(f, l)| f <= seq && seq <= l))
        .collect())
}

/// Read one segment's records. `recovery` applies to open streams: the newest stream may end in
/// a torn (or still being written) record, which `TruncateTornTail` leaves out without changing it.
pub fn read_segment(
    repo: &Repository,
    seg: &SegmentRef,
    recovery: Recovery,
) -> Result<Vec<Record>> {
    Ok(read_segment_data(repo, seg, recovery)?.records)
}

/// Like [`read_segment`], also saying whether a torn tail was left out (and what it was).
pub fn read_segment_checked(
    repo: &Repository,
    seg: &SegmentRef,
    recovery: Recovery,
) -> Result<(Vec<Record>, Option<String>)> {
    let name = seg.object_name();
    let d = read_segment_data(repo, seg, recovery)?;
    Ok((
        d.records,
        d.tail.map(|t| format!("{name}: {}", t.describe())),
    ))
}

/// A sealed object's content.
pub fn read_sealed(repo: &Repository, seg: &SegmentRef) -> Result<Sealed> {
    let name = seg.object_name();
    let data = repo.backend().get(&name)?;
    segment::decode_sealed(repo.crypto(), &name, seg.seq, seg.last, &data)
}

/// One segment, with its link, frame count and chain: [`open_segment`], every record taken.
pub fn read_segment_data(
    repo: &Repository,
    seg: &SegmentRef,
    recovery: Recovery,
) -> Result<SegmentData> {
    let mut c = open_segment(repo, seg, recovery)?;
    let records = c.by_ref().collect::<Result<Vec<Record>>>()?;
    Ok(SegmentData {
        frames: c.as_predecessor(seg.seq).frames,
        records,
        link: c.link,
        chain: c.chain,
        tail: c.tail,
    })
}

/// One segment opened for reading one record at a time (see [`open_segment`]).
pub struct SegmentCursor<'a> {
    pub link: Option<Link>,
    /// Whole frames (the link included); for a format-1 sealed object, known at its end.
    frames: Option<u64>,
    pub chain: Option<Chain>,
    pub tail: Option<Tail>,
    /// The newest real version among the records taken so far.
    last_real: Option<u32>,
    records: Records<'a>,
}

enum Records<'a> {
    Sealed(segment::SealedStream),
    Stream {
        data: Vec<u8>,
        positions: std::vec::IntoIter<usize>,
        crypto: &'a crate::crypto::Crypto,
        seq: u64,
        name: String,
    },
}

impl SegmentCursor<'_> {
    /// Records not yet taken, when known (a stream's, or a format-2 sealed object's).
    pub fn remaining(&self) -> Option<u64> {
        match &self.records {
            Records::Sealed(s) => s.remaining(),
            Records::Stream { positions, .. } => Some(positions.len() as u64),
        }
    }

    /// Frames of the segment (its link included), when known before its end.
    pub fn frames(&self) -> Option<u64> {
        self.frames
    }

    /// What a link to the segment after this one (number `seq`) must say: valid once every
    /// record was taken.
    pub fn as_predecessor(&self, seq: u64) -> Predecessor {
        let frames = match &self.records {
            Records::Sealed(s) => s.frames.unwrap_or(s.read),
            Records::Stream { .. } => self.frames.unwrap_or(0),
        };
        Predecessor {
            seq,
            frames,
            chain: self.chain,
            last_version: self.last_real,
        }
    }
}

impl Iterator for SegmentCursor<'_> {
    type Item = Result<Record>;

    fn next(&mut self) -> Option<Result<Record>> {
        let r = match &mut self.records {
            Records::Sealed(s) => s.next()?,
            Records::Stream {
                data,
                positions,
                crypto,
                seq,
                name,
            } => {
                let pos = positions.next()?;
                segment::stream_record(data, pos, crypto, *seq, name)
            }
        };
        if let Ok(r) = &r {
            if !r.pragma_only() {
                self.last_real = Some(r.batch.data_version);
            }
        }
        Some(r)
    }
}

/// Open one segment to read its records one at a time: a stream's frames are all checked first,
/// then decoded as they are taken; a sealed object is
/// decompressed as its records are taken. Memory holds the segment's stored bytes, not its
/// statements.
pub fn open_segment<'a>(
    repo: &'a Repository,
    seg: &SegmentRef,
    recovery: Recovery,
) -> Result<SegmentCursor<'a>> {
    let name = seg.object_name();
    if seg.sealed {
        let data = repo.backend().get(&name)?;
        let s = segment::SealedStream::open(repo.crypto(), &name, seg.seq, seg.last, &data)?;
        return Ok(SegmentCursor {
            link: s.link,
            frames: s.frames,
            chain: s.chain,
            tail: None,
            last_real: None,
            records: Records::Sealed(s),
        });
    }
    let data = match repo.backend().stream_read(&stream_name(seg.seq)) {
        Ok(d) => d,
        // Sealed by a compaction since it was listed: the sealed copy was published first.
        Err(Error::NotFound { .. }) => {
            let sealed = SegmentRef {
                sealed: true,
                ..seg.clone()
            };
            return open_segment(repo, &sealed, recovery);
        }
        Err(e) => return Err(e),
    };
    let p = segment::parse_stream_frames(
        &data,
        repo.crypto(),
        repo.repo_id(),
        seg.seq,
        &name,
        recovery,
    )?;
    Ok(SegmentCursor {
        chain: p.frame_chain(),
        link: p.link,
        frames: Some(p.frames),
        tail: p.tail,
        last_real: None,
        records: Records::Stream {
            data,
            positions: p.positions.into_iter(),
            crypto: repo.crypto(),
            seq: seg.seq,
            name,
        },
    })
}

/// Check that `link`, the link of segment `seq`, names `pred` (segment `seq - 1` as read).
pub fn check_link(seq: u64, link: &Link, pred: &Predecessor, object: &str) -> Result<()> {
    let Some(p) = link.predecessor else {
        return Ok(()); // its writer did not know it (pruned before the segment began)
    };
    let mut wrong = Vec::new();
    if p.seq.checked_add(1) != Some(seq) {
        wrong.push(format!("it follows segment {:016x}", p.seq));
    }
    if p.frames != pred.frames {
        wrong.push(format!(
            "its predecessor held {} frames when it began, it holds {} now",
            p.frames, pred.frames
        ));
    }
    if let (Some(want), Some(got)) = (p.chain, pred.chain) {
        if want != got && p.frames == pred.frames {
            wrong.push("its predecessor's last record is not the one it followed".into());
        }
    }
    if p.last_version.is_some() && pred.frames == p.frames && p.last_version != pred.last_version {
        wrong.push(format!(
            "its predecessor ended at data_version {:?}, now at {:?}",
            p.last_version, pred.last_version
        ));
    }
    if wrong.is_empty() {
        return Ok(());
    }
    Err(Error::corrupt(
        object,
        format!(
            "does not follow the segment before it: {} (that segment was cut, emptied, replaced by an older copy, or swapped)",
            wrong.join("; ")
        ),
    ))
}

/// Records of all segments with `seq >= from_seq`, oldest first, with their segment numbers.
pub type Tail2 = (Vec<(u64, Record)>, Option<String>);

/// What [`read_journal`] read.
#[derive(Debug, Default)]
pub struct Journal {
    /// Records with their segment numbers, oldest first.
    pub records: Vec<(u64, Record)>,
    /// A torn or damaged tail of the newest segment that was left out.
    pub tail: Option<(String, Tail)>,
    /// The newest segment read (none when the journal holds none from `from_seq` on).
    pub newest: Option<u64>,
}

/// Read the journal from segment `from_seq` on and check its continuity (see the module
/// header). `recovery` applies to the newest segment; all others are read strictly.
///
/// A sealed object that is gone by the time it is read was merged into a run (or pruned) since
/// the listing: the journal is listed and read again, a few times at most.
pub fn read_journal(repo: &Repository, from_seq: u64, recovery: Recovery) -> Result<Journal> {
    let mut tries = 0;
    loop {
        match read_journal_once(repo, from_seq, recovery) {
            Err(Error::NotFound { object })
                if tries < 3 && parse_sealed_name(&object).is_some() =>
            {
                tries += 1;
            }
            other => return other,
        }
    }
}

fn read_journal_once(repo: &Repository, from_seq: u64, recovery: Recovery) -> Result<Journal> {
    let mut r = JournalReader::open(repo, from_seq, recovery)?;
    let mut out = Journal::default();
    for rec in r.by_ref() {
        out.records.push(rec?);
    }
    out.tail = r.tail.take();
    out.newest = r.newest;
    Ok(out)
}

/// The journal from segment `from_seq` on, one segment in memory at a time, its continuity
/// checked as it is read (see the module header): an iterator of records with their segment
/// numbers, oldest first. `recovery` applies to the newest segment; all others are read
/// strictly. After the last record, `tail` and `newest` say what [`Journal`] says.
///
/// Unlike [`read_journal`] it does not list again when a sealed object vanishes mid-read (merged
/// into a run by a prune meanwhile): the `NotFound` error reaches the caller, which starts over
/// (see [`journal_moved`]).
pub struct JournalReader<'a> {
    repo: &'a Repository,
    segs: std::vec::IntoIter<SegmentRef>,
    remaining: usize,
    recovery: Recovery,
    prev: Option<Predecessor>,
    seq: u64,
    last: u64,
    cursor: Option<SegmentCursor<'a>>,
    failed: bool,
    /// A torn or damaged tail of the newest segment that was left out.
    pub tail: Option<(String, Tail)>,
    /// The newest segment read so far.
    pub newest: Option<u64>,
}

/// Whether `e` says a sealed journal object vanished while it was read: the journal was merged
/// by a prune meanwhile, and reading it again from the listing finds the same records.
pub fn journal_moved(e: &Error) -> bool {
    matches!(e, Error::NotFound { object } if parse_sealed_name(object).is_some())
}

impl<'a> JournalReader<'a> {
    pub fn open(
        repo: &'a Repository,
        from_seq: u64,
        recovery: Recovery,
    ) -> Result<JournalReader<'a>> {
        let all = segments(repo)?;
        if let Some(newest) = all.last() {
            if newest.sealed && repo.format() >= 2 {
                return Err(Error::corrupt(
                    format!("journal/{}", stream_name(newest.last + 1)),
                    format!(
                        "is missing: {} is sealed, so a segment followed it (deleted, or the journal was rolled back)",
                        newest.object_name()
                    ),
                ));
            }
        }
        // The segment before the first one read, when present, anchors the first one's link.
        let segs: Vec<SegmentRef> = all.iter().filter(|s| s.last >= from_seq).cloned().collect();
        let mut prev = None;
        if let Some(first) = segs.first() {
            if first.seq > from_seq {
                return Err(Error::corrupt(
                    format!("journal/{}", stream_name(from_seq)),
                    format!(
                        "is missing: the journal is read from segment {from_seq:016x}, but its first segment is {:016x}",
                        first.seq
                    ),
                ));
            }
            if let Some(before) = all.iter().rev().find(|s| s.last < first.seq) {
                if before.last + 1 == first.seq {
                    let mut c = open_segment(repo, before, Recovery::Strict)?;
                    for r in c.by_ref() {
                        r?;
                    }
                    prev = Some(c.as_predecessor(before.last));
                }
            }
        }
        Ok(JournalReader {
            repo,
            remaining: segs.len(),
            segs: segs.into_iter(),
            recovery,
            prev,
            seq: 0,
            last: 0,
            cursor: None,
            failed: false,
            tail: None,
            newest: None,
        })
    }

    /// Open the next segment; `false` when there is none.
    fn next_segment(&mut self) -> Result<bool> {
        if let Some(c) = &self.cursor {
            self.prev = Some(c.as_predecessor(self.last));
        }
        self.cursor = None;
        let Some(seg) = self.segs.next() else {
            return Ok(false);
        };
        self.remaining -= 1;
        let name = seg.object_name();
        if let Some(p) = &self.prev {
            if seg.seq != p.seq + 1 {
                return Err(Error::corrupt(
                    format!("journal/{}", stream_name(p.seq + 1)),
                    format!(
                        "is missing: the journal jumps from segment {:016x} to {:016x}",
                        p.seq, seg.seq
                    ),
                ));
            }
        }
        let rec = if self.remaining == 0 {
            self.recovery
        } else {
            Recovery::Strict
        };
        let c = open_segment(self.repo, &seg, rec)?;
        if let (Some(link), Some(p)) = (&c.link, &self.prev) {
            check_link(seg.seq, link, p, &name)?;
        }
        if let Some(t) = &c.tail {
            self.tail = Some((name, t.clone()));
        }
        self.newest = Some(seg.last);
        self.seq = seg.seq;
        self.last = seg.last;
        self.cursor = Some(c);
        Ok(true)
    }
}

impl Iterator for JournalReader<'_> {
    type Item = Result<(u64, Record)>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        loop {
            match self.cursor.as_mut().and_then(Iterator::next) {
                Some(Ok(r)) => return Some(Ok((self.seq, r))),
                Some(Err(e)) => {
                    self.failed = true;
                    return Some(Err(e));
                }
                None => {}
            }
            match self.next_segment() {
                Ok(true) => {}
                Ok(false) => return None,
                Err(e) => {
                    self.failed = true;
                    return Some(Err(e));
                }
            }
        }
    }
}

/// Records of all segments with `seq >= from_seq`, oldest first. Only the newest segment may end
/// in a torn tail (it is left out); any damage elsewhere, or a break in the journal's
/// continuity, is an error.
pub fn read_from(repo: &Repository, from_seq: u64) -> Result<Tail2> {
    let j = read_journal(repo, from_seq, Recovery::TruncateTornTail)?;
    Ok((
        j.records,
        j.tail.map(|(n, t)| format!("{n}: {}", t.describe())),
    ))
}

/// What segment `seq`'s link must name: segment `seq - 1` as stored now, if it exists.
pub fn predecessor(repo: &Repository, seq: u64) -> Result<Option<Predecessor>> {
    let Some(p) = seq.checked_sub(1) else {
        return Ok(None);
    };
    let Some(seg) = segments(repo)?.into_iter().find(|s| s.last == p) else {
        return Ok(None);
    };
    let d = read_segment_data(repo, &seg, Recovery::Strict)?;
    Ok(Some(d.as_predecessor(p)))
}
