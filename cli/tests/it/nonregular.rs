//! A FIFO, a directory or a symbolic link where a local repository's object should be: every
//! read refuses it by name, at once (a FIFO used to block the read forever).

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::common::*;

/// Run backup-cli, failing the test if it has not exited within 60 s (it would hang on a FIFO).
fn run_bounded(args: &[&str]) -> Run {
    let mut child = spawn(
        cmd(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("backup-cli {args:?} still running after 60 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let o = child.wait_with_output().unwrap();
    Run {
        code: o.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

fn mkfifo(p: &Path) {
    std::fs::remove_file(p).unwrap();
    let ok = std::process::Command::new("mkfifo")
        .arg(p)
        .status()
        .unwrap()
        .success();
    assert!(ok, "mkfifo {}", p.display());
}

/// A repository with session 1 and a snapshot (offline compaction).
fn node_with_snapshot() -> (Node, String) {
    let node = Node::new();
    append_session(&node.repo(), 1);
    run(&["compact", &node.url(), "--key-file", p(&node.key_file())]).ok();
    let snap = std::fs::read_dir(node.repo_path.join("snapshots"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .file_name()
        .into_string()
        .unwrap();
    (node, snap)
}

#[test]
fn a_fifo_in_place_of_a_manifest_or_the_config_is_refused_by_name() {
    let (node, snap) = node_with_snapshot();
    let u = node.url();
    let k = node.key_file();
    let out = node.path("r.sqlite3");
    mkfifo(&node.repo_path.join("snapshots").join(&snap));
    let r = run_bounded(&["restore", &u, p(&out), "--key-file", p(&k)]);
    r.fails(1, &format!("snapshots/{snap}"))
        .fails(1, "a FIFO (named pipe) is there, not a regular file");
    assert!(!out.exists());

    let config = node.repo_path.join("config");
    mkfifo(&config);
    run_bounded(&["restore", &u, p(&out), "--key-file", p(&k)])
        .fails(1, "config is corrupt: a FIFO (named pipe) is there");
    run_bounded(&["info", &u, "--key-file", p(&k)]).fails(1, "a FIFO (named pipe)");
}

#[test]
fn a_directory_or_a_symlink_in_place_of_the_config_is_refused_by_name() {
    let (node, _) = node_with_snapshot();
    let u = node.url();
    let k = node.key_file();
    let config = node.repo_path.join("config");
    let saved = node.path("config.saved");
    std::fs::rename(&config, &saved).unwrap();
    std::os::unix::fs::symlink(&saved, &config).unwrap();
    run_bounded(&["info", &u, "--key-file", p(&k)])
        .fails(1, "config is corrupt: a symbolic link is there");
    std::fs::remove_file(&config).unwrap();
    std::fs::create_dir(&config).unwrap();
    run_bounded(&["info", &u, "--key-file", p(&k)])
        .fails(1, "config is corrupt: a directory is there");
}
