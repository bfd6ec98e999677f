//! Where an open journal stream ends, found without the repository key.
//!
//! A local directory writes a synced stream ahead with zeros (`backend::dir`); a server killed
//! (or a machine that lost power) leaves them in the file, so the file's length is not the
//! stream's. The node finds the end with its key (`journal::segment`), but the server must know
//! it too, before the node's re-sent append arrives: it walks the frames by their keyless check
//! (`u32 len | u32 check`, check = blake3(seq ‖ offset ‖ len), docs/format.md "Open segment
//! stream"), which needs only the segment number (the stream's name).
//!
//! The walk proves a frame's header, not its sealed body: a record torn by a crash in the
//! middle of its body (a prefix of it, then the zeros that were there) passes. Two rules keep
//! that harmless: the node's re-sent append completes such a torn copy of its own bytes
//! (`node::Node::append`), and under `--append-only` a last frame that ends in a zero byte (a
//! tag ends in zero once in 256 records; a torn one always does) may still be cut by the node,
//! which checks the seal.

use crate::envelope::{Kind, MAGIC};
use crate::journal::segment::{frame_check, FRAME_HEADER_LEN, MAX_RECORD, STREAM_HEADER_LEN};

/// What the walk found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamEnd {
    /// The stream's length: after its last whole frame when only zeros follow (they are cut),
    /// else the file's whole length (a torn frame or damage after the frames: the node reads
    /// it, with its key, and decides).
    pub len: u64,
    /// Bytes that may not be cut under `--append-only` (everything up to the last frame that
    /// cannot be torn).
    pub floor: u64,
    /// Only zeros follow `len`: the file may be cut there.
    pub zeros_after: bool,
}

/// The end of the stream `data` (a whole stream file) of segment `seq`.
pub fn stream_end(data: &[u8], seq: u64) -> StreamEnd {
    let whole = data.len() as u64;
    let used = data.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    if used == 0 {
        // Empty, or only zeros: nothing was ever written (a header is never all zeros).
        return StreamEnd {
            len: 0,
            floor: 0,
            zeros_after: whole > 0,
        };
    }
    let header_ok = data.len() >= STREAM_HEADER_LEN
        && data.get(..4) == Some(MAGIC.as_slice())
        && data.get(4) == Some(&(Kind::JournalStream as u8))
        && data.get(STREAM_HEADER_LEN - 8..STREAM_HEADER_LEN) == Some(seq.to_le_bytes().as_slice());
    if !header_ok {
        // A torn header, or not a stream of this segment: nothing here was acknowledged as a
        // whole frame; the node decides with its key.
        return StreamEnd {
            len: whole,
            floor: 0,
            zeros_after: false,
        };
    }
    let mut pos = STREAM_HEADER_LEN;
    let mut last_start = pos;
    while pos < used {
        let Some(fh) = data.get(pos..pos + FRAME_HEADER_LEN) else {
            break;
        };
        let (lenb, checkb) = fh.split_at(4);
        let len = u32::from_le_bytes(lenb.try_into().unwrap_or([0; 4]));
        let check = u32::from_le_bytes(checkb.try_into().unwrap_or([0; 4]));
        if len == 0 || len as usize > MAX_RECORD + 64 || check != frame_check(seq, pos as u64, len)
        {
            break;
        }
        let end = pos + FRAME_HEADER_LEN + len as usize;
        if end > data.len() {
            break;
        }
        last_start = pos;
        pos = end;
    }
    if pos >= used {
        // Whole frames, then only zeros. The last frame may still be a torn copy whose end is
        // zeros: the node may cut it (it checks the seal) when its last byte is zero.
        let last_may_be_torn =
            pos > STREAM_HEADER_LEN && data.get(pos.saturating_sub(1)) == Some(&0);
        StreamEnd {
            len: pos as u64,
            floor: if last_may_be_torn { last_start } else { pos } as u64,
            zeros_after: true,
        }
    } else {
        // A frame whose header fails (torn, or damaged) with bytes after it.
        StreamEnd {
            len: whole,
            floor: pos as u64,
            zeros_after: false,
        }
    }
}

#[cfg(test)]
mod test {
    use super::*;
    use crate::crypto::Crypto;
    use crate::ids::RepoId;
    use crate::journal::record::{Batch, Record};
    use crate::journal::segment::{encode_frame, frame_chain, stream_header};

    fn stream(seq: u64, n: usize) -> (Vec<u8>, Vec<usize>) {
        let c = Crypto::plaintext();
        let mut s = stream_header(&c, RepoId([3; 16]), seq);
        let mut starts = Vec::new();
        for i in 0..n {
            let rec = Record {
                batch: Batch {
                    data_version: i as u32 + 1,
                    writes: vec![format!("UPDATE vars SET intval={i}")],
                },
                supersedes: false,
                time_ms: 0,
            };
            starts.push(s.len());
            let prev = frame_chain(&s);
            let f = encode_frame(
                &c,
                &s[..STREAM_HEADER_LEN],
                seq,
                s.len() as u64,
                &prev,
                &rec.encode(),
            );
            s.extend_from_slice(&f);
        }
        (s, starts)
    }

    /// The zeros a directory writes ahead are not the stream; a whole stream is its own end.
    #[test]
    fn zeros_after_frames_are_cut() {
        let (s, _) = stream(7, 5);
        let end = stream_end(&s, 7);
        assert!(end.len == s.len() as u64 && end.zeros_after);
        let mut padded = s.clone();
        padded.resize(s.len() + 131072, 0);
        let end = stream_end(&padded, 7);
        assert_eq!(end.len, s.len() as u64);
        assert!(end.zeros_after);
        // Only zeros, or nothing: an empty stream.
        assert_eq!(stream_end(&[0; 4096], 7).len, 0);
        assert_eq!(stream_end(&[], 7).len, 0);
    }

    /// A record torn in its body (its start, then zeros) passes the keyless check: it counts,
    /// and the floor lets the node cut it.
    #[test]
    fn a_torn_last_record_leaves_the_floor_before_it() {
        let (s, starts) = stream(2, 3);
        let last = *starts.last().unwrap();
        let mut torn = s.clone();
        for b in torn.iter_mut().skip(last + 12) {
            *b = 0;
        }
        torn.resize(s.len() + 4096, 0);
        let end = stream_end(&torn, 2);
        assert_eq!(end.len, s.len() as u64);
        assert_eq!(end.floor, last as u64);
    }

    /// A frame header torn (or damaged) with bytes after it: the whole file is the stream, for
    /// the node to judge; nothing after the last good frame is protected.
    #[test]
    fn a_torn_header_keeps_the_file_whole() {
        let (s, starts) = stream(9, 4);
        let mut bad = s.clone();
        let third = starts[2];
        bad[third] ^= 0x40;
        let end = stream_end(&bad, 9);
        assert_eq!(
            end,
            StreamEnd {
                len: s.len() as u64,
                floor: third as u64,
                zeros_after: false
            }
        );
        // Another segment's stream under this name is not walked.
        let end = stream_end(&s, 10);
        assert_eq!((end.len, end.floor), (s.len() as u64, 0));
        // Part of a header, then zeros.
        let mut part = s[..20].to_vec();
        part.resize(4096, 0);
        assert_eq!(stream_end(&part, 9).floor, 0);
    }
}
