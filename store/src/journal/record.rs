//! Journal entries: one `db_write` batch (a [`Record`]), or the [`Link`] that opens a segment.
//!
//! ```text
//! batch, type 2 (format 2; type 1 is format 1, without the time):
//!   u8  type | u8 flags (bit 0 supersedes, bit 1 PRAGMA-only) | u32 data_version
//!   | u64 time_ms (type 2 only: unix milliseconds when the writer stored it)
//!   | u32 statement count, then each statement as u32 length + UTF-8 bytes
//! link, type 3 (the first frame of every format-2 segment):
//!   u8 3 | u8 flags (bit 0 predecessor known, bit 1 its chain known, bit 2 its last version known)
//!   | u64 predecessor seq | u64 predecessor frames | chain (16) | u32 last data_version | u64 time_ms
//! ```
//! A link names what its segment follows: the previous segment's number, how many frames it
//! holds, the tag of its last frame (the chain) and its newest real data_version. Readers compare
//! it with the previous segment, so a segment cut at a frame boundary, emptied, or replaced by an
//! older copy is found as soon as a later segment exists.

use crate::codec::{Dec, Enc};
use crate::crypto::TAG_LEN;
use crate::error::{Error, Result};

const TYPE_BATCH_V1: u8 = 1;
const TYPE_BATCH: u8 = 2;
const TYPE_LINK: u8 = 3;
pub const FLAG_SUPERSEDES: u8 = 1;
pub const FLAG_PRAGMA: u8 = 2;

const LINK_PREDECESSOR: u8 = 1;
const LINK_CHAIN: u8 = 2;
const LINK_VERSION: u8 = 4;

/// What lightningd sends in one `db_write` call.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Batch {
    pub data_version: u32,
    pub writes: Vec<String>,
}

impl Batch {
    /// True when every statement is a PRAGMA: lightningd sends these outside a transaction and
    /// repeats the current data_version.
    pub fn is_pragma_only(&self) -> bool {
        !self.writes.is_empty()
            && self.writes.iter().all(|w| {
                let t = w.trim_start();
                t.len() >= 6 && t.get(..6).is_some_and(|p| p.eq_ignore_ascii_case("pragma"))
            })
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Record {
    pub batch: Batch,
    pub supersedes: bool,
    /// Unix milliseconds when the writer stored the batch; 0 for format-1 records.
    pub time_ms: u64,
}

/// The newest data_version of a batch in `records` that is not only PRAGMAs.
pub fn newest_real(records: &[Record]) -> Option<u32> {
    records
        .iter()
        .rev()
        .find(|r| !r.pragma_only())
        .map(|r| r.batch.data_version)
}

/// The tag of a frame (its last 16 bytes): what the next frame's seal covers.
pub type Chain = [u8; TAG_LEN];

/// The first frame of a format-2 segment: what the segment follows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Link {
    /// The previous segment, when the writer knew it (it may have been pruned).
    pub predecessor: Option<Predecessor>,
    pub time_ms: u64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Predecessor {
    pub seq: u64,
    /// Frames it holds (its link and its batches).
    pub frames: u64,
    /// The tag of its last frame, when known (not for a format-1 segment sealed before the
    /// upgrade, nor for an empty one).
    pub chain: Option<Chain>,
    /// Its newest data_version of a batch that is not only PRAGMAs.
    pub last_version: Option<u32>,
}

/// One decoded frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Entry {
    Batch(Record),
    Link(Link),
}

impl Record {
    pub fn pragma_only(&self) -> bool {
        self.batch.is_pragma_only()
    }

    /// Encode as a type-2 record (the only type written).
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Enc::new();
        let mut flags = 0;
        if self.supersedes {
            flags |= FLAG_SUPERSEDES;
        }
        if self.batch.is_pragma_only() {
            flags |= FLAG_PRAGMA;
        }
        e.u8(TYPE_BATCH)
            .u8(flags)
            .u32(self.batch.data_version)
            .u64(self.time_ms);
        e.u32(self.batch.writes.len() as u32);
        for w in &self.batch.writes {
            e.blob(w.as_bytes());
        }
        e.finish()
    }

    /// Decode a batch (type 1 or 2); a link here is corruption.
    pub fn decode(data: &[u8], object: &str) -> Result<Record> {
        match Entry::decode(data, object)? {
            Entry::Batch(r) => Ok(r),
            Entry::Link(_) => Err(Error::corrupt(
                object,
                "a segment link where a batch belongs",
            )),
        }
    }
}

impl Link {
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Enc::new();
        let p = self.predecessor.unwrap_or_default();
        let mut flags = 0;
        if self.predecessor.is_some() {
            flags |= LINK_PREDECESSOR;
            if p.chain.is_some() {
                flags |= LINK_CHAIN;
            }
            if p.last_version.is_some() {
                flags |= LINK_VERSION;
            }
        }
        e.u8(TYPE_LINK)
            .u8(flags)
            .u64(p.seq)
            .u64(p.frames)
            .bytes(&p.chain.unwrap_or_default())
            .u32(p.last_version.unwrap_or(0))
            .u64(self.time_ms);
        e.finish()
    }
}

impl Entry {
    pub fn decode(data: &[u8], object: &str) -> Result<Entry> {
        let mut d = Dec::new(data, object);
        let t = d.u8()?;
        if t == TYPE_LINK {
            let flags = d.u8()?;
            if flags & !(LINK_PREDECESSOR | LINK_CHAIN | LINK_VERSION) != 0
                || (flags & LINK_PREDECESSOR == 0 && flags != 0)
            {
                return Err(Error::corrupt(
                    object,
                    format!("unknown link flags {flags:#04x}"),
                ));
            }
            let seq = d.u64()?;
            let frames = d.u64()?;
            let chain: Chain = d.array()?;
            let last_version = d.u32()?;
            let time_ms = d.u64()?;
            d.end()?;
            let predecessor = (flags & LINK_PREDECESSOR != 0).then_some(Predecessor {
                seq,
                frames,
                chain: (flags & LINK_CHAIN != 0).then_some(chain),
                last_version: (flags & LINK_VERSION != 0).then_some(last_version),
            });
            return Ok(Entry::Link(Link {
                predecessor,
                time_ms,
            }));
        }
        if t != TYPE_BATCH && t != TYPE_BATCH_V1 {
            return Err(Error::corrupt(object, format!("unknown record type {t}")));
        }
        let flags = d.u8()?;
        if flags & !(FLAG_SUPERSEDES | FLAG_PRAGMA) != 0 {
            return Err(Error::corrupt(
                object,
                format!("unknown record flags {flags:#04x}"),
            ));
        }
        let data_version = d.u32()?;
        let time_ms = if t == TYPE_BATCH { d.u64()? } else { 0 };
        let n = d.u32()? as usize;
        if n > d.remaining() / 4 {
            return Err(d.err(format!("statement count {n} too large")));
        }
        let mut writes = Vec::with_capacity(n);
        for _ in 0..n {
            let s = d.blob()?;
            let s = std::str::from_utf8(s).map_err(|_| d.err("statement is not UTF-8"))?;
            writes.push(s.to_string());
        }
        d.end()?;
        let rec = Record {
            batch: Batch {
                data_version,
                writes,
            },
            supersedes: flags & FLAG_SUPERSEDES != 0,
            time_ms,
        };
        if (flags & FLAG_PRAGMA != 0) != rec.pragma_only() {
            return Err(Error::corrupt(
                object,
                "PRAGMA flag does not match the statements",
            ));
        }
        Ok(Entry::Batch(rec))
    }
}

#[cfg(test)]
mod test {
    use super::*;

    /// Found by the `journal_record` fuzz target: unknown flag bits were accepted and dropped,
    /// so a damaged record could decode as a different, valid one.
    #[test]
    fn unknown_flags_are_corruption() {
        let data = [0x01, 0x15, 0x01, 0, 0, 0, 0, 0, 0, 0];
        assert!(Record::decode(&data, "r").unwrap_err().is_corruption());
        let ok = Record {
            batch: Batch {
                data_version: 7,
                writes: vec!["PRAGMA x".into()],
            },
            supersedes: true,
            time_ms: 1_700_000_000_123,
        };
        assert_eq!(Record::decode(&ok.encode(), "r").unwrap(), ok);
    }

    /// Format-1 records (type 1) still decode, with no time.
    #[test]
    fn format1_records_decode_without_time() {
        let mut e = Enc::new();
        e.u8(1)
            .u8(0)
            .u32(9)
            .u32(1)
            .blob(b"UPDATE vars SET intval=9");
        let r = Record::decode(&e.finish(), "r").unwrap();
        assert_eq!((r.batch.data_version, r.time_ms), (9, 0));
    }

    /// A link's flags: unknown bits, or a chain or version without a predecessor, are damage,
    /// never a link that says less than was written.
    #[test]
    fn link_flags_outside_the_known_ones_are_corruption() {
        let l = Link {
            predecessor: Some(Predecessor {
                seq: 4,
                frames: 17,
                chain: Some([9; 16]),
                last_version: Some(1234),
            }),
            time_ms: 5,
        };
        let good = l.encode();
        for flags in [
            0x08u8,
            0x80,
            LINK_CHAIN,
            LINK_VERSION,
            LINK_CHAIN | LINK_VERSION,
        ] {
            let mut bad = good.clone();
            bad[1] = flags;
            let e = Entry::decode(&bad, "l").unwrap_err();
            assert!(e.is_corruption(), "{flags:#x}: {e}");
            assert!(
                e.to_string().contains("unknown link flags"),
                "{flags:#x}: {e}"
            );
        }
    }

    /// A statement count the bytes left cannot hold (each statement takes at least its 4-byte
    /// length) is refused before anything is allocated for it; one that fits exactly is read.
    #[test]
    fn a_statement_count_larger_than_the_record_is_refused() {
        let mut e = Enc::new();
        e.u8(TYPE_BATCH)
            .u8(0)
            .u32(9)
            .u64(1)
            .u32(2)
            .blob(b"")
            .blob(b"");
        let r = Record::decode(&e.finish(), "r").unwrap();
        assert_eq!(r.batch.writes, vec![String::new(), String::new()]);
        for n in [3u32, 5, 9, u32::MAX] {
            let mut e = Enc::new();
            e.u8(TYPE_BATCH)
                .u8(0)
                .u32(9)
                .u64(1)
                .u32(n)
                .blob(b"")
                .blob(b"");
            let err = Record::decode(&e.finish(), "r").unwrap_err();
            assert!(err.is_corruption(), "{n}: {err}");
            assert!(
                err.to_string()
                    .contains(&format!("statement count {n} too large")),
                "{n}: {err}"
            );
        }
    }

    #[test]
    fn links_round_trip_and_are_not_batches() {
        for predecessor in [
            None,
            Some(Predecessor {
                seq: 4,
                frames: 17,
                chain: Some([9; 16]),
                last_version: Some(1234),
            }),
            Some(Predecessor {
                seq: 4,
                frames: 0,
                chain: None,
                last_version: None,
            }),
        ] {
            let l = Link {
                predecessor,
                time_ms: 5,
            };
            assert_eq!(Entry::decode(&l.encode(), "l").unwrap(), Entry::Link(l));
            assert!(Record::decode(&l.encode(), "l")
                .unwrap_err()
                .is_corruption());
        }
    }
}
