//! `restore --lightning-dir`: the day of the disaster, on real lightningd v26.06.6 data (node A
//! of a regtest network: its database with a channel in CHANNELD_NORMAL, its hsm_secret and node
//! id; node B's hsm_secret as a foreign one).
//!
//! What must hold: a node is never handed another node's database, an older state than the
//! backup holds (without the flag that names the penalty risk), or an older state than its own
//! database; nothing in the directory changes when a restore is refused; and a restored node's
//! first start continues the same repository ("Versions match up") without any init.

use std::path::{Path, PathBuf};

use emulator::{run_trace_session, DbWrite, SessionOptions};
use store::Durability;

use crate::common::*;

/// The first data_version of node A's database in testdata.
pub const A_VERSION: u32 = 55552;
/// Batches the plugin stored after the backup was made.
pub const EXTRA: u32 = 3;
/// Each of those batches pays 1000 msat out of the channel, as a payment does.
pub const PAID_MSAT: i64 = 1000;

pub fn node_id(node: &str) -> String {
    std::fs::read_to_string(channels(&format!("{node}/node_id")))
        .unwrap()
        .trim()
        .to_string()
}

/// A batch as lightningd writes it after `v - 1`: a channel balance change and the bump.
fn payment(v: u32) -> DbWrite {
    DbWrite {
        data_version: v,
        writes: vec![
            format!("UPDATE channels SET msatoshi_local=msatoshi_local - {PAID_MSAT} WHERE id=1;"),
            format!(
                "UPDATE vars SET intval = intval + 1 WHERE name = 'data_version' AND intval = {};",
                v - 1
            ),
        ],
    }
}

/// Node A backed up: `backup-cli init --lightning-dir` on its real database (a snapshot at
/// 55552), then EXTRA batches the plugin stored.
pub struct Backup {
    pub tmp: tempfile::TempDir,
    /// The original node's network directory (its disk is "lost" in the tests).
    pub origin: PathBuf,
    pub repo: PathBuf,
    /// A directory with no tools in it, as PATH: no lightning-hsmtool.
    no_tools: PathBuf,
}

impl Backup {
    pub fn new() -> Backup {
        let tmp = tempfile::tempdir().unwrap();
        let origin = tmp.path().join("old-disk/regtest");
        std::fs::create_dir_all(&origin).unwrap();
        unzstd(
            &channels("node-a/lightningd.sqlite3.zst"),
            &origin.join("lightningd.sqlite3"),
        );
        std::fs::copy(channels("node-a/hsm_secret"), origin.join("hsm_secret")).unwrap();
        let repo = tmp.path().join("backup");
        let j = run(&["init", "--json", "--lightning-dir", p(&origin), &url(&repo)])
            .ok()
            .json();
        assert_eq!(j["node_id"], node_id("node-a").as_str());
        let b = Backup {
            no_tools: tmp.path().join("no-tools"),
            tmp,
            origin,
            repo,
        };
        std::fs::create_dir(&b.no_tools).unwrap();
        let r = store::Repository::open(&store::BackupUrl::parse(&b.url()).unwrap(), Some(b.key()))
            .unwrap();
        let _g = fork_guard();
        let mut w = r.writer("test", Durability::Flush).unwrap();
        for v in A_VERSION + 1..=A_VERSION + EXTRA {
            let d = payment(v);
            w.append(&store::Batch {
                data_version: d.data_version,
                writes: d.writes,
            })
            .unwrap();
        }
        b
    }
    pub fn url(&self) -> String {
        url(&self.repo)
    }
    pub fn key_file(&self) -> PathBuf {
        self.origin.join("backup.key")
    }
    fn key(&self) -> store::MasterKey {
        let t = std::fs::read_to_string(self.key_file()).unwrap();
        store::MasterKey::from_file_text(&t, "backup.key").unwrap()
    }
    /// A new machine's network directory holding only `node`'s hsm_secret.
    fn new_machine(&self, name: &str, node: &str) -> PathBuf {
        let d = self.tmp.path().join(name).join("regtest");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::copy(
            channels(&format!("{node}/hsm_secret")),
            d.join("hsm_secret"),
        )
        .unwrap();
        d
    }
    /// `backup-cli restore URL --lightning-dir DIR ARGS` on a machine without lightning-hsmtool.
    fn restore(&self, dir: &Path, extra: &[&str]) -> Run {
        let key = self.key_file();
        let u = self.url();
        let mut args = vec![
            "restore",
            &u,
            "--lightning-dir",
            p(dir),
            "--key-file",
            p(&key),
        ];
        args.extend_from_slice(extra);
        run_env(&args, &[("PATH", p(&self.no_tools))])
    }
}

fn balance(db: &Path) -> i64 {
    let c = rusqlite::Connection::open(db).unwrap();
    c.query_row(
        "SELECT msatoshi_local FROM channels WHERE id = 1",
        [],
        |r| r.get(0),
    )
    .unwrap()
}

fn files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn a_restored_node_continues_the_same_repository() {
    let b = Backup::new();
    let original = balance(&b.origin.join("lightningd.sqlite3"));
    let dir = b.new_machine("new-disk", "node-a");
    let j = b.restore(&dir, &["--json"]).ok().json();
    let newest = A_VERSION + EXTRA;
    assert_eq!(j["data_version"], newest);
    assert_eq!(j["database"], "restored");
    assert_eq!(j["older_than_newest"], false);
    assert_eq!(j["node_id"], node_id("node-a").as_str());
    assert_eq!(j["node_id_from"], "derived by backup-cli");
    assert_eq!(j["database_node_id"], node_id("node-a").as_str());
    assert_eq!(j["repository_node_id"], node_id("node-a").as_str());
    assert_eq!(
        (j["key_written"].as_bool(), j["lock_written"].as_bool()),
        (Some(true), Some(true))
    );
    let db = dir.join("lightningd.sqlite3");
    assert_eq!(balance(&db), original - i64::from(EXTRA) * PAID_MSAT);
    assert_eq!(
        files(&dir),
        [
            "backup.key",
            "backup.lock",
            "hsm_secret",
            "lightningd.sqlite3"
        ]
    );
    let lock: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("backup.lock")).unwrap()).unwrap();
    assert_eq!(lock["backend_url"], b.url().as_str());
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.join("backup.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o400);
    let next = j["next"].as_array().unwrap();
    assert!(next.iter().any(|s| s.as_str().unwrap().contains(&format!(
        "Versions match up: the backup continues at data_version {}",
        newest + 1
    ))));

    // The text output says what to do next.
    let again = b.new_machine("text", "node-a");
    let r = b.restore(&again, &[]).ok();
    assert!(r.stdout.contains("Next:"), "{}", r.stdout);
    assert!(r.stdout.contains("important-plugin="), "{}", r.stdout);
    assert!(
        r.stdout.contains(&format!(
            "lightningd --lightning-dir={} --network=regtest",
            again.parent().unwrap().display()
        )),
        "{}",
        r.stdout
    );

    // The node's first start: the real plugin under the emulator, as lightningd restarts (3
    // writes before init). It finds backup.lock and backup.key, and the journal goes on.
    let plugin = Path::new(BIN).with_file_name("cln-backup");
    assert!(
        plugin.exists(),
        "build the plugin first (cargo build -p cln-backup)"
    );
    let batches: Vec<DbWrite> = (newest + 1..=newest + 4).map(payment).collect();
    let rep = run_trace_session(
        &plugin,
        &dir,
        &batches,
        &SessionOptions {
            fresh: false,
            ..Default::default()
        },
    )
    .unwrap();
    let logs: String = rep
        .logs
        .iter()
        .map(|l| format!("{}\n", l.message))
        .collect();
    assert!(rep.stop.is_none(), "{logs}{}", rep.stderr);
    assert!(
        logs.contains(&format!(
            "Versions match up: the backup continues at data_version {}",
            newest + 1
        )),
        "{logs}"
    );
    // Same repository: a restore of its newest state includes the new batches.
    let out = b.tmp.path().join("after.sqlite3");
    run(&["restore", &b.url(), p(&out), "--key-file", p(&b.key_file())]).ok();
    assert_eq!(balance(&out), original - i64::from(EXTRA + 4) * PAID_MSAT);

    // DEST being a network directory (it holds hsm_secret) is a restore into that node too.
    let dest = b.new_machine("dest", "node-a");
    let j = run_env(
        &[
            "restore",
            "--json",
            &b.url(),
            p(&dest),
            "--key-file",
            p(&b.key_file()),
        ],
        &[("PATH", p(&b.no_tools))],
    )
    .ok()
    .json();
    assert_eq!(j["lock_written"], true);
    assert!(dest.join("backup.lock").exists());
}

#[test]
fn a_foreign_hsm_secret_is_refused() {
    let b = Backup::new();
    // Node B's secret: the repository records node A (from init), and so does the database.
    let dir = b.new_machine("b", "node-b");
    let before = files(&dir);
    let r = b.restore(&dir, &[]).fails(4, "another node's database");
    assert!(r.stderr.contains(&node_id("node-a")) && r.stderr.contains(&node_id("node-b")));
    assert_eq!(files(&dir), before);

    // A repository that records no node yet (made before the node object existed): the
    // database's own vars.node_id still refuses it.
    std::fs::remove_file(b.repo.join("node")).unwrap();
    let r = b.restore(&dir, &[]).fails(4, "another node's database");
    assert!(r.stderr.contains("belongs to node"), "{}", r.stderr);
    assert_eq!(files(&dir), before);

    // --node-id cannot overrule what hsm_secret derives.
    let a = node_id("node-a");
    b.restore(&dir, &["--node-id", &a])
        .fails(4, "is not the node");

    // No hsm_secret at all: lightningd would make a new node.
    let empty = b.tmp.path().join("empty/regtest");
    std::fs::create_dir_all(&empty).unwrap();
    b.restore(&empty, &[]).fails(4, "has no hsm_secret");
    assert_eq!(files(&empty), Vec::<String>::new());
    // The base directory instead of the network directory.
    let good = b.new_machine("base", "node-a");
    b.restore(good.parent().unwrap(), &[])
        .fails(2, "give the network directory");
}

#[test]
fn lightning_hsmtool_answers_when_installed_and_must_agree() {
    let b = Backup::new();
    let tools = b.tmp.path().join("tools");
    std::fs::create_dir(&tools).unwrap();
    let tool = tools.join("lightning-hsmtool");
    let fake = |id: &str| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::write(
            &tool,
            format!("#!/bin/sh\n[ \"$1\" = getnodeid ] && echo {id}\n"),
        )
        .unwrap();
        std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).unwrap();
    };
    let args = |dir: &Path| -> Vec<String> {
        [
            "restore",
            "--json",
            &b.url(),
            "--lightning-dir",
            p(dir),
            "--key-file",
            p(&b.key_file()),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let path = format!("{}:/usr/bin:/bin", tools.display());
    fake(&node_id("node-a"));
    let dir = b.new_machine("tool", "node-a");
    let a: Vec<String> = args(&dir);
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    let j = run_env(&a, &[("PATH", &path)]).ok().json();
    assert_eq!(j["node_id_from"], "lightning-hsmtool getnodeid");
    // A tool that disagrees with backup-cli's own derivation (a fault): refuse to decide.
    fake(&node_id("node-b"));
    let dir = b.new_machine("tool2", "node-a");
    let a: Vec<String> = args(&dir);
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    run_env(&a, &[("PATH", &path)]).fails(1, "refusing to decide which node");
    assert_eq!(files(&dir), ["hsm_secret"]);
}

#[test]
fn an_older_state_than_the_backup_holds_needs_the_flag_that_names_the_risk() {
    let b = Backup::new();
    let dir = b.new_machine("old", "node-a");
    let v = (A_VERSION + 1).to_string();
    let r = b
        .restore(&dir, &["--to-version", &v])
        .fails(4, "penalty close");
    assert!(
        r.stderr.contains("--accept-old-state-penalty-risk"),
        "{}",
        r.stderr
    );
    assert!(r
        .stderr
        .contains(&format!("data_version {}", A_VERSION + EXTRA)));
    assert_eq!(files(&dir), ["hsm_secret"]);
    // A snapshot is an older state too.
    let snaps = run(&[
        "snapshots",
        "--json",
        &b.url(),
        "--key-file",
        p(&b.key_file()),
    ])
    .ok()
    .json();
    let id = snaps["snapshots"][0]["id"].as_str().unwrap().to_string();
    b.restore(&dir, &["--snapshot", &id])
        .fails(4, "penalty close");
    assert_eq!(files(&dir), ["hsm_secret"]);

    // With the flag: restored, and no backup.lock (the repository holds batches after this
    // state: the plugin would refuse it), and the next step is a new repository.
    let j = b
        .restore(
            &dir,
            &[
                "--json",
                "--to-version",
                &v,
                "--accept-old-state-penalty-risk",
            ],
        )
        .ok()
        .json();
    assert_eq!(j["older_than_newest"], true);
    assert_eq!(j["newest_data_version"], A_VERSION + EXTRA);
    assert!(j["lock_file"].is_null());
    assert!(!dir.join("backup.lock").exists());
    assert!(j["next"][0].as_str().unwrap().contains("NEW repository"));
    let original = balance(&b.origin.join("lightningd.sqlite3"));
    assert_eq!(
        balance(&dir.join("lightningd.sqlite3")),
        original - PAID_MSAT
    );

    // The plain restore into a file says so too (it does not refuse: forensics).
    let out = b.tmp.path().join("old.sqlite3");
    let r = run(&[
        "restore",
        &b.url(),
        p(&out),
        "--to-version",
        &v,
        "--key-file",
        p(&b.key_file()),
    ])
    .ok();
    assert!(
        r.stdout.contains("WARNING: this is an OLD state"),
        "{}",
        r.stdout
    );
}

#[test]
fn the_directory_s_own_database_decides() {
    let b = Backup::new();
    let key = b.key_file();
    let newest = A_VERSION + EXTRA;
    // DIR holds the newest state already (it was never lost; only backup.lock was): nothing is
    // replaced, backup.lock is written, and running it again changes nothing.
    let dir = b.new_machine("kept", "node-a");
    run(&[
        "restore",
        &b.url(),
        p(&dir.join("lightningd.sqlite3")),
        "--key-file",
        p(&key),
    ])
    .ok();
    let db_before = std::fs::read(dir.join("lightningd.sqlite3")).unwrap();
    let j = b.restore(&dir, &["--json"]).ok().json();
    assert_eq!(j["database"], "already there");
    assert_eq!(j["lock_written"], true);
    assert_eq!(
        std::fs::read(dir.join("lightningd.sqlite3")).unwrap(),
        db_before
    );
    let j = b.restore(&dir, &["--json"]).ok().json();
    assert_eq!(
        (j["database"].as_str(), j["lock_written"].as_bool()),
        (Some("already there"), Some(false))
    );

    // DIR's database is NEWER than the state asked for: refused, even with the flag.
    let v = (A_VERSION + 1).to_string();
    b.restore(
        &dir,
        &["--to-version", &v, "--accept-old-state-penalty-risk"],
    )
    .fails(4, "NEWER than the state restored");
    assert_eq!(
        std::fs::read(dir.join("lightningd.sqlite3")).unwrap(),
        db_before
    );

    // Same data_version, other content (a batch the backup never saw): refused.
    let c = rusqlite::Connection::open(dir.join("lightningd.sqlite3")).unwrap();
    c.execute("UPDATE channels SET msatoshi_local = 1 WHERE id = 1", [])
        .unwrap();
    drop(c);
    b.restore(&dir, &[]).fails(4, "content differs");

    // DIR's database is OLDER (a disk restored from last week's image), with a rollback journal
    // left by a crash: both are moved aside, never deleted, and the newest state goes in.
    let old = b.new_machine("older", "node-a");
    run(&[
        "restore",
        &b.url(),
        p(&old.join("lightningd.sqlite3")),
        "--to-version",
        &v,
        "--key-file",
        p(&key),
    ])
    .ok();
    std::fs::write(old.join("lightningd.sqlite3-journal"), b"hot journal").unwrap();
    let j = b.restore(&old, &["--json"]).ok().json();
    assert_eq!(j["data_version"], newest);
    let moved: Vec<&str> = j["moved_aside"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap())
        .collect();
    assert_eq!(moved.len(), 2, "{moved:?}");
    assert!(moved.iter().all(|m| Path::new(m).exists()));
    assert!(!old.join("lightningd.sqlite3-journal").exists());

    // A damaged database is not guessed about.
    let bad = b.new_machine("damaged", "node-a");
    std::fs::write(bad.join("lightningd.sqlite3"), b"not a database").unwrap();
    b.restore(&bad, &[])
        .fails(4, "cannot be read as lightningd's database");
    assert_eq!(
        std::fs::read(bad.join("lightningd.sqlite3")).unwrap(),
        b"not a database"
    );
}

#[test]
fn a_running_node_another_backup_or_another_key_is_refused() {
    let b = Backup::new();
    let dir = b.new_machine("running", "node-a");
    let held = PidFileLock::hold(&dir.parent().unwrap().join("lightningd-regtest.pid"));
    b.restore(&dir, &[]).fails(4, "lightningd is running");
    drop(held);
    let rpc = std::os::unix::net::UnixListener::bind(dir.join("lightning-rpc")).unwrap();
    b.restore(&dir, &[]).fails(4, "accepts connections");
    drop(rpc);
    std::fs::remove_file(dir.join("lightning-rpc")).unwrap();
    assert_eq!(files(&dir), ["hsm_secret"]);

    std::fs::write(
        dir.join("backup.lock"),
        r#"{"backend_url": "file:///elsewhere"}"#,
    )
    .unwrap();
    b.restore(&dir, &[]).fails(4, "points to file:///elsewhere");
    std::fs::remove_file(dir.join("backup.lock")).unwrap();

    std::fs::write(
        dir.join("backup.key"),
        store::MasterKey::generate().to_file_text(),
    )
    .unwrap();
    b.restore(&dir, &[]).fails(4, "is another key");
    assert!(!dir.join("lightningd.sqlite3").exists());
    // The right key beside the node is used as it is.
    std::fs::write(dir.join("backup.key"), b.key().to_file_text()).unwrap();
    let j = b.restore(&dir, &["--json"]).ok().json();
    assert_eq!(j["key_written"], false);
}
