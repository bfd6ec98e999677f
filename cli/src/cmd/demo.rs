//! `backup-cli demo`: the real `cln-backup` plugin under the lightningd emulator, on three real
//! lightningd sessions bundled in this binary, then checks. Nothing is needed at run time but
//! the plugin binary.
//!
//! Steps: init a file:// repository for a fake network dir (backup.lock, backup.key); session 1
//! (fresh node: 9 db_write before init); session 2 (a restart) with `backup-compact` started in
//! the middle while db_write calls keep flowing; session 3; list snapshots; restore the newest
//! state and compare it with lightningd's real database after session 3 (store::dump); restore
//! the snapshot and compare it with the bundled traces replayed directly to its data_version.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use emulator::{DbWrite, Emulator, SessionOptions};
use serde::Serialize;
use serde_json::{json, Value};
use store::ops::restore::{restore, RestoreTarget};
use store::{ConfigBody, Repository};

use super::init::new_key;
use crate::{node, out, Global};

const TRACES: [&[u8]; 3] = [
    include_bytes!("../../../testdata/trace-s1.jsonl"),
    include_bytes!("../../../testdata/trace-s2.jsonl"),
    include_bytes!("../../../testdata/trace-s3.jsonl"),
];
const EXPECTED_S3: &[u8] = include_bytes!("../../../testdata/db-s3.sqlite3");

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Work here (an empty or new directory, kept afterwards) instead of a temporary directory.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// The plugin binary (default: cln-backup next to backup-cli).
    #[arg(long, value_name = "PATH")]
    pub plugin: Option<PathBuf>,
}

#[derive(Serialize)]
struct Step {
    step: String,
    ok: bool,
    detail: String,
}

#[derive(Serialize)]
struct DemoOutput {
    ok: bool,
    dir: String,
    plugin: String,
    steps: Vec<Step>,
}

struct Demo {
    json: bool,
    steps: Vec<Step>,
}

impl Demo {
    fn step(&mut self, step: &str, ok: bool, detail: String) {
        if !self.json {
            println!("[{}] {step}: {detail}", if ok { " ok " } else { "FAIL" });
        }
        self.steps.push(Step {
            step: step.into(),
            ok,
            detail,
        });
    }
}

fn parse_trace(bytes: &[u8], n: usize) -> Result<Vec<DbWrite>> {
    let text = std::str::from_utf8(bytes).context("bundled trace is not UTF-8")?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: Value = serde_json::from_str(l)?;
            let data_version = v["data_version"]
                .as_u64()
                .and_then(|x| u32::try_from(x).ok())
                .with_context(|| format!("bundled trace s{n}: no data_version"))?;
            let writes = v["writes"]
                .as_array()
                .with_context(|| format!("bundled trace s{n}: no writes"))?
                .iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect();
            Ok(DbWrite {
                data_version,
                writes,
            })
        })
        .collect()
}

fn plugin_path(a: &DemoArgs) -> Result<PathBuf> {
    let p = match &a.plugin {
        Some(p) => p.clone(),
        None => std::env::current_exe()
            .context("locating backup-cli")?
            .parent()
            .map(|d| d.join("cln-backup"))
            .context("locating backup-cli's directory")?,
    };
    if !p.is_file() {
        return Err(crate::exit::usage(format!(
            "the plugin binary {} does not exist: build it (`cargo build --release -p cln-backup`) \
             or give --plugin PATH",
            p.display()
        )));
    }
    Ok(p)
}

fn median(d: &[Duration]) -> Duration {
    let mut v = d.to_vec();
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

fn interesting_logs(em_logs: &[emulator::LogLine]) -> String {
    em_logs
        .iter()
        .map(|l| l.message.as_str())
        .filter(|m| {
            m.contains("Versions match")
                || m.contains("out of date")
                || m.contains("lost some state")
                || m.contains("not applied")
        })
        .take(2)
        .collect::<Vec<_>>()
        .join("; ")
}

pub fn run(g: &Global, a: &DemoArgs) -> Result<()> {
    let plugin = plugin_path(a)?;
    let tmp;
    let work = match &a.dir {
        Some(d) => {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
            if std::fs::read_dir(d)?.next().is_some() {
                return Err(crate::exit::usage(format!(
                    "{} is not empty: give an empty or new directory",
                    d.display()
                )));
            }
            d.clone()
        }
        None => {
            tmp = tempfile::Builder::new()
                .prefix("cln-backup-demo")
                .tempdir()?;
            tmp.path().to_path_buf()
        }
    };
    let mut demo = Demo {
        json: g.json,
        steps: Vec::new(),
    };
    let res = run_steps(&mut demo, &plugin, &work);
    if let Err(e) = &res {
        demo.step("error", false, format!("{e:#}"));
    }
    let ok = res.is_ok() && demo.steps.iter().all(|s| s.ok);
    if g.json {
        out::json(&DemoOutput {
            ok,
            dir: work.display().to_string(),
            plugin: plugin.display().to_string(),
            steps: demo.steps,
        })?;
    } else {
        println!("{}", if ok { "PASS" } else { "FAIL" });
    }
    if !ok {
        bail!("demo FAILED (see the steps above)");
    }
    Ok(())
}

fn run_steps(demo: &mut Demo, plugin: &Path, work: &Path) -> Result<()> {
    let net = work.join("node").join("regtest");
    std::fs::create_dir_all(&net)?;
    let repo_path = work.join("repo");
    let url = store::BackupUrl::File(repo_path.clone());
    let traces: Vec<Vec<DbWrite>> = TRACES
        .iter()
        .enumerate()
        .map(|(i, t)| parse_trace(t, i + 1))
        .collect::<Result<_>>()?;

    // 1. init: the repository, backup.key and backup.lock, as `backup-cli init --lightning-dir`.
    let g = Global {
        json: true,
        key_file: None,
        key_phrase: false,
        lightning_dir: Some(net.clone()),
        connect_timeout: 30.0,
    };
    let nk = new_key(&g, true, Some(&net))?;
    nk.write()?;
    let repo = Repository::init(&url, nk.key.as_ref(), true, ConfigBody::default())?;
    node::write_lock(&net, &url.to_string(), repo.identity())?;
    demo.step(
        "init",
        true,
        format!(
            "encrypted repository {url}; {} and {} in {}",
            node::LOCK_FILE_NAME,
            crate::keys::KEY_FILE_NAME,
            net.display()
        ),
    );

    // 2. Session 1: a fresh node.
    let opts = SessionOptions {
        timeout: Duration::from_secs(120),
        ..Default::default()
    };
    let s1 = &traces[0];
    let r = emulator::run_trace_session(plugin, &net, s1, &opts)?;
    let ok = r.stop.is_none() && r.continued == s1.len();
    demo.step(
        "session 1 (fresh node)",
        ok,
        format!(
            "{} of {} db_write calls answered continue ({} before init); median hook {}; {}",
            r.continued,
            s1.len(),
            opts.pre_init(),
            out::duration(median(&r.latencies)),
            r.stop
                .as_ref()
                .map(|s| format!("stopped at data_version {}: {}", s.data_version, s.reply))
                .unwrap_or_else(|| "no stop".into())
        ),
    );
    if !ok {
        bail!("session 1 stopped; plugin stderr: {}", r.stderr);
    }

    // 3. Session 2: a restart, with backup-compact started halfway while hooks keep flowing.
    let s2 = &traces[1];
    let mut em = Emulator::spawn(plugin, &net, &[])?;
    em.set_timeout(Duration::from_secs(120));
    em.getmanifest()?;
    let half = s2.len() / 2;
    let (_, stop, _) = em.run_batches(&s2[..half], 3, &[])?;
    if let Some(s) = stop {
        bail!(
            "session 2 stopped at data_version {}: {}; plugin stderr: {}",
            s.data_version,
            s.reply,
            em.stderr_text()
        );
    }
    let started = Instant::now();
    let id = em.rpc_start("backup-compact", json!({}))?;
    let mut during = 0;
    for b in &s2[half..] {
        let reply = em.db_write(b.data_version, &b.writes)?;
        if !reply.is_continue() {
            bail!(
                "session 2 stopped at data_version {}: {reply}; plugin stderr: {}",
                b.data_version,
                em.stderr_text()
            );
        }
        during += 1;
    }
    let reply = em.rpc_wait(&id)?;
    let took = started.elapsed();
    let logs = interesting_logs(&em.logs);
    em.close_stdin_and_wait()?;
    let result = reply.get("result").cloned();
    let snap_ok = result
        .as_ref()
        .is_some_and(|r| r.get("snapshot").is_some_and(|s| s.is_string()));
    demo.step(
        "session 2 (restart) + backup-compact",
        snap_ok,
        format!(
            "{} db_write calls answered continue; backup-compact made snapshot {} at data_version {} \
             while {during} more calls were served ({}); plugin log: {logs}",
            s2.len(),
            result
                .as_ref()
                .and_then(|r| r["snapshot"].as_str())
                .unwrap_or("none"),
            result
                .as_ref()
                .map(|r| r["data_version"].to_string())
                .unwrap_or_default(),
            out::duration(took)
        ),
    );
    if !snap_ok {
        bail!("backup-compact answered {reply}");
    }

    // 4. Session 3.
    let s3 = &traces[2];
    let r = emulator::run_trace_session(
        plugin,
        &net,
        s3,
        &SessionOptions {
            fresh: false,
            ..opts.clone()
        },
    )?;
    let ok = r.stop.is_none() && r.continued == s3.len();
    demo.step(
        "session 3 (restart)",
        ok,
        format!(
            "{} of {} db_write calls answered continue; plugin log: {}",
            r.continued,
            s3.len(),
            interesting_logs(&r.logs)
        ),
    );
    if !ok {
        bail!("session 3 stopped; plugin stderr: {}", r.stderr);
    }

    // 5. Snapshots.
    let snaps = store::ops::snapshots::list(&repo)?;
    let stats = store::ops::stats::stats(&repo)?;
    demo.step(
        "snapshots",
        !snaps.is_empty(),
        format!(
            "{} snapshot(s): {}; repository {} ({} journal since the last snapshot)",
            snaps.len(),
            snaps
                .iter()
                .map(|s| format!(
                    "{} at data_version {} ({} database, {} stored)",
                    s.id,
                    s.data_version,
                    out::bytes(s.db_size),
                    out::bytes(s.stored_bytes)
                ))
                .collect::<Vec<_>>()
                .join(", "),
            out::bytes(stats.backup_size),
            out::bytes(stats.journal_bytes_since_snapshot)
        ),
    );

    // 6. Restore the newest state; compare with lightningd's real database after session 3.
    let expected = work.join("expected-db-s3.sqlite3");
    std::fs::write(&expected, EXPECTED_S3)?;
    let newest = work.join("restored-newest.sqlite3");
    let t = Instant::now();
    let rr = restore(&repo, &newest, &RestoreTarget::Latest)?;
    let same = store::dump::dump(&newest)? == store::dump::dump(&expected)?;
    demo.step(
        "restore newest",
        same && rr.integrity_check == "ok",
        format!(
            "data_version {}, integrity_check {}, {} in {}; {} lightningd's own database after session 3",
            rr.data_version,
            rr.integrity_check,
            out::bytes(rr.db_size),
            out::duration(t.elapsed()),
            if same { "identical to" } else { "DIFFERENT FROM" }
        ),
    );

    // 7. Restore the snapshot; it must equal the traces replayed directly up to its version.
    if let Some(s) = snaps.last() {
        let at_snap = work.join("restored-snapshot.sqlite3");
        let rs = restore(&repo, &at_snap, &RestoreTarget::Snapshot(s.id.clone()))?;
        let direct = work.join("replayed-directly.sqlite3");
        let mut rp = store::replay::Replayer::open(&direct, true)?;
        for b in traces.iter().flatten() {
            if b.data_version > s.data_version {
                break;
            }
            rp.apply(&store::journal::Record {
                batch: store::Batch {
                    data_version: b.data_version,
                    writes: b.writes.clone(),
                },
                supersedes: false,
                time_ms: 0,
            })?;
        }
        rp.finish(&direct)?;
        let same = store::dump::dump(&at_snap)? == store::dump::dump(&direct)?;
        demo.step(
            "restore snapshot",
            same && rs.data_version == s.data_version && rs.integrity_check == "ok",
            format!(
                "snapshot {} restored at data_version {}, integrity_check {}; {} the bundled traces replayed to that version",
                s.id,
                rs.data_version,
                rs.integrity_check,
                if same { "identical to" } else { "DIFFERENT FROM" },
            ),
        );
    }
    Ok(())
}
