//! The power-loss campaign: the store's write paths run over a directory whose power is cut at
//! a random point, below the directory backend (`store::backend::dir::sim`), and after each cut
//! the disk holds only what a real one would: what a sync covered, plus (half the cases) a
//! random part of the rest, the first write left out torn at sector granularity. A SIGKILL
//! keeps the page cache and so cannot find a missing sync; this can.
//!
//! Each case is one node's life: `init` (config, and in some cases a first snapshot of the
//! node's database as `backup-cli init --lightning-dir` stores it), then the trace's batches
//! through `JournalWriter::append` as the plugin calls it (`continue` iff it returned `Ok`;
//! lightningd stops at the first error), compactions in a thread while batches keep coming (as
//! the plugin runs them), and prunes (keep the last snapshot). The cut is aimed at one step:
//! init, one append, one compaction or one prune, at a random event inside it (the steps
//! around it run as they would). Then, after the power comes back:
//! - the repository opens, the writer reopens (cutting a torn tail), verify (reading every
//!   chunk) finds no problem;
//! - the newest state restores to exactly lightningd's database at the last acknowledged batch,
//!   or the one in flight if it had landed; the newest snapshot, and a random older version,
//!   restore to lightningd's database at their versions (contents compared, by dump);
//! - lightningd restarts: it re-sends the batch in flight and goes on; a compaction (over a
//!   compaction base the cut may have lost or damaged) and a restore are exact again.
//!
//! Shared by `plugin/tests/crash.rs` (a short run) and `benches/src/bin/power_campaign.rs` (a
//! long one), which include it with `#[path]` beside `crash_campaign.rs` (as `campaign`).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use store::backend::dir::sim::{SimIo, Survival};
use store::backend::dir::DirBackend;
use store::journal::Record;
use store::ops::compact::{compact, CompactOptions};
use store::ops::prune::{self, Retention};
use store::ops::restore::{restore, RestoreTarget};
use store::{AppendOutcome, Batch, ConfigBody, Durability, MasterKey, Repository};

use crate::campaign::{check_random_version, check_repository, Expected, Rng};

pub struct PowerOptions {
    pub trace: Arc<Vec<Batch>>,
    pub seed: u64,
    /// Stop after this many cases...
    pub cases: u64,
    /// ...or once this much time has passed (checked between cases).
    pub max_time: Option<Duration>,
    /// Where the cases run (each in its own directory, removed when it passes).
    pub work_dir: PathBuf,
    /// Print one line per case.
    pub verbose: bool,
}

/// The step of a node's life a cut is aimed at (and where it fired).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Init,
    Append,
    Compaction,
    Prune,
    /// The life ended before the event the cut was aimed at: the power fails afterwards.
    After,
}

#[derive(Clone, Debug, Default)]
pub struct PowerReport {
    pub seed: u64,
    pub cases: u64,
    /// Where the cuts fired: init, an append, a compaction (with the appends beside it), a
    /// prune, after the life.
    pub cuts: [u64; 5],
    /// Cases where everything unsynced was lost, and where a random part survived.
    pub synced_only: u64,
    pub random_survival: u64,
    /// Batches acknowledged (answered `continue`) over all cases, all restored.
    pub acknowledged: u64,
    /// Appends in flight at the cut whose batch was found in the repository afterwards.
    pub in_flight_landed: u64,
    /// Reopened writers that cut a torn tail.
    pub torn_tails_cut: u64,
    /// What the power losses dropped: unsynced changes, torn writes, directory entries.
    pub changes_lost: u64,
    pub writes_torn: u64,
    pub entries_lost: u64,
    pub snapshots_made: u64,
    pub prunes_completed: u64,
    pub older_versions_checked: u64,
    pub elapsed: Duration,
    pub failures: Vec<String>,
}

impl PowerReport {
    pub fn summary(&self) -> String {
        format!(
            "power-loss campaign: {} cases, {} failures",
            self.cases,
            self.failures.len()
        )
    }
    pub fn details(&self) -> String {
        format!(
            "seed {:#x} (POWER_SEED to reproduce the choices); {:.1} s; cuts in init {}, \
             appends {}, compactions {}, prunes {}, after the life {}; survival: synced only {}, \
             random part {}; {} batches acknowledged (in flight and landed {}); torn tails cut \
             on reopen {}; lost to the cuts: {} unsynced changes, {} torn writes, {} directory \
             entries; snapshots made {}, prunes completed {}, older versions restored and \
             compared {}",
            self.seed,
            self.elapsed.as_secs_f64(),
            self.cuts[0],
            self.cuts[1],
            self.cuts[2],
            self.cuts[3],
            self.cuts[4],
            self.synced_only,
            self.random_survival,
            self.acknowledged,
            self.in_flight_landed,
            self.torn_tails_cut,
            self.changes_lost,
            self.writes_torn,
            self.entries_lost,
            self.snapshots_made,
            self.prunes_completed,
            self.older_versions_checked,
        )
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    Append(usize),
    Compaction,
    Prune,
}

/// Most batches appended beside one compaction.
const BESIDE_COMPACTION: usize = 12;
/// Batches lightningd sends after the restart.
const AFTER_RESTART: usize = 5;

pub fn run(opts: &PowerOptions) -> Result<PowerReport> {
    let started = Instant::now();
    let tmp = tempfile::Builder::new()
        .prefix("power-campaign-")
        .tempdir_in(&opts.work_dir)?;
    let mut expected = Expected::new(opts.trace.clone(), tmp.path());
    let mut rep = PowerReport {
        seed: opts.seed,
        ..Default::default()
    };
    let mut rng = Rng::new(opts.seed);
    while rep.cases < opts.cases && opts.max_time.is_none_or(|t| started.elapsed() < t) {
        rep.cases += 1;
        let case = rep.cases;
        let dir = tmp.path().join(format!("case-{case}"));
        std::fs::create_dir_all(&dir)?;
        let case_seed = rng.next_u64();
        match run_case(opts, &dir, case_seed, &mut expected, &mut rep) {
            Ok(line) => {
                if opts.verbose {
                    println!("case {case}: {line}");
                }
                std::fs::remove_dir_all(&dir)?;
            }
            Err(e) => {
                rep.failures.push(format!(
                    "case {case} (seed {:#x}, case seed {case_seed:#x}): {e:#}; kept in {}",
                    opts.seed,
                    dir.display()
                ));
                break;
            }
        }
    }
    rep.elapsed = started.elapsed();
    if !rep.failures.is_empty() {
        let _ = tmp.keep();
    }
    Ok(rep)
}

/// The node's database after the trace's first `n` batches, as a file.
fn database_at(trace: &[Batch], n: usize, path: &Path) -> Result<()> {
    let mut rp = store::replay::Replayer::open(path, true)?;
    for b in trace.iter().take(n) {
        rp.apply(&Record {
            batch: b.clone(),
            supersedes: false,
            time_ms: 0,
        })?;
    }
    rp.finish(path)?;
    Ok(())
}

/// What the cut may have done to the compaction base beside the node (it is not synced): kept,
/// gone, its state file gone, cut short, or a page of zeros.
fn damage_cache(cache: &Path, rng: &mut Rng) -> Result<()> {
    let Ok(rd) = std::fs::read_dir(cache) else {
        return Ok(());
    };
    for e in rd {
        let p = e?.path();
        let name = p.to_string_lossy().into_owned();
        match rng.range(0, 4) {
            0 | 1 => {}
            2 => std::fs::remove_file(&p)?,
            3 if name.ends_with(".sqlite3") => {
                let len = std::fs::metadata(&p)?.len();
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(&p)?
                    .set_len(len / 2)?;
            }
            _ if name.ends_with(".sqlite3") => {
                use std::os::unix::fs::FileExt;
                let len = std::fs::metadata(&p)?.len();
                let at = rng.range(0, len.saturating_sub(4096) / 4096) * 4096;
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(&p)?
                    .write_all_at(&[0u8; 4096], at)?;
            }
            _ => {}
        }
    }
    Ok(())
}

struct Life {
    /// Batches lightningd committed (answered `continue`; the seeded database counts).
    acked: usize,
    /// An append had not answered when the power went off: its batch may have landed.
    in_flight: bool,
    init_done: bool,
    fired: Option<Phase>,
    /// A step failed while the power was on: a bug, not a cut.
    problem: Option<String>,
}

fn run_case(
    opts: &PowerOptions,
    dir: &Path,
    seed: u64,
    expected: &mut Expected,
    rep: &mut PowerReport,
) -> Result<String> {
    let trace = &opts.trace;
    let mut rng = Rng::new(seed);
    let root = dir.join("repo");
    let cache = dir.join("cache");
    let sim = SimIo::new();
    let encrypted = rng.chance(1, 2);
    let key = MasterKey::generate();
    let key_opt = encrypted.then(|| key.clone());
    // Some nodes start with a database (`init --lightning-dir` stores it as a first snapshot).
    let seeded = match rng.chance(1, 3) {
        true => rng.range(20, 200) as usize,
        false => 0,
    };
    let end = (seeded + rng.range(30, 400) as usize).min(trace.len() - AFTER_RESTART);
    let compact_every = rng.range(15, 80) as usize;
    let prune_every = rng.range(1, 3) as usize;
    let mut steps = Vec::new();
    let mut compactions = 0;
    for i in seeded..end {
        if i > seeded && (i - seeded) % compact_every == 0 {
            steps.push(Step::Compaction);
            compactions += 1;
            if compactions % prune_every == 0 {
                steps.push(Step::Prune);
            }
        }
        steps.push(Step::Append(i));
    }
    // Aim the cut: at init, or at a step of one kind, at a random event inside it.
    let aim = rng.range(0, 9);
    let candidates: Vec<usize> = (0..steps.len())
        .filter(|&k| match aim {
            0 | 1 => false,
            2..=4 => matches!(steps[k], Step::Append(_)),
            5 | 6 => steps[k] == Step::Compaction,
            _ => steps[k] == Step::Prune,
        })
        .collect();
    let target = match (aim, candidates.is_empty()) {
        (0 | 1, _) | (_, true) => None,
        _ => Some(candidates[rng.range(0, candidates.len() as u64 - 1) as usize]),
    };
    let reach = |step: Option<Step>, rng: &mut Rng| match step {
        None => rng.range(1, 30),
        Some(Step::Append(_)) => rng.range(1, 3),
        Some(Step::Compaction) => rng.range(1, 150),
        Some(Step::Prune) => rng.range(1, 60),
    };

    let mut life = Life {
        acked: seeded,
        in_flight: false,
        init_done: false,
        fired: None,
        problem: None,
    };
    if target.is_none() {
        sim.cut_at(reach(None, &mut rng));
    }
    let node_db = dir.join("node.sqlite3");
    if seeded > 0 {
        database_at(trace, seeded, &node_db)?;
    }
    let copts = CompactOptions {
        cache_dir: cache.clone(),
        holder: "power campaign compaction".into(),
    };
    let init = (|| -> store::Result<Repository> {
        let backend = DirBackend::create_with_io(&root, Arc::new(sim.clone()))?;
        let repo = Repository::init_backend(
            Arc::new(backend),
            key_opt.as_ref(),
            encrypted,
            ConfigBody::default(),
        )?;
        if seeded > 0 {
            store::ops::seed::snapshot_database(&repo, &node_db, &dir.join("seed"), "init")?;
        }
        Ok(repo)
    })();
    if sim.is_off() {
        life.fired = Some(Phase::Init);
    }
    if let Ok(repo) = init {
        life.init_done = true;
        live(
            &repo, &sim, trace, &steps, target, &reach, &copts, &mut rng, &mut life, rep,
        );
    }
    if let Some(p) = &life.problem {
        bail!("{p}");
    }
    let fired = life.fired.unwrap_or(Phase::After);
    rep.cuts[fired as usize] += 1;

    // The power fails (if it has not), and comes back.
    let survival = match rng.chance(1, 2) {
        true => Survival::Synced,
        false => Survival::Random(rng.next_u64()),
    };
    match survival {
        Survival::Synced => rep.synced_only += 1,
        Survival::Random(_) => rep.random_survival += 1,
    }
    let events = sim.recent();
    let loss = sim.restore_power(survival)?;
    rep.changes_lost += loss.changes_lost;
    rep.writes_torn += loss.writes_torn;
    rep.entries_lost += loss.entries_lost;
    damage_cache(&cache, &mut rng)?;
    let what =
        format!(
        "{} repository, {} batches seeded, life to batch {end}, compaction every {compact_every}; \
         cut in {fired:?} with {} batches acknowledged{}; {survival:?} lost {loss:?}",
        if encrypted { "encrypted" } else { "plaintext" },
        seeded,
        life.acked,
        if life.in_flight { " and one in flight" } else { "" },
    );
    check_after(
        dir, &root, key_opt, trace, expected, &life, &copts, &mut rng, rep,
    )
    .map_err(|e| {
        let last = events.len().saturating_sub(24);
        anyhow!(
            "{what}: {e:#}\nthe last events before the cut:\n{}",
            events[last..].join("\n")
        )
    })?;
    rep.acknowledged += (life.acked - seeded) as u64;
    Ok(what)
}

/// The node's life after init, until the power fails or the steps run out.
#[allow(clippy::too_many_arguments)]
fn live(
    repo: &Repository,
    sim: &SimIo,
    trace: &[Batch],
    steps: &[Step],
    target: Option<usize>,
    reach: &dyn Fn(Option<Step>, &mut Rng) -> u64,
    copts: &CompactOptions,
    rng: &mut Rng,
    life: &mut Life,
    rep: &mut PowerReport,
) {
    // The plugin opens the journal at the first db_write.
    let arm = |k: usize, rng: &mut Rng| {
        if target == Some(k) {
            sim.cut_at(sim.events() + reach(steps.get(k).copied(), rng));
        }
    };
    let mut k = 0;
    arm(0, rng);
    let w = match repo.writer("power campaign", Durability::Fsync) {
        Ok(w) => Mutex::new(w),
        Err(e) => {
            if !sim.is_off() {
                life.problem = Some(format!("the journal did not open with the power on: {e}"));
            }
            life.fired = Some(Phase::Append);
            return;
        }
    };
    let append = |i: usize, life: &mut Life| -> bool {
        let res = match w.lock() {
            Ok(mut w) => w.append(&trace[i]).map(|_| ()),
            Err(_) => Err(store::Error::Invalid("writer mutex poisoned".into())),
        };
        match res {
            Ok(()) => {
                life.acked = i + 1;
                true
            }
            Err(e) => {
                life.in_flight = true;
                if !sim.is_off() {
                    life.problem =
                        Some(format!("append of batch {i} failed with the power on: {e}"));
                }
                false
            }
        }
    };
    let mut first = true;
    while k < steps.len() {
        if !first {
            arm(k, rng);
        }
        first = false;
        let step = steps[k];
        k += 1;
        match step {
            Step::Append(i) => {
                if !append(i, life) {
                    life.fired.get_or_insert(Phase::Append);
                    return;
                }
            }
            Step::Compaction => {
                let mut stop = false;
                let res = std::thread::scope(|s| {
                    let h = s.spawn(|| compact(repo, &w, copts));
                    // Batches keep coming while it runs, as in the plugin.
                    let mut beside = 0;
                    while !h.is_finished() && beside < BESIDE_COMPACTION {
                        let Some(Step::Append(i)) = steps.get(k).copied() else {
                            break;
                        };
                        arm(k, rng);
                        k += 1;
                        beside += 1;
                        if !append(i, life) {
                            stop = true;
                            break;
                        }
                    }
                    h.join()
                });
                match &res {
                    Ok(Ok(r)) => rep.snapshots_made += u64::from(r.snapshot.is_some()),
                    Ok(Err(e)) if !sim.is_off() => {
                        life.problem = Some(format!("a compaction failed with the power on: {e}"));
                        return;
                    }
                    Ok(Err(_)) => {}
                    Err(_) => {
                        life.problem = Some("a compaction panicked".into());
                        return;
                    }
                }
                if sim.is_off() {
                    life.fired.get_or_insert(Phase::Compaction);
                }
                if stop {
                    return;
                }
            }
            Step::Prune => {
                let keep = Retention {
                    keep_last: 1,
                    ..Default::default()
                };
                let res = prune::plan(repo, &keep).and_then(|p| prune::apply(repo, &p, "prune"));
                match res {
                    Ok(_) if !sim.is_off() => rep.prunes_completed += 1,
                    Err(e) if !sim.is_off() => {
                        life.problem = Some(format!("a prune failed with the power on: {e}"));
                        return;
                    }
                    _ => {}
                }
                if sim.is_off() {
                    life.fired.get_or_insert(Phase::Prune);
                }
            }
        }
    }
}

/// After the power came back: everything acknowledged restores exactly, nothing restores
/// wrong, and the node goes on.
#[allow(clippy::too_many_arguments)]
fn check_after(
    dir: &Path,
    root: &Path,
    key: Option<MasterKey>,
    trace: &[Batch],
    expected: &mut Expected,
    life: &Life,
    copts: &CompactOptions,
    rng: &mut Rng,
    rep: &mut PowerReport,
) -> Result<()> {
    let repo = match DirBackend::open(root)
        .and_then(|b| Repository::open_backend(Arc::new(b), key.clone()))
    {
        Ok(r) => r,
        // An init the cut interrupted: no repository, which the operator was told (init
        // failed), and nothing was acknowledged.
        Err(e)
            if !life.init_done
                && matches!(
                    e,
                    store::Error::NoRepository { .. } | store::Error::Io { .. }
                ) =>
        {
            return Ok(())
        }
        Err(e) => bail!("the repository does not open after the cut: {e}"),
    };
    let scratch = dir.join("scratch");
    if !life.init_done {
        // Whatever a half-done init left must not be damage.
        let v = store::ops::verify::verify(
            &repo,
            &store::ops::verify::VerifyOptions {
                read_data: true,
                scratch_dir: scratch.clone(),
            },
        )?;
        if !v.ok {
            bail!("verify after an interrupted init: {:?}", v.problems);
        }
        return Ok(());
    }
    // The plugin's next start opens the journal (cutting a torn tail).
    let mut w = repo
        .writer("after the cut", Durability::Fsync)
        .map_err(|e| anyhow!("the journal does not reopen after the cut: {e}"))?;
    rep.torn_tails_cut += u64::from(w.recovery_note().is_some());
    let candidates = match life.in_flight {
        true => vec![life.acked, life.acked + 1],
        false => vec![life.acked],
    };
    let held = check_repository(&repo, &scratch, expected, &candidates)?;
    if held > life.acked {
        rep.in_flight_landed += 1;
    }
    let newest = held
        .checked_sub(1)
        .and_then(|i| trace.get(i))
        .map_or(0, |b| b.data_version);
    if check_random_version(&repo, &scratch, expected, newest, rng)?.is_some() {
        rep.older_versions_checked += 1;
    }
    // lightningd restarts: it re-sends the batch it did not commit, and goes on.
    for (i, b) in trace
        .iter()
        .enumerate()
        .skip(life.acked)
        .take(AFTER_RESTART)
    {
        let o = w
            .append(b)
            .map_err(|e| anyhow!("after the restart, batch {i}: {e}"))?;
        if i < held && !b.is_pragma_only() && !matches!(o, AppendOutcome::Superseded { .. }) {
            bail!("after the restart, the re-sent batch {i} was {o:?}, not a supersede");
        }
    }
    let upto = life.acked + AFTER_RESTART;
    let w = Mutex::new(w);
    compact(&repo, &w, copts).context("the first compaction after the restart")?;
    drop(w);
    let out = scratch.join("after-restart.sqlite3");
    let _ = std::fs::remove_file(&out);
    restore(&repo, &out, &RestoreTarget::Latest).context("restore after the restart")?;
    let got = store::dump::dump(&out)?;
    std::fs::remove_file(&out)?;
    if got != expected.dump_at(upto)? {
        bail!("after the restart and a compaction, the newest state is not lightningd's database after {upto} batches");
    }
    Ok(())
}
