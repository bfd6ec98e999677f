//! What the plugin refuses, through the real plugin under the emulator, and what the operator
//! sees then (ARCHITECTURE.md, "Threat model: trust only the key"):
//! - `foreign_*`: a `backup.lock` whose second destination already holds ANOTHER node's
//!   repository. Synchronous: the first db_write is refused with an error naming that
//!   destination. Asynchronous: every hook continues, `backup-status` shows the destination
//!   `refused`. Either way not one byte of the other repository changes.
//! - an oversize batch (its record above the journal's 64 MiB limit) is answered with an error,
//!   never `continue`, and the backup still restores lightningd's database before it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use emulator::{load_trace, run_trace_session, DbWrite, Emulator, HookReply, SessionOptions};
use serde_json::{json, Value};
use store::ops::restore::{restore, RestoreTarget};
use store::{BackupUrl, ConfigBody, Durability, MasterKey, Repository};

fn plugin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_cln-backup"))
}

fn testdata(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../testdata")
        .join(name)
}

fn trace(n: u32) -> Vec<DbWrite> {
    load_trace(&testdata(&format!("trace-s{n}.jsonl"))).unwrap()
}

/// Every file under `root`, with its bytes.
fn files(root: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                todo.push(p);
            } else {
                out.insert(
                    p.strip_prefix(root).unwrap().to_path_buf(),
                    std::fs::read(&p).unwrap(),
                );
            }
        }
    }
    out
}

/// Another node's repository at `root`: its own key, a journal with the first 200 batches of
/// session 1, and a snapshot.
fn other_nodes_repository(root: &Path) -> BackupUrl {
    let url = BackupUrl::File(root.to_path_buf());
    let key = MasterKey::generate();
    let repo = Repository::init(&url, Some(&key), true, ConfigBody::default()).unwrap();
    let batches = store::journal::trace::load(&testdata("trace-s1.jsonl")).unwrap();
    let writer = std::sync::Mutex::new(repo.writer("other node", Durability::Flush).unwrap());
    for b in &batches[..200] {
        writer.lock().unwrap().append(b).unwrap();
    }
    let cache = root.with_extension("cache");
    store::ops::compact::compact(
        &repo,
        &writer,
        &store::ops::compact::CompactOptions {
            cache_dir: cache,
            holder: "other node".into(),
        },
    )
    .unwrap();
    url
}

/// This node: an encrypted primary, and `second` listed as a destination in `mode`.
fn node(tmp: &Path, second: &BackupUrl, mode: &str) -> (PathBuf, BackupUrl, MasterKey) {
    let net = tmp.join("regtest");
    std::fs::create_dir(&net).unwrap();
    let primary = BackupUrl::File(tmp.join("primary"));
    let key = MasterKey::generate();
    Repository::init(&primary, Some(&key), true, ConfigBody::default()).unwrap();
    let lock = json!({
        "backend_url": primary.to_string(),
        "destinations": [{"url": second.to_string(), "mode": mode}],
    });
    std::fs::write(net.join("backup.lock"), lock.to_string()).unwrap();
    std::fs::write(net.join("backup.key"), key.to_file_text()).unwrap();
    (net, primary, key)
}

fn assert_restores(tmp: &Path, url: &BackupUrl, key: &MasterKey, want: &Path, name: &str) {
    let repo = Repository::open(url, Some(key.clone())).unwrap();
    let out = tmp.join(format!("{name}.sqlite3"));
    restore(&repo, &out, &RestoreTarget::Latest).unwrap();
    assert_eq!(
        store::dump::dump(&out).unwrap(),
        store::dump::dump(want).unwrap(),
        "{name}"
    );
}

#[test]
fn foreign_sync_destination_stops_the_first_write_and_is_untouched() {
    let tmp = tempfile::tempdir().unwrap();
    let second = tmp.path().join("other-node");
    let other = other_nodes_repository(&second);
    let before = files(&second);
    let (net, _, _) = node(tmp.path(), &other, "sync");

    let opts = SessionOptions {
        fresh: true,
        timeout: Duration::from_secs(120),
        ..Default::default()
    };
    let rep = run_trace_session(&plugin(), &net, &trace(1), &opts).unwrap();
    // lightningd stops at its very first write, without committing it.
    let stop = rep.stop.expect("the first db_write must be refused");
    assert_eq!((stop.index, rep.continued), (0, 0));
    let HookReply::Error(e) = &stop.reply else {
        panic!("not an error: {:?}", stop.reply)
    };
    let msg = e["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains(&format!("{other} does not hold the expected repository")),
        "{msg}"
    );
    assert!(msg.contains("synchronous destination"), "{msg}");
    // lightningd's log says the same.
    assert!(
        rep.logs
            .iter()
            .any(|l| l.message.contains(&other.to_string())),
        "{:?}",
        rep.logs
    );
    // The other node's repository: not one byte changed, nothing added or deleted.
    assert!(files(&second) == before, "the other repository changed");
}

#[test]
fn foreign_async_destination_is_refused_in_backup_status_and_untouched() {
    let tmp = tempfile::tempdir().unwrap();
    let second = tmp.path().join("other-node");
    let other = other_nodes_repository(&second);
    let before = files(&second);
    let (net, primary, key) = node(tmp.path(), &other, "async");

    let s1 = trace(1);
    let mut ld = Emulator::spawn(&plugin(), &net, &[]).unwrap();
    ld.set_timeout(Duration::from_secs(120));
    ld.getmanifest().unwrap();
    for b in &s1[..9] {
        let r = ld.db_write(b.data_version, &b.writes).unwrap();
        assert!(r.is_continue(), "{r:?}\n{}", ld.log_text());
    }
    ld.init(
        &[("backup-compact-journal-bytes".to_string(), json!(0))],
        &net,
    )
    .unwrap();
    // Every hook continues: an asynchronous destination never stops the node.
    for (i, b) in s1.iter().enumerate().skip(9) {
        let r = ld.db_write(b.data_version, &b.writes).unwrap();
        assert!(r.is_continue(), "batch {i}: {r:?}\n{}", ld.log_text());
    }
    let r = ld.rpc_ok("backup-compact", json!({})).unwrap();
    assert!(r["snapshot"].is_string(), "{r}");
    let deadline = Instant::now() + Duration::from_secs(60);
    let dest: Value = loop {
        let st = ld.rpc_ok("backup-status", json!({})).unwrap();
        let d = st["destinations"][1].clone();
        if d["state"] == "refused" {
            break d;
        }
        assert!(Instant::now() < deadline, "never shown refused: {st}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(dest["url"], json!(other.to_string()), "{dest}");
    assert_eq!(dest["mode"], "async", "{dest}");
    let why = dest["last_error"].as_str().unwrap_or_default();
    assert!(
        why.contains(&other.to_string()) && why.contains("nothing is written or deleted there"),
        "{dest}"
    );
    // lightningd's log says so too (the plugin looks at its destinations every second).
    let line = format!(
        "asynchronous destination {other}: refused: {other} is not this repository's destination"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ld.log_text().contains(&line) {
        assert!(Instant::now() < deadline, "{}", ld.log_text());
        ld.rpc_ok("backup-status", json!({})).unwrap();
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(ld.close_stdin_and_wait().unwrap().success());

    // Not one byte of the other node's repository changed; this node's backup is whole.
    assert!(files(&second) == before, "the other repository changed");
    assert_restores(
        tmp.path(),
        &primary,
        &key,
        &testdata("db-s1.sqlite3"),
        "primary",
    );
}

#[test]
fn an_oversize_batch_is_refused_and_the_backup_restores_the_state_before_it() {
    let tmp = tempfile::tempdir().unwrap();
    let net = tmp.path().join("regtest");
    std::fs::create_dir(&net).unwrap();
    let root = tmp.path().join("repo");
    let url = BackupUrl::File(root.clone());
    let key = MasterKey::generate();
    Repository::init(&url, Some(&key), true, ConfigBody::default()).unwrap();
    std::fs::write(
        net.join("backup.lock"),
        json!({"backend_url": url.to_string()}).to_string(),
    )
    .unwrap();
    std::fs::write(net.join("backup.key"), key.to_file_text()).unwrap();

    let s1 = trace(1);
    let mut ld = Emulator::spawn(&plugin(), &net, &[]).unwrap();
    ld.set_timeout(Duration::from_secs(300));
    ld.getmanifest().unwrap();
    for b in &s1[..9] {
        assert!(ld
            .db_write(b.data_version, &b.writes)
            .unwrap()
            .is_continue());
    }
    ld.init(&[], &net).unwrap();
    for b in &s1[9..] {
        assert!(ld
            .db_write(b.data_version, &b.writes)
            .unwrap()
            .is_continue());
    }
    let size_before = files(&root);
    // One statement of 64 MiB + 1 byte: its record is above the limit whatever the framing.
    let v = s1.last().unwrap().data_version + 1;
    let big = format!(
        "INSERT INTO vars (name, val) VALUES ('x', '{}')",
        "a".repeat(64 << 20)
    );
    let bump = format!(
        "UPDATE vars SET intval = intval + 1 WHERE name = 'data_version' AND intval = {}",
        v - 1
    );
    let r = ld.db_write(v, &[big, bump]).unwrap();
    let HookReply::Error(e) = &r else {
        panic!("an oversize batch must be answered with an error, got {r:?}")
    };
    let msg = e["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains(&format!("batch for data_version {v} is"))
            && msg.contains("above the")
            && msg.contains("-byte limit of a journal record"),
        "{msg}"
    );
    assert!(
        ld.log_text().contains("limit of a journal record"),
        "{}",
        ld.log_text()
    );
    let _ = ld.close_stdin_and_wait();
    // Nothing of it was written; the backup restores lightningd's database before it.
    let after = files(&root);
    let journal = |m: &BTreeMap<PathBuf, Vec<u8>>| -> Vec<(PathBuf, usize)> {
        m.iter()
            .filter(|(p, _)| p.starts_with("journal"))
            .map(|(p, b)| {
                (
                    p.clone(),
                    b.iter().rposition(|&x| x != 0).map_or(0, |i| i + 1),
                )
            })
            .collect()
    };
    assert_eq!(journal(&after), journal(&size_before), "the journal grew");
    assert_restores(tmp.path(), &url, &key, &testdata("db-s1.sqlite3"), "before");
}
