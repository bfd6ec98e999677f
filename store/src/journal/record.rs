//! A journal record: one `db_write` batch.
//!
//! ```text
//! u8  record type (1 = batch)
//! u8  flags: bit 0 = supersedes the previous batch of the same data_version,
//!            bit 1 = PRAGMA-only (applied outside a transaction)
//! u32 data_version
//! u32 statement count, then each statement as u32 length + UTF-8 bytes
//! ```

use crate::codec::{Dec, Enc};
use crate::error::{Error, Result};

const TYPE_BATCH: u8 = 1;
pub const FLAG_SUPERSEDES: u8 = 1;
pub const FLAG_PRAGMA: u8 = 2;

/// What lightningd sends in one `db_write` call.
#[derive(Clone, Debug, PartialEq, Eq)]
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

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub batch: Batch,
    pub supersedes: bool,
}

impl Record {
    pub fn pragma_only(&self) -> bool {
        self.batch.is_pragma_only()
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut e = Enc::new();
        let mut flags = 0;
        if self.supersedes {
            flags |= FLAG_SUPERSEDES;
        }
        if self.batch.is_pragma_only() {
            flags |= FLAG_PRAGMA;
        }
        e.u8(TYPE_BATCH).u8(flags).u32(self.batch.data_version);
        e.u32(self.batch.writes.len() as u32);
        for w in &self.batch.writes {
            e.blob(w.as_bytes());
        }
        e.finish()
    }

    pub fn decode(data: &[u8], object: &str) -> Result<Record> {
        let mut d = Dec::new(data, object);
        let t = d.u8()?;
        if t != TYPE_BATCH {
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
        };
        if (flags & FLAG_PRAGMA != 0) != rec.pragma_only() {
            return Err(Error::corrupt(
                object,
                "PRAGMA flag does not match the statements",
            ));
        }
        Ok(rec)
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
        };
        assert_eq!(Record::decode(&ok.encode(), "r").unwrap(), ok);
    }
}
