//! Segment framing: how entries sit in an open stream, and in a sealed segment object.
//!
//! Open segment stream (appended to by the writer, one frame per entry):
//! ```text
//! stream header (40): envelope header (16, kind JournalStream) | repo id (16) | seq (u64)
//! frame:              len (u32) | check (u32) | sealed entry (len bytes)
//! ```
//! `check` is the first 4 bytes of blake3(seq ‖ offset ‖ len): a length field that was torn or
//! overwritten is recognised without trusting it (and without the key). Each entry is sealed with
//! associated data `stream header ‖ frame offset`, and from format 2 on also `‖ the 16 bytes
//! before the frame`, which for every frame after the first are the previous frame's tag: the
//! records are chained by their MACs, so none can be moved, dropped from the middle or swapped.
//! The first frame of a format-2 segment is its [`Link`] (what it follows).
//!
//! Recovery: a damaged frame followed by a valid one anywhere in the stream is corruption, never
//! skipped. At the end of a stream a crash leaves a prefix of a frame followed by zeros or by the
//! end of the data ([`Tail::Torn`]: never acknowledged under `fsync` durability, cut by the writer);
//! anything else there (a whole frame that fails authentication, a frame header that fails its
//! check, bytes after a frame's end) is [`Tail::Damaged`]: readers refuse it unless told to
//! accept the loss.
//!
//! End: the stream ends after the last frame, or where only zero bytes remain to its end (a
//! local directory writes a synced stream ahead with zeros, see `backend::dir`, and a crash leaves
//! them). No frame starts with four zero bytes (its length is never 0), so the zeros are never
//! mistaken for a record.
//!
//! Sealed segment object `journal/<seq>.seg`, or `journal/<first>-<last>.seg` for a merged run
//! (written at compaction, replacing the streams):
//! ```text
//! format 1: envelope header (16, kind SealedSegment) | sealed(zstd(records as u32 len | record))
//! format 2: envelope header (16, kind SealedSegment, format 2) | sealed(zstd(body))
//!   body: u8 2 | u64 first seq | u64 last seq | u64 frames | u8 flags (bit 0 chain, bit 1 link)
//!         | chain (16): the last frame's tag | link (u32 len | link entry) | u64 record count
//!         | records (u32 len | record)
//! ```
//! Compressing the plaintext records as one stream is what makes the journal small at rest.

use crate::codec::Enc;
use crate::crypto::{Crypto, TAG_LEN};
use crate::envelope::{self, Header, Kind, HEADER_LEN};
use crate::error::{Error, Result};
use crate::ids::RepoId;

use super::record::{Chain, Entry, Link, Record};

pub const STREAM_HEADER_LEN: usize = HEADER_LEN + 16 + 8;
/// `u32 len | u32 check` (the check is keyless: a server finds a stream's end with it).
pub(crate) const FRAME_HEADER_LEN: usize = 8;
/// Largest record accepted (lightningd's largest batch is ~21 KB; 64 MiB leaves room). The writer
/// refuses a larger one before it writes anything, so every record acknowledged is readable.
pub const MAX_RECORD: usize = 64 << 20;
/// Largest sealed frame body a reader accepts: a record and its seal.
pub const MAX_FRAME: usize = MAX_RECORD + 64;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recovery {
    /// A torn tail (a crash while writing the newest record) is reported and left out; a
    /// damaged tail is an error.
    TruncateTornTail,
    /// Any damage, a torn tail included, is an error (segments that are not the newest).
    Strict,
    /// A torn or damaged tail is reported and left out (restore told to accept the loss).
    AcceptDamagedTail,
}

/// What ends a stream after its last whole frame, besides zeros.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Tail {
    /// A prefix of a frame followed by zeros or the end of the data: a crash while writing it.
    Torn(String),
    /// Anything a crash does not leave: the newest record(s) were damaged or altered.
    Damaged(String),
}

impl Tail {
    pub fn describe(&self) -> &str {
        match self {
            Tail::Torn(s) | Tail::Damaged(s) => s,
        }
    }
}

pub fn stream_header(crypto: &Crypto, repo: RepoId, seq: u64) -> Vec<u8> {
    let mut h = Header::new(Kind::JournalStream, crypto).encode().to_vec();
    h.extend_from_slice(&repo.0);
    h.extend_from_slice(&seq.to_le_bytes());
    h
}

/// The chain the first frame of a stream covers: the last 16 bytes of its header.
pub fn header_chain(header: &[u8]) -> Chain {
    last16(header)
}

fn last16(b: &[u8]) -> Chain {
    let mut c = [0u8; TAG_LEN];
    if let Some(s) = b.len().checked_sub(TAG_LEN).and_then(|from| b.get(from..)) {
        c.copy_from_slice(s);
    }
    c
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

fn format_of(header: &[u8]) -> u8 {
    header.get(5).copied().unwrap_or(1)
}

fn entry_aad(header: &[u8], offset: u64, prev: &Chain) -> Vec<u8> {
    let mut aad = Vec::with_capacity(header.len() + 8 + TAG_LEN);
    aad.extend_from_slice(header);
    aad.extend_from_slice(&offset.to_le_bytes());
    if format_of(header) >= 2 {
        aad.extend_from_slice(prev);
    }
    aad
}

/// Encode one entry (a record's or a link's bytes) as a frame to append at `offset`, after
/// `prev` (the 16 bytes before `offset`: the previous frame's tag, or [`header_chain`]).
pub fn encode_frame(
    crypto: &Crypto,
    header: &[u8],
    seq: u64,
    offset: u64,
    prev: &Chain,
    entry: &[u8],
) -> Vec<u8> {
    let sealed_len = entry.len() + crypto.overhead();
    let mut out = vec![0u8; FRAME_HEADER_LEN + sealed_len];
    let len = sealed_len as u32;
    out.get_mut(..4)
        .unwrap_or_default()
        .copy_from_slice(&len.to_le_bytes());
    out.get_mut(4..8)
        .unwrap_or_default()
        .copy_from_slice(&frame_check(seq, offset, len).to_le_bytes());
    let aad = entry_aad(header, offset, prev);
    // Cannot fail: the room is exactly the entry plus the seal's overhead.
    let _ = crypto.seal_into(
        &aad,
        entry,
        out.get_mut(FRAME_HEADER_LEN..).unwrap_or_default(),
    );
    out
}

/// The tag of an encoded frame: the chain the next frame covers.
pub fn frame_chain(frame: &[u8]) -> Chain {
    last16(frame)
}

pub struct Parsed {
    /// The batches, in order (the link is apart); empty when parsed by [`parse_stream_frames`].
    pub records: Vec<Record>,
    /// Where each batch's frame begins, when parsed by [`parse_stream_frames`].
    pub positions: Vec<usize>,
    /// The newest data_version of a batch that is not only PRAGMAs.
    last_real: Option<u32>,
    /// The segment's link (format 2), when it has any frame.
    pub link: Option<Link>,
    /// Whole valid frames (the link included).
    pub frames: u64,
    /// Bytes of the stream that hold the header and whole valid frames.
    pub valid_len: u64,
    /// The last 16 bytes of the valid part: the chain a next frame covers.
    pub chain: Chain,
    /// The stream's format (its header's format byte).
    pub format: u8,
    /// What follows the last whole frame besides zeros, when the recovery policy let it pass.
    pub tail: Option<Tail>,
}

impl Parsed {
    fn empty(format: u8) -> Parsed {
        Parsed {
            records: Vec::new(),
            positions: Vec::new(),
            last_real: None,
            link: None,
            frames: 0,
            valid_len: 0,
            chain: [0; TAG_LEN],
            format,
            tail: None,
        }
    }

    /// The newest data_version of a batch that is not only PRAGMAs.
    pub fn last_version(&self) -> Option<u32> {
        self.last_real
    }

    /// The chain when the stream has frames (an empty stream has none of its own).
    pub fn frame_chain(&self) -> Option<Chain> {
        (self.frames > 0).then_some(self.chain)
    }
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
    parse(data, crypto, repo, seq, object, recovery, true)
}

/// [`parse_stream`] keeping where each batch begins instead of the batches: every frame is
/// checked all the same, and [`stream_record`] decodes one when it is needed (a long segment's
/// statements need not all be in memory at once).
pub fn parse_stream_frames(
    data: &[u8],
    crypto: &Crypto,
    repo: RepoId,
    seq: u64,
    object: &str,
    recovery: Recovery,
) -> Result<Parsed> {
    parse(data, crypto, repo, seq, object, recovery, false)
}

/// The batch whose frame begins at `pos` of a stream [`parse_stream_frames`] accepted.
pub fn stream_record(
    data: &[u8],
    pos: usize,
    crypto: &Crypto,
    seq: u64,
    object: &str,
) -> Result<Record> {
    let header = data.get(..STREAM_HEADER_LEN).unwrap_or_default();
    match try_frame(data, pos, crypto, header, seq, object) {
        Ok((Entry::Batch(r), _)) => Ok(r),
        Ok((Entry::Link(_), _)) => Err(Error::corrupt(
            object,
            format!("a segment link at offset {pos}, where a batch was read before"),
        )),
        Err(why) => Err(Error::corrupt(
            object,
            format!("record at offset {pos} no longer reads as it did ({why})"),
        )),
    }
}

fn parse(
    data: &[u8],
    crypto: &Crypto,
    repo: RepoId,
    seq: u64,
    object: &str,
    recovery: Recovery,
    keep: bool,
) -> Result<Parsed> {
    let expected = stream_header(crypto, repo, seq);
    // Bytes up to the last non-zero one: past them lie only zeros written ahead.
    let used = data.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    let whole_header = data.get(..STREAM_HEADER_LEN).is_some_and(|h| {
        Header::decode(h, object).is_ok() && h.get(HEADER_LEN..) == expected.get(HEADER_LEN..)
    });
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
        let mut p = Parsed::empty(format_of(&expected));
        p.tail = torn.map(Tail::Torn);
        return Ok(p);
    }
    let header = data.get(..STREAM_HEADER_LEN).unwrap_or_default();
    let h = Header::decode_expect(header, Kind::JournalStream, crypto, object)?;
    let mut want = expected.clone();
    if let Some(f) = want.get_mut(5) {
        *f = h.format; // a format-1 stream of an upgraded repository
    }
    if header != want.as_slice() {
        return Err(Error::corrupt(
            object,
            "stream header names another repository or segment",
        ));
    }
    let mut p = Parsed::empty(h.format);
    let mut pos = STREAM_HEADER_LEN;
    while pos < data.len() {
        match try_frame(data, pos, crypto, header, seq, object) {
            Ok((entry, next)) => {
                match entry {
                    Entry::Link(l) if p.frames == 0 && h.format >= 2 => p.link = Some(l),
                    Entry::Link(_) => {
                        return Err(Error::corrupt(
                            object,
                            format!(
                            "a segment link at offset {pos}, where only the first frame may be one"
                        ),
                        ))
                    }
                    Entry::Batch(_) if p.frames == 0 && h.format >= 2 => {
                        return Err(Error::corrupt(
                            object,
                            "the first frame is a batch, not the segment's link",
                        ))
                    }
                    Entry::Batch(r) => {
                        if !r.pragma_only() {
                            p.last_real = Some(r.batch.data_version);
                        }
                        if keep {
                            p.records.push(r);
                        } else {
                            p.positions.push(pos);
                        }
                    }
                }
                p.frames += 1;
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
                let tail = classify_tail(data, pos, seq, &why);
                match (&tail, recovery) {
                    (_, Recovery::Strict) => {
                        return Err(Error::corrupt(object, tail.describe().to_string()))
                    }
                    (Tail::Damaged(what), Recovery::TruncateTornTail) => {
                        return Err(Error::DamagedTail {
                            object: object.to_string(),
                            what: format!(
                                "{what}; the last whole record is data_version {}",
                                p.last_version()
                                    .map_or("none".to_string(), |v| v.to_string())
                            ),
                        })
                    }
                    _ => {}
                }
                p.valid_len = pos as u64;
                p.chain = last16(data.get(..pos).unwrap_or_default());
                p.tail = Some(tail);
                return Ok(p);
            }
        }
    }
    p.valid_len = pos as u64;
    p.chain = last16(data.get(..pos).unwrap_or_default());
    Ok(p)
}

/// What lies at `pos`, after the last whole frame, given that no valid frame follows and that
/// not everything from `pos` on is zero.
fn classify_tail(data: &[u8], pos: usize, seq: u64, why: &str) -> Tail {
    let rest = data.get(pos..).unwrap_or_default();
    let used = rest.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    let n = rest.len();
    if used <= FRAME_HEADER_LEN {
        return Tail::Torn(format!(
            "torn tail of {n} bytes at offset {pos}: part of a frame header"
        ));
    }
    let fh = rest.get(..FRAME_HEADER_LEN).unwrap_or_default();
    let len = u32::from_le_bytes(
        fh.get(..4)
            .and_then(|b| b.try_into().ok())
            .unwrap_or([0; 4]),
    );
    let check = u32::from_le_bytes(
        fh.get(4..8)
            .and_then(|b| b.try_into().ok())
            .unwrap_or([0; 4]),
    );
    if check != frame_check(seq, pos as u64, len) || len as usize > MAX_FRAME {
        return Tail::Damaged(format!(
            "the frame header at offset {pos} is neither a record's nor a torn write's ({n} bytes follow)"
        ));
    }
    let end = FRAME_HEADER_LEN + len as usize;
    if end > n {
        return Tail::Torn(format!(
            "torn tail at offset {pos}: a record of {} bytes cut short at {n} ({why})",
            end
        ));
    }
    if used > end {
        return Tail::Damaged(format!(
            "the record at offset {pos} fails authentication and {} bytes follow it",
            used - end
        ));
    }
    if rest.get(end - 1) == Some(&0) {
        return Tail::Torn(format!(
            "torn tail at offset {pos}: a record of {end} bytes whose end was never written ({why})"
        ));
    }
    Tail::Damaged(format!(
        "the newest record (offset {pos}, {end} bytes) is whole but fails authentication ({why})"
    ))
}

fn try_frame(
    data: &[u8],
    pos: usize,
    crypto: &Crypto,
    header: &[u8],
    seq: u64,
    object: &str,
) -> std::result::Result<(Entry, usize), String> {
    let fh = data
        .get(pos..pos + FRAME_HEADER_LEN)
        .ok_or("frame header cut short")?;
    let (lenb, checkb) = fh.split_at(4);
    let len = u32::from_le_bytes(lenb.try_into().map_err(|_| "short")?);
    let check = u32::from_le_bytes(checkb.try_into().map_err(|_| "short")?);
    if check != frame_check(seq, pos as u64, len) || len as usize > MAX_FRAME {
        return Err("frame header check failed".into());
    }
    let start = pos + FRAME_HEADER_LEN;
    let end = start + len as usize;
    let sealed = data.get(start..end).ok_or("record cut short")?;
    let prev = last16(data.get(..pos).unwrap_or_default());
    let body = crypto
        .open(object, &entry_aad(header, pos as u64, &prev), sealed)
        .map_err(|e| format!("{e}"))?;
    let entry = Entry::decode(&body, object).map_err(|e| format!("{e}"))?;
    Ok((entry, end))
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

/// The content of a sealed segment object.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Sealed {
    pub first: u64,
    pub last: u64,
    /// Frames the segment(s) held as streams (links included); for a format-1 object, its
    /// record count.
    pub frames: u64,
    /// The tag of the last frame (unknown for format-1 objects).
    pub chain: Option<Chain>,
    /// The first segment's link (format 2).
    pub link: Option<Link>,
    pub records: Vec<Record>,
}

/// Encode a sealed segment object (format 2).
pub fn encode_sealed(crypto: &Crypto, name: &str, s: &Sealed, level: i32) -> Result<Vec<u8>> {
    let head = SealedHead {
        first: s.first,
        last: s.last,
        frames: s.frames,
        chain: s.chain,
        link: s.link,
    };
    encode_sealed_records(
        crypto,
        name,
        &head,
        s.records.len() as u64,
        s.records.iter().map(|r| Ok(r.encode())),
        level,
    )
}

/// What a sealed object says besides its records.
pub struct SealedHead {
    pub first: u64,
    pub last: u64,
    pub frames: u64,
    pub chain: Option<Chain>,
    pub link: Option<Link>,
}

/// Encode a sealed segment object (format 2) from `count` encoded records, compressing as they
/// come: memory holds the compressed object, not the segment's statements.
pub fn encode_sealed_records(
    crypto: &Crypto,
    name: &str,
    head: &SealedHead,
    count: u64,
    records: impl Iterator<Item = Result<Vec<u8>>>,
    level: i32,
) -> Result<Vec<u8>> {
    use std::io::Write;
    let io = |err| Error::io("compress", name, err);
    let mut e = Enc::new();
    let flags = u8::from(head.chain.is_some()) | (u8::from(head.link.is_some()) << 1);
    e.u8(2)
        .u64(head.first)
        .u64(head.last)
        .u64(head.frames)
        .u8(flags)
        .bytes(&head.chain.unwrap_or_default());
    e.blob(&head.link.map(|l| l.encode()).unwrap_or_default());
    e.u64(count);
    let mut z = zstd::stream::write::Encoder::new(Vec::new(), level).map_err(io)?;
    z.write_all(&e.finish()).map_err(io)?;
    let mut n = 0u64;
    for r in records {
        let r = r?;
        z.write_all(&(r.len() as u32).to_le_bytes()).map_err(io)?;
        z.write_all(&r).map_err(io)?;
        n += 1;
    }
    if n != count {
        return Err(Error::Invalid(format!(
            "{name}: {n} records to seal where {count} were counted"
        )));
    }
    let z = z.finish().map_err(io)?;
    Ok(envelope::seal_object(Kind::SealedSegment, crypto, name, &z))
}

/// Decode a sealed segment object of either format; `first`/`last` are what its name says.
pub fn decode_sealed(
    crypto: &Crypto,
    name: &str,
    first: u64,
    last: u64,
    data: &[u8],
) -> Result<Sealed> {
    let mut st = SealedStream::open(crypto, name, first, last, data)?;
    let records = st.by_ref().collect::<Result<Vec<Record>>>()?;
    Ok(Sealed {
        first,
        last,
        frames: st.frames.unwrap_or(records.len() as u64),
        chain: st.chain,
        link: st.link,
        records,
    })
}

/// A sealed segment object read one record at a time: the object is opened (authenticated)
/// whole, but decompressed as the records are taken, so its statements (often ten times the
/// object's size) are never all in memory.
pub struct SealedStream {
    dec: zstd::stream::read::Decoder<'static, std::io::BufReader<std::io::Cursor<Vec<u8>>>>,
    name: String,
    /// Records left (format 2), or `None` for a format-1 object (records to its end).
    left: Option<u64>,
    done: bool,
    /// Frames the segment(s) held as streams (format 2); for format 1, known at the end.
    pub frames: Option<u64>,
    pub chain: Option<Chain>,
    pub link: Option<Link>,
    /// Records read so far.
    pub read: u64,
}

impl SealedStream {
    pub fn open(
        crypto: &Crypto,
        name: &str,
        first: u64,
        last: u64,
        data: &[u8],
    ) -> Result<SealedStream> {
        let h = Header::decode_expect(data, Kind::SealedSegment, crypto, name)?;
        let z = envelope::open_object(Kind::SealedSegment, crypto, name, data)?;
        let dec = zstd::stream::read::Decoder::new(std::io::Cursor::new(z))
            .map_err(|e| Error::corrupt(name, format!("zstd: {e}")))?;
        let mut st = SealedStream {
            dec,
            name: name.to_string(),
            left: None,
            done: false,
            frames: None,
            chain: None,
            link: None,
            read: 0,
        };
        if h.format < 2 {
            return Ok(st);
        }
        let v = st.u8()?;
        if v != 2 {
            return Err(Error::Unsupported {
                object: name.to_string(),
                what: "sealed segment body version",
                found: v.into(),
                supported: 2,
            });
        }
        let (f, l, frames, flags) = (st.u64()?, st.u64()?, st.u64()?, st.u8()?);
        if (f, l) != (first, last) {
            return Err(Error::corrupt(
                name,
                format!("holds segments {f:016x}-{l:016x}, not what its name says"),
            ));
        }
        if flags & !3 != 0 {
            return Err(Error::corrupt(name, format!("unknown flags {flags:#04x}")));
        }
        let mut chain: Chain = [0; TAG_LEN];
        st.fill(&mut chain)?;
        let link_bytes = st.blob()?;
        st.link = if flags & 2 != 0 {
            match Entry::decode(&link_bytes, name)? {
                Entry::Link(l) => Some(l),
                Entry::Batch(_) => {
                    return Err(Error::corrupt(name, "a batch where the link belongs"))
                }
            }
        } else {
            None
        };
        st.frames = Some(frames);
        st.chain = (flags & 1 != 0).then_some(chain);
        st.left = Some(st.u64()?);
        Ok(st)
    }

    /// Records not yet read (format 2).
    pub fn remaining(&self) -> Option<u64> {
        self.left
    }

    /// Fill `buf`; `Ok(false)` when the body ended before its first byte.
    fn fill_or_end(&mut self, buf: &mut [u8]) -> Result<bool> {
        use std::io::Read;
        let mut got = 0;
        while got < buf.len() {
            let rest = buf.get_mut(got..).unwrap_or_default();
            match self.dec.read(rest) {
                Ok(0) if got == 0 => return Ok(false),
                Ok(0) => {
                    return Err(Error::corrupt(
                        &self.name,
                        format!("truncated: needed {} more bytes", buf.len() - got),
                    ))
                }
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Error::corrupt(&self.name, format!("zstd: {e}"))),
            }
        }
        Ok(true)
    }

    fn fill(&mut self, buf: &mut [u8]) -> Result<()> {
        if buf.is_empty() || self.fill_or_end(buf)? {
            Ok(())
        } else {
            Err(Error::corrupt(
                &self.name,
                format!("truncated: needed {} bytes", buf.len()),
            ))
        }
    }

    fn u8(&mut self) -> Result<u8> {
        let mut b = [0u8; 1];
        self.fill(&mut b)?;
        Ok(b[0])
    }

    fn u64(&mut self) -> Result<u64> {
        let mut b = [0u8; 8];
        self.fill(&mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    /// A u32 length, then that many bytes (at most a frame's worth).
    fn blob_after(&mut self, len: [u8; 4]) -> Result<Vec<u8>> {
        let n = u32::from_le_bytes(len) as usize;
        if n > MAX_FRAME {
            return Err(Error::corrupt(
                &self.name,
                format!("a record of {n} bytes, above the {MAX_FRAME}-byte bound"),
            ));
        }
        let mut v = vec![0u8; n];
        self.fill(&mut v)?;
        Ok(v)
    }

    fn blob(&mut self) -> Result<Vec<u8>> {
        let mut len = [0u8; 4];
        self.fill(&mut len)?;
        self.blob_after(len)
    }

    fn next_record(&mut self) -> Result<Option<Record>> {
        let bytes = match self.left {
            Some(0) => {
                // Nothing may follow the last record.
                let mut b = [0u8; 1];
                if self.fill_or_end(&mut b)? {
                    return Err(Error::corrupt(
                        &self.name,
                        "trailing bytes after the last record",
                    ));
                }
                return Ok(None);
            }
            Some(n) => {
                self.left = Some(n - 1);
                self.blob()?
            }
            None => {
                let mut len = [0u8; 4];
                if !self.fill_or_end(&mut len)? {
                    self.frames = Some(self.read);
                    return Ok(None);
                }
                self.blob_after(len)?
            }
        };
        self.read += 1;
        Record::decode(&bytes, &self.name).map(Some)
    }
}

impl Iterator for SealedStream {
    type Item = Result<Record>;

    fn next(&mut self) -> Option<Result<Record>> {
        if self.done {
            return None;
        }
        match self.next_record() {
            Ok(Some(r)) => Some(Ok(r)),
            Ok(None) => {
                self.done = true;
                None
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

#[cfg(test)]
mod mutants_test;
#[cfg(test)]
mod test;
