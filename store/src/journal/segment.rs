//! Segment framing: how records sit in an open stream, and in a sealed segment object.
//!
//! Open segment stream (appended to by the writer, one frame per record):
//! ```text
//! stream header (40): envelope header (16, kind JournalStream) | repo id (16) | seq (u64)
//! frame:              len (u32) | check (u32) | sealed record (len bytes)
//! ```
//! `check` is the first 4 bytes of blake3(seq ‖ offset ‖ len): a length field that was torn or
//! overwritten is recognised without trusting it. Each record is sealed with associated data
//! (stream header ‖ frame offset), so a record moved to another place fails authentication.
//!
//! Recovery: a frame that is cut short, or fails its check or its seal, is a torn tail only if no
//! valid frame follows it anywhere in the stream; then it is cut. Otherwise the segment is corrupt
//! and reading fails naming it: a damaged record is never skipped over.
//!
//! End: the stream ends after the last frame, or where only zero bytes remain to its end (a
//! local directory writes a synced stream ahead with zeros, see `backend::dir`, and a crash leaves
//! them). No frame starts with four zero bytes (its length is never 0), so the zeros are never
//! mistaken for a record, and a record written over them but torn is still a torn tail.
//!
//! Sealed segment object `journal/<seq>.seg` (written at compaction, replacing the stream):
//! ```text
//! envelope header (16, kind SealedSegment) | sealed(zstd(frames of u32 len | record body)))
//! ```
//! Compressing the plaintext records as one stream is what makes the journal small at rest.

use crate::codec::{Dec, Enc};
use crate::crypto::Crypto;
use crate::envelope::{self, Header, Kind, HEADER_LEN};
use crate::error::{Error, Result};
use crate::ids::RepoId;

use super::record::Record;

pub const STREAM_HEADER_LEN: usize = HEADER_LEN + 16 + 8;
/// `u32 len | u32 check` (the check is keyless: a server finds a stream's end with it).
pub(crate) const FRAME_HEADER_LEN: usize = 8;
/// Largest record accepted (lightningd's largest batch is ~21 KB; 64 MiB leaves room).
pub const MAX_RECORD: usize = 64 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recovery {
    /// Cut a torn tail (the writer's open path).
    TruncateTornTail,
    /// Any damage is an error (verify).
    Strict,
}

pub fn stream_header(crypto: &Crypto, repo: RepoId, seq: u64) -> Vec<u8> {
    let mut h = Header::new(Kind::JournalStream, crypto).encode().to_vec();
    h.extend_from_slice(&repo.0);
    h.extend_from_slice(&seq.to_le_bytes());
    h
}

pub(crate) fn frame_check(seq: u64, offset: u64, len: u32) -> u32 {
    let mut h = blake3::Hasher::new();
    h.update(&seq.to_le_bytes());
    h.update(&offset.to_le_bytes());
    h.update(&len.to_le_bytes());
    let b = h.finalize();
    let mut c = [0u8; 4];
    c.copy_from_slice(b.as_bytes().get(..4).unwrap_or(&[0; 4]));
    u32::from_le_bytes(c)
}

fn record_aad(header: &[u8], offset: u64) -> Vec<u8> {
    let mut aad = header.to_vec();
    aad.extend_from_slice(&offset.to_le_bytes());
    aad
}

/// Encode one record as a frame to append at `offset`.
pub fn encode_frame(
    crypto: &Crypto,
    header: &[u8],
    seq: u64,
    offset: u64,
    rec: &Record,
) -> Vec<u8> {
    let sealed = crypto.seal(&record_aad(header, offset), &rec.encode());
    let len = sealed.len() as u32;
    let mut out = Vec::with_capacity(FRAME_HEADER_LEN + sealed.len());
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&frame_check(seq, offset, len).to_le_bytes());
    out.extend_from_slice(&sealed);
    out
}

pub struct Parsed {
    pub records: Vec<Record>,
    /// Bytes of the stream that hold the header and whole valid frames.
    pub valid_len: u64,
    /// Set when a torn tail was found (and must be cut); says what it was.
    pub torn: Option<String>,
}

/// Parse an open segment stream.
pub fn parse_stream(
    data: &[u8],
    crypto: &Crypto,
    repo: RepoId,
    seq: u64,
    object: &str,
    recovery: Recovery,
) -> Result<Parsed> {
    let expected = stream_header(crypto, repo, seq);
    // Bytes up to the last non-zero one: past them lie only zeros written ahead.
    let used = data.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    let whole_header = data.get(..STREAM_HEADER_LEN) == Some(expected.as_slice());
    if data.len() < STREAM_HEADER_LEN || (used < STREAM_HEADER_LEN && !whole_header) {
        // A crash while the header itself was being written: nothing was ever acknowledged here.
        let torn = match used {
            0 if data.is_empty() || data.len() >= STREAM_HEADER_LEN => None,
            0 => Some(format!("{} bytes of a torn stream header", data.len())),
            n => Some(format!("{n} bytes of a torn stream header")),
        };
        if torn.is_some() && recovery == Recovery::Strict {
            return Err(Error::corrupt(object, "torn stream header"));
        }
        return Ok(Parsed {
            records: Vec::new(),
            valid_len: 0,
            torn,
        });
    }
    let header = data.get(..STREAM_HEADER_LEN).unwrap_or_default();
    Header::decode_expect(header, Kind::JournalStream, crypto, object)?;
    if header != expected.as_slice() {
        return Err(Error::corrupt(
            object,
            "stream header names another repository or segment",
        ));
    }
    let mut pos = STREAM_HEADER_LEN;
    let mut records = Vec::new();
    while pos < data.len() {
        match try_frame(data, pos, crypto, header, seq, object) {
            Ok((rec, next)) => {
                records.push(rec);
                pos = next;
            }
            Err(_) if data.get(pos..).unwrap_or_default().iter().all(|&b| b == 0) => break,
            Err(why) => {
                if let Some(later) = find_valid_frame_after(data, pos, crypto, header, seq, object)
                {
                    return Err(Error::corrupt(
                        object,
                        format!("record at offset {pos} is damaged ({why}) but a valid record follows at offset {later}"),
                    ));
                }
                let torn = format!(
                    "torn tail of {} bytes at offset {pos} ({why})",
                    data.len() - pos
                );
                if recovery == Recovery::Strict {
                    return Err(Error::corrupt(object, torn));
                }
                return Ok(Parsed {
                    records,
                    valid_len: pos as u64,
                    torn: Some(torn),
                });
            }
        }
    }
    Ok(Parsed {
        records,
        valid_len: pos as u64,
        torn: None,
    })
}

fn try_frame(
    data: &[u8],
    pos: usize,
    crypto: &Crypto,
    header: &[u8],
    seq: u64,
    object: &str,
) -> std::result::Result<(Record, usize), String> {
    let fh = data
        .get(pos..pos + FRAME_HEADER_LEN)
        .ok_or("frame header cut short")?;
    let (lenb, checkb) = fh.split_at(4);
    let len = u32::from_le_bytes(lenb.try_into().map_err(|_| "short")?);
    let check = u32::from_le_bytes(checkb.try_into().map_err(|_| "short")?);
    if check != frame_check(seq, pos as u64, len) || len as usize > MAX_RECORD + 64 {
        return Err("frame header check failed".into());
    }
    let start = pos + FRAME_HEADER_LEN;
    let end = start + len as usize;
    let sealed = data.get(start..end).ok_or("record cut short")?;
    let body = crypto
        .open(object, &record_aad(header, pos as u64), sealed)
        .map_err(|e| format!("{e}"))?;
    let rec = Record::decode(&body, object).map_err(|e| format!("{e}"))?;
    Ok((rec, end))
}

fn find_valid_frame_after(
    data: &[u8],
    pos: usize,
    crypto: &Crypto,
    header: &[u8],
    seq: u64,
    object: &str,
) -> Option<usize> {
    // A frame's length is never 0: zeros written ahead are skipped without a hash each.
    (pos + 1..data.len().saturating_sub(FRAME_HEADER_LEN - 1))
        .filter(|&p| data.get(p..p + 4).is_some_and(|l| l != [0u8; 4]))
        .find(|&p| try_frame(data, p, crypto, header, seq, object).is_ok())
}

/// Encode records as a sealed segment object.
pub fn encode_sealed(
    crypto: &Crypto,
    name: &str,
    records: &[Record],
    level: i32,
) -> Result<Vec<u8>> {
    let mut e = Enc::new();
    for r in records {
        e.blob(&r.encode());
    }
    let z =
        zstd::bulk::compress(&e.finish(), level).map_err(|err| Error::io("compress", name, err))?;
    Ok(envelope::seal_object(Kind::SealedSegment, crypto, name, &z))
}

pub fn decode_sealed(crypto: &Crypto, name: &str, data: &[u8]) -> Result<Vec<Record>> {
    let z = envelope::open_object(Kind::SealedSegment, crypto, name, data)?;
    let raw = zstd::stream::decode_all(z.as_slice())
        .map_err(|e| Error::corrupt(name, format!("zstd: {e}")))?;
    let mut d = Dec::new(&raw, name);
    let mut out = Vec::new();
    while d.remaining() > 0 {
        out.push(Record::decode(d.blob()?, name)?);
    }
    Ok(out)
}

#[cfg(test)]
mod test {
    use super::*;
    use crate::journal::record::Batch;

    fn parse(data: &[u8], recovery: Recovery) -> Result<Parsed> {
        parse_stream(
            data,
            &Crypto::plaintext(),
            RepoId([7; 16]),
            5,
            "s",
            recovery,
        )
    }

    /// A local stream is written ahead with zeros; a crash can leave them after the header, or
    /// before it was written, or after part of it (the u64 seq ends in zero bytes, so "the last
    /// non-zero byte" alone cannot say whether a header is whole).
    #[test]
    fn zeros_after_the_header_or_instead_of_it_are_an_empty_stream() {
        let header = stream_header(&Crypto::plaintext(), RepoId([7; 16]), 5);
        let zeros = vec![0u8; 4096];
        let whole = [header.as_slice(), &zeros].concat();
        for recovery in [Recovery::Strict, Recovery::TruncateTornTail] {
            let p = parse(&whole, recovery).unwrap();
            assert_eq!((p.records.len(), p.valid_len, p.torn), (0, 40, None));
            let p = parse(&zeros, recovery).unwrap();
            assert_eq!((p.records.len(), p.valid_len, p.torn), (0, 0, None));
        }
        let torn = [header.get(..20).unwrap_or_default(), &zeros].concat();
        assert!(parse(&torn, Recovery::Strict)
            .err()
            .is_some_and(|e| e.is_corruption()));
        let p = parse(&torn, Recovery::TruncateTornTail).unwrap();
        assert_eq!(p.valid_len, 0);
        assert!(p.torn.is_some_and(|t| t.contains("torn stream header")));

        let rec = Record {
            batch: Batch {
                data_version: 9,
                writes: vec!["UPDATE vars SET intval=9".into()],
            },
            supersedes: false,
        };
        let frame = encode_frame(&Crypto::plaintext(), &header, 5, 40, &rec);
        let with_record = [header.as_slice(), &frame, &zeros].concat();
        let p = parse(&with_record, Recovery::Strict).unwrap();
        assert_eq!(p.records, vec![rec]);
        assert_eq!(p.valid_len, (40 + frame.len()) as u64);
    }
}
