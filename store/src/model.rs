//! A reference-model check of the store, driven by bytes (from a fuzzer or a seeded generator).
//!
//! The bytes choose a sequence of operations on a real repository in a temporary directory,
//! behind a [`FaultBackend`]: append batches, lightningd crashing before COMMIT (the next session
//! re-sends the version with other statements), injected ENOSPC/EIO, process crashes (with torn
//! appends), restarts, compactions, prunes and restores. A model tracks what lightningd committed.
//! Every restore must equal the model's database at the version restored, and no operation may
//! panic. [`run`] returns a description of the first divergence.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use rusqlite::Connection;

use crate::backend::dir::DirBackend;
use crate::backend::fault::{Fault, FaultBackend, FaultPlan};
use crate::backend::{Backend, Durability};
use crate::journal::{Batch, JournalWriter};
use crate::ops::compact::{compact, CompactOptions};
use crate::ops::prune::{self, Retention};
use crate::ops::restore::{restore, RestoreTarget};
use crate::repo::Repository;
use crate::ConfigBody;

struct Bytes<'a> {
    data: &'a [u8],
    pos: usize,
}

impl Bytes<'_> {
    fn next(&mut self) -> Option<u8> {
        let b = self.data.get(self.pos).copied();
        self.pos += 1;
        b
    }
}

/// The committed state: key -> value, per data_version.
#[derive(Default)]
struct Model {
    /// states[v] = table contents after batch v was committed (states[0] = empty).
    states: Vec<BTreeMap<u8, String>>,
}

fn batch_for(version: u32, key: u8, value: &str) -> Batch {
    let mut writes = Vec::new();
    if version == 1 {
        writes.push(
            "CREATE TABLE vars (name TEXT PRIMARY KEY, val TEXT, intval INTEGER)".to_string(),
        );
        writes.push("CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT)".to_string());
        writes.push("INSERT INTO vars (name, intval) VALUES ('data_version', 0)".to_string());
    }
    writes.push(format!(
        "INSERT OR REPLACE INTO t (k, v) VALUES ({key}, '{value}')"
    ));
    writes.push(format!(
        "UPDATE vars SET intval = intval + 1 WHERE name = 'data_version' AND intval = {}",
        version - 1
    ));
    Batch {
        data_version: version,
        writes,
    }
}

fn read_table(path: &Path) -> Result<BTreeMap<u8, String>, String> {
    let conn = Connection::open(path).map_err(|e| e.to_string())?;
    let mut st = conn
        .prepare("SELECT k, v FROM t ORDER BY k")
        .map_err(|e| e.to_string())?;
    let rows = st
        .query_map([], |r| {
            Ok((r.get::<_, i64>(0)? as u8, r.get::<_, String>(1)?))
        })
        .map_err(|e| e.to_string())?;
    rows.collect::<Result<_, _>>().map_err(|e| e.to_string())
}

/// Run the operations `data` describes in `dir`. `Err` describes a divergence from the model.
pub fn run(data: &[u8], dir: &Path) -> Result<usize, String> {
    let mut input = Bytes { data, pos: 0 };
    let root = dir.join("repo");
    let inner: Arc<dyn Backend> = Arc::new(DirBackend::create(&root).map_err(|e| e.to_string())?);
    let plan = FaultPlan::new();
    let backend: Arc<dyn Backend> = Arc::new(FaultBackend::new(inner, plan.clone()));
    let repo = Repository::init_backend(backend.clone(), None, false, ConfigBody::default())
        .map_err(|e| e.to_string())?;
    let mut model = Model {
        states: vec![BTreeMap::new()],
    };
    let mut writer: Option<Arc<Mutex<JournalWriter>>> = None;
    // A batch the backup holds that lightningd has not committed (its version, the next one).
    let mut pending_uncommitted = false;
    let mut ops = 0usize;
    let mut restores = 0u32;
    let mut pruned = false;
    let trace = std::env::var_os("MODEL_TRACE").is_some();
    let opts = CompactOptions {
        cache_dir: dir.join("cache"),
        holder: "model".into(),
    };

    while let Some(op) = input.next() {
        ops += 1;
        if writer.is_none() {
            if plan.crashed() {
                plan.restart(); // the process died: a new one starts
            }
            let fired = plan.fired();
            match repo.writer("model", Durability::Flush) {
                Ok(w) => writer = Some(Arc::new(Mutex::new(w))),
                Err(e) => {
                    if plan.fired() == fired {
                        return Err(format!("writer open failed with no fault injected: {e}"));
                    }
                    plan.restart();
                    continue;
                }
            }
        }
        let Some(w) = writer.clone() else { continue };
        let committed = (model.states.len() - 1) as u32;
        if trace {
            eprintln!(
                "op {ops}: kind {} committed {committed} backend ops {} log tail {:?}",
                op % 8,
                plan.ops(),
                plan.log().last()
            );
        }
        match op % 8 {
            // Append a batch (most operations).
            0..=3 => {
                let key = input.next().unwrap_or(0) % 16;
                let v = committed + 1;
                let value = format!("v{v}-{}", input.next().unwrap_or(0));
                let b = batch_for(v, key, &value);
                let res = w.lock().map_err(|_| "poisoned")?.append(&b);
                match res {
                    Ok(_) => {
                        pending_uncommitted = false;
                        let mut next = model.states.last().cloned().unwrap_or_default();
                        next.insert(key, value);
                        model.states.push(next);
                    }
                    Err(_) => {
                        // Not acknowledged: lightningd stops without committing.
                        writer = None;
                        plan.restart();
                    }
                }
            }
            // lightningd crashes after the hook answered, before COMMIT: the backup holds a
            // batch the node lacks; the next session re-sends that version with other statements.
            4 => {
                let v = committed + 1;
                let b = batch_for(v, 99, "never committed");
                if w.lock().map_err(|_| "poisoned")?.append(&b).is_ok() {
                    pending_uncommitted = true;
                }
                writer = None;
            }
            // A fault or crash at one of the next few mutating operations, then a restart.
            5 => {
                let k = u64::from(input.next().unwrap_or(0) % 4) + 1;
                let fault = match input.next().unwrap_or(0) % 4 {
                    0 => Fault::NoSpace,
                    1 => Fault::Eio,
                    2 => Fault::Crash,
                    _ => Fault::CrashTorn,
                };
                plan.set(plan.ops() + k, fault);
            }
            6 => {
                let res = compact(&repo, &w, &opts);
                let _ = res; // an injected error may fail it; the repository must stay whole
                if plan.crashed() {
                    writer = None;
                    plan.restart();
                }
                if input.next().unwrap_or(0).is_multiple_of(4) {
                    if let Ok(p) = prune::plan(
                        &repo,
                        &Retention {
                            keep_last: 2,
                            ..Default::default()
                        },
                    ) {
                        pruned |= !p.remove_segments.is_empty() || !p.remove.is_empty();
                        let _ = prune::apply(&repo, &p, "model prune");
                    }
                    if plan.crashed() {
                        writer = None;
                        plan.restart();
                    }
                }
            }
            // Restore the newest state or a version, compare with the model.
            _ => {
                if plan.crashed() {
                    writer = None;
                    plan.restart();
                }
                plan.restart(); // no fault during the check
                restores += 1;
                let out = dir.join(format!("restore-{restores}.sqlite3"));
                let pick = input.next().unwrap_or(0);
                let target = if pick.is_multiple_of(2) || committed == 0 {
                    RestoreTarget::Latest
                } else {
                    RestoreTarget::Version(1 + u32::from(pick) % committed)
                };
                match restore(&repo, &out, &target) {
                    Ok(rep) => {
                        let v = rep.data_version as usize;
                        // The newest state may include one acknowledged batch lightningd did not
                        // commit (it will be superseded); anything else must match the model.
                        if pending_uncommitted && v == model.states.len() {
                            // fine: the uncommitted batch
                        } else {
                            let want = model.states.get(v).ok_or_else(|| {
                                format!("restore gave data_version {v}, beyond {committed}")
                            })?;
                            let got = read_table(&out)?;
                            if &got != want {
                                return Err(format!("restore at {v}: got {got:?}, want {want:?}"));
                            }
                            if target == RestoreTarget::Latest && v != committed as usize {
                                return Err(format!(
                                    "latest restore gave {v}, committed {committed}"
                                ));
                            }
                        }
                        let _ = std::fs::remove_file(&out);
                    }
                    Err(crate::Error::EmptyRepository) if committed == 0 => {}
                    Err(crate::Error::VersionNotAvailable { .. }) if pruned => {}
                    Err(e) => {
                        return Err(format!(
                            "restore {target:?} failed: {e}\n{}",
                            describe(&repo)
                        ))
                    }
                }
                plan.restart();
            }
        }
    }
    Ok(ops)
}

/// The repository's snapshots and journal, for a failure message.
fn describe(repo: &Repository) -> String {
    let mut out = String::new();
    if let Ok(ms) = crate::manifest::list(repo) {
        for m in ms {
            out.push_str(&format!(
                "snapshot {} v{} seg {}\n",
                m.id, m.data_version, m.journal_segment
            ));
        }
    }
    if let Ok(segs) = crate::journal::reader::segments(repo) {
        for s in segs {
            let recs = crate::journal::reader::read_segment(
                repo,
                &s,
                crate::journal::segment::Recovery::TruncateTornTail,
            );
            let vs: Vec<String> = recs
                .map(|r| {
                    r.iter()
                        .map(|r| {
                            format!(
                                "{}{}",
                                r.batch.data_version,
                                if r.supersedes { "S" } else { "" }
                            )
                        })
                        .collect()
                })
                .unwrap_or_else(|e| vec![e.to_string()]);
            out.push_str(&format!(
                "segment {} sealed {}: {}\n",
                s.seq,
                s.sealed,
                vs.join(" ")
            ));
        }
    }
    out
}
