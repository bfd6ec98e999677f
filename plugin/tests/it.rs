//! The real `cln-backup` binary under the lightningd emulator, against the real v26.06.6 traces.
//!
//! What must hold, as lightningd's operators see it: every batch answered `continue` is in the
//! backup (restore equals lightningd's own database after each session); every failure (no
//! backup.lock, a backup behind or ahead, a repository that cannot be written) is an error reply,
//! so lightningd stops without committing; a crash between the answer and lightningd's COMMIT is
//! superseded, never replayed twice; compaction runs beside the hooks.

use std::path::{Path, PathBuf};
use std::time::Duration;

use emulator::{
    load_trace, run_trace_session, DbWrite, Emulator, HookReply, SessionOptions, SessionReport,
};
use serde_json::{json, Value};
use store::ops::restore::{restore, RestoreTarget};
use store::{BackupUrl, ConfigBody, MasterKey, Repository};

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

/// A node's network directory with backup.lock pointing at a fresh repository.
struct Node {
    _tmp: tempfile::TempDir,
    net: PathBuf,
    repo: PathBuf,
    key: Option<MasterKey>,
}

impl Node {
    fn new(encrypted: bool) -> Node {
        let tmp = tempfile::tempdir().unwrap();
        let net = tmp.path().join("regtest");
        let repo = tmp.path().join("backup");
        std::fs::create_dir(&net).unwrap();
        let key = encrypted.then(MasterKey::generate);
        Repository::init(
            &BackupUrl::File(repo.clone()),
            key.as_ref(),
            encrypted,
            ConfigBody::default(),
        )
        .unwrap();
        let url = format!("file://{}", repo.display());
        std::fs::write(
            net.join("backup.lock"),
            json!({ "backend_url": url }).to_string(),
        )
        .unwrap();
        if let Some(k) = &key {
            std::fs::write(net.join("backup.key"), k.to_file_text()).unwrap();
        }
        Node {
            _tmp: tmp,
            net,
            repo,
            key,
        }
    }

    fn session(
        &self,
        batches: &[DbWrite],
        fresh: bool,
        init_options: Vec<(String, Value)>,
    ) -> SessionReport {
        let opts = SessionOptions {
            fresh,
            init_options,
            timeout: Duration::from_secs(120),
            ..Default::default()
        };
        run_trace_session(&plugin(), &self.net, batches, &opts).unwrap()
    }

    fn open(&self) -> Repository {
        Repository::open(&BackupUrl::File(self.repo.clone()), self.key.clone()).unwrap()
    }

    /// Restore `target` into a new file and return its canonical dump.
    fn restore_dump(&self, target: RestoreTarget) -> String {
        let out = self
            ._tmp
            .path()
            .join(format!("restore-{}.sqlite3", rand_name()));
        restore(&self.open(), &out, &target).unwrap();
        let d = store::dump::dump(&out).unwrap();
        std::fs::remove_file(&out).unwrap();
        d
    }
}

fn rand_name() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::SeqCst).to_string()
}

fn real_dump(n: u32) -> String {
    store::dump::dump(&testdata(&format!("db-s{n}.sqlite3"))).unwrap()
}

fn logs(r: &SessionReport) -> String {
    r.logs
        .iter()
        .map(|l| format!("{}: {}\n", l.level, l.message))
        .collect()
}

fn assert_clean(r: &SessionReport) {
    assert!(
        r.stop.is_none(),
        "stopped: {:?}\n{}{}",
        r.stop,
        logs(r),
        r.stderr
    );
    assert_eq!(r.continued, r.sent);
    assert!(
        r.exit.is_some_and(|e| e.success()),
        "{:?} {}",
        r.exit,
        r.stderr
    );
}

#[test]
fn three_sessions_restore_equals_each_real_database() {
    for encrypted in [false, true] {
        let node = Node::new(encrypted);
        for n in 1..=3 {
            // Encrypted, session 2: flush durability (the journal is re-opened at init).
            let opts = match (encrypted, n) {
                (true, 2) => vec![("backup-durability".to_string(), json!("flush"))],
                _ => vec![],
            };
            let r = node.session(&trace(n), n == 1, opts.clone());
            assert_clean(&r);
            assert!(logs(&r).contains("Versions match up"), "{}", logs(&r));
            let want = if opts.is_empty() {
                "durability fsync"
            } else {
                "durability flush"
            };
            assert!(logs(&r).contains(want), "{}", logs(&r));
            assert_eq!(
                node.restore_dump(RestoreTarget::Latest),
                real_dump(n),
                "session {n}, encrypted {encrypted}"
            );
        }
        // Nothing in an encrypted repository is readable as SQL.
        if encrypted {
            for e in walk(&node.repo) {
                let bytes = std::fs::read(&e).unwrap();
                assert!(
                    !bytes.windows(12).any(|w| w == b"INSERT INTO "),
                    "plaintext in {}",
                    e.display()
                );
            }
        }
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn manifest_touches_nothing_and_unknown_methods_are_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let mut em = Emulator::spawn(&plugin(), tmp.path(), &[]).unwrap();
    let m = em.getmanifest().unwrap();
    assert_eq!(m["hooks"], json!(["db_write"]));
    assert_eq!(
        (m["dynamic"].clone(), m["nonnumericids"].clone()),
        (json!(false), json!(true))
    );
    let names: Vec<&str> = m["rpcmethods"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["backup-compact", "backup-status", "backup-snapshots"]
    );
    let r = em.rpc("no-such-method", json!([])).unwrap();
    assert_eq!(r["error"]["code"], json!(-32601), "{r}");
    assert!(em.close_stdin_and_wait().unwrap().success());
    // `lightningd --help` sends getmanifest too: nothing may be created or locked.
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);
}

#[test]
fn missing_backup_lock_stops_lightningd_with_the_old_message() {
    let tmp = tempfile::tempdir().unwrap();
    let r =
        run_trace_session(&plugin(), tmp.path(), &trace(1), &SessionOptions::default()).unwrap();
    let stop = r.stop.as_ref().expect("lightningd must stop");
    assert_eq!((stop.index, r.continued), (0, 0));
    let HookReply::Error(e) = &stop.reply else {
        panic!("{:?}", stop.reply)
    };
    let msg = e["message"].as_str().unwrap();
    assert!(
        msg.contains("Could not find backup.lock in the lightning-dir"),
        "{msg}"
    );
    assert!(msg.contains("backup-cli init --lightning-dir"), "{msg}");
    assert!(
        logs(&r).contains("Could not find backup.lock in the lightning-dir"),
        "{}",
        logs(&r)
    );
    assert!(!r.initialized);
}

#[test]
fn backup_behind_and_ahead_stop_lightningd_with_the_versions() {
    // Behind: the backup has s1 only, the node comes back after s2.
    let node = Node::new(false);
    assert_clean(&node.session(&trace(1), true, vec![]));
    let s1_last = trace(1).last().unwrap().data_version;
    let r = node.session(&trace(3), false, vec![]);
    let stop = r.stop.as_ref().expect("stop");
    assert_eq!(stop.index, 0);
    let HookReply::Error(e) = &stop.reply else {
        panic!("{:?}", stop.reply)
    };
    let msg = e["message"].as_str().unwrap();
    assert!(
        msg.contains("Backup is out of date") && msg.contains(&s1_last.to_string()),
        "{msg}"
    );
    assert!(msg.contains("backup-cli init"), "{msg}");
    assert!(logs(&r).contains("Backup is out of date"));

    // Ahead: the backup has s1 and s2, the node restarts on a database from before s2.
    let node = Node::new(false);
    assert_clean(&node.session(&trace(1), true, vec![]));
    assert_clean(&node.session(&trace(2), false, vec![]));
    let r = node.session(&trace(2), false, vec![]);
    let stop = r.stop.as_ref().expect("stop");
    let HookReply::Error(e) = &stop.reply else {
        panic!("{:?}", stop.reply)
    };
    let msg = e["message"].as_str().unwrap();
    assert!(msg.contains("lost some state"), "{msg}");
    assert!(logs(&r).contains("lost some state"));
    // Neither refused session changed the backup.
    assert_eq!(node.restore_dump(RestoreTarget::Latest), real_dump(2));
}

fn bump(v: u32) -> String {
    format!(
        "UPDATE vars SET intval = intval + 1 WHERE name = 'data_version' AND intval = {}",
        v - 1
    )
}

fn vars_named(dump: &str, name: &str) -> usize {
    dump.lines()
        .filter(|l| l.starts_with("vars|") && l.contains(&format!("|'{name}'|")))
        .count()
}

#[test]
fn crash_between_answer_and_commit_keeps_only_the_resent_batch() {
    let node = Node::new(false);
    assert_clean(&node.session(&trace(1), true, vec![]));
    let s2 = trace(2);
    let mut b: Vec<DbWrite> = s2[..10].to_vec();
    let n = b.last().unwrap().data_version + 1;
    b.push(DbWrite {
        data_version: n,
        writes: vec![
            "INSERT INTO vars (name, val) VALUES ('crash-old', 'x')".into(),
            bump(n),
        ],
    });
    // lightningd dies after the plugin answered N, before its COMMIT: kill both.
    let mut em = Emulator::spawn(&plugin(), &node.net, &[]).unwrap();
    em.getmanifest().unwrap();
    let (_, stop, _) = em.run_batches(&b, 3, &[]).unwrap();
    assert!(stop.is_none(), "{stop:?}");
    em.kill().unwrap();
    assert_eq!(
        vars_named(&node.restore_dump(RestoreTarget::Latest), "crash-old"),
        1
    );

    // The next start re-sends N with other statements.
    let again = vec![DbWrite {
        data_version: n,
        writes: vec![
            "INSERT INTO vars (name, val) VALUES ('crash-new', 'y')".into(),
            bump(n),
        ],
    }];
    let r = node.session(&again, false, vec![]);
    assert_clean(&r);
    assert!(
        logs(&r).contains("Last changes not applied"),
        "{}",
        logs(&r)
    );
    let d = node.restore_dump(RestoreTarget::Latest);
    assert_eq!(
        (vars_named(&d, "crash-old"), vars_named(&d, "crash-new")),
        (0, 1)
    );
    assert!(
        d.contains(&format!("|'data_version'|NULL|{n}|")),
        "data_version"
    );
}

#[test]
fn compaction_mid_stream_while_hooks_keep_answering() {
    let node = Node::new(true);
    let s1 = trace(1);
    let mut em = Emulator::spawn(&plugin(), &node.net, &[]).unwrap();
    em.set_timeout(Duration::from_secs(120));
    em.getmanifest().unwrap();
    let half = s1.len() / 2;
    let (_, stop, _) = em
        .run_batches(
            &s1[..half],
            9,
            &[("backup-compact-journal-bytes".into(), json!(0))],
        )
        .unwrap();
    assert!(stop.is_none());
    let id = em.rpc_start("backup-compact", json!({})).unwrap();
    for w in &s1[half..] {
        assert_eq!(
            em.db_write(w.data_version, &w.writes).unwrap(),
            HookReply::Continue
        );
    }
    let reply = em.rpc_wait(&id).unwrap();
    let c = &reply["result"];
    assert!(c["before"]["backupsize"].as_u64().unwrap() > 0, "{reply}");
    assert!(c["after"]["version_count"].as_u64().is_some(), "{reply}");
    let snap_id = c["snapshot"].as_str().expect("a snapshot").to_string();
    let snap_v = c["data_version"].as_u64().unwrap() as u32;
    assert!(
        snap_v as usize >= s1[half - 2].data_version as usize,
        "{reply}"
    );

    let status = em.rpc_ok("backup-status", json!({})).unwrap();
    assert_eq!(
        status["data_version"],
        json!(s1.last().unwrap().data_version),
        "{status}"
    );
    assert_eq!(status["compaction_running"], json!(false));
    assert_eq!(status["last_snapshot"]["id"], json!(snap_id));
    assert_eq!(status["encrypted"], json!(true));
    let snaps = em.rpc_ok("backup-snapshots", json!([])).unwrap();
    assert_eq!(snaps["snapshots"].as_array().unwrap().len(), 1);
    assert!(em.close_stdin_and_wait().unwrap().success());

    // The newest state, and the snapshot itself, are exact.
    assert_eq!(node.restore_dump(RestoreTarget::Latest), real_dump(1));
    let expected = replayed_to(&s1, snap_v, node._tmp.path());
    assert_eq!(
        node.restore_dump(RestoreTarget::Snapshot(snap_id)),
        expected
    );

    // Automatic compaction in the next session (a small threshold), still exact.
    let r = node.session(
        &trace(2),
        false,
        vec![
            ("backup-compact-journal-bytes".into(), json!(100_000)),
            // Normal priority: the emulator streams as fast as it can, and the compaction must
            // finish within the session on a machine busy with other tests.
            ("backup-compaction-nice".into(), json!(0)),
        ],
    );
    assert_clean(&r);
    assert!(
        logs(&r).contains("automatic compaction: snapshot"),
        "{}",
        logs(&r)
    );
    assert_eq!(node.restore_dump(RestoreTarget::Latest), real_dump(2));
}

/// The database lightningd had at `version`: the trace replayed by the store's replayer.
fn replayed_to(batches: &[DbWrite], version: u32, dir: &Path) -> String {
    let path = dir.join(format!("expected-{}.sqlite3", rand_name()));
    let mut rp = store::replay::Replayer::open(&path, true).unwrap();
    for b in batches.iter().filter(|b| b.data_version <= version) {
        let rec = store::journal::Record {
            batch: store::Batch {
                data_version: b.data_version,
                writes: b.writes.clone(),
            },
            supersedes: false,
            time_ms: 0,
        };
        rp.apply(&rec).unwrap();
    }
    rp.finish(&path).unwrap();
    store::dump::dump(&path).unwrap()
}

#[test]
fn full_disk_during_db_write_is_an_error_never_continue() {
    let node = Node::new(false);
    assert_clean(&node.session(&trace(1), true, vec![]));
    // The file size limit stands in for a full disk: writes past it fail with EFBIG (the signal
    // it would raise is ignored, as a shell `trap` is inherited by the exec'd plugin).
    let biggest = walk(&node.repo)
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .max()
        .unwrap();
    let limit_kib = biggest / 1024 + 16;
    let wrapper = node._tmp.path().join("full-disk-plugin.sh");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/bash\ntrap '' XFSZ\nulimit -f {limit_kib}\nexec '{}' \"$@\"\n",
            plugin().display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let opts = SessionOptions {
        fresh: false,
        timeout: Duration::from_secs(120),
        ..Default::default()
    };
    let r = run_trace_session(&wrapper, &node.net, &trace(2), &opts).unwrap();
    let stop = r.stop.as_ref().expect("the disk fills up within s2");
    let HookReply::Error(e) = &stop.reply else {
        panic!("{:?}\n{}", stop.reply, r.stderr)
    };
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("cannot store db_write"),
        "{e}"
    );
    assert!(stop.index > 0, "some calls fit before the limit");
    // Exactly what was answered continue is in the backup, nothing of the refused batch.
    let last_ok = trace(2)[stop.index - 1].data_version;
    let d = node.restore_dump(RestoreTarget::Latest);
    assert!(
        d.contains(&format!("|'data_version'|NULL|{last_ok}|")),
        "restored state is not at {last_ok}"
    );
}

#[test]
fn unreachable_repository_is_an_error_never_continue() {
    let node = Node::new(false);
    std::fs::remove_dir_all(&node.repo).unwrap();
    std::fs::write(&node.repo, b"not a directory").unwrap();
    let r = node.session(&trace(1), true, vec![]);
    let stop = r.stop.as_ref().expect("stop");
    assert_eq!(stop.index, 0);
    assert!(
        matches!(stop.reply, HookReply::Error(_)),
        "{:?}",
        stop.reply
    );
    assert!(logs(&r).contains("opening the backup"), "{}", logs(&r));
}
