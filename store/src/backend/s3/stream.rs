//! Streams on object storage, which has no append: stream `S` is the objects
//! `journal/S/<offset:016x>`, one per append, each created with If-None-Match.
//!
//! - An append is one PUT; it is durable when the PUT returns (object storage acknowledges a
//!   PUT only once the object is stored), so `Durability::Flush` and `Fsync` are the same here.
//! - Reading lists the parts and concatenates them in offset order; a hole (a part whose offset
//!   is not the end of the previous one) is `Corrupt`, naming the missing object.
//! - A PUT that failed without an answer may still land later; the next append first deletes
//!   that offset, so the stream is back at its previous length before it grows again.
//! - Truncate deletes the parts above the new length, highest first (a crash leaves a shorter
//!   but whole stream), then rewrites the part the new length falls inside, if any.
//! - An empty stream has no objects: it is absent from `stream_list` until its first append.
//! - The parts this process appended are kept in memory ([`PartCache`], bounded), so reading
//!   the stream back (compaction sealing it) costs its LIST pages, not one GET per batch. A
//!   listed part is taken from memory only if its offset and size are the ones we wrote.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use object_store::{ObjectStoreExt, PutMode};

use super::Inner;
use crate::backend::{Durability, ObjectInfo, Stream};
use crate::error::{Error, Result};

/// GETs in flight when a stream is read back (a restart reads the open segment: one object per
/// batch since the last compaction).
const READ_PARALLELISM: usize = 64;

/// Bytes of appended parts kept in memory per backend (beyond it, reads GET the parts).
const PART_CACHE_BYTES: usize = 128 << 20;

/// The parts this process wrote, by (stream, offset): what a PUT that succeeded stored.
#[derive(Default)]
pub(crate) struct PartCache {
    parts: Mutex<Parts>,
}

#[derive(Default)]
struct Parts {
    by_key: BTreeMap<(String, u64), Vec<u8>>,
    bytes: usize,
}

impl PartCache {
    fn insert(&self, stream: &str, offset: u64, data: &[u8]) {
        if let Ok(mut g) = self.parts.lock() {
            if g.bytes + data.len() <= PART_CACHE_BYTES {
                g.bytes += data.len();
                if let Some(old) = g.by_key.insert((stream.to_string(), offset), data.to_vec()) {
                    g.bytes = g.bytes.saturating_sub(old.len());
                }
            }
        }
    }

    fn get(&self, stream: &str, offset: u64, size: u64) -> Option<Vec<u8>> {
        let g = self.parts.lock().ok()?;
        g.by_key
            .get(&(stream.to_string(), offset))
            .filter(|d| d.len() as u64 == size)
            .cloned()
    }

    /// Forget the parts of `stream` at or above `from`.
    fn forget_from(&self, stream: &str, from: u64) {
        if let Ok(mut g) = self.parts.lock() {
            let gone: Vec<(String, u64)> = g
                .by_key
                .range((stream.to_string(), from)..=(stream.to_string(), u64::MAX))
                .map(|(k, _)| k.clone())
                .collect();
            for k in gone {
                if let Some(d) = g.by_key.remove(&k) {
                    g.bytes = g.bytes.saturating_sub(d.len());
                }
            }
        }
    }
}

pub(crate) fn part_name(stream: &str, offset: u64) -> String {
    format!("journal/{stream}/{offset:016x}")
}

#[derive(Debug, Clone)]
struct Part {
    offset: u64,
    size: u64,
    name: String,
}

fn check_stream_name(name: &str) -> Result<()> {
    if name.is_empty() || name.contains('/') {
        return Err(Error::Invalid(format!("invalid stream name '{name}'")));
    }
    Ok(())
}

fn parts(inner: &Inner, stream: &str) -> Result<Vec<Part>> {
    check_stream_name(stream)?;
    let dir = format!("journal/{stream}");
    let mut out = Vec::new();
    for (name, size) in inner.list_recursive(&dir)? {
        let Some(off) = name
            .strip_prefix(&dir)
            .and_then(|r| r.strip_prefix('/'))
            .filter(|h| h.len() == 16)
            .and_then(|h| u64::from_str_radix(h, 16).ok())
        else {
            return Err(Error::corrupt(
                inner.obj(&name),
                "not a stream part (expected journal/STREAM/<16 hex digits>)",
            ));
        };
        out.push(Part {
            offset: off,
            size,
            name,
        });
    }
    out.sort_by_key(|p| p.offset);
    Ok(out)
}

/// Check the parts tile `[0, end)` with no hole and no overlap.
fn check_contiguous(inner: &Inner, stream: &str, parts: &[Part]) -> Result<u64> {
    let mut expected = 0u64;
    for p in parts {
        if p.offset != expected {
            let what = if p.offset > expected {
                format!(
                    "bytes {expected}..{} are missing (object {} does not exist)",
                    p.offset,
                    part_name(stream, expected)
                )
            } else {
                format!("part at offset {} overlaps the previous one", p.offset)
            };
            return Err(Error::corrupt(
                inner.obj(&format!("journal/{stream}")),
                what,
            ));
        }
        expected = expected.saturating_add(p.size);
    }
    Ok(expected)
}

pub(crate) fn read(inner: &Inner, stream: &str) -> Result<Vec<u8>> {
    let parts = parts(inner, stream)?;
    let total = check_contiguous(inner, stream, &parts)?;
    let paths = parts
        .iter()
        .map(|p| inner.path(&p.name).map(|path| (p.clone(), path)))
        .collect::<Result<Vec<_>>>()?;
    let fetched: Vec<(Part, std::result::Result<Vec<u8>, object_store::Error>)> = inner.run(
        futures::stream::iter(paths)
            .map(|(p, path)| async move {
                if let Some(d) = inner.part_cache.get(stream, p.offset, p.size) {
                    return (p, Ok(d));
                }
                let r = match inner.store.get(&path).await {
                    Ok(g) => g.bytes().await.map(|b| b.to_vec()),
                    Err(e) => Err(e),
                };
                (p, r)
            })
            .buffered(READ_PARALLELISM)
            .collect(),
    );
    let mut out = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
    for (p, r) in fetched {
        let b = r.map_err(|e| match e {
            object_store::Error::NotFound { .. } => Error::corrupt(
                inner.obj(&format!("journal/{stream}")),
                format!("object {} vanished while reading", p.name),
            ),
            e => inner.err("read", &p.name, e),
        })?;
        if b.len() as u64 != p.size {
            return Err(Error::corrupt(
                inner.obj(&p.name),
                format!("listed as {} bytes but read {}", p.size, b.len()),
            ));
        }
        out.extend_from_slice(&b);
    }
    Ok(out)
}

pub(crate) fn list(inner: &Inner) -> Result<Vec<ObjectInfo>> {
    let mut out: Vec<ObjectInfo> = Vec::new();
    for (name, size) in inner.list_recursive("journal")? {
        let mut it = name.split('/');
        let (Some("journal"), Some(stream), Some(part), None) =
            (it.next(), it.next(), it.next(), it.next())
        else {
            continue; // sealed segments `journal/<seq>.seg` and other objects
        };
        if part.len() != 16 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
            continue;
        }
        match out.last_mut() {
            Some(last) if last.name == stream => last.size += size,
            _ => out.push(ObjectInfo {
                name: stream.to_string(),
                size,
            }),
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

pub(crate) fn delete(inner: &Inner, stream: &str) -> Result<()> {
    let names = parts(inner, stream)?.into_iter().map(|p| p.name).collect();
    inner.part_cache.forget_from(stream, 0);
    inner.delete_many(&format!("journal/{stream}"), names)
}

/// `put_if_absent` where If-None-Match is ignored: look, write, read back. Best-effort: two
/// writers racing can both see "absent"; the one whose bytes are read back wins.
pub(crate) fn put_if_absent_fallback(inner: &Inner, name: &str, data: &[u8]) -> Result<bool> {
    let path = inner.path(name)?;
    match inner.run(inner.store.head(&path)) {
        Ok(_) => return Ok(false),
        Err(object_store::Error::NotFound { .. }) => {}
        Err(e) => return Err(inner.err("read", name, e)),
    }
    inner
        .put_mode(name, data, PutMode::Overwrite)?
        .map_err(|e| inner.err("put", name, e))?;
    Ok(inner.get_bytes(name)? == data)
}

pub(crate) struct S3Stream {
    inner: Arc<Inner>,
    stream: String,
    len: u64,
    /// Offset of a part whose PUT failed without a clear answer: deleted before the next append.
    pending_cleanup: Option<u64>,
}

impl S3Stream {
    pub(crate) fn open(inner: Arc<Inner>, stream: &str, _durability: Durability) -> Result<Self> {
        let parts = parts(&inner, stream)?;
        let len = parts
            .last()
            .map(|p| p.offset.saturating_add(p.size))
            .unwrap_or(0);
        Ok(S3Stream {
            inner,
            stream: stream.to_string(),
            len,
            pending_cleanup: None,
        })
    }

    fn object(&self) -> String {
        format!("journal/{}", self.stream)
    }
}

impl Stream for S3Stream {
    fn len(&self) -> u64 {
        self.len
    }

    fn append(&mut self, data: &[u8]) -> Result<()> {
        let inner = self.inner.clone();
        if let Some(off) = self.pending_cleanup {
            inner.part_cache.forget_from(&self.stream, off);
            if off >= self.len {
                let name = part_name(&self.stream, off);
                let path = inner.path(&name)?;
                match inner.run(inner.store.delete(&path)) {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                    Err(e) => return Err(inner.err("append", &self.object(), e)),
                }
            }
            self.pending_cleanup = None;
        }
        if data.is_empty() {
            return Ok(());
        }
        let name = part_name(&self.stream, self.len);
        let mode = if inner.conditional {
            PutMode::Create
        } else {
            PutMode::Overwrite
        };
        match inner.put_mode(&name, data, mode)? {
            Ok(_) => {}
            Err(object_store::Error::AlreadyExists { .. })
            | Err(object_store::Error::Precondition { .. }) => {
                // Our own PUT, retried after a lost answer, finds itself; anything else is a
                // second writer.
                if inner.get_bytes(&name).ok().as_deref() != Some(data) {
                    return Err(Error::Invalid(format!(
                        "{} already has a different object at offset {}: another writer is \
                         appending to this stream (two nodes on one repository?)",
                        inner.obj(&self.object()),
                        self.len
                    )));
                }
            }
            Err(e) => {
                self.pending_cleanup = Some(self.len);
                return Err(inner.err("append", &self.object(), e));
            }
        }
        inner.part_cache.insert(&self.stream, self.len, data);
        self.len = self.len.saturating_add(data.len() as u64);
        Ok(())
    }

    fn truncate(&mut self, len: u64) -> Result<()> {
        let inner = self.inner.clone();
        let parts = parts(&inner, &self.stream)?;
        let end = parts
            .last()
            .map(|p| p.offset.saturating_add(p.size))
            .unwrap_or(0);
        if len > end.max(self.len) {
            return Err(Error::Invalid(format!(
                "cannot truncate {} to {len} bytes: it has only {end}",
                inner.obj(&self.object())
            )));
        }
        let mut above: Vec<String> = parts
            .iter()
            .filter(|p| p.offset >= len)
            .map(|p| p.name.clone())
            .collect();
        if let Some(off) = self.pending_cleanup.take() {
            if off >= len {
                above.push(part_name(&self.stream, off));
            }
        }
        // Forget from the first part that changes: the one the new end falls inside, if any.
        let first_changed = parts
            .iter()
            .find(|p| p.offset.saturating_add(p.size) > len)
            .map_or(len, |p| p.offset.min(len));
        inner.part_cache.forget_from(&self.stream, first_changed);
        inner.delete_many(&self.object(), above)?;
        if let Some(p) = parts
            .iter()
            .find(|p| p.offset < len && p.offset.saturating_add(p.size) > len)
        {
            // The new end falls inside a part: rewrite it with its head only.
            let keep = usize::try_from(len - p.offset)
                .map_err(|_| Error::Invalid(format!("part {} is too large", inner.obj(&p.name))))?;
            let data = inner.get_bytes(&p.name)?;
            let head = data.get(..keep).ok_or_else(|| {
                Error::corrupt(inner.obj(&p.name), "shorter than its listed size")
            })?;
            inner
                .put_mode(&p.name, head, PutMode::Overwrite)?
                .map_err(|e| inner.err("truncate", &p.name, e))?;
        }
        self.len = len;
        Ok(())
    }
}

#[cfg(test)]
mod test {
    #[test]
    fn part_names_sort_by_offset() {
        let a = super::part_name("0000000000000001", 9);
        let b = super::part_name("0000000000000001", 4096);
        assert!(a < b);
        assert_eq!(a, "journal/0000000000000001/0000000000000009");
    }
}
