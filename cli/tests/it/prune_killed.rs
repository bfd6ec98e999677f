//! `backup-cli prune` killed (SIGKILL) before each of its renames, then before each of its
//! unlinks, in turn: every kill leaves a repository that verifies, whose kept snapshots restore
//! to lightningd's database at their versions and whose newest state is lightningd's last
//! database, and a prune run again finishes the job. (The long crash campaign found prune
//! deleting a parent manifest before its delta child this way.)
//!
//! The kill lands exactly at the Nth call of a system call through strace's fault injection
//! (`-e inject=...:signal=KILL:when=N`): the call does not happen, the process dies there, as
//! on a crash; no timing is involved.

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::Stdio;

use store::ops::restore::{restore, RestoreTarget};
use store::ops::verify::{verify, VerifyOptions};
use store::{Batch, Repository};

use crate::common::*;

const STRACE: &str = "/usr/bin/strace";

/// lightningd's database when it was at `version` (a replay of the traces up to it).
fn lightningd_at(all: &[Batch], version: u32, scratch: &Path) -> String {
    let path = scratch.join(format!("lightningd-{version}.sqlite3"));
    let _ = std::fs::remove_file(&path);
    let mut rp = store::replay::Replayer::open(&path, true).unwrap();
    for b in all.iter().filter(|b| b.data_version <= version) {
        rp.apply(&store::journal::Record {
            batch: b.clone(),
            supersedes: false,
            time_ms: 0,
        })
        .unwrap();
    }
    rp.finish(&path).unwrap();
    let d = store::dump::dump(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    d
}

fn check(repo: &Repository, scratch: &Path, all: &[Batch], tag: &str) -> usize {
    std::fs::create_dir_all(scratch).unwrap();
    let v = verify(
        repo,
        &VerifyOptions {
            read_data: true,
            scratch_dir: scratch.to_path_buf(),
        },
    )
    .unwrap();
    assert!(v.ok, "{tag}: verify: {:?}", v.problems);
    let out = scratch.join("latest.sqlite3");
    let _ = std::fs::remove_file(&out);
    restore(repo, &out, &RestoreTarget::Latest).unwrap();
    assert_same_db(&out, &testdata("db-s3.sqlite3"));
    let snaps = store::ops::snapshots::list(repo).unwrap();
    for s in &snaps {
        let _ = std::fs::remove_file(&out);
        restore(repo, &out, &RestoreTarget::Snapshot(s.id.to_string()))
            .unwrap_or_else(|e| panic!("{tag}: snapshot {}: {e}", s.id));
        assert!(
            store::dump::dump(&out).unwrap() == lightningd_at(all, s.data_version, scratch),
            "{tag}: snapshot {} is not lightningd's database at {}",
            s.id,
            s.data_version
        );
    }
    snaps.len()
}

#[test]
fn prune_killed_before_each_rename_and_unlink_loses_nothing() {
    assert!(
        Path::new(STRACE).exists(),
        "this test kills backup-cli prune at exact system calls with strace: apt-get install -y strace"
    );
    let n = Node::new();
    let repo = n.repo();
    // Five snapshots, deltas on their parents, over the three sessions.
    let all: Vec<Batch> = (1..=3).flat_map(trace).collect();
    {
        let _g = fork_guard();
        let w = std::sync::Mutex::new(repo.writer("test", store::Durability::Flush).unwrap());
        let opts = store::ops::compact::CompactOptions {
            cache_dir: n.path("cache"),
            holder: "test".into(),
        };
        for part in all.chunks(all.len() / 5 + 1) {
            for b in part {
                w.lock().unwrap().append(b).unwrap();
            }
            store::ops::compact::compact(&repo, &w, &opts).unwrap();
        }
    }
    let before = store::ops::snapshots::list(&repo).unwrap();
    assert_eq!(before.len(), 5);
    assert!(before.iter().filter(|s| s.parent.is_some()).count() >= 3);
    let template = n.path("template");
    copy_dir(&n.repo_path, &template);

    let key = n.key_file();
    let mut kills = 0;
    for calls in ["rename,renameat,renameat2", "unlink,unlinkat"] {
        for at in 1.. {
            let case = n.path(&format!("case-{at}"));
            copy_dir(&template, &case);
            let u = url(&case);
            let status = {
                let child = spawn(
                    std::process::Command::new(STRACE)
                        .args(["-f", "-qq", "-o", "/dev/null", "-e"])
                        .arg(format!("trace={calls}"))
                        .arg("-e")
                        .arg(format!("inject={calls}:error=EIO:signal=KILL:when={at}"))
                        .arg(BIN)
                        .args(["--key-file", p(&key), "prune", &u, "--keep-last", "1"])
                        .stdin(Stdio::null())
                        .stdout(Stdio::null())
                        .stderr(Stdio::piped()),
                );
                child.wait_with_output().unwrap()
            };
            let tag = format!("prune killed at call {at} of {calls}");
            let case_repo =
                Repository::open(&store::BackupUrl::parse(&u).unwrap(), Some(n.key())).unwrap();
            let killed = status.status.signal() == Some(9) || status.status.code() == Some(137);
            if !killed {
                assert!(
                    status.status.success(),
                    "{tag}: {:?} {}",
                    status.status,
                    String::from_utf8_lossy(&status.stderr)
                );
            }
            let left = check(&case_repo, &n.path("scratch"), &all, &tag);
            if !killed {
                assert_eq!(left, 1, "{tag}: the prune finished");
                assert!(at > 3, "{calls}: the prune made only {} such calls", at - 1);
                std::fs::remove_dir_all(&case).unwrap();
                break;
            }
            kills += 1;
            // Run again, it finishes the job.
            run(&["--key-file", p(&key), "prune", &u, "--keep-last", "1"]).ok();
            assert_eq!(check(&case_repo, &n.path("scratch"), &all, &tag), 1);
            std::fs::remove_dir_all(&case).unwrap();
            assert!(at < 400, "{calls}: the prune never finished");
        }
    }
    assert!(kills >= 8, "{kills} kills");
}
