//! Replaying one queued write on a destination, and catch-up: one comparison pass that makes a
//! destination hold what the primary holds.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::queue::Op;
use crate::backend::{Backend, Durability, Stream};
use crate::error::{Error, Result};

/// Directories compared during catch-up (objects); streams are compared separately.
pub(super) const COMPARED_DIRS: &[&str] = &["", "packs/", "index/", "journal/", "snapshots/"];
pub(super) fn apply(
    dst: &dyn Backend,
    streams: &mut HashMap<String, Box<dyn Stream>>,
    op: &Op,
) -> Result<()> {
    match op {
        Op::Put { name, data } => dst.put(name, data),
        Op::Delete { name } => dst.delete(name),
        Op::StreamDelete { stream } => {
            streams.remove(stream);
            dst.stream_delete(stream)
        }
        Op::Append {
            stream,
            offset,
            data,
        } => {
            let s = open_cached(dst, streams, stream)?;
            let len = s.len();
            let end = offset + data.len() as u64;
            if len == *offset {
                s.append(data)
            } else if len >= end {
                Ok(()) // already copied by a catch-up pass
            } else {
                Err(Error::Invalid(format!(
                    "{} stream {stream} is {len} bytes, expected {offset}: catching up",
                    dst.url()
                )))
            }
        }
        Op::Truncate { stream, len } => {
            let s = open_cached(dst, streams, stream)?;
            if s.len() > *len {
                s.truncate(*len)
            } else {
                Ok(())
            }
        }
    }
}

fn open_cached<'a>(
    dst: &dyn Backend,
    streams: &'a mut HashMap<String, Box<dyn Stream>>,
    stream: &str,
) -> Result<&'a mut Box<dyn Stream>> {
    if !streams.contains_key(stream) {
        let s = dst.stream_open(stream, Durability::Fsync)?;
        streams.insert(stream.to_string(), s);
    }
    streams
        .get_mut(stream)
        .ok_or_else(|| Error::Invalid(format!("stream {stream} vanished from the cache")))
}

/// Make `dst` hold what `src` holds: one comparison pass.
pub(super) fn catch_up(
    src: &dyn Backend,
    dst: &dyn Backend,
    dirty_objects: &BTreeSet<String>,
    dirty_streams: &BTreeSet<String>,
    stopping: &dyn Fn() -> bool,
) -> Result<()> {
    // Checked before each write, so a pass left behind by a dropped `MultiBackend` (its thread
    // not joined) stops after at most one more call instead of racing the next one.
    let stop_check = || -> Result<()> {
        match stopping() {
            true => Err(Error::Invalid("replication stopped".into())),
            false => Ok(()),
        }
    };
    let copy = |name: &str| -> Result<()> {
        stop_check()?;
        match src.get(name) {
            Ok(data) => dst.put(name, &data),
            Err(Error::NotFound { .. }) => dst.delete(name),
            Err(e) => Err(e),
        }
    };
    // Copies in COMPARED_DIRS order (packs and indexes before the manifests that name them),
    // deletions in the reverse order (manifests before the packs they named).
    let mut seen = BTreeSet::new();
    let mut stale = Vec::new();
    for dir in COMPARED_DIRS {
        let have: BTreeMap<String, u64> = dst
            .list(dir)?
            .into_iter()
            .map(|o| (o.name, o.size))
            .collect();
        let want = src.list(dir)?;
        for o in &want {
            seen.insert(o.name.clone());
            if have.get(&o.name) != Some(&o.size) || dirty_objects.contains(&o.name) {
                copy(&o.name)?;
            }
        }
        let want_names: BTreeSet<&str> = want.iter().map(|o| o.name.as_str()).collect();
        stale.push(
            have.into_keys()
                .filter(|n| !want_names.contains(n.as_str()))
                .collect::<Vec<_>>(),
        );
    }
    for names in stale.iter().rev() {
        for name in names {
            stop_check()?;
            dst.delete(name)?;
        }
    }
    for name in dirty_objects {
        if !seen.contains(name) {
            copy(name)?;
        }
    }

    let want: BTreeMap<String, u64> = src
        .stream_list()?
        .into_iter()
        .map(|o| (o.name, o.size))
        .collect();
    let have: BTreeMap<String, u64> = dst
        .stream_list()?
        .into_iter()
        .map(|o| (o.name, o.size))
        .collect();
    for (name, &size) in &want {
        stop_check()?;
        let dst_len = have.get(name).copied().unwrap_or(0);
        let dirty = dirty_streams.contains(name);
        if dst_len == size && !dirty {
            continue;
        }
        let data = src.stream_read(name)?;
        let mut s = dst.stream_open(name, Durability::Fsync)?;
        // Keep the longest common prefix: equal bytes need no copy, differing ones are cut.
        let common = if dst_len == 0 {
            0
        } else if dirty || dst_len > size {
            let theirs = dst.stream_read(name)?;
            theirs
                .iter()
                .zip(data.iter())
                .take_while(|(a, b)| a == b)
                .count() as u64
        } else {
            dst_len
        };
        if s.len() > common {
            s.truncate(common)?;
        }
        let start = usize::try_from(common).unwrap_or(usize::MAX);
        if let Some(tail) = data.get(start..) {
            if !tail.is_empty() {
                s.append(tail)?;
            }
        }
    }
    for name in have.keys() {
        if !want.contains_key(name) {
            dst.stream_delete(name)?;
        }
    }
    for name in dirty_streams {
        if !want.contains_key(name) && !have.contains_key(name) {
            dst.stream_delete(name)?;
        }
    }
    Ok(())
}
