//! Reader of the old Python `backup` plugin's v1 `.dbak` file, for `backup-cli import`.
//!
//! Layout (big-endian, unlike every cln-backup format):
//!
//! ```text
//! header, 512 bytes: u32 format (= 1) | u32 version | u64 next offset | u32 prev version
//!                    | u64 last-entry offset | u64 entry count | zero padding
//! entries from 512:  u32 len | u32 data_version | u8 type | len bytes of payload
//!                    type 1: the batch's statements joined by NUL (UTF-8)
//!                    type 2: a raw SQLite database file (a compaction's or init's snapshot)
//! ```
//!
//! The file has no checksums: a flipped bit inside SQL text is found only if it breaks UTF-8,
//! the SQL, or the header arithmetic below.
//!
//! What the old plugin did, and how this reader sees it (lightningd/plugins `backup/`):
//! - `add_change` wrote the entry, then rewrote the header (no fsync anywhere). The header is the
//!   commit point: entries past the header's end were never confirmed and are left out ([`Tail`]).
//! - `rewind` (the first write after a restart repeats the last data_version: lightningd died
//!   between the hook and COMMIT) moved the header's offsets back in memory only, but the file
//!   is opened in append mode, so the replacement entry lands after the rewound one and every
//!   offset written later is short by the rewound entry's size. The plugin's own reader then
//!   replays both batches. This reader replays the plugin's header arithmetic over the physical
//!   entries, drops the rewound entry ([`Rewound`]) and checks that the result is exactly the
//!   header on disk: version, next and last-entry offsets, prev version, and the entry count
//!   (which older plugin releases always left at 0; 0 is then not compared).
//! - PRAGMA-only batches repeat the current data_version and are kept (NOTES.md section 1).
//! - Statements from lightningd before CLN PR #4090 (September 2020) can lack a space before
//!   `WHERE`; [`fix_pre_4090`] puts it back at replay time, [`decode_dbak`] returns them as stored.

use std::borrow::Cow;

use crate::error::{Error, Result};

pub const HEADER_LEN: usize = 512;
pub const FORMAT_VERSION: u32 = 1;
pub const ENTRY_HEADER_LEN: usize = 9;
pub const TYPE_STATEMENTS: u8 = 1;
pub const TYPE_SNAPSHOT: u8 = 2;
const SQLITE_MAGIC: &[u8] = b"SQLite format 3\0";

/// One change of the old backup, in replay order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LegacyEntry {
    /// A `db_write` batch: statements as stored (see [`fix_pre_4090`]).
    Statements { version: u32, writes: Vec<String> },
    /// A whole database file at `version`: replay restarts from it.
    Snapshot { version: u32, db: Vec<u8> },
}

impl LegacyEntry {
    pub fn version(&self) -> u32 {
        match self {
            LegacyEntry::Statements { version, .. } | LegacyEntry::Snapshot { version, .. } => {
                *version
            }
        }
    }
}

/// The 512-byte header as stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub version: u32,
    pub next_offset: u64,
    pub prev_version: u32,
    pub last_offset: u64,
    pub count: u64,
}

/// An entry the old plugin rewound and wrote again: left out of [`LegacyBackup::entries`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rewound {
    pub version: u32,
    pub offset: u64,
}

/// Bytes after the header's last entry: written but never confirmed by a header update (a crash
/// between the entry and the header), or damage. Left out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tail {
    pub offset: u64,
    pub bytes: u64,
    /// data_versions of the complete, well-formed entries found there.
    pub versions: Vec<u32>,
    /// Why reading stopped before the end of the file, if it did.
    pub unreadable: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LegacyBackup {
    /// The header's data_version: what a full replay of `entries` reaches.
    pub version: u32,
    pub entries: Vec<LegacyEntry>,
    pub header: Header,
    pub rewound: Vec<Rewound>,
    pub tail: Option<Tail>,
}

impl LegacyBackup {
    /// Apply [`fix_pre_4090`] to every statement; returns how many were changed.
    pub fn fix_statements(&mut self) -> usize {
        let mut fixed = 0;
        for e in &mut self.entries {
            if let LegacyEntry::Statements { writes, .. } = e {
                for w in writes.iter_mut() {
                    if let Cow::Owned(s) = fix_pre_4090(w) {
                        *w = s;
                        fixed += 1;
                    }
                }
            }
        }
        fixed
    }
}

fn be_u32(data: &[u8], at: usize) -> Option<u32> {
    let b: [u8; 4] = data.get(at..at.checked_add(4)?)?.try_into().ok()?;
    Some(u32::from_be_bytes(b))
}

fn be_u64(data: &[u8], at: usize) -> Option<u64> {
    let b: [u8; 8] = data.get(at..at.checked_add(8)?)?.try_into().ok()?;
    Some(u64::from_be_bytes(b))
}

impl Header {
    pub fn decode(data: &[u8], object: &str) -> Result<Header> {
        let Some(h) = data.get(..HEADER_LEN) else {
            return Err(Error::corrupt(
                object,
                format!(
                    "old backup header is {} bytes at offset 0, expected {HEADER_LEN}",
                    data.len()
                ),
            ));
        };
        let field = || Error::corrupt(object, "old backup header cut at offset 0");
        let format = be_u32(h, 0).ok_or_else(field)?;
        if format != FORMAT_VERSION {
            return Err(Error::Unsupported {
                object: object.to_string(),
                what: "old backup (.dbak) format version",
                found: format,
                supported: FORMAT_VERSION,
            });
        }
        Ok(Header {
            version: be_u32(h, 4).ok_or_else(field)?,
            next_offset: be_u64(h, 8).ok_or_else(field)?,
            prev_version: be_u32(h, 16).ok_or_else(field)?,
            last_offset: be_u64(h, 20).ok_or_else(field)?,
            count: be_u64(h, 28).ok_or_else(field)?,
        })
    }
}

/// The header the old plugin keeps in memory and writes after each entry.
#[derive(Clone, Copy, Debug)]
struct State {
    version: u32,
    next: u64,
    prev: u32,
    last: u64,
    count: u64,
}

impl State {
    const NEW: State = State {
        version: 0,
        next: HEADER_LEN as u64,
        prev: 0,
        last: 0,
        count: 0,
    };

    /// `add_change`: the entry goes at the end of the file whatever `next` says.
    fn append(&mut self, version: u32, size: u64) {
        self.prev = self.version;
        self.last = self.next;
        self.version = version;
        self.next = self.next.saturating_add(size);
        self.count = self.count.saturating_add(1);
    }

    /// `rewind`: only the in-memory header moves back.
    fn rewind(&mut self) {
        self.version = self.prev;
        self.next = self.last;
        self.prev = 0;
        self.last = 0;
    }

    /// Does the header on disk say the backup ends here? `entries` is how many were read.
    fn matches(&self, h: &Header, entries: usize) -> bool {
        self.version == h.version
            && self.next == h.next_offset
            && self.last == h.last_offset
            // After one entry prev is whatever the file was created with (compaction sets it).
            && (entries == 1 || self.prev == h.prev_version)
            && (h.count == 0 || self.count == h.count)
    }
}

/// A physical entry found by the scan (payload not yet copied).
struct Phys {
    offset: usize,
    size: usize,
    version: u32,
    rewinds: bool,
}

fn pragma_only(payload: &[u8]) -> bool {
    !payload.is_empty()
        && payload.split(|b| *b == 0).all(|s| {
            let t = s.trim_ascii_start();
            t.get(..6)
                .is_some_and(|p| p.eq_ignore_ascii_case(b"pragma"))
        })
}

/// Read the physical entry at `off`, or say why it cannot be read.
fn read_entry(data: &[u8], off: usize) -> std::result::Result<(u32, u8, &[u8]), String> {
    let (Some(len), Some(version), Some(&typ)) = (
        be_u32(data, off),
        be_u32(data, off.saturating_add(4)),
        data.get(off.saturating_add(8)),
    ) else {
        return Err(format!(
            "entry header cut at offset {off} ({} bytes left, {ENTRY_HEADER_LEN} needed)",
            data.len().saturating_sub(off)
        ));
    };
    let start = off.saturating_add(ENTRY_HEADER_LEN);
    let Some(payload) = start
        .checked_add(len as usize)
        .and_then(|end| data.get(start..end))
    else {
        return Err(format!(
            "entry at offset {off} (data_version {version}) claims {len} payload bytes, the file has {} left",
            data.len().saturating_sub(start)
        ));
    };
    match typ {
        TYPE_STATEMENTS => {
            if let Err(e) = std::str::from_utf8(payload) {
                return Err(format!(
                    "statements of the entry at offset {off} (data_version {version}) are not UTF-8 (at byte {})",
                    start.saturating_add(e.valid_up_to())
                ));
            }
        }
        TYPE_SNAPSHOT => {
            if !payload.is_empty() && !payload.starts_with(SQLITE_MAGIC) {
                return Err(format!(
                    "snapshot at offset {off} (data_version {version}) is not an SQLite database file"
                ));
            }
        }
        t => return Err(format!("unknown entry type {t} at offset {off}")),
    }
    Ok((version, typ, payload))
}

/// Check an old plugin's backup file and find the entries to replay, without copying them (see
/// [`decode_dbak`] for them in memory). Reads every entry once: structure, UTF-8, snapshot magic.
///
/// Errors with [`Error::Corrupt`] (naming `object` and an offset) when no prefix of the entries
/// agrees with the header, and [`Error::Unsupported`] for another format version.
pub fn scan_dbak(data: &[u8], object: &str) -> Result<LegacyPlan> {
    let header = Header::decode(data, object)?;

    // Walk the physical entries as the plugin wrote them, replaying its header arithmetic;
    // remember the longest prefix whose arithmetic gives the header on disk.
    let mut phys: Vec<Phys> = Vec::new();
    let mut state = State::NEW;
    let mut kept: Vec<usize> = Vec::new(); // indices into phys, as the plugin's reader would need
    let mut best = state.matches(&header, 0).then_some(0usize);
    let mut off = HEADER_LEN;
    let mut stopped: Option<String> = None;
    while off < data.len() {
        let (version, typ, payload) = match read_entry(data, off) {
            Ok(e) => e,
            Err(why) => {
                stopped = Some(why);
                break;
            }
        };
        let size = ENTRY_HEADER_LEN.saturating_add(payload.len());
        let mut rewinds = false;
        if !kept.is_empty() {
            let step = if typ == TYPE_SNAPSHOT {
                Err(
                    "a snapshot after the first entry (the old plugin writes one only first)"
                        .to_string(),
                )
            } else if Some(version) == state.version.checked_add(1)
                || (version == state.version && pragma_only(payload))
            {
                // The next version, or a PRAGMA-only batch repeating the current one.
                Ok(())
            } else if version == state.version {
                // check_first_write: a rewind needs prev == version - 1, and one rewind at most.
                if state.prev != 0 && state.last != 0 && Some(state.prev) == version.checked_sub(1)
                {
                    rewinds = true;
                    Ok(())
                } else {
                    Err(format!(
                        "entry at offset {off} repeats data_version {version}, which the old plugin could not have written"
                    ))
                }
            } else {
                Err(format!(
                    "data_version jumps from {} to {version} at offset {off}: changes are missing",
                    state.version
                ))
            };
            if let Err(why) = step {
                stopped = Some(why);
                break;
            }
        }
        if rewinds {
            kept.pop();
            state.rewind();
        }
        state.append(version, size as u64);
        kept.push(phys.len());
        phys.push(Phys {
            offset: off,
            size,
            version,
            rewinds,
        });
        if state.matches(&header, phys.len()) {
            best = Some(phys.len());
        }
        off = off.saturating_add(size);
    }

    let Some(k) = best else {
        let read = match phys.last() {
            Some(p) => format!(
                "{} entries read, up to data_version {} ending at offset {}",
                phys.len(),
                p.version,
                p.offset.saturating_add(p.size)
            ),
            None => "no entry read".to_string(),
        };
        return Err(Error::corrupt(
            object,
            format!(
                "old backup header (data_version {}, next entry at offset {}, last entry at offset {}, {} entries) \
                 agrees with no prefix of the file: {read}; then {}",
                header.version,
                header.next_offset,
                header.last_offset,
                header.count,
                stopped.as_deref().unwrap_or("the end of the file")
            ),
        ));
    };

    // The first k physical entries, minus the rewound ones.
    let mut order: Vec<usize> = Vec::with_capacity(k);
    let mut rewound = Vec::new();
    for (i, p) in phys.iter().enumerate().take(k) {
        if p.rewinds {
            if let Some(r) = order.pop().and_then(|j| phys.get(j)) {
                rewound.push(Rewound {
                    version: r.version,
                    offset: r.offset as u64,
                });
            }
        }
        order.push(i);
    }
    let end = match k.checked_sub(1).and_then(|i| phys.get(i)) {
        Some(p) => p.offset.saturating_add(p.size),
        None => HEADER_LEN,
    };
    let tail = (end < data.len()).then(|| Tail {
        offset: end as u64,
        bytes: data.len().saturating_sub(end) as u64,
        versions: phys.iter().skip(k).map(|p| p.version).collect(),
        unreadable: stopped,
    });
    let offsets = order
        .iter()
        .filter_map(|&i| phys.get(i))
        .map(|p| p.offset)
        .collect();
    Ok(LegacyPlan {
        header,
        offsets,
        rewound,
        tail,
    })
}

/// What [`scan_dbak`] found: where the entries to replay are, without copying them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LegacyPlan {
    pub header: Header,
    /// Offsets of the entries to replay, in order.
    pub offsets: Vec<usize>,
    pub rewound: Vec<Rewound>,
    pub tail: Option<Tail>,
}

impl LegacyPlan {
    /// The entries, read one at a time from the same `data` (e.g. a memory map of a large file).
    pub fn entries<'a>(
        &'a self,
        data: &'a [u8],
        object: &'a str,
    ) -> impl Iterator<Item = Result<LegacyEntry>> + 'a {
        self.offsets.iter().map(move |&off| {
            let (version, typ, payload) =
                read_entry(data, off).map_err(|why| Error::corrupt(object, why))?;
            Ok(match typ {
                TYPE_SNAPSHOT => LegacyEntry::Snapshot {
                    version,
                    db: payload.to_vec(),
                },
                _ => LegacyEntry::Statements {
                    version,
                    writes: std::str::from_utf8(payload)
                        .map_err(|_| {
                            Error::corrupt(object, format!("entry at offset {off} is not UTF-8"))
                        })?
                        .split('\0')
                        .map(str::to_string)
                        .collect(),
                },
            })
        })
    }
}

/// Decode an old plugin's backup file into memory. `object` names it in errors.
///
/// Returns the changes to replay, in order: rewound entries and anything past the header's end are
/// left out (and reported). Errors as [`scan_dbak`].
pub fn decode_dbak(data: &[u8], object: &str) -> Result<LegacyBackup> {
    let plan = scan_dbak(data, object)?;
    let entries = plan.entries(data, object).collect::<Result<Vec<_>>>()?;
    Ok(LegacyBackup {
        version: plan.header.version,
        entries,
        header: plan.header,
        rewound: plan.rewound,
        tail: plan.tail,
    })
}

fn is_ident(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b'$' || c >= 0x80
}

fn word_at(b: &[u8], at: usize, word: &str) -> bool {
    at.checked_add(word.len())
        .and_then(|end| b.get(at..end))
        .is_some_and(|w| w.eq_ignore_ascii_case(word.as_bytes()))
        && !b
            .get(at.saturating_add(word.len()))
            .is_some_and(|&c| is_ident(c))
}

/// Put back the space lightningd lost before `WHERE` in statements from before CLN PR #4090.
///
/// Two statements had it (`wallet/wallet.c`, 2019-06 to 2020-09): `UPDATE outputs SET status=?,
/// reserved_til=?WHERE ...` (an integer: `reserved_til=174WHERE`) and `UPDATE channels SET
/// state=?, peer_id=?WHERE channels.id=?` (always bound NULL: `peer_id=NULLWHERE`, which the old
/// plugin's own fix, digits only, missed). SQLite rejects both. The fix is general: a number or
/// NULL literal glued to the keyword `WHERE`, outside quotes and comments, gets a space. Anything
/// else is returned unchanged (borrowed).
pub fn fix_pre_4090(stmt: &str) -> Cow<'_, str> {
    let b = stmt.as_bytes();
    let mut inserts: Vec<usize> = Vec::new();
    let mut i = 0;
    let mut in_word = false; // the previous byte continues an identifier or number
    while let Some(&c) = b.get(i) {
        let next = b.get(i.saturating_add(1)).copied();
        let close = match c {
            b'\'' | b'"' | b'`' => Some(c),
            b'[' => Some(b']'),
            _ => None,
        };
        if let Some(close) = close {
            // Quoted: skip to the closing quote ('' inside '...' is an escaped quote).
            i = i.saturating_add(1);
            while let Some(&d) = b.get(i) {
                i = i.saturating_add(1);
                if d == close {
                    if close != b']' && b.get(i) == Some(&close) {
                        i = i.saturating_add(1);
                        continue;
                    }
                    break;
                }
            }
            in_word = false;
        } else if c == b'-' && next == Some(b'-') {
            while b.get(i).is_some_and(|&d| d != b'\n') {
                i = i.saturating_add(1);
            }
            in_word = false;
        } else if c == b'/' && next == Some(b'*') {
            i = i.saturating_add(2);
            while b.get(i).is_some() && !(b.get(i) == Some(&b'*') && b.get(i + 1) == Some(&b'/')) {
                i = i.saturating_add(1);
            }
            i = i.saturating_add(2);
            in_word = false;
        } else if !in_word && c.is_ascii_digit() {
            let mut j = i;
            while b.get(j).is_some_and(u8::is_ascii_digit) {
                j = j.saturating_add(1);
            }
            if b.get(j) == Some(&b'.') {
                j = j.saturating_add(1);
                while b.get(j).is_some_and(u8::is_ascii_digit) {
                    j = j.saturating_add(1);
                }
            }
            if word_at(b, j, "WHERE") {
                inserts.push(j);
            }
            i = j;
            in_word = false;
        } else if !in_word
            && b.get(i..i.saturating_add(4))
                .is_some_and(|w| w.eq_ignore_ascii_case(b"NULL"))
            && word_at(b, i.saturating_add(4), "WHERE")
        {
            inserts.push(i.saturating_add(4));
            i = i.saturating_add(4);
            in_word = false;
        } else {
            in_word = is_ident(c);
            i = i.saturating_add(1);
        }
    }
    if inserts.is_empty() {
        return Cow::Borrowed(stmt);
    }
    let mut out = String::with_capacity(stmt.len().saturating_add(inserts.len()));
    let mut from = 0;
    for at in inserts {
        // Insert positions are ASCII boundaries (before `W`), so slicing is on char boundaries.
        out.push_str(stmt.get(from..at).unwrap_or_default());
        out.push(' ');
        from = at;
    }
    out.push_str(stmt.get(from..).unwrap_or_default());
    Cow::Owned(out)
}

#[cfg(test)]
mod test;
