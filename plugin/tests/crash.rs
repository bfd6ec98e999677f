//! Crash and fault campaigns (issue 6): what a backup is worth on its worst day.
//!
//! The failure they look for: lightningd commits a batch the backup does not hold (the plugin
//! answered `continue` too early, or a crash or an I/O error lost an acknowledged batch), or the
//! repository is left in a state that verify rejects or that restores to a database lightningd
//! never had. Either would make a restore after a disk loss silently wrong: lost funds.
//!
//! - `kill9_campaign`: the real plugin binary under the lightningd emulator, SIGKILLed at random
//!   moments while it streams the s1-s3 traces, compacts and is pruned beside (see
//!   `support/crash_campaign.rs`). Seeded: `CRASH_SEED=<seed>` replays the same choices (kill
//!   delays, options, compaction calls; the plugin's progress at a given delay still varies),
//!   `CRASH_ROUNDS` changes its length. The long run is `cargo run --release -p
//!   cln-backup-benches --bin crash-campaign`.
//! - `fault_*`: the plugin's write path (`JournalWriter::append`; `continue` iff it returned Ok,
//!   and fail-stop after the first error) plus compaction and prune, with every mutating backend
//!   operation in turn failing without effect (ENOSPC, EIO: `FaultBackend`), the process dying
//!   before it (with half of it written when it is an append), or the operation taking effect
//!   and then reporting EIO (a failed fdatasync or directory sync: `LateBackend` below). After
//!   each: restart (the journal reopened, a torn tail cut), verify, restore, compare with
//!   lightningd's database at the last acknowledged batch, or the refused one where its write
//!   may have landed; then lightningd re-sends the refused batch and the backup goes on.

#[path = "support/crash_campaign.rs"]
mod campaign;
#[path = "support/power_campaign.rs"]
mod power;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use campaign::{check_repository, CampaignOptions, Expected};
use store::backend::dir::DirBackend;
use store::backend::fault::{Fault, FaultBackend, FaultPlan};
use store::backend::{Backend, LockGuard, ObjectInfo, Stream};
use store::ops::compact::{compact, CompactOptions};
use store::ops::prune::{self, Retention};
use store::ops::restore::{restore, RestoreTarget};
use store::{AppendOutcome, Batch, ConfigBody, Durability, Repository};

fn testdata() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata")
}

/// Print a campaign's report; fail with its failures and seed.
fn no_failures(seed: u64, summary: &str, details: &str, failures: &[String]) {
    println!("{summary}\n{details}");
    assert!(
        failures.is_empty(),
        "seed {seed:#x}: {}",
        failures.join("\n")
    );
}

#[test]
fn kill9_campaign() {
    let seed = campaign::seed_from_env();
    let rounds = std::env::var("CRASH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(25);
    println!("crash campaign seed {seed:#x} (CRASH_SEED={seed:#x} to reproduce)");
    let rep = campaign::run(&CampaignOptions {
        plugin: PathBuf::from(env!("CARGO_BIN_EXE_cln-backup")),
        testdata: testdata(),
        seed,
        rounds,
        max_time: None,
        kill_window_ms: (5, 600),
        work_dir: None,
        verbose: true,
        // The cli's binary may be stale in a `cargo test -p cln-backup` build: the long run
        // (benches crash-campaign --cli) runs `backup-cli prune` processes and kills them.
        prune_cli: None,
    })
    .unwrap();
    no_failures(seed, &rep.summary(), &rep.details(), &rep.failures);
    assert_eq!(rep.kills, rounds);
    // The campaign did what it claims: kills landed on pending hooks, compaction and prune ran.
    assert!(rep.kills_with_batch_pending > 0, "{}", rep.details());
    assert!(rep.snapshots_made > 0, "{}", rep.details());
    assert!(rep.older_states_checked > 0, "{}", rep.details());
    assert!(rep.batches_acknowledged > 500, "{}", rep.details());
}

/// The power-loss campaign (`support/power_campaign.rs`), a short run: cuts aimed at init,
/// appends, compactions and prunes, below the directory backend, each followed by verify,
/// restores compared with lightningd's databases, and the node going on. `POWER_SEED` changes
/// the choices (the default is fixed, so the run covers the same cases each time),
/// `POWER_CASES` the length. The long run is `cargo run --release -p cln-backup-benches --bin
/// power-campaign`.
#[test]
fn power_loss_campaign() {
    let seed = match std::env::var("POWER_SEED") {
        Ok(_) => campaign::seed_from("POWER_SEED"),
        Err(_) => 0x5eed_0fc0_ffee,
    };
    let cases = std::env::var("POWER_CASES")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(40);
    let dir = fast_tempdir();
    let rep = power::run(&power::PowerOptions {
        trace: Arc::new(campaign::load_traces(&testdata()).unwrap()),
        seed,
        cases,
        max_time: None,
        work_dir: dir.path().to_path_buf(),
        verbose: true,
    })
    .unwrap();
    no_failures(seed, &rep.summary(), &rep.details(), &rep.failures);
    assert_eq!(rep.cases, cases);
    // The run did what it claims: cuts landed in every kind of step, lost unsynced data, and
    // acknowledged batches were checked.
    let [init, appends, compactions, prunes, _] = rep.cuts;
    assert!(
        init > 0 && appends > 0 && compactions > 0 && prunes > 0,
        "{}",
        rep.details()
    );
    assert!(
        rep.changes_lost > 0 && rep.entries_lost > 0,
        "{}",
        rep.details()
    );
    assert!(rep.acknowledged > 1000, "{}", rep.details());
    assert!(
        rep.snapshots_made > 0 && rep.prunes_completed > 0,
        "{}",
        rep.details()
    );
}

/// Batches of the scenario, compaction every `COMPACT_EVERY`, prune after the second one.
const SCENARIO_BATCHES: usize = 32;
const COMPACT_EVERY: usize = 8;
/// Batches appended after the restart, to show the repository is still usable.
const AFTER_RESTART: usize = 5;

fn new_repo(dir: &Path) -> PathBuf {
    let root = dir.join("repo");
    Repository::init_backend(
        Arc::new(DirBackend::create(&root).unwrap()),
        None,
        false,
        ConfigBody::default(),
    )
    .unwrap();
    root
}

fn plain(root: &Path) -> Repository {
    Repository::open_backend(Arc::new(DirBackend::open(root).unwrap()), None).unwrap()
}

/// Batches sent after the first refusal, as a lightningd that went on would send them.
const AFTER_REFUSAL: usize = 3;

/// What one life of the plugin did.
struct Life {
    /// Batches acknowledged (answered `continue`).
    acked: usize,
    /// The prune completed.
    pruned: bool,
}

/// The plugin's life over a faulty backend: open the journal at the first db_write, append
/// each batch (answer `continue` iff Ok), compact every few batches (a failed compaction is
/// logged, the hooks go on), prune once. After the first refused batch it sends a few more,
/// and the journal writer must refuse each (its fail-stop, not one reimplemented here; the
/// plugin's own is `every_db_write_after_a_refusal_is_refused` in it.rs).
fn plugin_life(backend: Arc<dyn Backend>, trace: &[Batch], work: &Path) -> Life {
    let repo = Repository::open_backend(backend, None).unwrap();
    let mut life = Life {
        acked: 0,
        pruned: false,
    };
    let Ok(w) = repo.writer("fault campaign", Durability::Flush) else {
        return life;
    };
    let w = Mutex::new(w);
    let opts = CompactOptions {
        cache_dir: work.join("cache"),
        holder: "fault campaign compaction".into(),
    };
    for (k, b) in trace.iter().take(SCENARIO_BATCHES).enumerate() {
        if k > 0 && k % COMPACT_EVERY == 0 {
            let _ = compact(&repo, &w, &opts);
            if k == 2 * COMPACT_EVERY {
                let keep = Retention {
                    keep_last: 1,
                    ..Default::default()
                };
                life.pruned = prune::plan(&repo, &keep)
                    .and_then(|p| prune::apply(&repo, &p, "prune"))
                    .is_ok_and(|r| r.removed_snapshots > 0);
            }
        }
        if w.lock().unwrap().append(b).is_err() {
            for (j, later) in trace.iter().enumerate().skip(k).take(AFTER_REFUSAL) {
                if let Ok(o) = w.lock().unwrap().append(later) {
                    panic!("batch {j} was stored ({o:?}) after batch {k} was refused");
                }
            }
            return life;
        }
        life.acked = k + 1;
    }
    life
}

#[derive(Debug, Default)]
struct FaultTally {
    cases: u64,
    /// The fault hit a batch's append: that batch was refused.
    refused_batch: u64,
    /// The fault hit compaction or prune: every batch was acknowledged anyway.
    absorbed: u64,
    /// Crash cases where the refused batch was found in the repository after the restart.
    refused_but_written: u64,
    /// Restarts that cut a torn tail.
    torn_tails_cut: u64,
}

/// What goes wrong at operation N.
#[derive(Clone, Copy, Debug)]
enum Kind {
    /// `store::backend::fault`: the operation fails without effect (ENOSPC, EIO), or the process
    /// dies before it (with half an append written, for `CrashTorn`).
    Plan(Fault),
    /// The operation takes effect, then reports EIO: a failed fdatasync after the write, or a
    /// failed directory sync after the rename. The caller must treat it as not done, yet it is.
    ErrorAfterEffect,
}

enum Injector {
    Plan(FaultPlan),
    Late(Arc<Late>),
}

impl Injector {
    fn fired(&self) -> u64 {
        match self {
            Injector::Plan(p) => p.fired(),
            Injector::Late(l) => l.fired.load(Ordering::SeqCst),
        }
    }
    fn op(&self, n: u64) -> String {
        let log = match self {
            Injector::Plan(p) => p.log(),
            Injector::Late(l) => l.log.lock().unwrap().clone(),
        };
        log.get(n as usize - 1).cloned().unwrap_or_default()
    }
}

fn faulty(root: &Path, inj: &Injector) -> Arc<dyn Backend> {
    let inner: Arc<dyn Backend> = Arc::new(DirBackend::open(root).unwrap());
    match inj {
        Injector::Plan(p) => Arc::new(FaultBackend::new(inner, p.clone())),
        Injector::Late(l) => Arc::new(LateBackend {
            inner,
            late: l.clone(),
        }),
    }
}

/// Counts mutating operations as `FaultBackend` does; the one numbered `at` is carried out, then
/// fails with EIO.
#[derive(Default)]
struct Late {
    at: u64,
    ops: AtomicU64,
    fired: AtomicU64,
    log: Mutex<Vec<String>>,
}

impl Late {
    fn after(&self, what: String) -> store::Result<()> {
        let n = self.ops.fetch_add(1, Ordering::SeqCst) + 1;
        self.log.lock().unwrap().push(format!("{n} {what}"));
        if n != self.at {
            return Ok(());
        }
        self.fired.fetch_add(1, Ordering::SeqCst);
        Err(store::Error::io(
            "sync after",
            what,
            std::io::Error::from_raw_os_error(5),
        ))
    }
}

struct LateBackend {
    inner: Arc<dyn Backend>,
    late: Arc<Late>,
}

impl Backend for LateBackend {
    fn url(&self) -> String {
        self.inner.url()
    }
    fn put(&self, name: &str, data: &[u8]) -> store::Result<()> {
        self.inner.put(name, data)?;
        self.late.after(format!("put {name}"))
    }
    fn put_if_absent(&self, name: &str, data: &[u8]) -> store::Result<bool> {
        let r = self.inner.put_if_absent(name, data)?;
        self.late.after(format!("put_if_absent {name}"))?;
        Ok(r)
    }
    fn get(&self, name: &str) -> store::Result<Vec<u8>> {
        self.inner.get(name)
    }
    fn get_range(&self, name: &str, offset: u64, len: u64) -> store::Result<Vec<u8>> {
        self.inner.get_range(name, offset, len)
    }
    fn list(&self, prefix: &str) -> store::Result<Vec<ObjectInfo>> {
        self.inner.list(prefix)
    }
    fn delete(&self, name: &str) -> store::Result<()> {
        self.inner.delete(name)?;
        self.late.after(format!("delete {name}"))
    }
    fn stream_open(&self, name: &str, durability: Durability) -> store::Result<Box<dyn Stream>> {
        let inner = self.inner.stream_open(name, durability)?;
        self.late.after(format!("stream_open {name}"))?;
        Ok(Box::new(LateStream {
            inner,
            late: self.late.clone(),
            name: name.to_string(),
            failed: false,
        }))
    }
    fn stream_read(&self, name: &str) -> store::Result<Vec<u8>> {
        self.inner.stream_read(name)
    }
    fn stream_list(&self) -> store::Result<Vec<ObjectInfo>> {
        self.inner.stream_list()
    }
    fn stream_delete(&self, name: &str) -> store::Result<()> {
        self.inner.stream_delete(name)?;
        self.late.after(format!("stream_delete {name}"))
    }
    fn lock(&self, name: &str, holder: &str) -> store::Result<Box<dyn LockGuard>> {
        self.inner.lock(name, holder)
    }
}

/// After a late error it refuses further appends, as the `Stream` contract asks (and as
/// `DirBackend` does after a failed fdatasync).
struct LateStream {
    inner: Box<dyn Stream>,
    late: Arc<Late>,
    name: String,
    failed: bool,
}

impl LateStream {
    fn refuse(&self) -> store::Result<()> {
        match self.failed {
            true => Err(store::Error::io(
                "append",
                self.name.clone(),
                std::io::Error::other("refused after a failed sync"),
            )),
            false => Ok(()),
        }
    }
}

impl Stream for LateStream {
    fn len(&self) -> u64 {
        self.inner.len()
    }
    fn append(&mut self, data: &[u8]) -> store::Result<()> {
        self.refuse()?;
        self.inner.append(data)?;
        let r = self
            .late
            .after(format!("append {} +{}", self.name, data.len()));
        self.failed = r.is_err();
        r
    }
    fn truncate(&mut self, len: u64) -> store::Result<()> {
        self.refuse()?;
        self.inner.truncate(len)?;
        let r = self.late.after(format!("truncate {} to {len}", self.name));
        self.failed = r.is_err();
        r
    }
}

/// The fault campaign tests logic under injected faults, not the medium: on a tmpfs when there is
/// one (hundreds of cases, each publishing and restoring with fsync), else in the temp dir.
fn fast_tempdir() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    match shm.is_dir() {
        true => tempfile::tempdir_in(shm).or_else(|_| tempfile::tempdir()),
        false => tempfile::tempdir(),
    }
    .unwrap()
}

fn fault_campaign(fault: Kind) -> FaultTally {
    let trace = Arc::new(campaign::load_traces(&testdata()).unwrap());
    let dir = fast_tempdir();
    let mut expected = Expected::new(trace.clone(), dir.path());

    // How many mutating operations the fault-free life makes.
    let total = {
        let case = dir.path().join("count");
        let root = new_repo(&case);
        let plan = FaultPlan::new();
        let life = plugin_life(faulty(&root, &Injector::Plan(plan.clone())), &trace, &case);
        assert_eq!(life.acked, SCENARIO_BATCHES);
        assert!(life.pruned, "the fault-free life prunes a snapshot");
        std::fs::remove_dir_all(&case).unwrap();
        plan.ops()
    };
    assert!(
        total > SCENARIO_BATCHES as u64 + 20,
        "only {total} operations"
    );

    let mut tally = FaultTally::default();
    for n in 1..=total {
        let case = dir.path().join(format!("case-{n}"));
        let root = new_repo(&case);
        let inj = match fault {
            Kind::Plan(f) => Injector::Plan(FaultPlan::at(n, f)),
            Kind::ErrorAfterEffect => Injector::Late(Arc::new(Late {
                at: n,
                ..Default::default()
            })),
        };
        let acked = plugin_life(faulty(&root, &inj), &trace, &case).acked;
        let tag = format!("{fault:?} at operation {n} of {total} ({})", inj.op(n));
        assert_eq!(inj.fired(), 1, "{tag}: the fault did not fire");
        // The next process.
        if let Injector::Plan(p) = &inj {
            p.restart();
        }
        let repo = plain(&root);
        // Where the refused write may have landed, the backup may hold the refused batch.
        let candidates = match fault {
            Kind::Plan(Fault::NoSpace | Fault::Eio) => vec![acked],
            _ if acked == SCENARIO_BATCHES => vec![acked],
            _ => vec![acked, acked + 1],
        };
        // The next plugin process opens the journal (cutting a torn tail) at its first db_write.
        let mut w = repo.writer("restart", Durability::Flush).unwrap();
        tally.torn_tails_cut += u64::from(w.recovery_note().is_some());
        let held = check_repository(&repo, &case.join("scratch"), &mut expected, &candidates)
            .unwrap_or_else(|e| panic!("{tag}: {e:#}"));
        tally.cases += 1;
        if acked < SCENARIO_BATCHES {
            tally.refused_batch += 1;
        } else {
            tally.absorbed += 1;
        }
        tally.refused_but_written += u64::from(held > acked);

        // lightningd re-sends the refused batch: the backup goes on.
        for (k, b) in trace.iter().enumerate().skip(acked).take(AFTER_RESTART) {
            let o = w
                .append(b)
                .unwrap_or_else(|e| panic!("{tag}: after the restart, batch {k}: {e}"));
            if k == acked && held > acked && !b.is_pragma_only() {
                assert!(
                    matches!(o, AppendOutcome::Superseded { .. }),
                    "{tag}: {o:?}"
                );
            }
        }
        drop(w);
        let out = case.join("after-restart.sqlite3");
        restore(&repo, &out, &RestoreTarget::Latest)
            .unwrap_or_else(|e| panic!("{tag}, after the restart: {e}"));
        assert!(
            store::dump::dump(&out).unwrap() == expected.dump_at(acked + AFTER_RESTART).unwrap(),
            "{tag}: after the restart the backup is not lightningd's database"
        );
        std::fs::remove_dir_all(&case).unwrap();
    }
    println!("fault campaign {fault:?}: {total} operations, {tally:?}");
    assert_eq!(tally.cases, total);
    assert!(tally.refused_batch > 0, "{tally:?}");
    if !matches!(fault, Kind::Plan(Fault::Crash | Fault::CrashTorn)) {
        // Errors in compaction and prune never reach the hook.
        assert!(tally.absorbed > 0, "{tally:?}");
    }
    tally
}

#[test]
fn fault_enospc_at_every_operation() {
    let t = fault_campaign(Kind::Plan(Fault::NoSpace));
    assert_eq!(t.refused_but_written, 0);
}

#[test]
fn fault_eio_at_every_operation() {
    let t = fault_campaign(Kind::Plan(Fault::Eio));
    assert_eq!(t.refused_but_written, 0);
}

#[test]
fn fault_crash_at_every_operation() {
    fault_campaign(Kind::Plan(Fault::Crash));
}

#[test]
fn fault_crash_with_short_write_at_every_operation() {
    let t = fault_campaign(Kind::Plan(Fault::CrashTorn));
    assert!(t.torn_tails_cut > 0, "{t:?}");
}

#[test]
fn fault_error_after_the_write_landed_at_every_operation() {
    let t = fault_campaign(Kind::ErrorAfterEffect);
    // Refused batches that were in the journal anyway: superseded when lightningd re-sent them.
    assert!(t.refused_but_written > 0, "{t:?}");
}

/// Found by the long crash campaign (seed 0x18ea9290fdb883a3, a `backup-cli prune` killed):
/// prune deletes the removed manifests oldest first, so a crash between two deletions leaves a
/// removed delta snapshot whose parent is gone. Verify then fails ("its parent snapshot ... is
/// missing") until a later prune completes, and that snapshot cannot be restored.
#[test]
fn crash_during_prune_never_orphans_a_delta_snapshot() {
    let trace = campaign::load_traces(&testdata()).unwrap();
    let dir = fast_tempdir();
    let template = new_repo(dir.path());
    {
        let repo = plain(&template);
        let w = Mutex::new(repo.writer("w", Durability::Flush).unwrap());
        let opts = CompactOptions {
            cache_dir: dir.path().join("tcache"),
            holder: "c".into(),
        };
        for chunk in trace[..400].chunks(100) {
            for b in chunk {
                w.lock().unwrap().append(b).unwrap();
            }
            compact(&repo, &w, &opts).unwrap();
        }
    }
    let snaps = store::ops::snapshots::list(&plain(&template)).unwrap();
    assert!(
        snaps.iter().filter(|s| s.parent.is_some()).count() >= 2,
        "a chain of deltas to prune: {snaps:?}"
    );
    let mut orphaned = Vec::new();
    let mut completed = None;
    for k in 1..200 {
        let case = dir.path().join(format!("prune-{k}"));
        copy_dir(&template, &case);
        let plan = FaultPlan::at(k, Fault::Crash);
        let repo =
            Repository::open_backend(faulty(&case, &Injector::Plan(plan.clone())), None).unwrap();
        let keep = Retention {
            keep_last: 1,
            ..Default::default()
        };
        let res = prune::plan(&repo, &keep).and_then(|p| prune::apply(&repo, &p, "prune"));
        let finished = res.is_ok() && plan.fired() == 0;
        plan.restart();
        let v = store::ops::verify::verify(
            &plain(&case),
            &store::ops::verify::VerifyOptions {
                read_data: false,
                scratch_dir: case.join("scratch"),
            },
        )
        .unwrap();
        if !v.ok {
            orphaned.push(format!("crash at prune operation {k}: {:?}", v.problems));
        }
        std::fs::remove_dir_all(&case).unwrap();
        if finished {
            completed = Some(k);
            break;
        }
    }
    assert!(orphaned.is_empty(), "{}", orphaned.join("\n"));
    // The loop crashed the prune at each step until one ran to the end.
    let steps = completed.expect("no prune completed within 200 operations");
    assert!(steps > 5, "the prune made only {} operations", steps - 1);
}

use testsvc::copy_dir;
