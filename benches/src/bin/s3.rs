//! S3 destinations: hook latency beside the local directory, and what a snapshot costs on object
//! storage in objects, requests and bytes.
//!
//! `cargo run --release -p cln-backup-benches --bin s3 -- --plugin target/release/cln-backup
//!  [--scale]`
//!
//! Needs an S3 server: `.ci/s3-server.sh start && . target/ci-s3.env` (SeaweedFS on 127.0.0.1),
//! or any `CLN_BACKUP_S3_URL` with its `AWS_*` keys; every run writes under a fresh prefix.
//! - Hook p50/p99 over the fixture traces s1, s2, s3 (three sessions, the first a fresh node)
//!   through the real plugin under the benches driver, encrypted, with `backup.lock` naming: a
//!   local directory; S3 as the primary (synchronous); a local directory, then S3 asynchronous;
//!   a local directory, then S3 synchronous. Beside them, in one loop over the same record bytes
//!   (each step just after the other, so both see the same moment): a bare append + fdatasync in
//!   the same filesystem, a bare PUT of a new key, and a bare PUT with If-None-Match of a new key
//!   (what a journal append on S3 is) to the same server: the limit of a synchronous S3 hook.
//! - The asynchronous destination's lag in `backup-status` at the end of each session (after its
//!   last hook), and how long it then took to catch up.
//! - Per snapshot on S3 (in-process, S3 the primary, encrypted): the s1 trace journaled and
//!   compacted (a first snapshot), then s2 and s3 and compacted again (an incremental one); with
//!   `--scale`, the scale trace's first 29,000 batches then the rest. Objects created and deleted,
//!   HTTP requests by kind ([`S3Backend::request_counts`]), bytes uploaded, seconds.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cln_backup_benches::driver::Driver;
use cln_backup_benches::measure::{bare_append_one, latency_row, summary};
use cln_backup_benches::{arg, bench_data, flag, load_trace, mb, testdata};
use serde_json::{json, Value};
use store::backend::s3::{RequestCounts, S3Backend};
use store::backend::Backend;
use store::config::ConfigBody;
use store::journal::{Batch, Record};
use store::ops::compact::{compact, CompactOptions};
use store::{BackupUrl, Durability, MasterKey, Repository};

fn main() -> anyhow::Result<()> {
    let base = std::env::var("CLN_BACKUP_S3_URL").map_err(|_| {
        anyhow::anyhow!(
            "CLN_BACKUP_S3_URL is not set: .ci/s3-server.sh start && . target/ci-s3.env"
        )
    })?;
    let s3 = S3Url::parse(&base)?;
    let sessions: Vec<Vec<Batch>> = ["trace-s1.jsonl", "trace-s2.jsonl", "trace-s3.jsonl"]
        .iter()
        .map(|t| load_trace(&testdata(t)))
        .collect::<anyhow::Result<_>>()?;
    let flat: Vec<Batch> = sessions.concat();
    let endpoint = s3
        .params
        .iter()
        .find(|(k, _)| k == "endpoint")
        .map_or("AWS S3", |(_, v)| v.as_str())
        .to_string();
    println!("S3 server: {endpoint}, bucket {}", s3.bucket);
    println!();
    println!("| path | calls | p50 µs | p99 µs | max µs | p50 vs bare append+fdatasync |");
    println!("|---|---|---|---|---|---|");
    let dir = tempfile::tempdir_in(bench_data())?;
    let probe = S3Backend::open(&s3.bucket, &s3.fresh_prefix("bare"), &s3.params)?;
    let (append, put, create) = bare_paired(dir.path(), &probe, &flat)?;
    let p50 = summary(&append).0;
    let row = |what: &str, v: &[Duration]| println!("{}", latency_row(what, v, p50));
    row(
        "bare append (`write` at end of file + `fdatasync`), same bytes, same filesystem",
        &append,
    );
    row(
        "bare PUT of a new key, same bytes, same S3 server (each just after the append above)",
        &put,
    );
    row(
        "bare PUT with If-None-Match of a new key (one journal append on S3: the limit of a synchronous S3 hook)",
        &create,
    );
    let mut lags = Vec::new();
    if let Some(plugin) = arg("--plugin") {
        for setup in [
            Setup::Local,
            Setup::S3,
            Setup::LocalS3Async,
            Setup::LocalS3Sync,
        ] {
            let (hooks, lag) = plugin_sessions(&plugin, &s3, setup, &sessions)?;
            row(
                &format!("cln-backup plugin (benches driver), {}", setup.label()),
                &hooks,
            );
            lags.extend(lag);
        }
    }
    if !lags.is_empty() {
        println!();
        println!("Asynchronous S3 destination at the end of each session (backup-status after the last hook):");
        println!();
        println!("| session | lag batches | lag seconds | caught up after (s) |");
        println!("|---|---|---|---|");
        for l in &lags {
            println!(
                "| {} | {} | {:.3} | {} |",
                l.session,
                l.batches,
                l.seconds,
                l.caught_up.map_or("not within 60 s".into(), |d| format!(
                    "{:.2}",
                    d.as_secs_f64()
                ))
            );
        }
    }
    println!();
    println!("Per snapshot on S3 (S3 the primary, encrypted; requests as sent, retries and list pages included):");
    println!();
    println!("| trace | snapshot | batches journaled in all | objects created | objects deleted (stream parts not counted) | MB of stream parts folded into a sealed segment and deleted | requests | PUT | PUT If-None-Match | GET | GET range | HEAD | LIST pages | DELETE (bulk POST) | MB uploaded | seconds |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    let tmp = tempfile::tempdir_in(bench_data())?;
    snapshots_on_s3(
        &s3,
        tmp.path(),
        "s1, then s2+s3",
        &[&sessions[0], &flat[sessions[0].len()..]],
    )?;
    if flag("--scale") {
        let scale = load_trace(&testdata("trace-scale-30k.jsonl.zst"))?;
        let cut = scale.len().saturating_sub(1014);
        snapshots_on_s3(
            &s3,
            tmp.path(),
            "scale 30k",
            &[&scale[..cut], &scale[cut..]],
        )?;
    }
    Ok(())
}

/// The server of `CLN_BACKUP_S3_URL`, to derive fresh prefixes from.
struct S3Url {
    bucket: String,
    prefix: String,
    params: Vec<(String, String)>,
}

impl S3Url {
    fn parse(url: &str) -> anyhow::Result<S3Url> {
        match BackupUrl::parse(url)? {
            BackupUrl::S3 {
                bucket,
                prefix,
                params,
            } => Ok(S3Url {
                bucket,
                prefix,
                params,
            }),
            other => anyhow::bail!("CLN_BACKUP_S3_URL is not an s3:// URL: {other}"),
        }
    }

    fn fresh_prefix(&self, what: &str) -> String {
        let mut r = [0u8; 6];
        store::crypto::fill_random(&mut r);
        format!("{}/bench-{what}-{}", self.prefix, hex::encode(r))
            .trim_start_matches('/')
            .to_string()
    }

    fn url(&self, prefix: &str) -> String {
        let q: Vec<String> = self
            .params
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        format!("s3://{}/{prefix}?{}", self.bucket, q.join("&"))
    }
}

/// For each batch's record bytes: append + fdatasync, then a PUT of a new key, then a PUT with
/// If-None-Match of a new key.
fn bare_paired(
    dir: &Path,
    s3: &S3Backend,
    batches: &[Batch],
) -> anyhow::Result<(Vec<Duration>, Vec<Duration>, Vec<Duration>)> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(dir.join("bare.log"))?;
    f.flush()?;
    std::fs::File::open(dir)?.sync_all()?;
    let (mut append, mut put, mut create) = (Vec::new(), Vec::new(), Vec::new());
    let mut off = 0u64;
    for (i, b) in batches.iter().enumerate() {
        let rec = Record {
            batch: b.clone(),
            supersedes: false,
            time_ms: 0,
        }
        .encode();
        append.push(bare_append_one(&f, &rec, &mut off)?);
        let t = Instant::now();
        s3.put(&format!("packs/put-{i:08}"), &rec)?;
        put.push(t.elapsed());
        let t = Instant::now();
        if !s3.put_if_absent(&format!("packs/create-{i:08}"), &rec)? {
            anyhow::bail!("packs/create-{i:08} already existed under a fresh prefix");
        }
        create.push(t.elapsed());
    }
    Ok((append, put, create))
}

#[derive(Clone, Copy)]
enum Setup {
    Local,
    S3,
    LocalS3Async,
    LocalS3Sync,
}

impl Setup {
    fn label(self) -> &'static str {
        match self {
            Setup::Local => "local directory only",
            Setup::S3 => "S3 the primary (synchronous)",
            Setup::LocalS3Async => "local directory + S3 asynchronous",
            Setup::LocalS3Sync => "local directory + S3 synchronous",
        }
    }
}

struct Lag {
    session: usize,
    batches: u64,
    seconds: f64,
    caught_up: Option<Duration>,
}

/// The three sessions through the plugin with `setup` in backup.lock: every hook's round trip,
/// and the asynchronous destination's lag after each session's last hook.
fn plugin_sessions(
    plugin: &str,
    s3: &S3Url,
    setup: Setup,
    sessions: &[Vec<Batch>],
) -> anyhow::Result<(Vec<Duration>, Vec<Lag>)> {
    let dir = tempfile::tempdir_in(bench_data())?;
    let net = dir.path().join("regtest");
    std::fs::create_dir_all(&net)?;
    let key = MasterKey::generate();
    let local = dir.path().join("backup");
    let local_url = format!("file://{}", local.display());
    let s3_prefix = s3.fresh_prefix("hook");
    let s3_url = s3.url(&s3_prefix);
    let primary = match setup {
        Setup::S3 => &s3_url,
        _ => &local_url,
    };
    Repository::init(
        &BackupUrl::parse(primary)?,
        Some(&key),
        true,
        ConfigBody::default(),
    )?;
    let lock = match setup {
        Setup::Local | Setup::S3 => json!({ "backend_url": primary }),
        Setup::LocalS3Async => {
            json!({"backend_url": primary, "destinations": [{"url": s3_url, "mode": "async"}]})
        }
        Setup::LocalS3Sync => {
            // A synchronous copy must start as a copy: give it the repository's config (an
            // asynchronous one is caught up by comparison when it opens).
            let cfg = std::fs::read(local.join("config"))?;
            S3Backend::open(&s3.bucket, &s3_prefix, &s3.params)?.put("config", &cfg)?;
            json!({"backend_url": primary, "destinations": [{"url": s3_url, "mode": "sync"}]})
        }
    };
    std::fs::write(net.join("backup.lock"), serde_json::to_vec(&lock)?)?;
    std::fs::write(net.join("backup.key"), key.to_file_text())?;
    let options = json!({"backup-compact-journal-bytes": 0});
    // The plugin runs with its cwd in the network directory: an absolute path.
    let cmd = vec![std::fs::canonicalize(plugin)?.display().to_string()];
    let mut hooks = Vec::new();
    let mut lags = Vec::new();
    let mut slowest = Vec::new();
    for (i, s) in sessions.iter().enumerate() {
        let mut d = Driver::spawn(&cmd, &net)?;
        d.call("getmanifest", json!({"allow-deprecated-apis": true}))?;
        let pre = if i == 0 { 9 } else { 3 };
        let mut worst = (0, Duration::ZERO);
        for (j, b) in s.iter().enumerate() {
            if j == pre {
                d.init(&net, &options)?;
            }
            let h = d.db_write(b)?;
            if h > worst.1 {
                worst = (j, h);
            }
            hooks.push(h);
        }
        slowest.push(format!(
            "session {} hook {} of {}: {:.1} ms",
            i + 1,
            worst.0 + 1,
            s.len(),
            worst.1.as_secs_f64() * 1e3
        ));
        if let Setup::LocalS3Async = setup {
            let st = status(&mut d)?;
            let dest = &st["destinations"][1];
            let t = Instant::now();
            let mut caught_up = None;
            while t.elapsed() < Duration::from_secs(60) {
                let now = status(&mut d)?;
                let n = &now["destinations"][1];
                if n["lag_batches"] == 0 && n["lag_writes"] == 0 && n["state"] == "live" {
                    caught_up = Some(t.elapsed());
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            lags.push(Lag {
                session: i + 1,
                batches: dest["lag_batches"].as_u64().unwrap_or(0),
                seconds: dest["lag_seconds"].as_f64().unwrap_or(0.0),
                caught_up,
            });
        }
        d.close()?;
    }
    println!(
        "<!-- {}: the slowest hook of each session: {} -->",
        setup.label(),
        slowest.join("; ")
    );
    Ok((hooks, lags))
}

fn status(d: &mut Driver) -> anyhow::Result<Value> {
    let r = d.call("backup-status", json!({}))?;
    r.get("result")
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("backup-status failed: {r}"))
}

/// Bytes in the repository's unsealed journal streams (one part object per journaled batch).
fn stream_bytes(b: &S3Backend) -> anyhow::Result<u64> {
    Ok(b.stream_list()?.iter().map(|s| s.size).sum())
}

/// The repository's object names (stream parts, one per journaled batch, are not objects of
/// the Backend API: their deletion shows in the DELETE column).
fn object_names(b: &S3Backend) -> anyhow::Result<BTreeSet<String>> {
    let mut out = BTreeSet::new();
    for dir in ["", "packs/", "index/", "snapshots/", "journal/"] {
        out.extend(b.list(dir)?.into_iter().map(|o| o.name));
    }
    Ok(out)
}

/// Journal each part of `parts` into a fresh S3 repository and compact after it: one row per
/// snapshot.
fn snapshots_on_s3(s3: &S3Url, tmp: &Path, trace: &str, parts: &[&[Batch]]) -> anyhow::Result<()> {
    let prefix = s3.fresh_prefix("snap");
    let backend = Arc::new(S3Backend::open(&s3.bucket, &prefix, &s3.params)?);
    let key = MasterKey::generate();
    let repo = Repository::init_backend(backend.clone(), Some(&key), true, ConfigBody::default())?;
    let w = Mutex::new(repo.writer("s3 bench", Durability::Fsync)?);
    let opts = CompactOptions {
        cache_dir: tmp.join(format!("cache-{prefix}").replace('/', "-")),
        holder: "s3 bench compaction".into(),
    };
    let mut journaled = 0usize;
    for (i, part) in parts.iter().enumerate() {
        for b in part.iter() {
            w.lock()
                .map_err(|_| anyhow::anyhow!("writer lock poisoned"))?
                .append(b)?;
        }
        journaled += part.len();
        let names_before = object_names(&backend)?;
        let streams_before = stream_bytes(&backend)?;
        let before = backend.request_counts();
        let t = Instant::now();
        let rep = compact(&repo, &w, &opts)?;
        let secs = t.elapsed().as_secs_f64();
        let c = backend.request_counts().since(&before);
        let names_after = object_names(&backend)?;
        let folded = streams_before.saturating_sub(stream_bytes(&backend)?);
        if rep.snapshot.is_none() {
            anyhow::bail!("no snapshot made: {:?}", rep.note);
        }
        let created = names_after.difference(&names_before).count();
        let deleted = names_before.difference(&names_after).count();
        SnapshotCost {
            journaled,
            created,
            deleted,
            folded,
            requests: c,
            secs,
        }
        .print(trace, if i == 0 { "first" } else { "incremental" });
    }
    Ok(())
}

/// What one compaction on S3 cost.
struct SnapshotCost {
    journaled: usize,
    created: usize,
    deleted: usize,
    folded: u64,
    requests: RequestCounts,
    secs: f64,
}

impl SnapshotCost {
    fn print(&self, trace: &str, which: &str) {
        let c = &self.requests;
        println!(
            "| {trace} | {which} | {} | {} | {} | {:.2} | {} | {} | {} | {} | {} | {} | {} | {} | {:.2} | {:.2} |",
            self.journaled,
            self.created,
            self.deleted,
            mb(self.folded),
            c.total(),
            c.put,
            c.put_create,
            c.get,
            c.get_range,
            c.head,
            c.list,
            c.delete + c.bulk_delete,
            mb(c.bytes_up),
            self.secs,
        );
    }
}
