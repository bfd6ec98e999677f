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
        [
            "backup-compact",
            "backup-status",
            "backup-check",
            "backup-snapshots"
        ]
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
    // A restored node lands here too: the way to continue its repository is named, and
    // nothing suggests moving the only backup aside.
    let dir = tmp.path().display().to_string();
    assert!(
        msg.contains(&format!("backup-cli restore URL --lightning-dir {dir}")),
        "{msg}"
    );
    assert!(!msg.contains("--force"), "{msg}");
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
    // The command to run is whole: this node's directory and repository, no placeholder.
    assert!(
        msg.contains(&format!(
            "--lightning-dir {} file://{}",
            node.net.display(),
            node.repo.display()
        )),
        "{msg}"
    );
    assert!(!msg.contains("<dir>") && !msg.contains("<url>"), "{msg}");
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

    // Automatic compaction in the next session (a small threshold), still exact. The session
    // waits for the compaction to log its snapshot before lightningd stops (at stdin EOF the
    // plugin would cancel it). Normal priority: at nice 19 (SCHED_IDLE) it would get no CPU
    // while other work keeps both cores busy.
    let mut em = Emulator::spawn(&plugin(), &node.net, &[]).unwrap();
    em.set_timeout(Duration::from_secs(300));
    em.getmanifest().unwrap();
    let (_, stop, _) = em
        .run_batches(
            &trace(2),
            3,
            &[
                ("backup-compact-journal-bytes".into(), json!(100_000)),
                ("backup-compaction-nice".into(), json!(0)),
            ],
        )
        .unwrap();
    assert!(stop.is_none(), "{stop:?}");
    let done = em
        .wait_log(Duration::from_secs(300), |l| {
            l.message.starts_with("automatic compaction: snapshot")
                || l.message.starts_with("automatic compaction failed")
        })
        .unwrap();
    assert!(
        done.message.starts_with("automatic compaction: snapshot"),
        "{}",
        em.log_text()
    );
    assert!(em.close_stdin_and_wait().unwrap().success());
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

/// The plugin behind a shell that runs `limits` first, with SIGXFSZ ignored (as a shell `trap`
/// is inherited by the exec'd plugin): writes past a file size limit fail with EFBIG instead
/// of killing it.
fn limited_plugin(node: &Node, limits: &str) -> PathBuf {
    let wrapper = node._tmp.path().join("limited-plugin.sh");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/bash\ntrap '' XFSZ\n{limits}\nexec '{}' \"$@\"\n",
            plugin().display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    wrapper
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
    let wrapper = limited_plugin(&node, &format!("ulimit -f {limit_kib}"));
    let opts = SessionOptions {
        fresh: false,
        timeout: Duration::from_secs(120),
        ..Default::default()
    };
    let r = run_trace_session(&wrapper, &node.net, &trace(2), &opts).unwrap();
    let stop = r.stop.as_ref().unwrap_or_else(|| {
        panic!(
            "the disk fills up within s2: limit {limit_kib} KiB\n{}\n{}",
            logs(&r),
            r.stderr
        )
    });
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

/// After the plugin refused batch `refused` of trace s2: the next ten batches (sent as a
/// lightningd that went on would) are refused too; the backup holds exactly s1 and s2 up to
/// the refused batch; after a restart that re-sends it, the backup goes on, exactly.
fn refused_until_restarted(node: &Node, mut em: Emulator, refused: usize, what: &str) {
    let s2 = trace(2);
    let replies = em.send_all(&s2[refused..refused + 10]).unwrap();
    assert_refused_after_a_failure(&replies, what);
    assert!(em.close_stdin_and_wait().unwrap().success());
    let stored: Vec<DbWrite> = trace(1)
        .into_iter()
        .chain(s2[..refused].iter().cloned())
        .collect();
    let expected = replayed_to(&stored, s2[refused - 1].data_version, node._tmp.path());
    assert_eq!(node.restore_dump(RestoreTarget::Latest), expected, "{what}");
    assert_clean(&node.session(&s2[refused..], false, vec![]));
    assert_eq!(
        node.restore_dump(RestoreTarget::Latest),
        real_dump(2),
        "{what}"
    );
}

/// The message of an error reply (lightningd stops without committing); any other reply fails.
fn refusal(r: &HookReply) -> String {
    match r {
        HookReply::Error(e) => e["message"].as_str().unwrap_or_default().to_string(),
        other => panic!("expected a refusal, got {other}"),
    }
}

fn assert_refused_after_a_failure(replies: &[HookReply], what: &str) {
    assert!(!replies.is_empty());
    for r in replies {
        let msg = refusal(r);
        assert!(
            msg.contains("the backup stopped after an earlier failure")
                && msg.contains("Restart lightningd"),
            "{what}: {msg}"
        );
    }
}

/// Fail-stop: once the plugin refused a batch (here one that skips a data_version), it refuses
/// every later one, even batches it could store: lightningd stops at the first refusal, and a
/// plugin that went on would hold a journal with a hole where the node has a batch. The
/// emulator keeps sending, as a lightningd that ignored the refusal would. After a restart the
/// backup goes on from the last batch it acknowledged.
#[test]
fn every_db_write_after_a_refusal_is_refused() {
    let node = Node::new(false);
    assert_clean(&node.session(&trace(1), true, vec![]));
    let s2 = trace(2);
    let mut em = Emulator::spawn(&plugin(), &node.net, &[]).unwrap();
    em.set_timeout(Duration::from_secs(120));
    em.getmanifest().unwrap();
    let (_, stop, _) = em.run_batches(&s2[..50], 3, &[]).unwrap();
    assert!(stop.is_none(), "{stop:?}");
    let skipped = DbWrite {
        data_version: s2[50].data_version + 5,
        writes: s2[50].writes.clone(),
    };
    let r = em.db_write(skipped.data_version, &skipped.writes).unwrap();
    let msg = refusal(&r);
    assert!(msg.contains("does not follow"), "{msg}");
    // The right next batches: refused all the same.
    refused_until_restarted(&node, em, 50, "after a version gap");
}

/// The same through a real write error that then goes away: the plugin's file size limit is
/// lowered below its journal's size mid-session (the disk is full), so an append fails; then
/// it is lifted (space freed). Every later batch is still refused until lightningd restarts:
/// the failed write may have left part of a record, and a retry could store a batch twice.
#[test]
fn a_write_error_that_clears_does_not_resume_the_backup() {
    let node = Node::new(false);
    assert_clean(&node.session(&trace(1), true, vec![]));
    let wrapper = limited_plugin(&node, "");
    let s2 = trace(2);
    let mut em = Emulator::spawn(&wrapper, &node.net, &[]).unwrap();
    em.set_timeout(Duration::from_secs(120));
    em.getmanifest().unwrap();
    // `flush` durability: no zeros are written ahead, so every append grows the file.
    let (_, stop, _) = em
        .run_batches(
            &s2[..40],
            3,
            &[("backup-durability".into(), json!("flush"))],
        )
        .unwrap();
    assert!(stop.is_none(), "{stop:?}");
    let pid = em.pid() as libc::pid_t;
    let set_fsize = |limit: u64| {
        let l = libc::rlimit {
            rlim_cur: limit,
            rlim_max: libc::RLIM_INFINITY,
        };
        // SAFETY: prlimit on our child's pid with a valid struct; no old value asked.
        #[allow(unsafe_code)]
        let rc = unsafe { libc::prlimit(pid, libc::RLIMIT_FSIZE, &l, std::ptr::null_mut()) };
        assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
    };
    let biggest = walk(&node.repo)
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .max()
        .unwrap();
    set_fsize(biggest);
    let r = em.db_write(s2[40].data_version, &s2[40].writes).unwrap();
    let msg = refusal(&r);
    assert!(msg.contains("cannot store db_write"), "{msg}");
    set_fsize(libc::RLIM_INFINITY);
    refused_until_restarted(&node, em, 40, "after a write error");
}

/// A typo in backup.lock (`"destination"` for `"destinations"`) must not silently drop a
/// destination: the plugin refuses the file, naming the field, and lightningd stops.
#[test]
fn unknown_backup_lock_fields_are_refused_with_their_name() {
    let node = Node::new(false);
    let url = format!("file://{}", node.repo.display());
    for (lock, field) in [
        (
            json!({ "backend_url": url, "destination": [{ "url": url, "mode": "async" }] }),
            "destination",
        ),
        (
            json!({ "backend_url": url, "destinations": [{ "url": url, "mdoe": "async" }] }),
            "mdoe",
        ),
    ] {
        std::fs::write(node.net.join("backup.lock"), lock.to_string()).unwrap();
        let msg = first_write_refused(&node);
        assert!(
            msg.contains("backup.lock") && msg.contains(&format!("unknown field `{field}`")),
            "{msg}"
        );
    }
}

/// `backup.key` is read with a bound: a link to `/dev/zero` is refused at once (not read for
/// gigabytes), and lightningd stops with the reason.
#[test]
fn a_key_file_that_never_ends_is_refused() {
    let node = Node::new(false);
    std::os::unix::fs::symlink("/dev/zero", node.net.join("backup.key")).unwrap();
    let msg = first_write_refused(&node);
    assert!(
        msg.contains("backup.key") && msg.contains("longer than 4096 bytes"),
        "{msg}"
    );
}

/// Run session 1: lightningd must stop at the first write; the error message it got.
fn first_write_refused(node: &Node) -> String {
    let r = node.session(&trace(1), true, vec![]);
    let stop = r.stop.as_ref().expect("lightningd must stop");
    assert_eq!((stop.index, r.continued), (0, 0));
    let HookReply::Error(e) = &stop.reply else {
        panic!("{:?}", stop.reply)
    };
    e["message"].as_str().unwrap().to_string()
}

#[path = "support/drill.rs"]
mod drill;
