//! Destinations beyond a local directory, through the real plugin under the emulator:
//! a `backup-cli server` over loopback that is stopped and restarted in the middle of a session
//! (the hook waits through the plugin's reconnect policy, set by its options; nothing is lost or
//! stored twice), and a second, asynchronous destination listed in backup.lock that catches up.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use emulator::{load_trace, run_trace_session, DbWrite, Emulator, HookReply, SessionOptions};
use serde_json::{json, Value};
use store::backend::dir::DirBackend;
use store::backend::remote::{self, ServerAuth, ServerHandle, ServerOptions, ServerRoot};
use store::backend::Backend;
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

/// One db_write that must be answered `continue`; otherwise the answer, the plugin's log and
/// its stderr say why.
fn assert_continues(ld: &mut Emulator, b: &DbWrite) {
    let r = ld.db_write(b.data_version, &b.writes).unwrap();
    assert!(
        r.is_continue(),
        "db_write {}: {r}\n{}{}",
        b.data_version,
        ld.log_text(),
        ld.stderr_text()
    );
}

/// A fresh node as lightningd starts it: getmanifest, then its 9 db_write calls before init.
fn fresh_node_before_init(net: &Path, s1: &[DbWrite]) -> Emulator {
    let mut ld = Emulator::spawn(&plugin(), net, &[]).unwrap();
    ld.set_timeout(Duration::from_secs(120));
    ld.getmanifest().unwrap();
    for b in &s1[..9] {
        assert_continues(&mut ld, b);
    }
    ld
}

/// A server whose one node's repository is the directory `root`.
fn serve(root: &Path, key: &MasterKey, listen: &str) -> ServerHandle {
    let backend: Arc<dyn Backend> = Arc::new(DirBackend::open(root).unwrap());
    ServerHandle::spawn(
        ServerRoot::Custom(Arc::new(move |_| Ok(backend.clone()))),
        listen,
        ServerAuth::single("node1", remote::auth_key(key)),
        ServerOptions::default(),
    )
    .unwrap()
}

#[test]
fn server_restarted_mid_session_loses_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("server-repo");
    let net = tmp.path().join("regtest");
    std::fs::create_dir(&net).unwrap();
    let key = MasterKey::generate();
    Repository::init(
        &BackupUrl::File(root.clone()),
        Some(&key),
        true,
        ConfigBody::default(),
    )
    .unwrap();
    let server = serve(&root, &key, "127.0.0.1:0");
    let addr = server.addr();
    configure_node(
        &net,
        json!({"backend_url": format!("socket:127.0.0.1:{}", addr.port())}),
        Some(&key),
    );

    let s1 = trace(1);
    let mut ld = fresh_node_before_init(&net, &s1);
    let options: Vec<(String, Value)> = vec![
        ("backup-reconnect-tries".into(), json!(20)),
        ("backup-reconnect-wait".into(), json!("0.1")),
        ("backup-reconnect-factor".into(), json!("1.5")),
    ];
    ld.init(&options, &net).unwrap();
    let mut server = Some(server);
    let mut restarter = None;
    for (i, b) in s1.iter().enumerate().skip(9) {
        if i == 1000 {
            // The server goes away; it is back 1.5 s later on the same port.
            server.take().unwrap().stop();
            let root = root.clone();
            let key = key.clone();
            restarter = Some(std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(1500));
                serve(&root, &key, &addr.to_string())
            }));
        }
        let reply = ld.db_write(b.data_version, &b.writes).unwrap();
        assert!(
            matches!(reply, HookReply::Continue),
            "batch {i}: {reply:?}\n{}",
            ld.log_text()
        );
    }
    let status = ld.rpc_ok("backup-status", json!({})).unwrap();
    assert_eq!(
        status["data_version"],
        json!(s1.last().unwrap().data_version)
    );
    // While the server was away, lightningd's log said what the hook waited for.
    let log = ld.log_text();
    assert!(
        log.contains(&format!(
            "to redial the backup server socket:127.0.0.1:{}",
            addr.port()
        )),
        "{log}"
    );
    assert!(ld.close_stdin_and_wait().unwrap().success());
    let server = restarter.unwrap().join().unwrap();

    // Restore through the server: exactly lightningd's database.
    let url = BackupUrl::parse(&format!("socket:127.0.0.1:{}", addr.port())).unwrap();
    let repo = Repository::open(&url, Some(key.clone())).unwrap();
    let out = tmp.path().join("restored.sqlite3");
    let rep = restore(&repo, &out, &RestoreTarget::Latest).unwrap();
    assert_eq!(rep.data_version, s1.last().unwrap().data_version);
    assert_eq!(
        store::dump::dump(&out).unwrap(),
        store::dump::dump(&testdata("db-s1.sqlite3")).unwrap()
    );
    server.stop();
}

#[test]
fn reconnect_options_are_checked() {
    let tmp = tempfile::tempdir().unwrap();
    let net = tmp.path().join("regtest");
    std::fs::create_dir(&net).unwrap();
    let mut ld = Emulator::spawn(&plugin(), &net, &[]).unwrap();
    ld.getmanifest().unwrap();
    let bad: Vec<(String, Value)> = vec![("backup-reconnect-factor".into(), json!("0.5"))];
    let err = ld.init(&bad, &net);
    let text = format!("{err:?}");
    assert!(text.contains("backup-reconnect-factor"), "{text}");
    let _ = ld.kill();
}

/// A node dir whose backup.lock lists an encrypted local primary and one asynchronous
/// destination. Returns the node dir, the primary's URL and the key.
fn node_with_async_destination(tmp: &Path, second_url: &str) -> (PathBuf, BackupUrl, MasterKey) {
    let net = tmp.join("regtest");
    std::fs::create_dir(&net).unwrap();
    let primary = BackupUrl::File(tmp.join("primary"));
    let key = MasterKey::generate();
    Repository::init(&primary, Some(&key), true, ConfigBody::default()).unwrap();
    configure_node(
        &net,
        json!({
            "backend_url": primary.to_string(),
            "destinations": [{"url": second_url, "mode": "async"}],
        }),
        Some(&key),
    );
    (net, primary, key)
}

/// Restore from each destination: exactly lightningd's database after session 1.
fn assert_each_restores_s1(tmp: &Path, key: &MasterKey, dests: &[(&str, BackupUrl)]) {
    let want = store::dump::dump(&testdata("db-s1.sqlite3")).unwrap();
    for (name, url) in dests {
        let repo = Repository::open(url, Some(key.clone())).unwrap();
        let out = tmp.join(format!("{name}.sqlite3"));
        restore(&repo, &out, &RestoreTarget::Latest).unwrap();
        assert_eq!(store::dump::dump(&out).unwrap(), want, "{name}");
    }
}

#[test]
fn async_destination_catches_up_and_restores() {
    let tmp = tempfile::tempdir().unwrap();
    let second = tmp.path().join("second");
    std::fs::create_dir(&second).unwrap();
    for d in store::backend::dir::DIRS {
        std::fs::create_dir_all(second.join(d)).unwrap();
    }
    let (net, primary, key) =
        node_with_async_destination(tmp.path(), &format!("file://{}", second.display()));
    let opts = SessionOptions {
        fresh: true,
        rpc_after: vec![
            ("backup-compact".into(), json!({})),
            ("backup-status".into(), json!({})),
        ],
        timeout: Duration::from_secs(120),
        ..Default::default()
    };
    let rep = run_trace_session(&plugin(), &net, &trace(1), &opts).unwrap();
    assert!(rep.stop.is_none(), "{:?}", rep.stop);
    let status = rep.rpc_replies.last().cloned().unwrap();
    let text = status.1.to_string();
    assert!(text.contains("\"mode\":\"async\""), "{text}");
    // Both destinations restore lightningd's database.
    assert_each_restores_s1(
        tmp.path(),
        &key,
        &[("primary", primary), ("second", BackupUrl::File(second))],
    );
}

/// Compaction with a retention policy keeps the backup bounded: only the policy's snapshots
/// remain after each `backup-compact`, its reply says what was pruned, and the newest state
/// still restores exactly.
#[test]
fn retention_keeps_the_backup_bounded() {
    let tmp = tempfile::tempdir().unwrap();
    let net = tmp.path().join("regtest");
    std::fs::create_dir(&net).unwrap();
    let root = tmp.path().join("repo");
    Repository::init(
        &BackupUrl::File(root.clone()),
        None,
        false,
        ConfigBody::default(),
    )
    .unwrap();
    configure_node(
        &net,
        json!({"backend_url": format!("file://{}", root.display())}),
        None,
    );
    let s1 = trace(1);
    let mut ld = fresh_node_before_init(&net, &s1);
    let options: Vec<(String, Value)> = vec![
        ("backup-compact-journal-bytes".into(), json!(0)),
        ("backup-retention".into(), json!("last=2")),
    ];
    ld.init(&options, &net).unwrap();
    let mut pruned_total = 0;
    for (n, part) in s1[9..].chunks(470).enumerate() {
        for b in part {
            assert_continues(&mut ld, b);
        }
        let r = ld.rpc_ok("backup-compact", json!({})).unwrap();
        assert!(r["snapshot"].is_string(), "compaction {n}: {r}");
        pruned_total += r["pruned"]["removed_snapshots"].as_u64().unwrap_or(0);
    }
    assert!(ld.close_stdin_and_wait().unwrap().success());
    assert!(pruned_total >= 2, "pruned only {pruned_total} snapshots");
    let repo = Repository::open(&BackupUrl::File(root.clone()), None).unwrap();
    let snaps = store::ops::snapshots::list(&repo).unwrap();
    assert_eq!(snaps.len(), 2);
    let out = tmp.path().join("r.sqlite3");
    restore(&repo, &out, &RestoreTarget::Latest).unwrap();
    assert_eq!(
        store::dump::dump(&out).unwrap(),
        store::dump::dump(&testdata("db-s1.sqlite3")).unwrap()
    );
}

/// A fresh prefix on the S3 server the tests share (`testsvc::s3`: SeaweedFS started by the
/// test, or `CLN_BACKUP_S3_URL`); panics with the fix when there is none.
fn s3_url(test: &str) -> String {
    let u = testsvc::s3::server_url();
    let (base, query) = u.split_once('?').unwrap_or((&u, ""));
    let prefixed = format!(
        "{}/plugin-{test}-{}",
        base.trim_end_matches('/'),
        store::ids::SnapshotId::random()
    );
    if query.is_empty() {
        prefixed
    } else {
        format!("{prefixed}?{query}")
    }
}

/// A node whose backup.lock names an encrypted S3 repository at `url` (created here).
fn s3_node(url: &str) -> (tempfile::TempDir, PathBuf, MasterKey, BackupUrl) {
    let tmp = tempfile::tempdir().unwrap();
    let net = tmp.path().join("regtest");
    std::fs::create_dir(&net).unwrap();
    let key = MasterKey::generate();
    let parsed = BackupUrl::parse(url).unwrap();
    Repository::init(&parsed, Some(&key), true, ConfigBody::default()).unwrap();
    configure_node(&net, json!({ "backend_url": url }), Some(&key));
    (tmp, net, key, parsed)
}

/// `backup-cli prune --keep-last 1`, in process (it takes the `maintenance` lock).
fn prune_keep_last_1(repo: &Repository) -> store::Result<store::ops::prune::PruneReport> {
    let policy = store::ops::prune::Retention {
        keep_last: 1,
        ..Default::default()
    };
    let plan = store::ops::prune::plan(repo, &policy)?;
    store::ops::prune::apply(repo, &plan, "test prune")
}

/// The fixture trace through the real plugin into S3 (synchronous, encrypted), with a
/// compaction and the retention prune: restore exact, verify clean, and after prune every pack
/// is one the index names and every indexed chunk one a kept snapshot uses.
#[test]
#[cfg_attr(
    no_s3_tests,
    ignore = "CLN_BACKUP_NO_S3_TESTS is set: not tested against S3"
)]
fn s3_destination_through_the_plugin() {
    let url = s3_url("sync");
    let (tmp, net, key, parsed) = s3_node(&url);
    let opts = SessionOptions {
        fresh: true,
        // Compactions only on request, so none is left running (holding its S3 lease, which
        // outlives a killed process until it expires) when the session ends.
        init_options: vec![
            ("backup-compact-journal-bytes".into(), json!(0)),
            ("backup-retention".into(), json!("last=1")),
        ],
        rpc_after: vec![
            ("backup-compact".into(), json!({})),
            ("backup-compact".into(), json!({})),
        ],
        timeout: Duration::from_secs(300),
        ..Default::default()
    };
    let rep = run_trace_session(&plugin(), &net, &trace(1), &opts).unwrap();
    assert!(rep.stop.is_none(), "{:?}", rep.stop);
    let repo = Repository::open(&parsed, Some(key.clone())).unwrap();
    let v = store::ops::verify::verify(
        &repo,
        &store::ops::verify::VerifyOptions {
            read_data: true,
            scratch_dir: tmp.path().join("scratch"),
        },
    )
    .unwrap();
    assert!(v.ok, "{:?}", v.problems);
    assert_eq!(store::ops::snapshots::list(&repo).unwrap().len(), 1);
    // Only referenced objects remain: a prune with the same policy finds nothing to delete.
    let again = prune_keep_last_1(&repo).unwrap();
    assert_eq!(
        (
            again.removed_snapshots,
            again.deleted_packs,
            again.deleted_segments
        ),
        (0, 0, 0)
    );
    let out = tmp.path().join("r.sqlite3");
    restore(&repo, &out, &RestoreTarget::Latest).unwrap();
    assert_eq!(
        store::dump::dump(&out).unwrap(),
        store::dump::dump(&testdata("db-s1.sqlite3")).unwrap()
    );
}

/// An asynchronous `socket:` destination whose server is not running when the node starts:
/// every hook is answered continue (it used to stop the node at the first db_write),
/// backup-status shows it down with the error and its lag; once the server comes up on the same
/// port (with an empty, never initialised directory) it is created and caught up, and restoring
/// from it gives lightningd's database, as from the primary.
#[test]
fn async_destination_down_at_start_catches_up_later() {
    let tmp = tempfile::tempdir().unwrap();
    let server_root = tmp.path().join("server-repo");
    // A free port with nothing listening on it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let socket_url = format!("socket:127.0.0.1:{port}");
    let (net, primary, key) = node_with_async_destination(tmp.path(), &socket_url);

    let s1 = trace(1);
    let mut ld = fresh_node_before_init(&net, &s1);
    let options: Vec<(String, Value)> = vec![
        ("backup-compact-journal-bytes".into(), json!(0)),
        ("backup-reconnect-tries".into(), json!(2)),
        ("backup-reconnect-wait".into(), json!("0.1")),
    ];
    ld.init(&options, &net).unwrap();
    let dest_status = |ld: &mut Emulator| {
        let st = ld.rpc_ok("backup-status", json!({})).unwrap();
        st["destinations"][1].clone()
    };
    let half = s1.len() / 2;
    for (i, b) in s1.iter().enumerate().skip(9).take(half - 9) {
        let reply = ld.db_write(b.data_version, &b.writes).unwrap();
        assert!(
            reply.is_continue(),
            "batch {i}: {reply:?}\n{}",
            ld.log_text()
        );
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let down = loop {
        let d = dest_status(&mut ld);
        if d["state"] == "down" {
            break d;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never shown down: {d}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(down["url"], json!(socket_url), "{down}");
    assert_eq!(down["mode"], "async", "{down}");
    let err = down["last_error"].as_str().unwrap_or_default();
    assert!(err.contains(&socket_url), "{down}");
    assert!(down["lag_batches"].as_u64().unwrap() > 100, "{down}");
    assert!(down["lag_seconds"].as_f64().unwrap() > 0.0, "{down}");
    let down_line = format!("asynchronous destination {socket_url} is down");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !ld.log_text().contains(&down_line) {
        assert!(std::time::Instant::now() < deadline, "{}", ld.log_text());
        dest_status(&mut ld);
        std::thread::sleep(Duration::from_millis(100));
    }

    // The server comes up on that port, serving an empty directory.
    store::backend::dir::DirBackend::create(&server_root).unwrap();
    let server = serve(&server_root, &key, &format!("127.0.0.1:{port}"));
    for (i, b) in s1.iter().enumerate().skip(half) {
        let reply = ld.db_write(b.data_version, &b.writes).unwrap();
        assert!(
            reply.is_continue(),
            "batch {i}: {reply:?}\n{}",
            ld.log_text()
        );
    }
    let r = ld.rpc_ok("backup-compact", json!({})).unwrap();
    assert!(r["snapshot"].is_string(), "{r}");
    // Caught up, as backup-status and lightningd's log say.
    let caught_up = format!("asynchronous destination {socket_url} caught up");
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let d = dest_status(&mut ld);
        if d["state"] == "live" && d["lag_writes"] == 0 && ld.log_text().contains(&caught_up) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never caught up: {d}");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(ld.close_stdin_and_wait().unwrap().success());

    assert_each_restores_s1(
        tmp.path(),
        &key,
        &[
            ("primary", primary),
            ("socket", BackupUrl::parse(&socket_url).unwrap()),
        ],
    );
    server.stop();
}

/// lightningd stops (closes the plugin's stdin) while a `backup-compact` runs. The plugin used to
/// exit at once, leaving the compaction's `maintenance` lock behind; on S3 that is a lease
/// object that refused every prune and compaction for a minute (seen in CI). Now it waits for
/// the compaction (bounded), says so in its log, and exits 0 with every lock released: a prune
/// right after it exits is not refused as locked. A SIGTERM meanwhile (systemd's stop) does not
/// cut that short. `lease_probe` (S3): stdin closes only once the
/// lease object exists, so the test cannot pass by closing before the lock was taken.
fn compaction_cut_by_shutdown(
    url: &str,
    key: Option<MasterKey>,
    tmp: &Path,
    lease_probe: Option<Arc<dyn Backend>>,
    stop: Stop,
) {
    let net = tmp.join("regtest");
    std::fs::create_dir(&net).unwrap();
    let parsed = BackupUrl::parse(url).unwrap();
    Repository::init(&parsed, key.as_ref(), key.is_some(), ConfigBody::default()).unwrap();
    configure_node(&net, json!({ "backend_url": url }), key.as_ref());
    let s1 = trace(1);
    let mut ld = fresh_node_before_init(&net, &s1);
    let options: Vec<(String, Value)> = vec![("backup-compact-journal-bytes".into(), json!(0))];
    ld.init(&options, &net).unwrap();
    for b in &s1[9..] {
        assert_continues(&mut ld, b);
    }
    ld.rpc_start("backup-compact", json!({})).unwrap();
    if let Some(probe) = lease_probe {
        // Close stdin once the compaction holds its maintenance lease (so the test fails if
        // the plugin exits without releasing it).
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while probe.get("locks/maintenance").is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "the compaction never took its lease"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    let why = match stop {
        Stop::SigtermThenEof => {
            // What systemd does at `systemctl stop` once lightningd is gone: SIGTERM to every
            // process of the service. The plugin must still finish its shutdown.
            let term = std::process::Command::new("kill")
                .args(["-TERM", &ld.pid().to_string()])
                .status()
                .unwrap();
            assert!(term.success());
            "lightningd closed stdin"
        }
        Stop::Notification => {
            ld.notify("shutdown", json!({"shutdown": {}})).unwrap();
            "lightningd sent shutdown"
        }
    };
    let exit = ld.close_stdin_and_wait().unwrap();
    let log = ld.log_text();
    assert!(exit.success(), "{exit:?}\n{log}");
    // It was running when the plugin was told to stop; it was stopped at a safe point (or had
    // passed the last one and finished), and waited for, never cut off.
    assert!(
        log.contains(&format!(
            "shutdown ({why}): stopping the running compaction at its next safe point"
        )),
        "{log}"
    );
    assert!(log.contains("the compaction ended after"), "{log}");
    assert!(log.contains("closed, its locks released"), "{log}");
    let repo = Repository::open(&parsed, key).unwrap();
    let snaps = store::ops::snapshots::list(&repo).unwrap();
    let stopped = log.contains("backup-compact stopped for shutdown: compaction was cancelled");
    println!(
        "the compaction at shutdown {}",
        if stopped {
            "was stopped at a safe point"
        } else {
            "had passed its last safe point and finished"
        }
    );
    assert_eq!(
        snaps.len(),
        usize::from(!stopped),
        "a stopped compaction leaves no snapshot, a finished one leaves one\n{log}"
    );
    // Nothing half-done is visible either way.
    let v = store::ops::verify::verify(
        &repo,
        &store::ops::verify::VerifyOptions {
            read_data: true,
            scratch_dir: tmp.to_path_buf(),
        },
    )
    .unwrap();
    assert!(v.problems.is_empty(), "{:?}", v.problems);
    // Right after: a prune takes the maintenance lock (an S3 lease left behind would refuse it).
    match prune_keep_last_1(&repo) {
        Ok(_) => {}
        Err(e) => panic!("prune right after the plugin exited: {e}\n{log}"),
    }
}

/// The node's `backup.lock` (and `backup.key` when the repository is encrypted), as `backup-cli
/// init` writes them.
fn configure_node(net: &Path, lock: Value, key: Option<&MasterKey>) {
    std::fs::write(net.join("backup.lock"), lock.to_string()).unwrap();
    if let Some(k) = key {
        std::fs::write(net.join("backup.key"), k.to_file_text()).unwrap();
    }
}

/// How the plugin is told to stop.
enum Stop {
    /// SIGTERM (ignored), then stdin closes: lightningd's way with a plugin that did not
    /// subscribe to `shutdown`, under systemd.
    SigtermThenEof,
    /// The `shutdown` notification (sent to subscribers; handled the same way).
    Notification,
}

#[test]
#[cfg_attr(
    no_s3_tests,
    ignore = "CLN_BACKUP_NO_S3_TESTS is set: not tested against S3"
)]
fn shutdown_during_compaction_releases_the_s3_lease() {
    let url = s3_url("shutdown");
    let tmp = tempfile::tempdir().unwrap();
    let probe = store::backend::open(&BackupUrl::parse(&url).unwrap(), None, false).unwrap();
    compaction_cut_by_shutdown(
        &url,
        Some(MasterKey::generate()),
        tmp.path(),
        Some(probe),
        Stop::SigtermThenEof,
    );
}

/// The same on a local directory (its flock goes with the process anyway: a quick check that
/// the shutdown path works there too), once per way of stopping.
#[test]
fn shutdown_during_compaction_local_directory() {
    for (n, stop) in [Stop::SigtermThenEof, Stop::Notification]
        .into_iter()
        .enumerate()
    {
        let tmp = tempfile::tempdir().unwrap();
        let url = format!("file://{}", tmp.path().join(format!("repo{n}")).display());
        compaction_cut_by_shutdown(&url, None, tmp.path(), None, stop);
    }
}

/// An S3 primary across lightningd restarts: five plugin sessions back to back, each started
/// the moment the previous one exited (as lightningd restarted by systemd does), twice over
/// (traces s1 then s2, each cut in five), some with a `backup-compact` before the stop. Every
/// hook must answer continue: the writer lease a clean exit leaves must never refuse the next
/// session (it used to, for up to the 60 s lease, in 3 of 5 runs), and the restore is exact.
#[test]
#[cfg_attr(
    no_s3_tests,
    ignore = "CLN_BACKUP_NO_S3_TESTS is set: not tested against S3"
)]
fn s3_primary_back_to_back_sessions_never_stop_the_node() {
    let url = s3_url("back-to-back");
    let (tmp, net, key, parsed) = s3_node(&url);
    let mut session = 0;
    for (round, t) in [trace(1), trace(2)].into_iter().enumerate() {
        let part = t.len().div_ceil(5);
        for (i, batches) in t.chunks(part).enumerate() {
            let opts = SessionOptions {
                fresh: session == 0,
                init_options: vec![("backup-compact-journal-bytes".into(), json!(0))],
                rpc_after: if i % 2 == 1 {
                    vec![("backup-compact".into(), json!({}))]
                } else {
                    Vec::new()
                },
                timeout: Duration::from_secs(300),
                ..Default::default()
            };
            let rep = run_trace_session(&plugin(), &net, batches, &opts).unwrap();
            assert!(
                rep.stop.is_none(),
                "round {round} session {i}: {:?}\n{}",
                rep.stop,
                rep.stderr
            );
            assert_eq!(rep.continued, batches.len());
            assert!(rep.exit.is_some_and(|e| e.success()), "{}", rep.stderr);
            session += 1;
        }
    }
    let repo = Repository::open(&parsed, Some(key)).unwrap();
    let out = tmp.path().join("r.sqlite3");
    restore(&repo, &out, &RestoreTarget::Latest).unwrap();
    assert_eq!(
        store::dump::dump(&out).unwrap(),
        store::dump::dump(&testdata("db-s2.sqlite3")).unwrap()
    );
}
