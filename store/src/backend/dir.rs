//! A repository in a local directory (`file:///path`).
//!
//! Objects are files under the root; streams are files `journal/<name>.log`; locks are files
//! `locks/<name>` held with `flock`. Publish is temp file, fsync, rename (or link, for
//! `put_if_absent`), fsync of the directory. Append is `pwrite` at the end then `fdatasync`.
//! After a failed fdatasync a stream refuses further appends: the kernel may have dropped the dirty
//! pages, so a retried sync could report success for data that is gone; and it cuts the record
//! from the file, which may still show those pages to the next process.
//!
//! A stream appended with [`Durability::Fsync`] is written ahead with zeros (up to [`ZERO_AHEAD`]
//! at a time, synced) so that an append overwrites blocks already allocated and written: its
//! `fdatasync` then writes the data and nothing else, where an append at the end of the file
//! also waits for the new block to be allocated (and, on ext4, for its unwritten extent to be
//! converted by a single shared worker, behind every other file being written) and for the
//! inode's new size. That is the wait a hook saw beside a compaction (benches/REPORT.md). The
//! file is then longer than the stream: while a stream is open in this process its length is
//! known (every `DirStream` of one file shares it, and `stream_read` and `stream_list` report
//! it); the zeros are cut when the last one closes. A background thread extends them once half
//! are used ([`extender`]), so appends do not wait for it. After a crash they stay, and the
//! journal's framing ends a segment at a run of zeros that reaches the end of the file
//! (`journal::segment`); the writer cuts them when it resumes that segment.
//!
//! Every write, sync, creation, rename and unlink goes through the seam in [`io`]: the real
//! [`io::OsIo`], or [`sim::SimIo`], which simulates a power loss (what no sync covered is lost,
//! the last write may be torn) for the power-loss campaign.

pub mod io;
pub mod sim;

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};

use self::io::{Io, IoFile, Open, OsIo};
use super::{check_name, Backend, Durability, LockGuard, ObjectInfo, Stream};
use crate::error::{Error, Result};

pub const DIRS: &[&str] = &["snapshots", "packs", "index", "journal", "locks", "tmp"];

pub struct DirBackend {
    root: PathBuf,
    /// `root` resolved: the key of its streams among those open in this process.
    canonical: PathBuf,
    /// Where writes, syncs, renames and unlinks go (the real file system but in tests).
    io: Arc<dyn Io>,
}

/// Most bytes of zeros a synced stream is written ahead by at a time. A new stream starts with
/// [`ZERO_AHEAD_FIRST`], and each extension doubles it up to this: a segment that takes a few
/// batches before compaction closes it costs a few blocks, a busy one an extension every 4 MiB.
pub const ZERO_AHEAD: u64 = 4 << 20;
pub const ZERO_AHEAD_FIRST: u64 = 128 << 10;

/// The length of a stream open in this process, shared by every [`DirStream`] of its file.
struct Tail {
    /// Bytes of the stream.
    len: u64,
    /// Bytes of the file: `len..filled` are zeros, written and synced.
    filled: u64,
    /// Open [`DirStream`]s of the file: the last to close cuts the zeros.
    handles: usize,
    /// Zeros are being written past `filled` by the [`extender`] thread.
    extending: bool,
    /// An extension by that thread failed: later ones are made by the append that needs them
    /// (which goes on without zeros if they fail too).
    extender_failed: bool,
    /// The last stream of the file is closing: an extension under way stops at its next slice.
    closing: bool,
}

/// A [`Tail`] and the signal that an extension of it ended.
struct Shared {
    tail: Mutex<Tail>,
    extended: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Tail> {
        self.tail
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Wait until no extension of the file is under way.
    fn settled(&self) -> MutexGuard<'_, Tail> {
        let mut t = self.lock();
        while t.extending {
            t = self
                .extended
                .wait(t)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
        t
    }
}

/// Streams open in this process, by file path (the directory resolved).
fn open_streams() -> MutexGuard<'static, HashMap<PathBuf, Weak<Shared>>> {
    static OPEN: std::sync::OnceLock<Mutex<HashMap<PathBuf, Weak<Shared>>>> =
        std::sync::OnceLock::new();
    OPEN.get_or_init(Default::default)
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The length of the stream at `path` if it is open in this process.
fn open_len(path: &Path) -> Option<u64> {
    let t = open_streams().get(path).and_then(Weak::upgrade)?;
    let len = t.lock().len;
    Some(len)
}

/// Open the object at `p` for reading, refusing anything but a regular file: a FIFO would block
/// the read forever, and a directory, a device or a symbolic link is never an object. Opened with
/// `O_NOFOLLOW | O_NONBLOCK` (a FIFO opens at once), then checked with `fstat`.
fn open_regular(p: &Path, object: &str) -> Result<File> {
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    let refuse = |what: &str| {
        Error::corrupt(
            object,
            format!(
                "{what} is there, not a regular file: refused (every object is a regular file; move {} away, or restore the file from another copy)",
                p.display()
            ),
        )
    };
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(p)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => refuse("a symbolic link"),
            _ => Error::io("read", object, e),
        })?;
    let t = f
        .metadata()
        .map_err(|e| Error::io("read", object, e))?
        .file_type();
    if t.is_file() {
        return Ok(f);
    }
    Err(refuse(if t.is_fifo() {
        "a FIFO (named pipe)"
    } else if t.is_dir() {
        "a directory"
    } else if t.is_block_device() || t.is_char_device() {
        "a device"
    } else if t.is_socket() {
        "a socket"
    } else {
        "something"
    }))
}

impl DirBackend {
    /// Open an existing directory (it must exist; `create` makes it).
    pub fn open(root: &Path) -> Result<Self> {
        Self::open_with_io(root, Arc::new(OsIo))
    }

    /// Create the directory layout (idempotent).
    pub fn create(root: &Path) -> Result<Self> {
        Self::create_with_io(root, Arc::new(OsIo))
    }

    /// [`DirBackend::open`] through another file-I/O seam (tests: [`sim::SimIo`]).
    pub fn open_with_io(root: &Path, io: Arc<dyn Io>) -> Result<Self> {
        let meta =
            fs::metadata(root).map_err(|e| Error::io("open", root.display().to_string(), e))?;
        if !meta.is_dir() {
            return Err(Error::Invalid(format!(
                "{} is not a directory",
                root.display()
            )));
        }
        Ok(DirBackend {
            root: root.to_path_buf(),
            canonical: canonical(root),
            io,
        })
    }

    /// [`DirBackend::create`] through another file-I/O seam.
    pub fn create_with_io(root: &Path, io: Arc<dyn Io>) -> Result<Self> {
        io.create_dir_all(root)
            .map_err(|e| Error::io("create", root.display().to_string(), e))?;
        for d in DIRS {
            let p = root.join(d);
            io.create_dir_all(&p)
                .map_err(|e| Error::io("create", p.display().to_string(), e))?;
        }
        let b = DirBackend {
            root: root.to_path_buf(),
            canonical: canonical(root),
            io,
        };
        b.sync_dir(root)?;
        if let Some(parent) = root.parent() {
            b.sync_dir(parent)?;
        }
        Ok(b)
    }

    fn sync_dir(&self, dir: &Path) -> Result<()> {
        self.io
            .sync_dir(dir)
            .map_err(|e| Error::io("sync directory", dir.display().to_string(), e))
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path(&self, name: &str) -> Result<PathBuf> {
        check_name(name)?;
        Ok(self.root.join(name))
    }

    /// Where the stream `name` is open in this process, if it is (see [`open_streams`]).
    fn stream_key(&self, name: &str) -> PathBuf {
        self.canonical.join("journal").join(format!("{name}.log"))
    }

    fn stream_path(&self, name: &str) -> Result<PathBuf> {
        check_name(name)?;
        Ok(self.root.join("journal").join(format!("{name}.log")))
    }

    fn temp_path(&self, name: &str) -> PathBuf {
        let mut r = [0u8; 8];
        crate::crypto::fill_random(&mut r);
        self.root
            .join("tmp")
            .join(format!("{}.{}.tmp", name.replace('/', "_"), hex::encode(r)))
    }

    fn write_temp(&self, name: &str, data: &[u8]) -> Result<PathBuf> {
        let tmp = self.temp_path(name);
        if data.len() >= DIRECT_MIN && name.starts_with("packs/") {
            match write_direct(self.io.as_ref(), &tmp, data) {
                Ok(()) => return Ok(tmp),
                // The filesystem does not take direct I/O (or not at this alignment): write
                // through the page cache below.
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                    let _ = self.io.remove_file(&tmp);
                }
                Err(e) => {
                    let _ = self.io.remove_file(&tmp);
                    return Err(Error::io("write", name, e));
                }
            }
        }
        let res = (|| {
            let f = self.io.open(&tmp, Open::CreateNew)?;
            // Large objects go to the disk slice by slice, each written back before the next
            // is queued: a burst of megabytes queued at once delays every fdatasync a hook makes
            // meanwhile (measured in benches/REPORT.md: hooks beside an automatic compaction).
            let mut off = 0usize;
            for slice in data.chunks(WRITEBACK_SLICE) {
                f.write_all_at(slice, off as u64)?;
                if data.len() > WRITEBACK_SLICE {
                    f.writeback(off as u64, slice.len() as u64);
                }
                off += slice.len();
            }
            f.sync_all()
        })();
        if let Err(e) = res {
            let _ = self.io.remove_file(&tmp);
            return Err(Error::io("write", name, e));
        }
        Ok(tmp)
    }
}

/// One spelling of a directory's path, so that two backends of one directory share the lengths
/// of its open streams.
fn canonical(root: &Path) -> PathBuf {
    fs::canonicalize(root).unwrap_or_else(|_| root.to_path_buf())
}

/// Packs from this size on are written with `O_DIRECT`. Only packs: they are read back only by
/// restore, verify and prune, while the index and the manifests are read by the next compaction,
/// which finds them in the page cache (an incremental snapshot of 1 GiB took 0.04 s longer with
/// them written direct).
///
/// Through the page cache, the kernel copies every byte of a pack and manages its pages on the
/// same two cores that compress the next packs; a 1 GiB first snapshot took 2.41-2.44 s that
/// way and 1.77-1.79 s with direct writes (three runs each, benches/REPORT.md). The object is
/// copied slice by slice through one aligned buffer of [`DIRECT_SLICE`] bytes (direct I/O needs
/// aligned memory, offsets and lengths), cut to its length, and synced as any other.
const DIRECT_MIN: usize = 1 << 20;
const DIRECT_SLICE: usize = 1 << 20;

/// One aligned block of a direct write's buffer.
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C, align(4096))]
struct Block([u8; 4096]);

/// Write `data` to a new file at `path` with `O_DIRECT`, then sync it. `EINVAL` means the
/// filesystem refused direct I/O. The bytes go through one aligned [`DIRECT_SLICE`] buffer per
/// thread (not a copy of the whole pack), the last slice padded with zeros and the file cut to
/// its length after.
fn write_direct(io: &dyn Io, path: &Path, data: &[u8]) -> std::io::Result<()> {
    thread_local! {
        static BUFFER: std::cell::RefCell<Vec<Block>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    let f = io.open(path, Open::CreateNewDirect)?;
    BUFFER.with(|b| -> std::io::Result<()> {
        let mut blocks = b.borrow_mut();
        let n = DIRECT_SLICE / size_of::<Block>();
        if blocks.len() < n {
            blocks.resize(n, Block([0; 4096]));
        }
        let buf: &mut [u8] = bytemuck::cast_slice_mut(blocks.get_mut(..n).unwrap_or_default());
        let mut at = 0;
        for slice in data.chunks(DIRECT_SLICE) {
            let padded = slice.len().div_ceil(size_of::<Block>()) * size_of::<Block>();
            let (body, rest) = buf.split_at_mut(slice.len());
            body.copy_from_slice(slice);
            if let Some(pad) = rest.get_mut(..padded - slice.len()) {
                pad.fill(0);
            }
            f.write_all_at(buf.get(..padded).unwrap_or_default(), at)?;
            at += padded as u64;
        }
        Ok(())
    })?;
    f.set_len(data.len() as u64)?;
    f.sync_all()
}

/// Bytes of a large object written back at a time.
const WRITEBACK_SLICE: usize = 256 << 10;

pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(|e| Error::io("sync directory", dir.display().to_string(), e))
}

fn parent_of(p: &Path) -> &Path {
    p.parent().unwrap_or(Path::new("/"))
}

impl Backend for DirBackend {
    fn url(&self) -> String {
        format!("file://{}", self.root.display())
    }

    fn put(&self, name: &str, data: &[u8]) -> Result<()> {
        let dest = self.path(name)?;
        let tmp = self.write_temp(name, data)?;
        if let Err(e) = self.io.rename(&tmp, &dest) {
            let _ = self.io.remove_file(&tmp);
            return Err(Error::io("publish", name, e));
        }
        self.sync_dir(parent_of(&dest))
    }

    fn put_if_absent(&self, name: &str, data: &[u8]) -> Result<bool> {
        let dest = self.path(name)?;
        let tmp = self.write_temp(name, data)?;
        let res = self.io.hard_link(&tmp, &dest);
        let _ = self.io.remove_file(&tmp);
        match res {
            Ok(()) => {
                self.sync_dir(parent_of(&dest))?;
                Ok(true)
            }
            Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(Error::io("publish", name, e)),
        }
    }

    fn get(&self, name: &str) -> Result<Vec<u8>> {
        let p = self.path(name)?;
        let mut v = Vec::new();
        open_regular(&p, name)?
            .read_to_end(&mut v)
            .map_err(|e| Error::io("read", name, e))?;
        Ok(v)
    }

    fn get_range(&self, name: &str, offset: u64, len: u64) -> Result<Vec<u8>> {
        let p = self.path(name)?;
        let f = open_regular(&p, name)?;
        let mut buf = vec![0u8; len as usize];
        f.read_exact_at(&mut buf, offset).map_err(|e| {
            if e.kind() == ErrorKind::UnexpectedEof {
                Error::corrupt(
                    name,
                    format!("shorter than expected: cannot read {len} bytes at offset {offset}"),
                )
            } else {
                Error::io("read", name, e)
            }
        })?;
        Ok(buf)
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        // Never outside the root (`..`, an absolute path): a prefix is a name's beginning.
        super::check_prefix(prefix)?;
        // Prefixes are directories ("packs/") or a file name prefix within the root.
        let (dir_part, file_prefix) = match prefix.rfind('/') {
            Some(i) => (&prefix[..i], &prefix[i + 1..]),
            None => ("", prefix),
        };
        let dir = if dir_part.is_empty() {
            self.root.clone()
        } else {
            self.root.join(dir_part)
        };
        let rd = match fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io("list", dir.display().to_string(), e)),
        };
        let mut out = Vec::new();
        for ent in rd {
            let ent = ent.map_err(|e| Error::io("list", dir.display().to_string(), e))?;
            let fname = ent.file_name().to_string_lossy().into_owned();
            if !fname.starts_with(file_prefix) || fname.ends_with(".tmp") {
                continue;
            }
            let meta = match ent.metadata() {
                Ok(m) => m,
                // Deleted since the directory was read: not there any more.
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                Err(e) => return Err(Error::io("list", fname.clone(), e)),
            };
            // A FIFO, device, socket or symbolic link is listed, so that reading it is refused
            // by name (`open_regular`) rather than the object silently missing; directories
            // are not objects.
            if meta.is_dir() {
                continue;
            }
            let name = if dir_part.is_empty() {
                fname
            } else {
                format!("{dir_part}/{fname}")
            };
            if dir_part == "journal" && name.ends_with(".log") {
                continue; // streams are listed by stream_list
            }
            out.push(ObjectInfo {
                name,
                size: meta.len(),
            });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    fn delete(&self, name: &str) -> Result<()> {
        let p = self.path(name)?;
        match self.io.remove_file(&p) {
            Ok(()) => self.sync_dir(parent_of(&p)),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io("delete", name, e)),
        }
    }

    fn stream_open(&self, name: &str, durability: Durability) -> Result<Box<dyn Stream>> {
        let p = self.stream_path(name)?;
        let existed = p.exists();
        let file = self
            .io
            .open(&p, Open::ReadWrite)
            .map_err(|e| Error::io("open", format!("journal/{name}.log"), e))?;
        if !existed {
            self.sync_dir(parent_of(&p))?;
        }
        let key = self.stream_key(name);
        let mut open = open_streams();
        let tail = match open.get(&key).and_then(Weak::upgrade) {
            Some(t) => t,
            None => {
                let len = file
                    .size()
                    .map_err(|e| Error::io("open", format!("journal/{name}.log"), e))?;
                let t = Arc::new(Shared {
                    tail: Mutex::new(Tail {
                        len,
                        filled: len,
                        handles: 0,
                        extending: false,
                        extender_failed: false,
                        closing: false,
                    }),
                    extended: Condvar::new(),
                });
                open.insert(key.clone(), Arc::downgrade(&t));
                t
            }
        };
        tail.lock().handles += 1;
        drop(open);
        Ok(Box::new(DirStream {
            file,
            tail,
            key,
            name: format!("journal/{name}.log"),
            durability,
            poisoned: None,
        }))
    }

    fn stream_read(&self, name: &str) -> Result<Vec<u8>> {
        let p = self.stream_path(name)?;
        // The length first: what lies below it no longer changes.
        let len = open_len(&self.stream_key(name));
        let object = format!("journal/{name}.log");
        let f = open_regular(&p, &object)?;
        // Sized once (a long segment read into a growing buffer took twice its size): what
        // this process wrote when it has the stream open, else the file (zeros written ahead
        // included), and one byte to find its end.
        let size = match len {
            Some(l) => l,
            None => f
                .metadata()
                .map_err(|e| Error::io("stat", &object, e))?
                .len(),
        };
        let mut v = Vec::with_capacity(usize::try_from(size).unwrap_or(0).saturating_add(1));
        f.take(len.unwrap_or(u64::MAX))
            .read_to_end(&mut v)
            .map_err(|e| Error::io("read", object, e))?;
        Ok(v)
    }

    fn stream_list(&self) -> Result<Vec<ObjectInfo>> {
        let dir = self.root.join("journal");
        let rd = fs::read_dir(&dir).map_err(|e| Error::io("list", dir.display().to_string(), e))?;
        let mut out = Vec::new();
        for ent in rd {
            let ent = ent.map_err(|e| Error::io("list", dir.display().to_string(), e))?;
            let fname = ent.file_name().to_string_lossy().into_owned();
            if let Some(stem) = fname.strip_suffix(".log") {
                let size = match open_len(&self.stream_key(stem))
                    .map_or_else(|| ent.metadata().map(|m| m.len()), Ok)
                {
                    Ok(n) => n,
                    // Deleted (sealed, or pruned) since the directory was read.
                    Err(e) if e.kind() == ErrorKind::NotFound => continue,
                    Err(e) => return Err(Error::io("list", fname.clone(), e)),
                };
                out.push(ObjectInfo {
                    name: stem.to_string(),
                    size,
                });
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    fn stream_delete(&self, name: &str) -> Result<()> {
        let p = self.stream_path(name)?;
        // A stream opened under this name from now on is a new file.
        open_streams().remove(&self.stream_key(name));
        match self.io.remove_file(&p) {
            Ok(()) => self.sync_dir(parent_of(&p)),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io("delete", format!("journal/{name}.log"), e)),
        }
    }

    fn lock(&self, name: &str, holder: &str) -> Result<Box<dyn LockGuard>> {
        let p = self.path(&format!("locks/{name}"))?;
        let obj = format!("locks/{name}");
        let mut f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&p)
            .map_err(|e| Error::io("open", obj.clone(), e))?;
        // A lock can be held for an instant by a child process between fork and exec (it shares
        // the parent's open file): retry briefly before calling it held.
        let mut res = f.try_lock();
        for _ in 0..20 {
            if !matches!(res, Err(fs::TryLockError::WouldBlock)) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
            res = f.try_lock();
        }
        match res {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                let mut who = String::new();
                let _ = f.read_to_string(&mut who);
                let who = if who.trim().is_empty() {
                    "another process".to_string()
                } else {
                    who.trim().to_string()
                };
                return Err(Error::Locked {
                    object: format!("{} ({})", obj, self.url()),
                    holder: who,
                });
            }
            Err(fs::TryLockError::Error(e)) => return Err(Error::io("lock", obj, e)),
        }
        let res = f
            .set_len(0)
            .and_then(|_| FileExt::write_all_at(&f, holder.as_bytes(), 0))
            .and_then(|_| f.flush());
        res.map_err(|e| Error::io("write", obj, e))?;
        Ok(Box::new(DirLock { _file: f }))
    }
}

struct DirLock {
    _file: File,
}
impl LockGuard for DirLock {}

struct DirStream {
    file: Arc<dyn IoFile>,
    tail: Arc<Shared>,
    /// Its key in [`open_streams`].
    key: PathBuf,
    name: String,
    durability: Durability,
    poisoned: Option<String>,
}

/// How far past `filled` the next extension of the zeros reaches: as far again as the file
/// already holds, between [`ZERO_AHEAD_FIRST`] and [`ZERO_AHEAD`].
fn extension(filled: u64) -> u64 {
    filled.clamp(ZERO_AHEAD_FIRST, ZERO_AHEAD)
}

/// Write zeros over `from..to` and sync them. With `stream` (the [`extender`]), the writing
/// stops (returning false) once the stream is closing: its zeros are about to be cut.
fn write_zeros(
    file: &dyn IoFile,
    from: u64,
    to: u64,
    stream: Option<&Shared>,
) -> std::io::Result<bool> {
    let zeros = vec![0u8; WRITEBACK_SLICE.min((to - from) as usize)];
    let mut at = from;
    while at < to {
        if stream.is_some_and(|s| s.lock().closing) {
            return Ok(false);
        }
        let n = (to - at).min(zeros.len() as u64);
        file.write_all_at(zeros.get(..n as usize).unwrap_or_default(), at)?;
        file.writeback(at, n);
        at += n;
    }
    file.sync_data().map(|()| true)
}

/// Make sure `len..end` lies in zeros written ahead, extending them now if not: the fallback
/// for an append that outruns the [`extender`] (or follows its failure). Only a speed-up: on
/// failure (a nearly full disk) the zeros are cut and the append goes on at the end of the
/// file.
fn zero_ahead(file: &dyn IoFile, t: &mut Tail, end: u64) {
    if end <= t.filled {
        return;
    }
    let from = t.filled.max(t.len);
    let to = (end + extension(t.filled)).next_multiple_of(64 << 10);
    let res = write_zeros(file, from, to, None);
    match res {
        Ok(_) => t.filled = to,
        Err(_) => {
            // Back to the stream's own length; a failure here leaves zeros past it, which
            // readers take for the end of the stream.
            let _ = file.set_len(t.len);
            t.filled = t.len;
        }
    }
}

impl Stream for DirStream {
    fn len(&self) -> u64 {
        self.tail.lock().len
    }

    fn append(&mut self, data: &[u8]) -> Result<()> {
        if let Some(why) = &self.poisoned {
            return Err(Error::Invalid(format!(
                "{} refuses appends after an earlier failure ({why}); restart to recover",
                self.name
            )));
        }
        let fsync = self.durability == Durability::Fsync;
        let mut t = self.tail.lock();
        if fsync && t.len + data.len() as u64 > t.filled {
            // Past the zeros: wait for an extension under way, or make one.
            drop(t);
            t = self.tail.settled();
            let end = t.len + data.len() as u64;
            zero_ahead(self.file.as_ref(), &mut t, end);
        }
        if let Err(e) = self.file.write_all_at(data, t.len) {
            // Cut whatever part was written (and the zeros ahead), so no partial record stays.
            if self
                .file
                .set_len(t.len)
                .and_then(|_| self.file.sync_data())
                .is_err()
            {
                self.poisoned = Some(format!("write failed: {e}"));
            }
            t.filled = t.len;
            return Err(Error::io("append", self.name.clone(), e));
        }
        if fsync {
            if let Err(e) = self.file.sync_data() {
                // The kernel may have dropped the pages it could not write while still showing
                // them: cut them (and the zeros ahead) at once, so that a process started after
                // this one dies (lightningd restarted, same boot) never reads the record and
                // builds on it. Not synced: a power loss leaves the old length, past which the
                // record is torn or zeros, which readers take for the end.
                let _ = self.file.set_len(t.len);
                t.filled = t.len;
                self.poisoned = Some(format!("fdatasync failed: {e}"));
                return Err(Error::io("fdatasync", self.name.clone(), e));
            }
        }
        t.len += data.len() as u64;
        t.filled = t.filled.max(t.len);
        // Half the zeros ahead used: the extender writes the next ones, after this append
        // has answered.
        if fsync && !t.extending && !t.extender_failed && t.filled - t.len < extension(t.filled) / 2
        {
            let job = Extension {
                file: Arc::clone(&self.file),
                shared: Arc::clone(&self.tail),
                from: t.filled,
                to: t.filled + extension(t.filled),
            };
            t.extending = true;
            if extender().send(job).is_err() {
                t.extending = false;
                t.extender_failed = true;
            }
        }
        Ok(())
    }

    fn truncate(&mut self, len: u64) -> Result<()> {
        let mut t = self.tail.settled();
        self.file
            .set_len(len)
            .and_then(|_| self.file.sync_all())
            .map_err(|e| Error::io("truncate", self.name.clone(), e))?;
        t.len = len;
        t.filled = len;
        Ok(())
    }
}

/// Zeros to write past a stream's `filled` (see [`extender`]).
struct Extension {
    file: Arc<dyn IoFile>,
    shared: Arc<Shared>,
    from: u64,
    to: u64,
}

/// The thread that extends the zeros of synced streams ahead of their appends, so that no
/// append waits for it (each extension is a write and a sync: up to [`ZERO_AHEAD`] of zeros).
/// An append asks for the next extension once half the zeros ahead are used, and waits for it
/// only if it reaches their end before it is done. Until the extension is synced, `filled`
/// stays where it was: no append writes into zeros not yet durable, and a crash leaves zeros
/// (all or part of them) past the stream, as any crash does.
fn extender() -> &'static std::sync::mpsc::Sender<Extension> {
    static TX: std::sync::OnceLock<std::sync::mpsc::Sender<Extension>> = std::sync::OnceLock::new();
    TX.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel::<Extension>();
        // Without the thread, the receiver is dropped and every send fails: appends then
        // extend the zeros themselves.
        let _ = std::thread::Builder::new()
            .name("zero-ahead".into())
            .spawn(move || {
                for job in rx {
                    let res = write_zeros(job.file.as_ref(), job.from, job.to, Some(&job.shared));
                    let mut t = job.shared.lock();
                    match res {
                        Ok(true) if t.filled == job.from => t.filled = job.to,
                        // Stopped for the close, which cuts the file to the stream.
                        Ok(_) => {}
                        Err(_) => {
                            // Cut what part was written; appends extend from now on.
                            let _ = job.file.set_len(t.filled);
                            t.extender_failed = true;
                        }
                    }
                    t.extending = false;
                    drop(t);
                    job.shared.extended.notify_all();
                }
            });
        tx
    })
}

impl Drop for DirStream {
    /// The last stream of a file closing cuts the zeros written ahead (not synced: a crash
    /// leaves them, which readers take for the end of the stream).
    fn drop(&mut self) {
        let mut open = open_streams();
        let mut t = self.tail.lock();
        t.handles -= 1;
        if t.handles == 0 {
            t.closing = true;
            drop(t);
            let t = self.tail.settled();
            if t.filled > t.len {
                let _ = self.file.set_len(t.len);
            }
            drop(t);
            if open
                .get(&self.key)
                .is_some_and(|w| std::ptr::eq(w.as_ptr(), Arc::as_ptr(&self.tail)))
            {
                open.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod test {
    use super::*;

    /// A filesystem that refuses direct I/O (`EINVAL`, at the open or at a write: some FUSE and
    /// network filesystems, tmpfs before Linux 6.6) takes large packs through the page cache:
    /// read back exactly, no temporary file left. Any other error of a direct write fails the
    /// put, naming the pack, and leaves nothing.
    #[test]
    fn large_packs_on_a_filesystem_without_direct_io() {
        use self::io::{IoFile, Open, OsIo};
        struct NoDirect(i32);
        impl Io for NoDirect {
            fn open(&self, path: &Path, how: Open) -> std::io::Result<Arc<dyn IoFile>> {
                if how == Open::CreateNewDirect {
                    // Created, then refused at its first write.
                    OsIo.open(path, Open::CreateNew)?;
                    return Err(std::io::Error::from_raw_os_error(self.0));
                }
                OsIo.open(path, how)
            }
            fn rename(&self, from: &Path, to: &Path) -> std::io::Result<()> {
                OsIo.rename(from, to)
            }
            fn hard_link(&self, from: &Path, to: &Path) -> std::io::Result<()> {
                OsIo.hard_link(from, to)
            }
            fn remove_file(&self, path: &Path) -> std::io::Result<()> {
                OsIo.remove_file(path)
            }
            fn create_dir_all(&self, path: &Path) -> std::io::Result<()> {
                OsIo.create_dir_all(path)
            }
            fn sync_dir(&self, path: &Path) -> std::io::Result<()> {
                OsIo.sync_dir(path)
            }
        }
        let data: Vec<u8> = (0..(3 << 20) + 5).map(|i| (i * 7) as u8).collect();
        for errno in [libc::EINVAL, libc::EIO] {
            let tmp = tempfile::tempdir().unwrap();
            let root = tmp.path().join("r");
            let b = DirBackend::create_with_io(&root, Arc::new(NoDirect(errno))).unwrap();
            match b.put("packs/big", &data) {
                Ok(()) if errno == libc::EINVAL => {
                    assert!(b.get("packs/big").unwrap() == data);
                }
                Err(e) if errno == libc::EIO => {
                    assert!(e.to_string().contains("packs/big"), "{e}");
                    assert!(matches!(b.get("packs/big"), Err(Error::NotFound { .. })));
                }
                other => panic!("errno {errno}: {other:?}"),
            }
            let left: Vec<_> = std::fs::read_dir(root.join("tmp")).unwrap().collect();
            assert!(left.is_empty(), "errno {errno}: {left:?}");
        }
    }

    /// Packs of [`DIRECT_MIN`] bytes and more are written with `O_DIRECT` (or through the page
    /// cache where the filesystem refuses it): what is read back is exactly what was put,
    /// whatever its length, and no temporary file stays behind.
    #[test]
    fn large_packs_round_trip_exactly() {
        let tmp = tempfile::tempdir().unwrap();
        let b = DirBackend::create(&tmp.path().join("r")).unwrap();
        for len in [DIRECT_MIN, DIRECT_MIN + 1, 3 * DIRECT_MIN + 4095, 5 << 20] {
            let data: Vec<u8> = (0..len).map(|i| (i * 7 + len / 3) as u8).collect();
            let name = format!("packs/{len}");
            b.put(&name, &data).unwrap();
            assert_eq!(b.get(&name).unwrap(), data, "{name}");
            let listed = b.list("packs/").unwrap();
            assert!(listed
                .iter()
                .any(|o| o.name == name && o.size == len as u64));
        }
        assert!(std::fs::read_dir(tmp.path().join("r/tmp"))
            .unwrap()
            .next()
            .is_none());
    }
}
