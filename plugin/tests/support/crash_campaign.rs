//! The crash campaign: the real `cln-backup` binary killed with SIGKILL at random moments while
//! the lightningd emulator streams the fixture traces, compaction runs in the plugin and prune
//! runs beside it; after each kill the repository is verified and restored and the result
//! compared with the database lightningd had.
//!
//! Shared by `plugin/tests/crash.rs` (a bounded run) and `benches/src/bin/crash_campaign.rs`
//! (a long run), which include this file with `#[path]`.
//!
//! The model of lightningd (../shared/NOTES.md section 1): it sends batch N+1 only after the
//! plugin answered `continue` for N, then commits N. If the plugin dies while N is pending, N is
//! not committed, and the next start re-sends N (same data_version, same statements). So after a
//! kill the backup must restore to exactly the database at the last committed batch, or at the
//! pending one if the plugin wrote it before it died; nothing else. Some rounds also model
//! lightningd itself dying between the plugin's answer and its COMMIT: the answered batch is then
//! re-sent, and the backup must hold it (it was acknowledged) and supersede it.
//!
//! Each round: start the plugin (a new lightningd session: 9 db_write calls before init on a
//! fresh node, 3 on a restart), stream batches from the first uncommitted one, now and then call
//! `backup-compact` (automatic compaction also runs, its threshold set low), while a thread of
//! this process prunes (`store::ops::prune`, which takes the maintenance lock). A timer thread
//! sends SIGKILL after a random delay. Then: join the pruner, `verify` with `read_data`, restore
//! the newest state, the newest snapshot and the state at a random older version, compare dumps
//! with a replay of the trace prefix.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use emulator::{Emulator, HookReply};
use serde_json::{json, Value};
use store::journal::Record;
use store::ops::prune::{self, Retention};
use store::ops::restore::{restore, RestoreTarget};
use store::ops::verify::{verify, VerifyOptions};
use store::{BackupUrl, Batch, ConfigBody, MasterKey, Repository};

/// splitmix64: small, seedable, good enough to pick moments and choices.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi.saturating_sub(lo) + 1)
    }
    /// True with probability `num/den`.
    pub fn chance(&mut self, num: u64, den: u64) -> bool {
        self.next_u64() % den < num
    }
}

/// The seed from `CRASH_SEED` (decimal or 0x-hex), else from the clock.
pub fn seed_from_env() -> u64 {
    seed_from("CRASH_SEED")
}

/// The seed from the environment variable `var` (decimal or 0x-hex), else from the clock.
pub fn seed_from(var: &str) -> u64 {
    if let Ok(s) = std::env::var(var) {
        let s = s.trim();
        let parsed = match s.strip_prefix("0x") {
            Some(h) => u64::from_str_radix(h, 16).ok(),
            None => s.parse().ok(),
        };
        if let Some(v) = parsed {
            return v;
        }
    }
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    t ^ (u64::from(std::process::id()) << 32)
}

/// The fixture traces s1, s2, s3 as one sequence of batches (the sessions follow each other:
/// s2 starts at s1's last data_version + 1).
pub fn load_traces(testdata: &Path) -> Result<Vec<Batch>> {
    let mut out = Vec::new();
    for n in 1..=3 {
        for w in emulator::load_trace(&testdata.join(format!("trace-s{n}.jsonl")))? {
            out.push(Batch {
                data_version: w.data_version,
                writes: w.writes,
            });
        }
    }
    Ok(out)
}

/// Most expected dumps kept at once.
const CACHE_DUMPS: usize = 48;

/// Expected databases: the dump of the trace's first `n` batches replayed into a fresh SQLite
/// file by the store's replayer (PRAGMA foreign_keys as lightningd had it), cached by `n`.
pub struct Expected {
    trace: Arc<Vec<Batch>>,
    dir: PathBuf,
    cache: HashMap<usize, String>,
    made: u64,
}

impl Expected {
    pub fn new(trace: Arc<Vec<Batch>>, dir: &Path) -> Expected {
        Expected {
            trace,
            dir: dir.to_path_buf(),
            cache: HashMap::new(),
            made: 0,
        }
    }

    /// The dump after the first `n` batches; "" for none (an empty repository).
    pub fn dump_at(&mut self, n: usize) -> Result<String> {
        if n == 0 {
            return Ok(String::new());
        }
        if let Some(d) = self.cache.get(&n) {
            return Ok(d.clone());
        }
        self.made += 1;
        let path = self.dir.join(format!("expected-{n}-{}.sqlite3", self.made));
        let mut rp = store::replay::Replayer::open(&path, true)?;
        for b in self.trace.iter().take(n) {
            rp.apply(&Record {
                batch: b.clone(),
                supersedes: false,
                time_ms: 0,
            })?;
        }
        rp.finish(&path)?;
        let d = store::dump::dump(&path)?;
        std::fs::remove_file(&path)?;
        // Dumps are a few MB each: keep memory bounded in long runs.
        if self.cache.len() >= CACHE_DUMPS {
            self.cache.clear();
        }
        self.cache.insert(n, d.clone());
        Ok(d)
    }

    /// The number of batches after which the database is at snapshot version `v`.
    pub fn prefix_for_version(&self, v: u32) -> Option<usize> {
        self.trace
            .iter()
            .rposition(|b| b.data_version == v)
            .map(|i| i + 1)
    }
}

/// Open the journal for appending and close it again, as the next plugin process does at its
/// first db_write: a torn tail left by the crash is cut (verify reports an uncut one as a
/// problem). Returns the writer's recovery note.
pub fn reopen(repo: &Repository) -> Result<Option<String>> {
    let w = repo
        .writer("crash campaign reopen", store::Durability::Fsync)
        .context("reopening the journal")?;
    Ok(w.recovery_note().map(str::to_string))
}

/// Restore the newest state of `repo` (and, if any, its newest snapshot alone), verify it, and
/// say which of `candidates` (numbers of trace batches) the newest state equals. Errors describe
/// the mismatch.
pub fn check_repository(
    repo: &Repository,
    scratch: &Path,
    expected: &mut Expected,
    candidates: &[usize],
) -> Result<usize> {
    std::fs::create_dir_all(scratch)?;
    let v = verify(
        repo,
        &VerifyOptions {
            read_data: true,
            scratch_dir: scratch.to_path_buf(),
        },
    )
    .context("verify")?;
    if !v.ok {
        bail!("verify found problems: {:?}", v.problems);
    }
    let out = scratch.join("restored.sqlite3");
    let _ = std::fs::remove_file(&out);
    let got = match restore(repo, &out, &RestoreTarget::Latest) {
        Ok(_) => {
            let d = store::dump::dump(&out)?;
            std::fs::remove_file(&out)?;
            d
        }
        Err(store::Error::EmptyRepository) => String::new(),
        Err(e) => return Err(anyhow!(e).context("restore of the newest state")),
    };
    let mut matched = None;
    for &c in candidates {
        if expected.dump_at(c)? == got {
            matched = Some(c);
            break;
        }
    }
    let Some(matched) = matched else {
        let version = got
            .lines()
            .find(|l| l.starts_with("vars|") && l.contains("|'data_version'|"))
            .unwrap_or("no data_version row")
            .to_string();
        bail!(
            "the restored database equals none of the expected states after {candidates:?} \
             batches (restored vars row: {version})"
        );
    };
    // The newest snapshot alone is exactly the database at its version.
    if let Some(s) = store::ops::snapshots::list(repo)?.last() {
        let _ = std::fs::remove_file(&out);
        restore(repo, &out, &RestoreTarget::Snapshot(s.id.clone()))
            .with_context(|| format!("restore of snapshot {}", s.id))?;
        let d = store::dump::dump(&out)?;
        std::fs::remove_file(&out)?;
        let n = expected
            .prefix_for_version(s.data_version)
            .ok_or_else(|| anyhow!("snapshot at unknown data_version {}", s.data_version))?;
        if expected.dump_at(n)? != d {
            bail!(
                "snapshot {} restores to a database that is not lightningd's at data_version {}",
                s.id,
                s.data_version
            );
        }
    }
    Ok(matched)
}

/// Restore the state at a random version between the oldest snapshot (or the first batch) and
/// `newest`, and compare it with lightningd's database at that version. Returns the version.
pub fn check_random_version(
    repo: &Repository,
    scratch: &Path,
    expected: &mut Expected,
    newest: u32,
    rng: &mut Rng,
) -> Result<Option<u32>> {
    let oldest = store::ops::snapshots::list(repo)?
        .first()
        .map_or(1, |s| s.data_version.max(1));
    if newest < oldest {
        return Ok(None);
    }
    let v = rng.range(u64::from(oldest), u64::from(newest)) as u32;
    let out = scratch.join("at-version.sqlite3");
    let _ = std::fs::remove_file(&out);
    restore(repo, &out, &RestoreTarget::Version(v))
        .with_context(|| format!("restore at data_version {v} (oldest snapshot {oldest})"))?;
    let d = store::dump::dump(&out)?;
    std::fs::remove_file(&out)?;
    let n = expected
        .prefix_for_version(v)
        .ok_or_else(|| anyhow!("no batch has data_version {v}"))?;
    if expected.dump_at(n)? != d {
        bail!("the restore at data_version {v} is not lightningd's database at {v}");
    }
    Ok(Some(v))
}

pub struct CampaignOptions {
    pub plugin: PathBuf,
    pub testdata: PathBuf,
    pub seed: u64,
    /// Stop after this many rounds (one kill each)...
    pub rounds: u64,
    /// ...or once this much time has passed (checked between rounds).
    pub max_time: Option<Duration>,
    /// The kill comes uniformly within this many milliseconds of the plugin's start.
    pub kill_window_ms: (u64, u64),
    /// Where nodes and repositories are made (a temporary directory inside it).
    pub work_dir: Option<PathBuf>,
    /// Print one line per round.
    pub verbose: bool,
    /// A `backup-cli` binary: half the prunes then run it (and some are killed mid-way).
    pub prune_cli: Option<PathBuf>,
}

#[derive(Clone, Debug, Default)]
pub struct CampaignReport {
    pub seed: u64,
    pub rounds: u64,
    pub kills: u64,
    /// Kills with a db_write call pending (the plugin had it, or was about to).
    pub kills_with_batch_pending: u64,
    /// ... of which the batch was already written: the restore held it (it is superseded or
    /// repeated on the restart).
    pub pending_batch_was_written: u64,
    /// Rounds where lightningd "died" between the plugin's answer and its COMMIT.
    pub ld_crash_after_answer: u64,
    /// Restarts whose first batch superseded the stored one ("Last changes not applied").
    pub superseded_on_restart: u64,
    /// Kills while a `backup-compact` call was unanswered.
    pub kills_during_compaction_rpc: u64,
    /// Kills that left a torn record (cut when the journal was reopened).
    pub torn_tails_cut: u64,
    /// Restores at a random older data_version compared with lightningd's database.
    pub older_states_checked: u64,
    pub compaction_rpcs: u64,
    pub snapshots_made: u64,
    pub prunes_applied: u64,
    pub prunes_locked_out: u64,
    /// `backup-cli prune` runs, and how many of them were SIGKILLed.
    pub cli_prunes: u64,
    pub cli_prunes_killed: u64,
    /// Fresh repositories (a new node each time the traces ran out).
    pub nodes: u64,
    pub batches_acknowledged: u64,
    pub elapsed: Duration,
    pub failures: Vec<String>,
}

impl CampaignReport {
    pub fn summary(&self) -> String {
        format!(
            "crash campaign: {} rounds, {} kills, {} failures",
            self.rounds,
            self.kills,
            self.failures.len()
        )
    }
    pub fn details(&self) -> String {
        format!(
            "seed {:#x} (CRASH_SEED to reproduce); {:.1} s; {} nodes, {} batches acknowledged; \
             kills with a batch pending {} (written before the kill {}); lightningd deaths between \
             answer and COMMIT {}; restarts superseding the last batch {}; backup-compact calls {} \
             (kills while one was unanswered {}); torn tails cut on reopen {}; older states restored and compared {}; snapshots made {}; prunes applied {} (locked out \
             by a compaction {}; backup-cli prune runs {}, killed {})",
            self.seed,
            self.elapsed.as_secs_f64(),
            self.nodes,
            self.batches_acknowledged,
            self.kills_with_batch_pending,
            self.pending_batch_was_written,
            self.ld_crash_after_answer,
            self.superseded_on_restart,
            self.compaction_rpcs,
            self.kills_during_compaction_rpc,
            self.torn_tails_cut,
            self.older_states_checked,
            self.snapshots_made,
            self.prunes_applied,
            self.prunes_locked_out,
            self.cli_prunes,
            self.cli_prunes_killed,
        )
    }
}

/// One node: a network directory with backup.lock, and its repository.
struct Node {
    dir: PathBuf,
    net: PathBuf,
    url: BackupUrl,
    key: Option<MasterKey>,
    /// Trace batches lightningd has committed.
    committed: usize,
    /// Trace batches the backup held at the last check: one more than `committed` when
    /// lightningd died between the plugin's answer and its COMMIT, or when a batch pending at a
    /// kill had been written. A round killed before it re-sends that batch leaves it so.
    held: usize,
    started: bool,
    init_options: Vec<(String, Value)>,
}

impl Node {
    fn new(root: &Path, n: u64, rng: &mut Rng) -> Result<Node> {
        let dir = root.join(format!("node-{n}"));
        let net = dir.join("regtest");
        let repo = dir.join("backup");
        std::fs::create_dir_all(&net)?;
        let encrypted = rng.chance(1, 2);
        let key = encrypted.then(MasterKey::generate);
        let url = BackupUrl::File(repo.clone());
        Repository::init(&url, key.as_ref(), encrypted, ConfigBody::default())?;
        std::fs::write(
            net.join("backup.lock"),
            json!({ "backend_url": format!("file://{}", repo.display()) }).to_string(),
        )?;
        if let Some(k) = &key {
            std::fs::write(net.join("backup.key"), k.to_file_text())?;
        }
        // Automatic compaction after a few tens of KB of journal: it runs all the time.
        let mut init_options = vec![(
            "backup-compact-journal-bytes".to_string(),
            json!(rng.range(20_000, 300_000)),
        )];
        // Compactions must be able to finish inside the kill windows on a machine busy with
        // the other tests: normal priority here (the default is nice 19).
        init_options.push(("backup-compaction-nice".into(), json!(0)));
        if rng.chance(1, 4) {
            init_options.push(("backup-durability".into(), json!("flush")));
        }
        Ok(Node {
            dir,
            net,
            url,
            key,
            committed: 0,
            held: 0,
            started: false,
            init_options,
        })
    }

    fn open(&self) -> Result<Repository> {
        Ok(Repository::open(&self.url, self.key.clone())?)
    }
}

fn sigkill(pid: u32) {
    let _ = std::process::Command::new("kill")
        .args(["-s", "KILL", &pid.to_string()])
        .status();
}

#[derive(Default)]
struct PruneStats {
    applied: u64,
    locked: u64,
    cli_runs: u64,
    cli_killed: u64,
    failures: Vec<String>,
}

/// What the pruner needs: the repository, and for `backup-cli prune` its URL and key file.
struct PruneTarget {
    repo: Repository,
    url: String,
    key_file: Option<PathBuf>,
    cli: Option<PathBuf>,
}

/// Prune beside the plugin until `stop`, keeping the last one or two snapshots: through the
/// store's API in this process, or (when a `backup-cli` binary is given, half the time) by
/// running `backup-cli prune`, killed with SIGKILL a third of the time.
fn pruner(t: PruneTarget, seed: u64, stop: Arc<AtomicBool>, stats: Arc<Mutex<PruneStats>>) {
    let mut rng = Rng::new(seed);
    while !stop.load(Ordering::SeqCst) {
        let until = Instant::now() + Duration::from_millis(rng.range(20, 250));
        while Instant::now() < until && !stop.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(5));
        }
        let keep_last = rng.range(1, 2) as u32;
        if let Some(cli) = t.cli.as_ref().filter(|_| rng.chance(1, 2)) {
            let kill_after = rng
                .chance(1, 3)
                .then(|| Duration::from_millis(rng.range(0, 50)));
            let res = cli_prune(cli, &t, keep_last, kill_after);
            let mut s = stats.lock().unwrap_or_else(|p| p.into_inner());
            s.cli_runs += 1;
            match res {
                Ok(CliPrune::Done) => s.applied += 1,
                Ok(CliPrune::Locked) => s.locked += 1,
                Ok(CliPrune::Killed) => s.cli_killed += 1,
                Err(e) => s.failures.push(format!("backup-cli prune: {e:#}")),
            }
            continue;
        }
        let retention = Retention {
            keep_last,
            ..Default::default()
        };
        let res = prune::plan(&t.repo, &retention)
            .and_then(|p| prune::apply(&t.repo, &p, "crash campaign prune"));
        let mut s = stats.lock().unwrap_or_else(|p| p.into_inner());
        match res {
            Ok(r) if r.removed_snapshots > 0 || r.deleted_segments > 0 => s.applied += 1,
            Ok(_) => {}
            Err(store::Error::Locked { .. }) => s.locked += 1,
            Err(e) => s.failures.push(format!("prune failed: {e}")),
        }
    }
}

enum CliPrune {
    Done,
    Locked,
    Killed,
}

fn cli_prune(
    cli: &Path,
    t: &PruneTarget,
    keep_last: u32,
    kill_after: Option<Duration>,
) -> Result<CliPrune> {
    let mut cmd = std::process::Command::new(cli);
    if let Some(k) = &t.key_file {
        cmd.arg("--key-file").arg(k);
    }
    cmd.args(["prune", &t.url, "--keep-last", &keep_last.to_string()])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting {}", cli.display()))?;
    let started = Instant::now();
    loop {
        if let Some(st) = child.try_wait()? {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                use std::io::Read;
                let _ = e.read_to_string(&mut err);
            }
            return match st.code() {
                Some(0) => Ok(CliPrune::Done),
                _ if err.contains("is locked by") => Ok(CliPrune::Locked),
                _ => bail!("exited with {st}: {}", err.trim()),
            };
        }
        if kill_after.is_some_and(|d| started.elapsed() >= d) {
            child.kill()?;
            child.wait()?;
            return Ok(CliPrune::Killed);
        }
        if started.elapsed() > Duration::from_secs(120) {
            child.kill()?;
            child.wait()?;
            bail!("did not finish within 120 s");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// What happened in one round, as lightningd saw it.
struct RoundEnd {
    /// Batches lightningd has committed after the round.
    committed: usize,
    /// Numbers of batches the backup may hold after the kill.
    candidates: Vec<usize>,
    pending: bool,
    ld_crash: bool,
    exhausted: bool,
}

fn is_benign_compaction_error(msg: &str) -> bool {
    msg.contains("already running") || msg.contains("is locked by")
}

pub fn run(opts: &CampaignOptions) -> Result<CampaignReport> {
    let started = Instant::now();
    let trace = Arc::new(load_traces(&opts.testdata)?);
    let tmp = match &opts.work_dir {
        Some(d) => tempfile::Builder::new()
            .prefix("crash-campaign-")
            .tempdir_in(d)?,
        None => tempfile::Builder::new()
            .prefix("crash-campaign-")
            .tempdir()?,
    };
    let mut expected = Expected::new(trace.clone(), tmp.path());
    let mut rng = Rng::new(opts.seed);
    let mut rep = CampaignReport {
        seed: opts.seed,
        ..Default::default()
    };
    let mut node = Node::new(tmp.path(), 0, &mut rng)?;
    rep.nodes = 1;

    while rep.rounds < opts.rounds && opts.max_time.is_none_or(|t| started.elapsed() < t) {
        rep.rounds += 1;
        let round = rep.rounds;
        let res = run_round(opts, &trace, &mut node, &mut rng, &mut rep);
        let end = match res {
            Ok(e) => e,
            Err(e) => {
                rep.failures.push(format!(
                    "round {round} (seed {:#x}): {e:#}; node kept in {}",
                    opts.seed,
                    node.dir.display()
                ));
                break;
            }
        };
        rep.kills += 1;
        rep.kills_with_batch_pending += u64::from(end.pending);
        rep.ld_crash_after_answer += u64::from(end.ld_crash);
        let repo = node.open()?;
        let checked = reopen(&repo).and_then(|note| {
            rep.torn_tails_cut += u64::from(note.is_some());
            let scratch = node.dir.join("scratch");
            let n = check_repository(&repo, &scratch, &mut expected, &end.candidates)?;
            // An older state too: snapshot + journal, across prunes and supersedes.
            let newest = n
                .checked_sub(1)
                .and_then(|i| trace.get(i))
                .map_or(0, |b| b.data_version);
            if check_random_version(&repo, &scratch, &mut expected, newest, &mut rng)?.is_some() {
                rep.older_states_checked += 1;
            }
            Ok(n)
        });
        match checked {
            Ok(n) => {
                node.held = n;
                if end.pending && n > end.committed {
                    rep.pending_batch_was_written += 1;
                }
                if opts.verbose {
                    println!(
                        "round {round}: killed with {} of {} batches committed{}{}; restored after {n}",
                        end.committed,
                        trace.len(),
                        if end.pending { ", one pending" } else { "" },
                        if end.ld_crash { ", lightningd died before COMMIT" } else { "" },
                    );
                }
            }
            Err(e) => {
                rep.failures.push(format!(
                    "round {round} (seed {:#x}): after a kill with {} batches committed: {e:#}; node kept in {}",
                    opts.seed,
                    end.committed,
                    node.dir.display()
                ));
                break;
            }
        }
        node.committed = end.committed;
        if end.exhausted {
            std::fs::remove_dir_all(&node.dir)?;
            node = Node::new(tmp.path(), rep.nodes, &mut rng)?;
            rep.nodes += 1;
        }
    }
    rep.elapsed = started.elapsed();
    if !rep.failures.is_empty() {
        // Keep the evidence.
        let _ = tmp.keep();
    }
    Ok(rep)
}

fn run_round(
    opts: &CampaignOptions,
    trace: &[Batch],
    node: &mut Node,
    rng: &mut Rng,
    rep: &mut CampaignReport,
) -> Result<RoundEnd> {
    let mut em = Emulator::spawn(&opts.plugin, &node.net, &[])?;
    em.set_timeout(Duration::from_secs(120));
    let pid = em.pid();
    let delay = Duration::from_millis(rng.range(opts.kill_window_ms.0, opts.kill_window_ms.1));
    let (cancel, cancelled) = mpsc::channel::<()>();
    let killer = std::thread::spawn(move || match cancelled.recv_timeout(delay) {
        Err(mpsc::RecvTimeoutError::Timeout) => {
            sigkill(pid);
            true
        }
        _ => false,
    });
    let stop = Arc::new(AtomicBool::new(false));
    let prune_stats = Arc::new(Mutex::new(PruneStats::default()));
    let pruner = {
        let target = PruneTarget {
            repo: node.open()?,
            url: node.url.to_string(),
            key_file: node.key.as_ref().map(|_| node.net.join("backup.key")),
            cli: opts.prune_cli.clone(),
        };
        let (seed, stop, stats) = (rng.next_u64(), stop.clone(), prune_stats.clone());
        std::thread::spawn(move || pruner(target, seed, stop, stats))
    };
    // lightningd dies between an answer and its COMMIT after this many answers, in some rounds.
    let ld_crash_after = rng.chance(1, 5).then(|| rng.range(1, 150) as usize);

    let fresh = !node.started;
    node.started = true;
    let pre_init = if fresh { 9 } else { 3 };
    let mut i = node.committed;
    let mut sent = 0usize;
    let mut initialized = false;
    let mut pending = None;
    let mut ld_crash = false;
    let mut rpcs = Vec::new();
    let mut problem: Option<String> = None;

    let outcome: Result<()> = (|| {
        em.getmanifest()?;
        while i < trace.len() {
            if sent == pre_init && !initialized {
                let dir = node.net.clone();
                em.init(&node.init_options, &dir)?;
                initialized = true;
            }
            if initialized && rng.chance(1, 120) {
                rpcs.push(em.rpc_start("backup-compact", json!({}))?);
                rep.compaction_rpcs += 1;
            }
            let Some(b) = trace.get(i) else { break };
            match em.db_write(b.data_version, &b.writes)? {
                HookReply::Continue => {
                    i += 1;
                    sent += 1;
                    rep.batches_acknowledged += 1;
                    if ld_crash_after == Some(sent) {
                        ld_crash = true;
                        return Ok(());
                    }
                }
                HookReply::Died(_) => {
                    pending = Some(i);
                    return Ok(());
                }
                other => {
                    problem = Some(format!(
                        "db_write data_version {} (batch {i}) answered {other}",
                        b.data_version
                    ));
                    return Ok(());
                }
            }
        }
        Ok(())
    })();
    let _ = cancel.send(());
    let we_killed = killer
        .join()
        .map_err(|_| anyhow!("killer thread panicked"))?;
    em.kill()?;
    stop.store(true, Ordering::SeqCst);
    pruner
        .join()
        .map_err(|_| anyhow!("pruner thread panicked"))?;

    let stderr = em.stderr_text();
    if stderr.contains("panicked") {
        bail!("the plugin panicked: {stderr}");
    }
    if let Some(p) = problem {
        bail!("{p}\nlogs:\n{}stderr: {stderr}", em.log_text());
    }
    if let Err(e) = outcome {
        if !we_killed {
            bail!("{e:#} (the plugin was not killed)\nstderr: {stderr}");
        }
    }
    if pending.is_some() && !we_killed && !ld_crash {
        bail!(
            "the plugin died by itself with a db_write pending\nlogs:\n{}stderr: {stderr}",
            em.log_text()
        );
    }
    for id in rpcs {
        match em.rpc_wait(&id) {
            Ok(r) => {
                if let Some(e) = r.get("error") {
                    let msg = e.get("message").and_then(Value::as_str).unwrap_or("");
                    if !is_benign_compaction_error(msg) {
                        bail!("backup-compact failed: {e}");
                    }
                }
            }
            // Unanswered when the plugin died.
            Err(_) => rep.kills_during_compaction_rpc += 1,
        }
    }
    for l in &em.logs {
        if l.message.contains("compaction: snapshot") {
            rep.snapshots_made += 1;
        }
        if l.message.starts_with("Last changes not applied") {
            rep.superseded_on_restart += 1;
        }
        if l.message.contains("compaction failed") && !is_benign_compaction_error(&l.message) {
            bail!("{}", l.message);
        }
        if l.level == "broken" {
            bail!("the plugin logged a broken line: {}", l.message);
        }
    }
    {
        let s = prune_stats.lock().unwrap_or_else(|p| p.into_inner());
        rep.prunes_applied += s.applied;
        rep.prunes_locked_out += s.locked;
        rep.cli_prunes += s.cli_runs;
        rep.cli_prunes_killed += s.cli_killed;
        if let Some(f) = s.failures.first() {
            bail!("{f}");
        }
    }

    let exhausted = i >= trace.len() && pending.is_none() && !ld_crash;
    Ok(match (pending, ld_crash) {
        // The batch lightningd sent is not committed; the plugin may have written it.
        (Some(p), _) => RoundEnd {
            committed: p,
            candidates: vec![p, p + 1],
            pending: true,
            ld_crash: false,
            exhausted,
        },
        // Answered, then lightningd died before COMMIT: stored (it was acknowledged) but re-sent.
        (None, true) => RoundEnd {
            committed: i - 1,
            candidates: vec![i],
            pending: false,
            ld_crash: true,
            exhausted,
        },
        // Killed before any answer (even before the first db_write was sent): the backup holds
        // what it held after the last round.
        (None, false) if i == node.committed => RoundEnd {
            committed: i,
            candidates: vec![node.held.max(i)],
            pending: false,
            ld_crash: false,
            exhausted,
        },
        (None, false) => RoundEnd {
            committed: i,
            candidates: vec![i],
            pending: false,
            ld_crash: false,
            exhausted,
        },
    })
}
