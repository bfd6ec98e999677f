//! The file-I/O seam of the directory backend: every call that changes what a power loss would
//! leave (writes, truncations, syncs, creations, renames, links, unlinks) goes through [`Io`]
//! and [`IoFile`].
//!
//! [`OsIo`] is the real one: each method is the one system call the backend made before the
//! seam existed (a trait object call around it, no extra system call, no allocation on the
//! append path). [`super::sim::SimIo`] passes the same calls through to the disk but remembers
//! what no sync has covered yet, so a test can cut the power and keep only what a real disk
//! would have kept.
//!
//! Reads (`read`, `read_dir`, `metadata`) do not go through the seam: they see what the process
//! would see (the page cache), which is the same with or without a power loss until the machine
//! stops. Locks (`flock` on `locks/<name>`) do not either: a power loss releases them all, and
//! their files hold only a holder description.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::Arc;

/// How [`Io::open`] opens a file (always for writing).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Open {
    /// Create a new file; fail if it exists (a temporary file).
    CreateNew,
    /// Create a new file for direct I/O (`O_DIRECT`): writes bypass the page cache, so they
    /// must be aligned. `EINVAL` means the filesystem refuses it.
    CreateNewDirect,
    /// Open for reading and writing, creating it if absent, keeping its content (a stream).
    ReadWrite,
}

/// A file open for writing through the seam.
pub trait IoFile: Send + Sync {
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// `fdatasync`: the data written so far (and the length) is durable on return.
    fn sync_data(&self) -> io::Result<()>;
    /// `fsync`.
    fn sync_all(&self) -> io::Result<()>;
    /// The file's length now.
    fn size(&self) -> io::Result<u64>;
    /// Start writing back `offset..offset+len` and wait for it (`sync_file_range`), without a
    /// cache flush: a hint that keeps large writes from queueing; it makes nothing durable.
    fn writeback(&self, offset: u64, len: u64);
}

/// Creating, renaming, linking and unlinking files, and syncing directories.
pub trait Io: Send + Sync {
    fn open(&self, path: &Path, how: Open) -> io::Result<Arc<dyn IoFile>>;
    /// `rename(2)`: atomic, replacing `to`.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// `link(2)`: fails with `AlreadyExists` if `to` exists.
    fn hard_link(&self, from: &Path, to: &Path) -> io::Result<()>;
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    fn create_dir_all(&self, path: &Path) -> io::Result<()>;
    /// `fsync` of a directory: the creations, renames, links and unlinks in it are durable.
    fn sync_dir(&self, path: &Path) -> io::Result<()>;
}

/// The real file system.
#[derive(Clone, Copy, Debug, Default)]
pub struct OsIo;

impl Io for OsIo {
    fn open(&self, path: &Path, how: Open) -> io::Result<Arc<dyn IoFile>> {
        let mut o = OpenOptions::new();
        match how {
            Open::CreateNew => o.write(true).create_new(true),
            Open::CreateNewDirect => o.write(true).create_new(true).custom_flags(libc::O_DIRECT),
            Open::ReadWrite => o.read(true).write(true).create(true).truncate(false),
        };
        Ok(Arc::new(o.open(path)?))
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }
    fn hard_link(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::hard_link(from, to)
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        std::fs::create_dir_all(path)
    }
    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        File::open(path)?.sync_all()
    }
}

impl IoFile for File {
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        FileExt::write_all_at(self, buf, offset)
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        File::set_len(self, len)
    }
    fn sync_data(&self) -> io::Result<()> {
        File::sync_data(self)
    }
    fn sync_all(&self) -> io::Result<()> {
        File::sync_all(self)
    }
    fn size(&self) -> io::Result<u64> {
        Ok(self.metadata()?.len())
    }
    fn writeback(&self, offset: u64, len: u64) {
        use std::os::fd::AsRawFd;
        // SAFETY: a plain system call on a descriptor `self` owns; no memory is passed.
        #[allow(unsafe_code)]
        let _ = unsafe {
            libc::sync_file_range(
                self.as_raw_fd(),
                offset as libc::off64_t,
                len as libc::off64_t,
                libc::SYNC_FILE_RANGE_WAIT_BEFORE
                    | libc::SYNC_FILE_RANGE_WRITE
                    | libc::SYNC_FILE_RANGE_WAIT_AFTER,
            )
        };
    }
}
