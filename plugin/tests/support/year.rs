//! A year of a busy node, simulated (issue 18): the real `cln-backup` plugin under the lightningd
//! emulator, fed months of `db_write` batches shaped from a real node's traces, with simulated
//! time, restarted now and then; after each session the repository is measured beside a fresh
//! backup of the same state.
//!
//! Shared by `benches/src/bin/year.rs` (the full year, for benches/REPORT.md) and the bounded run
//! in `cargo test -p cln-backup --test year`.
//!
//! **The workload.** Node D's three sessions (`testdata/node-d-trace-s*.jsonl.zst`: lightningd
//! v26.06.6 on regtest, channels to two peers, ~650 payments both ways, a crash and a re-sent
//! batch, a unilateral close) are sent as recorded. Then the same traffic again, cycle after
//! cycle: every batch of those sessions whose statements are steady channel traffic (HTLCs added
//! and resolved, commitment updates, fee and blockheight states, penalty bases, anchors,
//! shachains, payments, invoices, channel moves; not migrations, blocks, on-chain events or new
//! channels: 13,710 of 14,305 batches), in their order, rewritten so that each cycle is new
//! data a real node could have written: the data_version bump follows on, the rows a cycle
//! inserts get keys of their own (HTLC ids and a channel's HTLC numbers, invoice, payment and
//! move ids, pay indexes and commitment numbers shifted by a stride per cycle, the statements that name them likewise), every 32-byte
//! blob (hashes, preimages, txids, keys) gets the cycle in its first four bytes, and invoice
//! labels a suffix. Sizes, statement mix and update patterns are the node's; the database grows
//! as a node's does, by the HTLCs, payments, invoices and moves it keeps.
//!
//! **Time.** Batch `i` of `n` happens at `start + i × span / n`. The plugin reads the time from
//! the file named by `CLN_BACKUP_SIMULATED_CLOCK_FILE` (see `store::clock`), which this engine
//! writes before each batch, so snapshots are dated, and retention decides, by simulated time.
//!
//! **Measured after each session** (the plugin stopped, nothing running): the repository's bytes
//! by kind and object counts; a fresh backup of the same state (the newest state restored, then
//! stored as one snapshot in a new repository) plus the journal the retention keeps, and their
//! ratio to the repository; the time and peak memory of that restore (`backup-cli restore`, when
//! given); the plugin's peak memory (VmHWM), its open time (the first hook of the session, which
//! opens the backup) and the prunes it logged; on S3, the HTTP requests of one compaction and one
//! prune run in-process at that point, with the plugin's own compaction base.

use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use emulator::{DbWrite, Emulator};
use serde_json::{json, Value};
use store::{BackupUrl, ConfigBody, MasterKey, Repository};

/// 2026-01-01 00:00 UTC.
pub const START_UNIX: u64 = 1_767_225_600;

#[derive(Clone, Debug)]
pub struct YearOptions {
    pub plugin: PathBuf,
    /// `backup-cli`, to time restores and read their peak memory (in-process without it).
    pub cli: Option<PathBuf>,
    /// Node D's traces s1, s2, s3.
    pub traces: [PathBuf; 3],
    /// Where the node, the repository (when local) and scratch files live.
    pub dir: PathBuf,
    /// The repository: `None` for a local directory under `dir`, or an `s3://` URL.
    pub url: Option<String>,
    /// Batches in all, the node's own sessions included.
    pub batches: u64,
    /// Simulated days the batches span.
    pub days: f64,
    /// Plugin sessions after the node's own three (a restart between each two).
    pub sessions: u32,
    /// Options passed in `init` (none: the plugin's defaults).
    pub init_options: Vec<(String, Value)>,
    pub encrypted: bool,
    /// Progress on stderr.
    pub verbose: bool,
}

/// One measurement, after a session.
#[derive(Clone, Debug, Default)]
pub struct Point {
    pub session: u32,
    pub day: f64,
    pub batches: u64,
    pub data_version: u32,
    /// The newest state's database file.
    pub db_bytes: u64,
    /// Everything the repository holds, and by kind.
    pub repo_bytes: u64,
    pub pack_bytes: u64,
    pub index_bytes: u64,
    pub manifest_bytes: u64,
    pub journal_bytes: u64,
    pub packs: u64,
    pub index_objects: u64,
    pub manifests: u64,
    pub journal_segments: u64,
    /// A fresh backup of the newest state (packs, index, manifest).
    pub fresh_bytes: u64,
    /// repo_bytes / (fresh_bytes + journal_bytes).
    pub ratio: f64,
    /// What the kept snapshots cost (packs, indexes, manifests) / fresh_bytes.
    pub snapshot_ratio: f64,
    /// Packs per MiB stored in packs.
    pub packs_per_mib: f64,
    pub oldest_restorable_version: Option<u32>,
    pub oldest_restorable_day: Option<f64>,
    pub restore_ms: u64,
    pub restore_peak_kib: Option<u64>,
    /// The session's first hook (opening the backup), and the plugin's peak memory.
    pub open_ms: f64,
    pub plugin_peak_kib: u64,
    /// Automatic compactions in the session, and the longest prune after one.
    pub compactions: u64,
    pub prune_ms_max: u64,
    pub compaction_ms_max: u64,
    /// On S3: requests of one compaction and one prune at this point.
    pub compaction_requests: Option<u64>,
    pub prune_requests: Option<u64>,
}

impl Point {
    pub fn json(&self) -> Value {
        json!({
            "session": self.session, "day": self.day, "batches": self.batches,
            "data_version": self.data_version, "db_bytes": self.db_bytes,
            "repo_bytes": self.repo_bytes, "pack_bytes": self.pack_bytes,
            "index_bytes": self.index_bytes, "manifest_bytes": self.manifest_bytes,
            "journal_bytes": self.journal_bytes, "packs": self.packs,
            "index_objects": self.index_objects, "manifests": self.manifests,
            "journal_segments": self.journal_segments, "fresh_bytes": self.fresh_bytes,
            "ratio": self.ratio, "snapshot_ratio": self.snapshot_ratio,
            "packs_per_mib": self.packs_per_mib,
            "oldest_restorable_version": self.oldest_restorable_version,
            "oldest_restorable_day": self.oldest_restorable_day,
            "restore_ms": self.restore_ms, "restore_peak_kib": self.restore_peak_kib,
            "open_ms": self.open_ms, "plugin_peak_kib": self.plugin_peak_kib,
            "compactions": self.compactions, "prune_ms_max": self.prune_ms_max,
            "compaction_ms_max": self.compaction_ms_max,
            "compaction_requests": self.compaction_requests,
            "prune_requests": self.prune_requests,
        })
    }
}

/// The workload (module doc).
pub struct Workload {
    pub sessions: Vec<Vec<DbWrite>>,
    template: Vec<Vec<String>>,
    strides: Strides,
    /// The node's last data_version: generated batches follow it.
    last_version: u32,
}

#[derive(Clone, Copy, Debug, Default)]
struct Strides {
    htlc: u64,
    /// A channel's own HTLC number (unique with the channel and direction).
    channel_htlc: u64,
    invoice: u64,
    pay_index: u64,
    payment: u64,
    moves: u64,
    commit: u64,
}

const STEADY_UPDATE: &[&str] = &[
    "vars",
    "channels",
    "channel_configs",
    "channel_htlcs",
    "shachains",
    "shachain_known",
    "payments",
    "invoices",
    "datastore",
];
const STEADY_INSERT: &[&str] = &[
    "channel_feerates",
    "channel_blockheights",
    "penalty_bases",
    "local_anchors",
    "htlc_sigs",
    "channel_htlcs",
    "channel_moves",
    "payments",
    "invoices",
];
const STEADY_DELETE: &[&str] = &[
    "channel_feerates",
    "channel_blockheights",
    "penalty_bases",
    "local_anchors",
    "htlc_sigs",
];

/// (verb, table) of a statement.
fn verb_table(s: &str) -> Option<(&'static str, &str)> {
    let s = s.trim_start();
    for verb in ["INSERT INTO", "UPDATE", "DELETE FROM"] {
        if let Some(rest) = s.strip_prefix(verb) {
            let t = rest.trim_start();
            let end = t
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(t.len());
            return Some((verb, &t[..end]));
        }
    }
    None
}

fn steady(s: &str) -> bool {
    match verb_table(s) {
        Some(("UPDATE", t)) => STEADY_UPDATE.contains(&t),
        Some(("INSERT INTO", t)) => STEADY_INSERT.contains(&t),
        Some(("DELETE FROM", t)) => STEADY_DELETE.contains(&t),
        _ => false,
    }
}

/// The byte span of a value in a statement.
type Span = (usize, usize);

/// The values of an `INSERT ... VALUES (...)`: the column names (empty without a list) and the
/// byte span of each value.
fn insert_values(s: &str) -> Option<(Vec<String>, Vec<Span>)> {
    let v = s.find("VALUES")?;
    let cols: Vec<String> = match s[..v].find('(') {
        Some(open) => {
            let close = s[..v].rfind(')')?;
            s[open + 1..close]
                .split(',')
                .map(|c| c.trim().to_string())
                .collect()
        }
        None => Vec::new(),
    };
    let open = v + s[v..].find('(')?;
    let b = s.as_bytes();
    let mut spans = Vec::new();
    let (mut i, mut start, mut quoted, mut depth) = (open + 1, open + 1, false, 0);
    while i < b.len() {
        let c = b[i];
        if quoted {
            if c == b'\'' {
                if b.get(i + 1) == Some(&b'\'') {
                    i += 1;
                } else {
                    quoted = false;
                }
            }
        } else if c == b'\'' {
            quoted = true;
        } else if c == b'(' {
            depth += 1;
        } else if c == b')' && depth > 0 {
            depth -= 1;
        } else if c == b',' || c == b')' {
            spans.push((start, i));
            start = i + 1;
            if c == b')' {
                return Some((cols, spans));
            }
        }
        i += 1;
    }
    None
}

fn int_at(s: &str, span: (usize, usize)) -> Option<u64> {
    s[span.0..span.1].trim().parse().ok()
}

/// The value of `col` (or at position `pos` without a column list) in an INSERT.
fn insert_value(s: &str, col: &str, pos: usize) -> Option<(usize, usize)> {
    let (cols, spans) = insert_values(s)?;
    let i = if cols.is_empty() {
        pos
    } else {
        cols.iter().position(|c| c == col)?
    };
    spans.get(i).copied()
}

/// The number after `key` (e.g. `WHERE id=`), tolerating spaces around `=`.
fn number_after(s: &str, key: &str) -> Option<(usize, usize)> {
    let at = s.rfind(key)? + key.len();
    let rest = &s[at..];
    let rest_t = rest.trim_start_matches([' ', '=', '<']);
    let start = at + (rest.len() - rest_t.len());
    let len = rest_t
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest_t.len());
    (len > 0).then_some((start, start + len))
}

/// Replace the integer at `span` by itself plus `add`.
fn shift(s: &mut String, span: Option<(usize, usize)>, add: u64) {
    if let Some(sp) = span {
        if let Some(v) = int_at(s, sp) {
            s.replace_range(sp.0..sp.1, &(v + add).to_string());
        }
    }
}

/// The numbers a statement keys rows by, for the strides: (kind, value).
fn keys(s: &str) -> Vec<(&'static str, u64)> {
    let mut out = Vec::new();
    let mut push = |k, span: Option<(usize, usize)>| {
        if let Some(v) = span.and_then(|sp| int_at(s, sp)) {
            out.push((k, v));
        }
    };
    match verb_table(s) {
        Some(("INSERT INTO", "channel_htlcs")) => {
            push("htlc", insert_value(s, "id", 0));
            push("channel_htlc", insert_value(s, "channel_htlc_id", 2));
        }
        Some(("INSERT INTO", "invoices")) => push("invoice", insert_value(s, "id", 0)),
        Some(("INSERT INTO", "payments")) => push("payment", insert_value(s, "id", 0)),
        Some(("INSERT INTO", "channel_moves")) => push("moves", insert_value(s, "id", 0)),
        Some(("INSERT INTO", "penalty_bases")) => push("commit", insert_value(s, "commitnum", 1)),
        Some(("INSERT INTO", "local_anchors")) => push("commit", insert_value(s, "", 1)),
        Some(("UPDATE", "channel_htlcs")) => push("htlc", number_after(s, "WHERE id")),
        Some(("UPDATE", "invoices")) => {
            push("invoice", number_after(s, "WHERE id"));
            push("pay_index", number_after(s, "pay_index"));
        }
        Some(("DELETE FROM", "penalty_bases")) => push("commit", number_after(s, "commitnum")),
        Some(("DELETE FROM", "local_anchors")) => {
            push("commit", number_after(s, "commitment_index"))
        }
        _ => {}
    }
    out
}

/// Every `x'<64 hex digits>'` with its first 8 digits replaced by `tag`.
fn tag_blobs(s: &str, tag: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find("x'") {
        let (head, tail) = rest.split_at(i + 2);
        out.push_str(head);
        let hex_len = tail
            .find(|c: char| !c.is_ascii_hexdigit())
            .unwrap_or(tail.len());
        if hex_len == 64 && tail[hex_len..].starts_with('\'') {
            out.push_str(tag);
            out.push_str(&tail[8..64]);
            rest = &tail[64..];
        } else {
            rest = tail;
        }
    }
    out.push_str(rest);
    out
}

impl Workload {
    pub fn load(traces: &[PathBuf; 3]) -> Result<Workload> {
        let sessions: Vec<Vec<DbWrite>> = traces
            .iter()
            .map(|t| emulator::load_trace(t))
            .collect::<Result<_>>()?;
        // The effective history: a batch re-sent by the next session replaces the recorded one.
        let mut effective: Vec<&DbWrite> = Vec::new();
        for s in &sessions {
            for b in s {
                while effective
                    .last()
                    .is_some_and(|l| l.data_version >= b.data_version)
                {
                    effective.pop();
                }
                effective.push(b);
            }
        }
        let last_version = effective.last().map(|b| b.data_version).unwrap_or(0);
        let template: Vec<Vec<String>> = effective
            .iter()
            .filter(|b| !b.writes.is_empty() && b.writes.iter().all(|w| steady(w)))
            .map(|b| b.writes.clone())
            .collect();
        let mut strides = Strides::default();
        for w in template.iter().flatten() {
            for (k, v) in keys(w) {
                let s = match k {
                    "htlc" => &mut strides.htlc,
                    "channel_htlc" => &mut strides.channel_htlc,
                    "invoice" => &mut strides.invoice,
                    "pay_index" => &mut strides.pay_index,
                    "payment" => &mut strides.payment,
                    "moves" => &mut strides.moves,
                    _ => &mut strides.commit,
                };
                *s = (*s).max(v + 1);
            }
        }
        if template.is_empty() {
            bail!("no steady batches in the traces");
        }
        Ok(Workload {
            sessions,
            template,
            strides,
            last_version,
        })
    }

    /// Batches in the node's own sessions.
    pub fn base_len(&self) -> u64 {
        self.sessions.iter().map(|s| s.len() as u64).sum()
    }

    pub fn template_len(&self) -> usize {
        self.template.len()
    }

    /// Generated batch `k` (0-based, after the node's own sessions).
    pub fn generated(&self, k: u64) -> DbWrite {
        let n = self.template.len() as u64;
        let cycle = 1 + k / n;
        let version = self.last_version + 1 + k as u32;
        let st = self.strides;
        let tag = format!("{:08x}", cycle as u32);
        let writes = self.template[(k % n) as usize]
            .iter()
            .map(|w| {
                let mut s = tag_blobs(w, &tag);
                match verb_table(w) {
                    Some(("INSERT INTO", "channel_htlcs")) => {
                        let sp = insert_value(&s, "id", 0);
                        shift(&mut s, sp, cycle * st.htlc);
                        let sp = insert_value(&s, "channel_htlc_id", 2);
                        shift(&mut s, sp, cycle * st.channel_htlc);
                    }
                    Some(("INSERT INTO", "invoices")) => {
                        let sp = insert_value(&s, "id", 0);
                        shift(&mut s, sp, cycle * st.invoice);
                        if let Some((a, b)) = insert_value(&s, "label", 5) {
                            let v = s[a..b].trim_end();
                            if v.ends_with('\'') {
                                let at = a + v.len() - 1;
                                s.insert_str(at, &format!("-c{cycle}"));
                            }
                        }
                    }
                    Some(("INSERT INTO", "payments")) => {
                        let sp = insert_value(&s, "id", 0);
                        shift(&mut s, sp, cycle * st.payment)
                    }
                    Some(("INSERT INTO", "channel_moves")) => {
                        let sp = insert_value(&s, "id", 0);
                        shift(&mut s, sp, cycle * st.moves)
                    }
                    Some(("INSERT INTO", "penalty_bases")) => {
                        let sp = insert_value(&s, "commitnum", 1);
                        shift(&mut s, sp, cycle * st.commit)
                    }
                    Some(("INSERT INTO", "local_anchors")) => {
                        let sp = insert_value(&s, "", 1);
                        shift(&mut s, sp, cycle * st.commit)
                    }
                    Some(("UPDATE", "channel_htlcs")) => {
                        let sp = number_after(&s, "WHERE id");
                        shift(&mut s, sp, cycle * st.htlc)
                    }
                    Some(("UPDATE", "invoices")) => {
                        let sp = number_after(&s, "WHERE id");
                        shift(&mut s, sp, cycle * st.invoice);
                        let sp = number_after(&s, "pay_index");
                        shift(&mut s, sp, cycle * st.pay_index);
                    }
                    Some(("DELETE FROM", "penalty_bases")) => {
                        let sp = number_after(&s, "commitnum");
                        shift(&mut s, sp, cycle * st.commit)
                    }
                    Some(("DELETE FROM", "local_anchors")) => {
                        let sp = number_after(&s, "commitment_index");
                        shift(&mut s, sp, cycle * st.commit)
                    }
                    Some(("UPDATE", "vars")) if w.contains("name = 'data_version'") => {
                        let sp = number_after(&s, "AND intval");
                        if let Some(sp) = sp {
                            s.replace_range(sp.0..sp.1, &(version - 1).to_string());
                        }
                    }
                    _ => {}
                }
                s
            })
            .collect();
        DbWrite {
            data_version: version,
            writes,
        }
    }
}

/// The simulated clock: a file the plugin reads (store::clock).
struct Clock {
    file: std::fs::File,
    path: PathBuf,
    start_ms: u64,
    ms_per_batch: f64,
}

impl Clock {
    fn new(path: &Path, total: u64, days: f64) -> Result<Clock> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(path)?;
        let c = Clock {
            file,
            path: path.to_path_buf(),
            start_ms: START_UNIX * 1000,
            ms_per_batch: days * 86_400_000.0 / total.max(1) as f64,
        };
        c.set(0)?;
        Ok(c)
    }
    fn ms(&self, batch: u64) -> u64 {
        self.start_ms + (batch as f64 * self.ms_per_batch) as u64
    }
    /// The time of batch `batch`; a fixed-width text, so a shorter one never leaves digits.
    fn set(&self, batch: u64) -> Result<()> {
        let text = format!("{:020}\n", self.ms(batch));
        self.file.write_all_at(text.as_bytes(), 0)?;
        Ok(())
    }
    fn day(&self, batch: u64) -> f64 {
        (self.ms(batch) - self.start_ms) as f64 / 86_400_000.0
    }
}

/// Peak resident memory of a live process, KiB (VmHWM).
fn peak_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// The number in `line` just before `suffix` (e.g. " ms" at its end).
fn number_before(line: &str, suffix: &str) -> Option<u64> {
    let head = line.strip_suffix(suffix)?;
    let start = head
        .rfind(|c: char| !c.is_ascii_digit())
        .map_or(0, |i| i + 1);
    head[start..].parse().ok()
}

struct Sizes {
    pack: (u64, u64),
    index: (u64, u64),
    manifest: (u64, u64),
    journal: (u64, u64),
    config: u64,
}

fn sizes(repo: &Repository) -> Result<Sizes> {
    let list = |p: &str| -> Result<(u64, u64)> {
        let l = repo.backend().list(p)?;
        Ok((l.len() as u64, l.iter().map(|o| o.size).sum()))
    };
    // Every journal object stored: sealed segments and runs (with any a crash left beside a
    // run), and the open streams.
    let sealed: Vec<_> = repo
        .backend()
        .list("journal/")?
        .into_iter()
        .filter(|o| store::journal::parse_sealed_name(&o.name).is_some())
        .collect();
    let streams = repo.backend().stream_list()?;
    let journal = (
        (sealed.len() + streams.len()) as u64,
        sealed.iter().chain(&streams).map(|o| o.size).sum(),
    );
    Ok(Sizes {
        pack: list("packs/")?,
        index: list("index/")?,
        manifest: list("snapshots/")?,
        journal,
        config: list("config")?.1,
    })
}

/// A node: its network directory, its repository and key.
struct Node {
    net: PathBuf,
    url: BackupUrl,
    key: Option<MasterKey>,
}

impl Node {
    fn create(o: &YearOptions) -> Result<Node> {
        let net = o.dir.join("regtest");
        std::fs::create_dir_all(&net)?;
        let url_text = match &o.url {
            Some(u) => u.clone(),
            None => format!("file://{}", o.dir.join("repo").display()),
        };
        let url = BackupUrl::parse(&url_text)?;
        let key = MasterKey::generate();
        Repository::init(&url, Some(&key), o.encrypted, ConfigBody::default())
            .with_context(|| format!("creating {url_text}"))?;
        std::fs::write(
            net.join("backup.lock"),
            json!({ "backend_url": url_text }).to_string(),
        )?;
        if o.encrypted {
            std::fs::write(net.join("backup.key"), key.to_file_text())?;
        }
        Ok(Node {
            net,
            url,
            key: o.encrypted.then_some(key),
        })
    }
    fn open(&self) -> Result<Repository> {
        Ok(Repository::open(&self.url, self.key.clone())?)
    }
}

/// What one session of the plugin showed.
#[derive(Default)]
struct SessionSeen {
    open_ms: f64,
    peak_kib: u64,
    compactions: u64,
    prune_ms_max: u64,
    compaction_ms_max: u64,
}

/// One plugin session over `batches` (numbered from `first` in the whole run, for the clock).
fn session(
    o: &YearOptions,
    node: &Node,
    clock: &Clock,
    fresh: bool,
    first: u64,
    batches: &mut dyn Iterator<Item = DbWrite>,
) -> Result<SessionSeen> {
    let clock_path = clock.path.display().to_string();
    let env = [(store::clock::SIMULATED_CLOCK_ENV, clock_path.as_str())];
    let mut em = Emulator::spawn(&o.plugin, &node.net, &env)?;
    em.set_timeout(Duration::from_secs(1800));
    em.getmanifest()?;
    let pre_init = if fresh { 9 } else { 3 };
    let mut i = 0u64;
    let mut initialized = false;
    for b in batches {
        if i == pre_init {
            em.init(&o.init_options, &node.net)?;
            initialized = true;
        }
        clock.set(first + i)?;
        let reply = em.db_write(b.data_version, &b.writes)?;
        if !reply.is_continue() {
            let _ = em.kill();
            bail!(
                "batch {} (data_version {}) was not stored: {reply}\n{}",
                first + i,
                b.data_version,
                em.log_text()
            );
        }
        i += 1;
        if o.verbose && i.is_multiple_of(100_000) {
            eprintln!("  {} batches sent", first + i);
        }
    }
    if !initialized {
        em.init(&o.init_options, &node.net)?;
    }
    // Let a compaction that is under way finish before the measurement (lightningd would run on).
    let deadline = Instant::now() + Duration::from_secs(1800);
    while Instant::now() < deadline {
        let st = em.rpc_ok("backup-status", json!({}))?;
        if st["compaction_running"] != json!(true) {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let mut seen = SessionSeen {
        open_ms: em
            .latencies
            .first()
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0),
        peak_kib: peak_kib(em.pid()),
        ..Default::default()
    };
    let st = em.close_stdin_and_wait()?;
    if !st.success() {
        bail!("the plugin exited with {st}\n{}", em.log_text());
    }
    for l in em.log_text().lines() {
        if l.contains("automatic compaction failed") || l.contains("garbage collection failed") {
            bail!("{l}");
        }
        if l.contains("pruning by the retention policy failed") {
            bail!("{l}");
        }
        if l.contains("automatic compaction: snapshot") {
            seen.compactions += 1;
            if let Some(ms) = number_before(l.trim_end(), " ms") {
                seen.prune_ms_max = seen.prune_ms_max.max(ms);
            }
            if let Some(i) = l.find(" ms); backup size") {
                if let Some(ms) = number_before(&l[..i + 3], " ms") {
                    seen.compaction_ms_max = seen.compaction_ms_max.max(ms);
                }
            }
        }
    }
    Ok(seen)
}

/// Restore the newest state into `dest`: (milliseconds, peak KiB of the restoring process).
fn restore_newest(o: &YearOptions, node: &Node, dest: &Path) -> Result<(u64, Option<u64>)> {
    let t = Instant::now();
    match &o.cli {
        Some(cli) => {
            // Under `/usr/bin/time`: a child's ru_maxrss keeps the high-water mark of the
            // memory it was spawned from (Linux carries it across exec), so a restore spawned
            // by this process read as large as this process; time's own image is small.
            let report = o.dir.join("restore.time");
            let mut c = std::process::Command::new("/usr/bin/time");
            c.arg("-f").arg("%M").arg("-o").arg(&report).arg(cli);
            c.arg("restore")
                .arg(node.url.to_string())
                .arg(dest)
                .arg("--json")
                .stdout(std::process::Stdio::null());
            if let Some(k) = &node.key {
                let kf = o.dir.join("restore.key");
                if !kf.exists() {
                    std::fs::write(&kf, k.to_file_text())?;
                }
                c.arg("--key-file").arg(kf);
            }
            let status = c
                .status()
                .map_err(|e| anyhow::anyhow!("/usr/bin/time (apt-get install time): {e}"))?;
            if !status.success() {
                bail!("backup-cli restore failed");
            }
            let kib = std::fs::read_to_string(&report)?
                .lines()
                .last()
                .and_then(|l| l.trim().parse().ok())
                .ok_or_else(|| anyhow::anyhow!("no peak memory in {}", report.display()))?;
            Ok((t.elapsed().as_millis() as u64, Some(kib)))
        }
        None => {
            store::ops::restore::restore(
                &node.open()?,
                dest,
                &store::ops::restore::RestoreTarget::Latest,
            )?;
            Ok((t.elapsed().as_millis() as u64, None))
        }
    }
}

/// Bytes a fresh repository stores for the database at `db` (one snapshot of it).
fn fresh_bytes(o: &YearOptions, db: &Path) -> Result<u64> {
    let root = o.dir.join("fresh");
    let _ = std::fs::remove_dir_all(&root);
    let url = BackupUrl::File(root.clone());
    let fresh = Repository::init(
        &url,
        Some(&MasterKey::generate()),
        o.encrypted,
        ConfigBody::default(),
    )?;
    store::ops::seed::snapshot_database(&fresh, db, &o.dir.join("fresh-scratch"), "year")?;
    let s = sizes(&fresh)?;
    let _ = std::fs::remove_dir_all(&root);
    Ok(s.pack.1 + s.index.1 + s.manifest.1)
}

/// On S3: the requests of one compaction and of one prune (default retention) run in-process
/// now, with the plugin's compaction base.
fn s3_requests(o: &YearOptions, node: &Node) -> Result<(u64, u64)> {
    let BackupUrl::S3 {
        bucket,
        prefix,
        params,
    } = &node.url
    else {
        bail!("not an S3 repository");
    };
    let backend = Arc::new(store::backend::s3::S3Backend::open(bucket, prefix, params)?);
    let repo = Repository::open_backend(backend.clone(), node.key.clone())?;
    let before = backend.request_counts();
    let writer = std::sync::Mutex::new(repo.writer("year bench", store::Durability::Fsync)?);
    store::ops::compact::compact(
        &repo,
        &writer,
        &store::ops::compact::CompactOptions {
            cache_dir: node.net.join("cln-backup-cache"),
            holder: "year bench".into(),
        },
    )?;
    drop(writer);
    let mid = backend.request_counts();
    let policy = store::ops::prune::Retention {
        keep_last: 10,
        keep_daily: 7,
        keep_weekly: 4,
        keep_monthly: 6,
        ..Default::default()
    };
    let plan = store::ops::prune::plan(&repo, &policy)?;
    store::ops::prune::apply(&repo, &plan, "year bench")?;
    let after = backend.request_counts();
    let _ = o;
    Ok((mid.since(&before).total(), after.since(&mid).total()))
}

fn measure(
    o: &YearOptions,
    node: &Node,
    clock: &Clock,
    session_no: u32,
    batches: u64,
    seen: &SessionSeen,
) -> Result<Point> {
    let repo = node.open()?;
    let s = sizes(&repo)?;
    let stats = store::ops::stats::stats(&repo)?;
    let db = o.dir.join("newest.sqlite3");
    let _ = std::fs::remove_file(&db);
    let (restore_ms, restore_peak_kib) = restore_newest(o, node, &db)?;
    let db_bytes = std::fs::metadata(&db)?.len();
    let fresh = fresh_bytes(o, &db)?;
    std::fs::remove_file(&db)?;
    let repo_bytes = s.pack.1 + s.index.1 + s.manifest.1 + s.journal.1 + s.config;
    let (compaction_requests, prune_requests) = if o.url.is_some() {
        let (c, p) = s3_requests(o, node)?;
        (Some(c), Some(p))
    } else {
        (None, None)
    };
    let oldest = stats.oldest_restorable.as_ref();
    Ok(Point {
        session: session_no,
        day: clock.day(batches),
        batches,
        data_version: stats.last_version.unwrap_or(0),
        db_bytes,
        repo_bytes,
        pack_bytes: s.pack.1,
        index_bytes: s.index.1,
        manifest_bytes: s.manifest.1,
        journal_bytes: s.journal.1,
        packs: s.pack.0,
        index_objects: s.index.0,
        manifests: s.manifest.0,
        journal_segments: s.journal.0,
        fresh_bytes: fresh,
        ratio: repo_bytes as f64 / (fresh + s.journal.1).max(1) as f64,
        snapshot_ratio: (s.pack.1 + s.index.1 + s.manifest.1) as f64 / fresh.max(1) as f64,
        packs_per_mib: s.pack.0 as f64 / (s.pack.1 as f64 / 1048576.0).max(1.0),
        oldest_restorable_version: oldest.map(|r| r.data_version),
        oldest_restorable_day: oldest
            .and_then(|r| r.time)
            .map(|t| (t as f64 - START_UNIX as f64) / 86_400.0),
        restore_ms,
        restore_peak_kib,
        open_ms: seen.open_ms,
        plugin_peak_kib: seen.peak_kib,
        compactions: seen.compactions,
        prune_ms_max: seen.prune_ms_max,
        compaction_ms_max: seen.compaction_ms_max,
        compaction_requests,
        prune_requests,
    })
}

/// Run the year; `on_point` sees each measurement as it is made.
pub fn run(o: &YearOptions, mut on_point: impl FnMut(&Point)) -> Result<Vec<Point>> {
    let work = Workload::load(&o.traces)?;
    let base = work.base_len();
    if o.batches < base {
        bail!("at least {base} batches: the node's own sessions");
    }
    std::fs::create_dir_all(&o.dir)?;
    let clock = Clock::new(&o.dir.join("clock"), o.batches, o.days)?;
    // This process runs a compaction and a prune in-process too (the S3 request counts): on the
    // simulated clock like the plugin, or their snapshots carry today's date and "restorable
    // from day" reads months ahead. Set before anything here reads the clock (it is read once).
    std::env::set_var(store::clock::SIMULATED_CLOCK_ENV, &clock.path);
    let node = Node::create(o)?;
    let mut points = Vec::new();
    let mut sent = 0u64;
    let mut session_no = 0u32;
    // The node's own sessions, as recorded; measured once, after them.
    let mut seen = SessionSeen::default();
    for (k, s) in work.sessions.iter().enumerate() {
        seen = session(o, &node, &clock, k == 0, sent, &mut s.iter().cloned())?;
        sent += s.len() as u64;
    }
    let p = measure(o, &node, &clock, session_no, sent, &seen)?;
    on_point(&p);
    points.push(p);
    let generated = o.batches - base;
    let per = generated.div_ceil(u64::from(o.sessions.max(1)));
    let mut k = 0u64;
    while k < generated {
        session_no += 1;
        let n = per.min(generated - k);
        let from = k;
        let mut it = (from..from + n).map(|j| work.generated(j));
        let seen = session(o, &node, &clock, false, sent, &mut it)?;
        sent += n;
        k += n;
        let p = measure(o, &node, &clock, session_no, sent, &seen)?;
        if o.verbose {
            let _ = writeln!(
                std::io::stderr(),
                "session {session_no}: day {:.0}, {} batches, ratio {:.2}",
                p.day,
                p.batches,
                p.ratio
            );
        }
        on_point(&p);
        points.push(p);
    }
    Ok(points)
}

/// The table for benches/REPORT.md.
pub fn table(points: &[Point]) -> String {
    let mut t = String::from(
        "| day | batches | db MB | repo MB | fresh + journal MB | ratio | snapshots / fresh | packs | packs/MiB | index objects | segments | snapshots | restorable from day | restore s | restore peak MB | open ms | plugin peak MB | compactions | longest prune ms | S3 req. compaction / prune |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    let mb = |b: u64| b as f64 / 1e6;
    for p in points {
        t.push_str(&format!(
            "| {:.0} | {} | {:.1} | {:.1} | {:.1} | {:.2} | {:.2} | {} | {:.2} | {} | {} | {} | {} | {:.2} | {} | {:.0} | {:.0} | {} | {} | {} |\n",
            p.day,
            p.batches,
            mb(p.db_bytes),
            mb(p.repo_bytes),
            mb(p.fresh_bytes + p.journal_bytes),
            p.ratio,
            p.snapshot_ratio,
            p.packs,
            p.packs_per_mib,
            p.index_objects,
            p.journal_segments,
            p.manifests,
            match (p.oldest_restorable_day, p.oldest_restorable_version) {
                (Some(d), _) => format!("{d:.0}"),
                (None, Some(1)) => "0 (journal)".into(),
                _ => "-".into(),
            },
            p.restore_ms as f64 / 1000.0,
            p.restore_peak_kib
                .map_or("-".into(), |k| format!("{:.0}", k as f64 / 1024.0)),
            p.open_ms,
            p.plugin_peak_kib as f64 / 1024.0,
            p.compactions,
            p.prune_ms_max,
            match (p.compaction_requests, p.prune_requests) {
                (Some(c), Some(r)) => format!("{c} / {r}"),
                _ => "-".into(),
            },
        ));
    }
    t
}
