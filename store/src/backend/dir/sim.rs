//! A power loss, simulated below the directory backend: [`SimIo`] is an [`Io`] that carries out
//! every call on the real disk and remembers what no sync has covered yet, so that a test can
//! cut the power at any call and then rewrite the directory to what a disk would have kept.
//!
//! The model (docs/format.md, "Assumptions about the medium"):
//! - a file's writes and length changes are durable once an `fsync`/`fdatasync` of that file
//!   returned; before, any prefix of them may have reached the disk, the last one torn (any
//!   subset of its 512-byte sectors);
//! - a creation, rename, link or unlink is durable once an `fsync` of its directory returned;
//!   before, any prefix of a directory's pending changes may have reached the disk (a rename is
//!   an unlink in one directory and a link in the other: either may survive without the other);
//! - a failed sync loses the data it was to write for good (the kernel may drop the dirty pages
//!   and report success to a later sync), while the process still reads it (the page cache).
//!
//! Every mutating call is one numbered *event*. [`SimIo::cut_at`] makes event N fail without
//! effect, with everything after it (the power is off: the process may go on computing, but
//! nothing more reaches the disk); [`SimIo::restore_power`] then rewrites the files the
//! simulation touched to one state a disk could hold after that power loss ([`Survival`]) and
//! starts a new boot: handles of the old one keep failing. Files the simulation never touched
//! are left as they are (they count as durable: written before it started).
//!
//! Calls are serialised under one mutex (the real system call included), so a cut is atomic
//! with respect to every thread. Test code, kept in the library beside `fault` for the
//! integration tests and the benchmark binary; nothing else uses it.

use std::collections::{BTreeSet, HashMap};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use super::io::{Io, IoFile, Open};

/// What survives the power loss of the unsynced state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Survival {
    /// Only what a sync covered: the strictest disk, which finds every missing sync.
    Synced,
    /// For each file and each directory, independently, a random prefix of its unsynced
    /// changes (none, all, or some, the first one left out torn at sector granularity),
    /// chosen from this seed.
    Random(u64),
}

/// What [`SimIo::restore_power`] left out.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Loss {
    /// Writes and length changes that no sync covered and did not survive.
    pub changes_lost: u64,
    /// Writes that survived only in part.
    pub writes_torn: u64,
    /// Creations, renames, links and unlinks that did not survive.
    pub entries_lost: u64,
    /// Writes lost for good by a failed sync.
    pub lost_to_failed_syncs: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Node {
    File(usize),
    Dir,
}

#[derive(Clone, Debug)]
enum Bytes {
    Data(Vec<u8>),
    Zeros(usize),
}

impl Bytes {
    fn of(buf: &[u8]) -> Bytes {
        match buf.iter().all(|&b| b == 0) {
            true => Bytes::Zeros(buf.len()),
            false => Bytes::Data(buf.to_vec()),
        }
    }
    fn len(&self) -> usize {
        match self {
            Bytes::Data(d) => d.len(),
            Bytes::Zeros(n) => *n,
        }
    }
    fn get(&self, i: usize) -> u8 {
        match self {
            Bytes::Data(d) => d.get(i).copied().unwrap_or(0),
            Bytes::Zeros(_) => 0,
        }
    }
}

#[derive(Clone, Debug)]
enum Change {
    Write { offset: u64, bytes: Bytes },
    SetLen(u64),
}

#[derive(Clone, Debug)]
enum Kind {
    /// A change of a file's data.
    Data { ino: usize, change: Change },
    /// A directory entry set (`Some`) or removed (`None`).
    Entry { path: PathBuf, node: Option<Node> },
}

#[derive(Clone, Debug)]
struct Op {
    kind: Kind,
    durable: bool,
    /// Dropped by a failed sync: never durable.
    lost: bool,
}

#[derive(Default)]
struct State {
    /// The boot: handles of an older one fail.
    boot: u64,
    off: bool,
    events: u64,
    cut_at: Option<u64>,
    fail_sync_at: Option<u64>,
    /// Each path the simulation touched: what it is now, and what it was before.
    live: HashMap<PathBuf, Option<Node>>,
    base: HashMap<PathBuf, Option<Node>>,
    /// Each file's content when the simulation first saw it (empty when it created it).
    inodes: Vec<Vec<u8>>,
    ops: Vec<Op>,
    /// The last events, for failure reports.
    log: std::collections::VecDeque<String>,
}

const LOG_LINES: usize = 64;

fn power_off() -> io::Error {
    io::Error::other("simulated power loss")
}

impl State {
    /// Count an event; fail it if the power is off or goes off now.
    fn event(&mut self, boot: u64, what: impl FnOnce() -> String) -> io::Result<u64> {
        if self.off || boot != self.boot {
            return Err(power_off());
        }
        self.events += 1;
        let n = self.events;
        if self.cut_at == Some(n) {
            self.off = true;
            self.note(format!("{n} power cut before: {}", what()));
            return Err(power_off());
        }
        self.note(format!("{n} {}", what()));
        Ok(n)
    }

    fn note(&mut self, line: String) {
        if self.log.len() == LOG_LINES {
            self.log.pop_front();
        }
        self.log.push_back(line);
    }

    /// What `path` is now, reading the disk the first time.
    fn node(&mut self, path: &Path) -> Option<Node> {
        if let Some(n) = self.live.get(path) {
            return *n;
        }
        let n = match std::fs::symlink_metadata(path) {
            Ok(m) if m.is_dir() => Some(Node::Dir),
            Ok(_) => {
                let content = std::fs::read(path).unwrap_or_default();
                self.inodes.push(content);
                Some(Node::File(self.inodes.len() - 1))
            }
            Err(_) => None,
        };
        self.base.insert(path.to_path_buf(), n);
        self.live.insert(path.to_path_buf(), n);
        n
    }

    fn set_entry(&mut self, path: &Path, node: Option<Node>) {
        self.node(path);
        self.live.insert(path.to_path_buf(), node);
        self.ops.push(Op {
            kind: Kind::Entry {
                path: path.to_path_buf(),
                node,
            },
            durable: false,
            lost: false,
        });
    }

    fn change(&mut self, ino: usize, change: Change) {
        self.ops.push(Op {
            kind: Kind::Data { ino, change },
            durable: false,
            lost: false,
        });
    }

    /// A file sync returned: its changes so far are durable. `failed`: they are lost instead.
    fn synced_file(&mut self, ino: usize, failed: bool) {
        for op in self.ops.iter_mut() {
            if matches!(op.kind, Kind::Data { ino: i, .. } if i == ino) && !op.durable {
                match failed {
                    false if !op.lost => op.durable = true,
                    true => op.lost = true,
                    false => {}
                }
            }
        }
    }

    fn synced_dir(&mut self, dir: &Path) {
        for op in self.ops.iter_mut() {
            if let Kind::Entry { path, .. } = &op.kind {
                if path.parent() == Some(dir) {
                    op.durable = true;
                }
            }
        }
    }
}

/// The simulating [`Io`]. Clone it to keep a handle for the test.
#[derive(Clone, Default)]
pub struct SimIo {
    state: Arc<Mutex<State>>,
}

impl std::fmt::Debug for SimIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.lock();
        write!(f, "SimIo(boot {}, {} events)", s.boot, s.events)
    }
}

impl SimIo {
    pub fn new() -> SimIo {
        SimIo::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Events so far in this boot.
    pub fn events(&self) -> u64 {
        self.lock().events
    }

    /// The power fails at event `n` of this boot: it and everything after fail without effect.
    pub fn cut_at(&self, n: u64) {
        self.lock().cut_at = Some(n);
    }

    /// The power fails now.
    pub fn cut_now(&self) {
        let mut s = self.lock();
        if !s.off {
            s.off = true;
            let n = s.events;
            s.note(format!("{n} power cut"));
        }
    }

    /// Whether the power is off (a cut happened and [`SimIo::restore_power`] was not called).
    pub fn is_off(&self) -> bool {
        self.lock().off
    }

    /// Event `n`, if it is a file sync, fails with EIO and loses the data it was to write (as
    /// a kernel that drops the dirty pages after a failed writeback); the process still reads
    /// them. Other events are not affected.
    pub fn fail_sync_at(&self, n: u64) {
        self.lock().fail_sync_at = Some(n);
    }

    /// The last events (numbered), for a failure report.
    pub fn recent(&self) -> Vec<String> {
        self.lock().log.iter().cloned().collect()
    }

    /// Cut the power if it is on, rewrite every file and directory the simulation touched to
    /// what survives, and start the next boot (event numbers start again at 1).
    pub fn restore_power(&self, survival: Survival) -> io::Result<Loss> {
        let mut s = self.lock();
        s.off = true;
        let (entries, contents, loss) = image(&s, survival);
        write_image(&entries, &contents)?;
        let boot = s.boot + 1;
        *s = State {
            boot,
            ..State::default()
        };
        Ok(loss)
    }

    fn boot(&self) -> u64 {
        self.lock().boot
    }
}

/// splitmix64, for the choices of [`Survival::Random`].
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// How many of `n` pending changes survive: none, all, or any number, a third each.
    fn prefix(&mut self, n: usize) -> usize {
        match self.next() % 3 {
            0 => 0,
            1 => n,
            _ => (self.next() % (n as u64 + 1)) as usize,
        }
    }
}

const SECTOR: u64 = 512;

/// Apply one change to a file's content; `keep` (for a torn write) says which sectors landed.
fn apply(content: &mut Vec<u8>, change: &Change, keep: Option<&mut Rng>) {
    match change {
        Change::SetLen(len) => content.resize(*len as usize, 0),
        Change::Write { offset, bytes } => {
            let end = *offset as usize + bytes.len();
            if content.len() < end {
                content.resize(end, 0);
            }
            let mut rng = keep;
            let mut landed = true;
            for i in 0..bytes.len() {
                let at = *offset as usize + i;
                if let Some(r) = rng.as_deref_mut() {
                    if i == 0 || (at as u64).is_multiple_of(SECTOR) {
                        landed = r.next() % 2 == 0;
                    }
                }
                if landed {
                    if let Some(b) = content.get_mut(at) {
                        *b = bytes.get(i);
                    }
                }
            }
        }
    }
}

type Image = (
    HashMap<PathBuf, Option<Node>>,
    HashMap<usize, Vec<u8>>,
    Loss,
);

/// The state a disk may hold after a power loss now.
fn image(s: &State, survival: Survival) -> Image {
    let mut rng = match survival {
        Survival::Synced => None,
        Survival::Random(seed) => Some(Rng(seed)),
    };
    let mut loss = Loss::default();
    // Group the surviving candidates by file and by directory, in order.
    let mut by_file: HashMap<usize, Vec<&Op>> = HashMap::new();
    let mut by_dir: HashMap<PathBuf, Vec<&Op>> = HashMap::new();
    for op in &s.ops {
        match &op.kind {
            Kind::Data { ino, .. } => by_file.entry(*ino).or_default().push(op),
            Kind::Entry { path, .. } => by_dir
                .entry(path.parent().map(Path::to_path_buf).unwrap_or_default())
                .or_default()
                .push(op),
        }
    }

    // Files without changes keep what they held.
    let mut contents: HashMap<usize, Vec<u8>> = s.inodes.iter().cloned().enumerate().collect();
    let mut files: Vec<_> = by_file.into_iter().collect();
    files.sort_by_key(|f| f.0);
    for (ino, ops) in files {
        let mut content = s.inodes.get(ino).cloned().unwrap_or_default();
        let pending = ops.iter().filter(|o| !o.durable && !o.lost).count();
        let keep = rng.as_mut().map_or(0, |r| r.prefix(pending));
        let mut seen = 0;
        for op in ops {
            let Kind::Data { change, .. } = &op.kind else {
                continue;
            };
            if op.lost {
                loss.lost_to_failed_syncs += 1;
            } else if op.durable {
                apply(&mut content, change, None);
            } else {
                seen += 1;
                if seen <= keep {
                    apply(&mut content, change, None);
                } else if seen == keep + 1 && matches!(change, Change::Write { .. }) {
                    if let Some(r) = rng.as_mut() {
                        apply(&mut content, change, Some(r));
                        loss.writes_torn += 1;
                        continue;
                    }
                    loss.changes_lost += 1;
                } else {
                    loss.changes_lost += 1;
                }
            }
        }
        contents.insert(ino, content);
    }

    let mut entries = s.base.clone();
    let mut dirs: Vec<_> = by_dir.into_iter().collect();
    dirs.sort_by(|a, b| a.0.cmp(&b.0));
    for (_, ops) in dirs {
        let pending = ops.iter().filter(|o| !o.durable).count();
        let keep = rng.as_mut().map_or(0, |r| r.prefix(pending));
        let mut seen = 0;
        for op in ops {
            let Kind::Entry { path, node } = &op.kind else {
                continue;
            };
            let survives = op.durable || {
                seen += 1;
                seen <= keep
            };
            if survives {
                entries.insert(path.clone(), *node);
            } else {
                loss.entries_lost += 1;
            }
        }
    }
    (entries, contents, loss)
}

/// Rewrite the disk: every touched path as the image has it (a file as a new file, so that no
/// two names share one after the boot).
fn write_image(
    entries: &HashMap<PathBuf, Option<Node>>,
    contents: &HashMap<usize, Vec<u8>>,
) -> io::Result<()> {
    // A path exists only if every touched ancestor is a directory in the image.
    let reachable = |p: &Path| {
        p.ancestors()
            .skip(1)
            .all(|a| entries.get(a).is_none_or(|n| *n == Some(Node::Dir)))
    };
    let paths: BTreeSet<&PathBuf> = entries.keys().collect();
    // Deepest first: remove what does not survive.
    for p in paths.iter().rev() {
        let keep = reachable(p) && entries.get(*p).copied().flatten().is_some();
        let is_dir = std::fs::symlink_metadata(p).map(|m| m.is_dir());
        match is_dir {
            Ok(true) if !keep || !matches!(entries.get(*p), Some(Some(Node::Dir))) => {
                std::fs::remove_dir_all(p)?
            }
            Ok(false) => std::fs::remove_file(p)?,
            _ => {}
        }
    }
    // Shallowest first: directories, then files.
    for p in &paths {
        if !reachable(p) {
            continue;
        }
        match entries.get(*p).copied().flatten() {
            Some(Node::Dir) => std::fs::create_dir_all(p)?,
            Some(Node::File(ino)) => {
                let empty = Vec::new();
                std::fs::write(p, contents.get(&ino).unwrap_or(&empty))?;
            }
            None => {}
        }
    }
    Ok(())
}

impl Io for SimIo {
    fn open(&self, path: &Path, how: Open) -> io::Result<Arc<dyn IoFile>> {
        let mut s = self.lock();
        let boot = s.boot;
        let ino = match s.node(path) {
            Some(Node::File(ino)) if how == Open::ReadWrite => {
                if s.off {
                    return Err(power_off());
                }
                ino
            }
            Some(_) => return Err(io::Error::from(io::ErrorKind::AlreadyExists)),
            None => {
                s.event(boot, || format!("create {}", path.display()))?;
                s.inodes.push(Vec::new());
                let ino = s.inodes.len() - 1;
                s.set_entry(path, Some(Node::File(ino)));
                ino
            }
        };
        // The simulation does not need direct I/O (and it must not fail where it would).
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        Ok(Arc::new(SimFile {
            sim: self.clone(),
            boot,
            ino,
            file,
            path: path.to_path_buf(),
        }))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut s = self.lock();
        let boot = s.boot;
        s.event(boot, || {
            format!("rename {} -> {}", from.display(), to.display())
        })?;
        let node = s.node(from);
        s.node(to);
        std::fs::rename(from, to)?;
        s.set_entry(from, None);
        s.set_entry(to, node);
        Ok(())
    }

    fn hard_link(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut s = self.lock();
        let boot = s.boot;
        s.event(boot, || {
            format!("link {} -> {}", from.display(), to.display())
        })?;
        let node = s.node(from);
        s.node(to);
        std::fs::hard_link(from, to)?;
        s.set_entry(to, node);
        Ok(())
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let mut s = self.lock();
        let boot = s.boot;
        s.event(boot, || format!("unlink {}", path.display()))?;
        s.node(path);
        std::fs::remove_file(path)?;
        s.set_entry(path, None);
        Ok(())
    }

    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        let mut s = self.lock();
        let boot = s.boot;
        let mut missing: Vec<&Path> = path
            .ancestors()
            .take_while(|a| !a.as_os_str().is_empty() && s.node(a).is_none())
            .collect();
        missing.reverse();
        for dir in missing {
            s.event(boot, || format!("mkdir {}", dir.display()))?;
            std::fs::create_dir(dir)?;
            s.set_entry(dir, Some(Node::Dir));
        }
        Ok(())
    }

    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        let mut s = self.lock();
        let boot = s.boot;
        s.event(boot, || format!("fsync directory {}", path.display()))?;
        File::open(path)?.sync_all()?;
        s.synced_dir(path);
        Ok(())
    }
}

/// A file open through [`SimIo`].
struct SimFile {
    sim: SimIo,
    boot: u64,
    ino: usize,
    file: File,
    path: PathBuf,
}

impl SimFile {
    fn sync(&self, what: &str, real: impl FnOnce(&File) -> io::Result<()>) -> io::Result<()> {
        let mut s = self.sim.lock();
        let n = s.event(self.boot, || format!("{what} {}", self.path.display()))?;
        if s.fail_sync_at == Some(n) {
            s.synced_file(self.ino, true);
            s.note(format!(
                "{n} {what} failed (injected EIO): unsynced data lost"
            ));
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        real(&self.file)?;
        s.synced_file(self.ino, false);
        Ok(())
    }
}

impl IoFile for SimFile {
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let mut s = self.sim.lock();
        s.event(self.boot, || {
            format!("write {} +{} at {offset}", self.path.display(), buf.len())
        })?;
        FileExt::write_all_at(&self.file, buf, offset)?;
        s.change(
            self.ino,
            Change::Write {
                offset,
                bytes: Bytes::of(buf),
            },
        );
        Ok(())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut s = self.sim.lock();
        s.event(self.boot, || {
            format!("set length of {} to {len}", self.path.display())
        })?;
        self.file.set_len(len)?;
        s.change(self.ino, Change::SetLen(len));
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        self.sync("fdatasync", File::sync_data)
    }

    fn sync_all(&self) -> io::Result<()> {
        self.sync("fsync", File::sync_all)
    }

    fn size(&self) -> io::Result<u64> {
        if self.boot != self.sim.boot() {
            return Err(power_off());
        }
        Ok(self.file.metadata()?.len())
    }

    fn writeback(&self, _offset: u64, _len: u64) {}
}

#[cfg(test)]
mod test;
