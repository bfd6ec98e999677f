//! Reading journal segments back, in order.

use super::record::Record;
use super::segment::{self, Recovery};
use super::{parse_sealed_name, parse_stream_name, sealed_name, stream_name};
use crate::error::{Error, Result};
use crate::repo::Repository;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentRef {
    pub seq: u64,
    /// Sealed (compressed object) rather than an open stream.
    pub sealed: bool,
    pub size: u64,
}

impl SegmentRef {
    pub fn object_name(&self) -> String {
        if self.sealed {
            sealed_name(self.seq)
        } else {
            format!("journal/{}.log", stream_name(self.seq))
        }
    }
}

/// Every segment, oldest first. Where a segment exists both sealed and as a stream (a crash
/// between sealing and deleting the stream), the sealed one is listed and the stream is not.
pub fn segments(repo: &Repository) -> Result<Vec<SegmentRef>> {
    // Streams first, then sealed objects: a compaction sealing a segment meanwhile publishes the
    // sealed copy before deleting the stream, so every segment is seen in one form or the other
    // (the other order could miss one sealed between the two listings).
    let mut by_seq: std::collections::BTreeMap<u64, SegmentRef> = Default::default();
    for s in repo.backend().stream_list()? {
        if let Some(seq) = parse_stream_name(&s.name) {
            by_seq.insert(
                seq,
                SegmentRef {
                    seq,
                    sealed: false,
                    size: s.size,
                },
            );
        }
    }
    for o in repo.backend().list("journal/")? {
        if let Some(seq) = parse_sealed_name(&o.name) {
            by_seq.insert(
                seq,
                SegmentRef {
                    seq,
                    sealed: true,
                    size: o.size,
                },
            );
        }
    }
    Ok(by_seq.into_values().collect())
}

/// Streams that also exist sealed: left by a crash between sealing and deleting; safe to delete.
pub fn redundant_streams(repo: &Repository) -> Result<Vec<u64>> {
    let sealed: Vec<u64> = repo
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
        .filter(|seq| sealed.contains(seq))
        .collect())
}

/// Read one segment's records. `recovery` applies to open streams: the newest stream may end in
/// a torn (or still being written) record, which `TruncateTornTail` ignores without changing it.
pub fn read_segment(
    repo: &Repository,
    seg: &SegmentRef,
    recovery: Recovery,
) -> Result<Vec<Record>> {
    Ok(read_segment_checked(repo, seg, recovery)?.0)
}

/// Like [`read_segment`], also saying whether a torn tail was ignored (and what it was).
pub fn read_segment_checked(
    repo: &Repository,
    seg: &SegmentRef,
    recovery: Recovery,
) -> Result<(Vec<Record>, Option<String>)> {
    let name = seg.object_name();
    if seg.sealed {
        let data = repo.backend().get(&name)?;
        return Ok((segment::decode_sealed(repo.crypto(), &name, &data)?, None));
    }
    let data = match repo.backend().stream_read(&stream_name(seg.seq)) {
        Ok(d) => d,
        // Sealed by a compaction since it was listed: the sealed copy was published first.
        Err(Error::NotFound { .. }) => {
            let sealed = SegmentRef {
                sealed: true,
                ..seg.clone()
            };
            return read_segment_checked(repo, &sealed, recovery);
        }
        Err(e) => return Err(e),
    };
    let parsed = segment::parse_stream(
        &data,
        repo.crypto(),
        repo.repo_id(),
        seg.seq,
        &name,
        recovery,
    )?;
    Ok((parsed.records, parsed.torn.map(|t| format!("{name}: {t}"))))
}

/// Records of all segments with `seq >= from_seq`, oldest first. Only the newest segment may end
/// in a torn tail (it is ignored); any damage elsewhere is an error.
/// Records with their segment numbers, and a note on a torn tail left out.
pub type Tail = (Vec<(u64, Record)>, Option<String>);

pub fn read_from(repo: &Repository, from_seq: u64) -> Result<Tail> {
    let segs: Vec<SegmentRef> = segments(repo)?
        .into_iter()
        .filter(|s| s.seq >= from_seq)
        .collect();
    let mut out = Vec::new();
    let mut torn = None;
    let n = segs.len();
    for (i, seg) in segs.iter().enumerate() {
        let rec = if i + 1 == n {
            Recovery::TruncateTornTail
        } else {
            Recovery::Strict
        };
        let (recs, t) = read_segment_checked(repo, seg, rec)?;
        torn = torn.or(t);
        for r in recs {
            out.push((seg.seq, r));
        }
    }
    Ok((out, torn))
}
