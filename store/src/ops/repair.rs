//! Repair a damaged end of the journal (`backup-cli repair URL --cut-damaged-tail`;
//! docs/format.md "Repair of a damaged tail").
//!
//! A damaged tail (see `journal::segment`: the newest record(s) of the newest open stream fail
//! authentication in a way a crash cannot leave) makes the writer refuse to open, so the node
//! cannot start. The way out: keep the whole stream as it is (the caller stores it aside for
//! forensics), then cut the stream after its last authentic frame. Nothing readable is removed:
//! every frame before the cut authenticated and stays, chained as it was; the writer appends
//! after it. The batches of the damaged part are lost from this copy; the caller takes a snapshot
//! of the node's own database (which still holds them) so the backup is complete again.
//!
//! Only the end of the newest open stream is ever cut. Damage followed by a valid record, or in
//! any other segment, is corruption and is refused here as everywhere.

use serde::Serialize;

use crate::backend::{Durability, LockGuard};
use crate::error::{Error, Result};
use crate::journal::reader;
use crate::journal::segment::{self, Recovery, Tail};
use crate::journal::stream_name;
use crate::repo::Repository;

#[derive(Clone, Debug, Default, Serialize)]
pub struct TailRepair {
    /// The newest segment (`journal/<seq>.log`), if the journal has an open one.
    pub object: Option<String>,
    /// What was damaged, when something was.
    pub damaged: Option<String>,
    /// The stream's length before and after the cut.
    pub len_before: u64,
    pub len_after: u64,
    /// The newest data_version of a whole, authentic batch left in that segment.
    pub last_version: Option<u32>,
    /// A torn tail (a crash's) at the end: not damage; the writer cuts it itself.
    pub torn: Option<String>,
}

/// Cut the newest stream's damaged end after its last authentic frame. `keep` receives the
/// whole stream as it is before anything changes (and must store it durably: the cut follows).
/// `_writer` is the repository's writer lock, held by the caller for the whole repair so no
/// plugin appends meanwhile. A stream without damage is left alone.
pub fn cut_damaged_tail(
    repo: &Repository,
    _writer: &dyn LockGuard,
    keep: impl FnOnce(&str, &[u8]) -> Result<()>,
) -> Result<TailRepair> {
    let mut rep = TailRepair::default();
    let Some(newest) = reader::segments(repo)?.last().cloned() else {
        return Ok(rep);
    };
    if newest.sealed {
        return Ok(rep);
    }
    let object = newest.object_name();
    rep.object = Some(object.clone());
    let name = stream_name(newest.seq);
    let data = repo.backend().stream_read(&name)?;
    rep.len_before = data.len() as u64;
    rep.len_after = rep.len_before;
    let parse = |recovery| {
        segment::parse_stream(
            &data,
            repo.crypto(),
            repo.repo_id(),
            newest.seq,
            &object,
            recovery,
        )
    };
    match parse(Recovery::TruncateTornTail) {
        Ok(p) => {
            rep.last_version = p.last_version();
            if let Some(Tail::Torn(t)) = &p.tail {
                rep.torn = Some(t.clone());
            }
            return Ok(rep);
        }
        Err(Error::DamagedTail { .. }) => {}
        Err(e) => return Err(e),
    }
    let p = parse(Recovery::AcceptDamagedTail)?;
    let Some(Tail::Damaged(what)) = &p.tail else {
        return Err(Error::corrupt(
            &object,
            "its end was reported damaged, then not: read it again",
        ));
    };
    rep.damaged = Some(what.clone());
    rep.last_version = p.last_version();
    keep(&object, &data)?;
    let mut stream = repo.backend().stream_open(&name, Durability::Fsync)?;
    stream.truncate(p.valid_len)?;
    drop(stream);
    rep.len_after = p.valid_len;
    Ok(rep)
}
