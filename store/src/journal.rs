//! The journal: one record per `db_write` batch, in segments.
//!
//! Read first: [`record`] (what a record holds), [`segment`] (how records are framed in an open
//! segment stream and in a sealed segment object), [`writer`] (the hook's write path and the
//! data_version rules), [`reader`] (reading records back in order for replay).
//!
//! Guarantees:
//! - `JournalWriter::append` returns only when the record is durable (per [`Durability`]).
//! - A torn tail (a record cut by a crash) is found and cut when the writer opens; a damaged record
//!   followed by valid ones is corruption and is reported, never skipped.
//! - data_version rules (NOTES.md section 1) are enforced at append: +1 per batch; PRAGMA-only
//!   batches repeat the version; the first batch of a writer session may repeat the last version,
//!   and is then stored flagged `supersedes`, so replay drops the batch it replaces.
//!
//! [`Durability`]: crate::backend::Durability

pub mod reader;
pub mod record;
pub mod segment;
pub mod trace;
pub mod writer;

pub use record::{Batch, Link, Predecessor, Record};
pub use writer::{AppendOutcome, JournalWriter};

/// Segment sequence numbers name streams (`{seq:016x}`) and sealed objects (`journal/{seq:016x}.seg`).
pub fn stream_name(seq: u64) -> String {
    format!("{seq:016x}")
}

pub fn sealed_name(seq: u64) -> String {
    format!("journal/{seq:016x}.seg")
}

/// A sealed object holding segments `first..=last`: `journal/<first>.seg` for one, or
/// `journal/<first>-<last>.seg` for a merged run.
pub fn sealed_run_name(first: u64, last: u64) -> String {
    if first == last {
        sealed_name(first)
    } else {
        format!("journal/{first:016x}-{last:016x}.seg")
    }
}

pub fn parse_stream_name(name: &str) -> Option<u64> {
    if name.len() != 16 {
        return None;
    }
    u64::from_str_radix(name, 16).ok()
}

/// The segments a sealed object's name says it holds: `(first, last)`.
pub fn parse_sealed_name(name: &str) -> Option<(u64, u64)> {
    let stem = name.strip_prefix("journal/")?.strip_suffix(".seg")?;
    match stem.split_once('-') {
        None => parse_stream_name(stem).map(|s| (s, s)),
        Some((a, b)) => {
            let (first, last) = (parse_stream_name(a)?, parse_stream_name(b)?);
            (first < last).then_some((first, last))
        }
    }
}
