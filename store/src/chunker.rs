//! Splitting a database file into chunks.
//!
//! [`PageChunker`] cuts at page boundaries (a chunk = N pages, the page size read from the
//! SQLite header): SQLite rewrites pages in place, so an unchanged page keeps its address between
//! snapshots. [`CdcChunker`] is FastCDC (v2020) for data that is not page-structured. Both give
//! `(offset, len)` spans covering the input exactly, in order.

use crate::config::ChunkerParams;
use crate::error::{Error, Result};

pub trait Chunker: Send + Sync {
    fn spans(&self, data: &[u8]) -> Vec<(usize, usize)>;
}

pub struct PageChunker {
    pub chunk_size: usize,
}

impl PageChunker {
    /// The spans of a file of `len` bytes (page-aligned cuts need only the length).
    pub fn spans_of_len(&self, len: usize) -> Vec<(usize, usize)> {
        let cs = self.chunk_size.max(1);
        (0..len).step_by(cs).map(|o| (o, cs.min(len - o))).collect()
    }
}

impl Chunker for PageChunker {
    fn spans(&self, data: &[u8]) -> Vec<(usize, usize)> {
        self.spans_of_len(data.len())
    }
}

pub struct CdcChunker {
    pub min: u32,
    pub avg: u32,
    pub max: u32,
}

impl Chunker for CdcChunker {
    fn spans(&self, data: &[u8]) -> Vec<(usize, usize)> {
        fastcdc::v2020::FastCDC::new(data, self.min, self.avg, self.max)
            .map(|c| (c.offset, c.length))
            .collect()
    }
}

/// The page size of an SQLite database file, from its header.
pub fn sqlite_page_size(header: &[u8], object: &str) -> Result<u32> {
    let magic = header
        .get(..16)
        .ok_or_else(|| Error::corrupt(object, "too short for an SQLite header"))?;
    if magic != b"SQLite format 3\0" {
        return Err(Error::corrupt(object, "not an SQLite 3 database"));
    }
    let b = header
        .get(16..18)
        .ok_or_else(|| Error::corrupt(object, "too short"))?;
    let raw = u16::from_be_bytes(b.try_into().unwrap_or([0, 0]));
    let ps = if raw == 1 { 65536 } else { u32::from(raw) };
    if !(512..=65536).contains(&ps) || !ps.is_power_of_two() {
        return Err(Error::corrupt(object, format!("invalid page size {ps}")));
    }
    Ok(ps)
}

pub fn for_params(params: &ChunkerParams, page_size: u32) -> Box<dyn Chunker> {
    match params {
        ChunkerParams::Pages { pages } => Box::new(PageChunker {
            chunk_size: (*pages).max(1) as usize * page_size as usize,
        }),
        ChunkerParams::FastCdc { min, avg, max } => Box::new(CdcChunker {
            min: *min,
            avg: *avg,
            max: *max,
        }),
    }
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn spans_cover_the_input() {
        let data: Vec<u8> = (0..100_000u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        for c in [
            Box::new(PageChunker { chunk_size: 4096 }) as Box<dyn Chunker>,
            Box::new(CdcChunker {
                min: 2048,
                avg: 8192,
                max: 32768,
            }),
        ] {
            let spans = c.spans(&data);
            let mut pos = 0;
            for (o, l) in spans {
                assert_eq!(o, pos);
                pos += l;
            }
            assert_eq!(pos, data.len());
        }
    }
}
