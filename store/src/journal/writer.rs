//! The write path of every `db_write` batch: validate its data_version, append it durably.
//!
//! data_version rules (lightningd's, NOTES.md section 1), with L the newest batch version the
//! repository holds (journal, else newest snapshot) and V the batch's:
//! - first non-PRAGMA batch of a writer session: V = L+1 "versions match"; V = L while the batch
//!   L is still in the journal: lightningd crashed before committing L and re-sends it, so the new
//!   record is flagged `supersedes` and replay drops the old one; V > L+1: the backup is behind;
//!   V < L (or V = L with L only in a snapshot): the backup is ahead. Both refuse the batch.
//! - later batches: V = L+1, else refused.
//! - PRAGMA-only batches repeat the current version (L, or L-1 before a superseding batch) and
//!   are kept: replay runs them outside a transaction.
//!
//! The hook path is `append`: encode, seal, one stream append (one fdatasync). No listing, no
//! work that grows with the repository. The first append of a segment writes the segment's
//! [`Link`] and the batch in that one append; the writer keeps the last frame's tag in memory to
//! chain the next frame to it.

use super::reader::{self, SegmentData, SegmentRef};
use super::record::{Batch, Chain, Link, Predecessor, Record};
use super::segment::{self, Recovery, MAX_RECORD, STREAM_HEADER_LEN};
use super::stream_name;
use crate::backend::{Durability, LockGuard, Stream};
use crate::error::{Error, Result};
use crate::repo::{Repository, WRITER_LOCK};

/// A started segment: its stream and its header.
type NewSegment = (Box<dyn Stream>, Vec<u8>);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AppendOutcome {
    /// A batch that follows the previous one.
    Appended,
    /// The first batch of this session follows the backup: "Versions match up".
    VersionsMatch,
    /// The first batch of this session re-sends the last version: it replaces that batch
    /// ("Last changes not applied").
    Superseded { version: u32 },
    /// A PRAGMA-only batch, kept.
    Pragma,
}

pub struct JournalWriter {
    repo: Repository,
    stream: Box<dyn Stream>,
    seq: u64,
    header: Vec<u8>,
    durability: Durability,
    _lock: Box<dyn LockGuard>,
    /// Newest non-PRAGMA batch version held, and whether that batch is in the journal (so can be
    /// superseded) rather than only in a snapshot.
    last_real: Option<u32>,
    last_real_in_journal: bool,
    session_started: bool,
    bytes_since_snapshot: u64,
    recovery_note: Option<String>,
    /// Set when the writer can no longer append safely (a rotation left a newer segment behind).
    poisoned: Option<String>,
    /// The current segment's records, kept so compaction need not read them back from the
    /// backend (one request per batch on S3); dropped past [`CACHE_LIMIT`].
    cache: Option<Vec<Record>>,
    cache_bytes: usize,
    /// The records of the segment the last rotation closed.
    closed_cache: Option<(u64, SegmentData)>,
    /// The current segment's link, once written (or read at open).
    link: Option<Link>,
    /// Frames in the current segment (its link included).
    frames: u64,
    /// The last 16 bytes of the current segment: the chain the next frame covers.
    chain: Chain,
    /// The newest real data_version in the current segment.
    segment_last_real: Option<u32>,
    /// The link to write before the first batch of a segment that has no frame yet.
    pending_link: Option<Link>,
}

/// Most bytes of records the writer keeps for compaction: enough for S3's default compaction
/// threshold (8 MiB of journal) several times over, little beside a node on a 4 GB machine. A
/// longer segment is read back by the compaction (one segment at a time).
const CACHE_LIMIT: usize = 32 << 20;

fn record_size(r: &Record) -> usize {
    r.batch.writes.iter().map(|w| w.len() + 8).sum::<usize>() + 16
}

const BEHIND_HINT: &str = "Restoring from this backup would lose the node's newer state. Stop lightningd and re-initialise the backup from the node's database: `backup-cli init --force --lightning-dir <dir> <url>` (it moves the old local backup aside; keep that until the new one is verified).";
const AHEAD_HINT: &str = "The backup holds changes the node's database lacks: the node may run on an old or restored database. Stop lightningd and do not start it until you know which is newer; `backup-cli restore` gives the backup's state.";

impl JournalWriter {
    pub(crate) fn open(
        repo: &Repository,
        holder: &str,
        durability: Durability,
    ) -> Result<JournalWriter> {
        if repo.format() < 2 {
            return Err(Error::NeedsUpgrade { url: repo.url() });
        }
        let lock = repo.lock(WRITER_LOCK, holder)?;
        let segs = reader::segments(repo)?;
        let snap = crate::manifest::latest(repo)?;
        let mut recovery_note = None;
        let mut cache = Some(Vec::new());

        // Continue the newest open stream (a sealed newest segment means its successor is
        // missing: refuse, as readers do). An empty repository starts segment 0.
        let newest = segs.last().cloned();
        let mut frames = 0;
        let mut chain = None;
        let mut segment_last_real = None;
        let mut link = None;
        let (seq, mut stream) = match &newest {
            Some(s) if !s.sealed => {
                let name = stream_name(s.seq);
                let mut stream = repo.backend().stream_open(&name, durability)?;
                let data = repo.backend().stream_read(&name)?;
                // A segment longer than the cache keeps is read back by compaction: its
                // records are checked here but not all held (see CACHE_LIMIT).
                let keep = data.len() <= CACHE_LIMIT;
                let parse = if keep {
                    segment::parse_stream
                } else {
                    segment::parse_stream_frames
                };
                let parsed = parse(
                    &data,
                    repo.crypto(),
                    repo.repo_id(),
                    s.seq,
                    &s.object_name(),
                    Recovery::TruncateTornTail,
                )?;
                drop(data);
                if parsed.format < 2 && parsed.frames > 0 {
                    return Err(Error::NeedsUpgrade { url: repo.url() });
                }
                // A torn tail, or zeros written ahead left by a crash: appends go where the
                // records end.
                if parsed.valid_len < stream.len() {
                    stream.truncate(parsed.valid_len)?;
                }
                if let Some(t) = &parsed.tail {
                    recovery_note = Some(format!("cut {} from {}", t.describe(), s.object_name()));
                }
                frames = parsed.frames;
                if frames > 0 {
                    chain = Some(parsed.chain);
                }
                segment_last_real = parsed.last_version();
                link = parsed.link;
                cache = keep.then_some(parsed.records);
                (s.seq, stream)
            }
            Some(s) => {
                return Err(Error::corrupt(
                    format!("journal/{}", stream_name(s.last + 1)),
                    format!(
                        "is missing: {} is sealed, so a segment followed it (deleted, or the journal was rolled back); the plugin will not write after it",
                        s.object_name()
                    ),
                ))
            }
            None => (0, repo.backend().stream_open(&stream_name(0), durability)?),
        };
        let header = segment::stream_header(repo.crypto(), repo.repo_id(), seq);
        if stream.len() < STREAM_HEADER_LEN as u64 {
            stream.truncate(0)?;
            stream.append(&header)?;
        }
        let pending_link = if frames == 0 {
            Some(Link {
                predecessor: reader::predecessor(repo, seq)?,
                time_ms: 0,
            })
        } else {
            None
        };

        // The newest real batch: search the journal newest first, then the newest snapshot.
        let mut last_real = None;
        for s in segs.iter().rev() {
            if snap.as_ref().is_some_and(|m| s.last < m.journal_segment) {
                break;
            }
            // One record at a time: this may be the newest segment, long and already checked.
            let mut c = reader::open_segment(repo, s, Recovery::TruncateTornTail)?;
            for r in c.by_ref() {
                r?;
            }
            if let Some(v) = c.as_predecessor(s.last).last_version {
                last_real = Some(v);
                break;
            }
        }
        let snap_version = snap.as_ref().map(|m| m.data_version);
        let (last_real, in_journal) = match (last_real, snap_version) {
            (Some(j), Some(s)) if s > j => (Some(s), false),
            (Some(j), _) => (Some(j), true),
            (None, s) => (s, false),
        };
        // The snapshot's resume segment mostly holds batches inside the snapshot: count it only
        // when it is the open segment (a snapshot taken from a database file). With no snapshot
        // every segment counts (as in `stats`).
        let after_snapshot = |s: &SegmentRef| match &snap {
            Some(m) => s.seq > m.journal_segment,
            None => true,
        };
        let bytes_since_snapshot = segs
            .iter()
            .filter(|s| after_snapshot(s) && s.seq != seq)
            .map(|s| s.size)
            .sum::<u64>()
            + stream.len();

        Ok(JournalWriter {
            repo: repo.clone(),
            stream,
            seq,
            chain: chain.unwrap_or_else(|| segment::header_chain(&header)),
            header,
            durability,
            _lock: lock,
            last_real,
            last_real_in_journal: in_journal,
            session_started: false,
            bytes_since_snapshot,
            recovery_note,
            poisoned: None,
            cache_bytes: cache
                .as_ref()
                .map(|c| c.iter().map(record_size).sum())
                .unwrap_or(0),
            cache,
            closed_cache: None,
            link,
            frames,
            segment_last_real,
            pending_link,
        })
    }

    /// Segment `seq` as written, if it is the one the last rotation closed and its records were
    /// kept: compaction replays and seals it without reading it back.
    pub fn take_closed(&mut self, seq: u64) -> Option<SegmentData> {
        match self.closed_cache.take() {
            Some((s, recs)) if s == seq => Some(recs),
            other => {
                self.closed_cache = other;
                None
            }
        }
    }

    /// What the open path repaired (a torn tail cut), to be logged.
    pub fn recovery_note(&self) -> Option<&str> {
        self.recovery_note.as_deref()
    }
    pub fn last_version(&self) -> Option<u32> {
        self.last_real
    }
    pub fn bytes_since_snapshot(&self) -> u64 {
        self.bytes_since_snapshot
    }
    /// After a snapshot: `closed` bytes of closed segments still after it, plus the open segment.
    pub fn reset_bytes_since_snapshot(&mut self, closed: u64) {
        self.bytes_since_snapshot = closed + self.stream.len();
    }
    pub fn segment(&self) -> u64 {
        self.seq
    }
    pub fn durability(&self) -> Durability {
        self.durability
    }

    /// Check a batch against the journal without storing it.
    pub fn check(&self, batch: &Batch) -> Result<AppendOutcome> {
        if batch.writes.is_empty() {
            return Err(Error::Invalid(format!(
                "db_write for data_version {} has no statements",
                batch.data_version
            )));
        }
        let v = batch.data_version;
        if batch.is_pragma_only() {
            let ok = match self.last_real {
                None => true,
                Some(l) => v == l || (!self.session_started && v.wrapping_add(1) == l),
            };
            return if ok {
                Ok(AppendOutcome::Pragma)
            } else {
                Err(Error::VersionGap {
                    expected: self.last_real.unwrap_or(0),
                    got: v,
                })
            };
        }
        let l = self.last_real.unwrap_or(0);
        if self.session_started {
            return if v == l.wrapping_add(1) {
                Ok(AppendOutcome::Appended)
            } else {
                Err(Error::VersionGap {
                    expected: l.wrapping_add(1),
                    got: v,
                })
            };
        }
        let node = v.wrapping_sub(1);
        if v == l.wrapping_add(1) {
            Ok(AppendOutcome::VersionsMatch)
        } else if v == l && self.last_real_in_journal {
            Ok(AppendOutcome::Superseded { version: v })
        } else if v > l {
            Err(Error::BackupBehind {
                backup: l,
                node,
                hint: BEHIND_HINT.into(),
            })
        } else {
            Err(Error::BackupAhead {
                backup: l,
                node,
                hint: AHEAD_HINT.into(),
            })
        }
    }

    /// Store a batch durably. Returns only when the record is durable per the durability mode.
    pub fn append(&mut self, batch: &Batch) -> Result<AppendOutcome> {
        if let Some(why) = &self.poisoned {
            return Err(Error::Invalid(format!(
                "the journal writer stopped after an earlier failure ({why}); restart to recover"
            )));
        }
        let outcome = self.check(batch)?;
        let rec = Record {
            batch: batch.clone(),
            supersedes: matches!(outcome, AppendOutcome::Superseded { .. }),
            time_ms: crate::config::now_ms(),
        };
        let body = rec.encode();
        if body.len() > MAX_RECORD {
            // Never acknowledge what a reader would refuse.
            return Err(Error::BatchTooLarge {
                version: batch.data_version,
                size: (body.len() + self.repo.crypto().overhead()) as u64,
                max: (MAX_RECORD + self.repo.crypto().overhead()) as u64,
            });
        }
        // A segment's first frame is its link; it goes out in the same append as the batch.
        let offset = self.stream.len();
        let mut out = Vec::new();
        let mut prev = self.chain;
        let mut new_frames = 1;
        if let Some(link) = &self.pending_link {
            let l = Link {
                time_ms: rec.time_ms,
                ..*link
            };
            out = segment::encode_frame(
                self.repo.crypto(),
                &self.header,
                self.seq,
                offset,
                &prev,
                &l.encode(),
            );
            prev = segment::frame_chain(&out);
            new_frames += 1;
        }
        let frame = segment::encode_frame(
            self.repo.crypto(),
            &self.header,
            self.seq,
            offset + out.len() as u64,
            &prev,
            &body,
        );
        let chain = segment::frame_chain(&frame);
        if out.is_empty() {
            out = frame;
        } else {
            out.extend_from_slice(&frame);
        }
        if let Err(e) = self.stream.append(&out) {
            // Whether the bytes landed is unknown: never append after this (a retry could store
            // the batch twice). The next writer (a restart) sorts it out from what is stored.
            self.poisoned = Some(format!("an append failed: {e}"));
            return Err(e);
        }
        if let Some(l) = self.pending_link.take() {
            self.link = Some(Link {
                time_ms: rec.time_ms,
                ..l
            });
        }
        self.frames += new_frames;
        self.chain = chain;
        self.bytes_since_snapshot += out.len() as u64;
        if let Some(c) = &mut self.cache {
            self.cache_bytes += record_size(&rec);
            if self.cache_bytes > CACHE_LIMIT {
                self.cache = None;
            } else {
                c.push(rec);
            }
        }
        if outcome != AppendOutcome::Pragma {
            self.last_real = Some(batch.data_version);
            self.last_real_in_journal = true;
            self.session_started = true;
            self.segment_last_real = Some(batch.data_version);
        }
        Ok(outcome)
    }

    /// Close the current segment and start the next one; returns the closed segment's number.
    ///
    /// If the new segment cannot be started, it is removed and appends go on in the current one;
    /// if it cannot be removed either, the writer refuses further appends (a restart continues in
    /// the newest segment, so nothing may be appended to an older one).
    pub fn rotate(&mut self) -> Result<u64> {
        match prepare_segment(&self.repo, self.durability, self.seq + 1) {
            Ok(p) => self.rotate_to(p).map(|(closed, _)| closed),
            Err(e) => {
                if let Some(why) = e.leftover {
                    self.poisoned = Some(why);
                }
                Err(e.error)
            }
        }
    }

    /// Switch to a segment made by [`prepare_segment`] for the number after the current one.
    /// No I/O: compaction prepares the segment first and holds the writer only for this. Returns
    /// the closed segment's number and its stream, for the caller to drop once it has let go of
    /// the writer (closing a stream can free disk space).
    pub fn rotate_to(&mut self, p: PreparedSegment) -> Result<(u64, Box<dyn Stream>)> {
        if p.seq != self.seq + 1 {
            return Err(Error::Invalid(format!(
                "prepared journal segment {} does not follow the current one {}",
                stream_name(p.seq),
                stream_name(self.seq)
            )));
        }
        let closed = self.seq;
        let old = std::mem::replace(&mut self.stream, p.stream);
        let (link, frames, chain) = (self.link.take(), self.frames, self.chain);
        let chain = (frames > 0).then_some(chain);
        // What the new segment follows: written as its first frame with its first batch.
        self.pending_link = Some(Link {
            predecessor: Some(Predecessor {
                seq: closed,
                frames,
                chain,
                last_version: self.segment_last_real,
            }),
            time_ms: 0,
        });
        self.closed_cache = self.cache.replace(Vec::new()).map(|records| {
            (
                closed,
                SegmentData {
                    records,
                    link,
                    frames,
                    chain,
                    tail: None,
                },
            )
        });
        self.seq = p.seq;
        self.chain = segment::header_chain(&p.header);
        self.header = p.header;
        self.frames = 0;
        self.segment_last_real = None;
        self.cache_bytes = 0;
        // The new segment's header is journal after the snapshot too (`stats` counts it).
        self.bytes_since_snapshot += self.stream.len();
        Ok((closed, old))
    }

    /// Refuse every further append (a half-made newer segment could not be removed).
    pub fn poison(&mut self, why: String) {
        self.poisoned = Some(why);
    }
}

/// A started journal segment, not yet in use.
pub struct PreparedSegment {
    seq: u64,
    stream: Box<dyn Stream>,
    header: Vec<u8>,
}

/// Why a segment could not be prepared; `leftover` is set when a half-made segment stayed
/// behind (then the writer must stop appending: see [`JournalWriter::rotate`]).
pub struct PrepareError {
    pub error: Error,
    pub leftover: Option<String>,
}

/// Create segment `next` and write its header (durably), without touching the writer.
pub fn prepare_segment(
    repo: &Repository,
    durability: Durability,
    next: u64,
) -> std::result::Result<PreparedSegment, PrepareError> {
    match start_segment(repo, durability, next) {
        Ok((stream, header)) => Ok(PreparedSegment {
            seq: next,
            stream,
            header,
        }),
        Err((error, false)) => Err(PrepareError {
            error,
            leftover: None,
        }),
        Err((error, true)) => {
            let leftover = repo
                .backend()
                .stream_delete(&stream_name(next))
                .err()
                .map(|e2| {
                    format!(
                        "segment {} could not be started ({error}) nor removed ({e2})",
                        stream_name(next)
                    )
                });
            Err(PrepareError { error, leftover })
        }
    }
}

/// Start segment `next`. The error says whether a new, possibly half-made segment exists.
fn start_segment(
    repo: &Repository,
    durability: Durability,
    next: u64,
) -> std::result::Result<NewSegment, (Error, bool)> {
    let name = stream_name(next);
    if let Some(s) = repo
        .backend()
        .stream_list()
        .map_err(|e| (e, false))?
        .iter()
        .find(|s| s.name == name)
    {
        return Err((
            Error::Invalid(format!(
                "journal segment {name} already exists ({} bytes); refusing to reuse it",
                s.size
            )),
            false,
        ));
    }
    let mut stream = repo
        .backend()
        .stream_open(&name, durability)
        .map_err(|e| (e, true))?;
    let header = segment::stream_header(repo.crypto(), repo.repo_id(), next);
    stream.append(&header).map_err(|e| (e, true))?;
    Ok((stream, header))
}
