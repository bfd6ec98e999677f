//! What a script can rely on: exit codes that say what happened, and no panic or unbounded read
//! whatever the surroundings (issue 17).
//!
//! - A reader that goes away (`backup-cli restore ... | head`) used to make the first
//!   `println!` panic (EPIPE, exit 101) after the database was published: now printing stops
//!   and the exit status is the work's.
//! - A key file is read with a bound: `--key-file /dev/zero` used to read gigabytes.
//! - `--to-version 0` used to write an empty file and exit 0.
//! - An unknown field in `backup.lock` (a typo such as `"destination"`) used to be ignored.
//! - Every usage error exits 2.

use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::common::*;

/// A node whose repository holds session 1 and a snapshot of it.
fn node_with_s1() -> Node {
    let node = Node::new();
    append_session(&node.repo(), 1);
    let key = node.key_file();
    run(&["compact", &node.url(), "--key-file", p(&key)]).ok();
    node
}

/// Run with stdout a pipe whose reader is already closed (what `| head` does once it has
/// read its lines): returns (exit code, stderr).
fn run_into_closed_pipe(args: &[&str]) -> (i32, String) {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let child = spawn(
        cmd(args)
            .stdin(Stdio::null())
            .stdout(writer)
            .stderr(Stdio::piped()),
    );
    let o = child.wait_with_output().unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn a_closed_stdout_does_not_fail_work_that_was_done() {
    let node = node_with_s1();
    let key = node.key_file();
    for json in [false, true] {
        let dest = node.path(&format!("restored-{json}.sqlite3"));
        let mut args = vec!["restore", "--key-file", p(&key)];
        if json {
            args.push("--json");
        }
        let url = node.url();
        args.extend([url.as_str(), p(&dest)]);
        let (code, stderr) = run_into_closed_pipe(&args);
        assert_eq!(code, 0, "the restore was done: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
        assert_same_db(&dest, &testdata("db-s1.sqlite3"));
    }
    // A listing into a closed pipe: nothing to report, nothing failed.
    let (code, stderr) = run_into_closed_pipe(&["snapshots", "--key-file", p(&key), &node.url()]);
    assert_eq!(code, 0, "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    // A failed restore into a closed pipe still fails, with its own code.
    let dest = node.path("restored-s1.sqlite3");
    std::fs::write(&dest, b"x").unwrap();
    let (code, stderr) =
        run_into_closed_pipe(&["restore", "--key-file", p(&key), &node.url(), p(&dest)]);
    assert_eq!(code, 4, "{stderr}");
    assert!(stderr.contains("already exists"), "{stderr}");
}

/// stdout that cannot be written for another reason (a full disk under `> report.json`): the
/// report is lost, so a script must not take it for complete: exit 1, with the reason.
#[test]
fn an_unwritable_stdout_is_an_error() {
    let node = node_with_s1();
    let key = node.key_file();
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap();
    let child = spawn(
        cmd(&["snapshots", "--json", "--key-file", p(&key), &node.url()])
            .stdin(Stdio::null())
            .stdout(full)
            .stderr(Stdio::piped()),
    );
    let o = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("writing the output to stdout") && stderr.contains("No space left"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn key_files_are_read_with_a_bound() {
    let node = node_with_s1();
    let big = node.path("big.key");
    let mut text = std::fs::read_to_string(node.key_file()).unwrap();
    text.push_str(&" ".repeat(5000));
    std::fs::write(&big, text).unwrap();
    for source in ["/dev/zero", p(&big)] {
        let started = Instant::now();
        let dest = node.path("never.sqlite3");
        run(&["restore", "--key-file", source, &node.url(), p(&dest)])
            .fails(1, "longer than 4096 bytes: not a cln-backup key file");
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "took {:?}",
            started.elapsed()
        );
        assert!(!dest.exists());
        // The same through the environment.
        let o = spawn(
            cmd(&["snapshots", &node.url()])
                .env("CLN_BACKUP_KEY_FILE", source)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped()),
        )
        .wait_with_output()
        .unwrap();
        assert_eq!(o.status.code(), Some(1));
        assert!(String::from_utf8_lossy(&o.stderr).contains("longer than 4096 bytes"));
    }
    // The server's list of auth keys too (1 MiB at most).
    let served = node.path("served");
    run(&[
        "server",
        &url(&served),
        "127.0.0.1:0",
        "--auth-key-file",
        "/dev/zero",
    ])
    .fails(1, "longer than 1048576 bytes: not an auth key file");
}

#[test]
fn to_version_0_is_refused() {
    let node = node_with_s1();
    let key = node.key_file();
    let dest = node.path("v0.sqlite3");
    let r = run(&[
        "restore",
        "--key-file",
        p(&key),
        "--to-version",
        "0",
        &node.url(),
        p(&dest),
    ]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("'--to-version <N>'"), "{}", r.stderr);
    assert!(!dest.exists(), "no file is written");
}

#[test]
fn unknown_backup_lock_fields_are_refused_with_their_name() {
    let node = Node::new();
    let lock = node.dir.join("backup.lock");
    let url = node.url();
    // The plugin's own fields are accepted.
    std::fs::write(
        &lock,
        serde_json::json!({"backend_url": url, "destinations": [{"url": url, "mode": "async"}]})
            .to_string(),
    )
    .unwrap();
    run(&["init", "--lightning-dir", p(&node.dir), &url]).fails(4, "already exists");
    for (body, field) in [
        (
            serde_json::json!({"backend_url": url, "destination": []}),
            "destination",
        ),
        (
            serde_json::json!({"backend_url": url, "destinations": [{"url": url, "mdoe": "async"}]}),
            "mdoe",
        ),
    ] {
        std::fs::write(&lock, body.to_string()).unwrap();
        run(&["init", "--lightning-dir", p(&node.dir), &url])
            .fails(1, &format!("unknown field `{field}`"));
    }
}

/// Every usage error exits 2 (cli/README.md), whether clap or the command finds it.
#[test]
fn usage_errors_exit_2() {
    let node = node_with_s1();
    let key = node.key_file();
    let url = node.url();
    let dest = node.path("usage.sqlite3");
    let k = p(&key);
    let d = p(&dest);
    let cases: Vec<Vec<&str>> = vec![
        vec!["restore", "--key-file", k, &url, d, "--snapshot", ""],
        vec![
            "restore",
            "--key-file",
            k,
            &url,
            d,
            "--snapshot",
            "ffffffff",
        ],
        vec!["restore", "--key-file", k, &url, d, "--to-version", "0"],
        vec!["restore", "--key-file", k, &url, d, "--to-version", "-1"],
        vec!["restore", "--key-file", k, &url, d, "--to-version", "x"],
        vec![
            "restore",
            "--key-file",
            k,
            &url,
            d,
            "--to-version",
            "99999999",
        ],
        vec![
            "restore",
            "--key-file",
            k,
            &url,
            d,
            "--to-version",
            "5",
            "--snapshot",
            "ab",
        ],
        vec![
            "restore",
            "--key-file",
            k,
            &url,
            "/nonexistent-dir/x.sqlite3",
        ],
        vec!["restore", "--key-file", k, &url],
        vec!["restore", "--key-file", k, "relative/path", d],
        vec!["restore", "--key-file", k, "/absolute/without/scheme", d],
        vec!["snapshots", "--key-file", k, "file://relative"],
        vec!["prune", "--key-file", k, &url],
        vec!["prune", "--key-file", k, &url, "--keep-last", "-3"],
        vec![
            "server",
            "--key-file",
            k,
            "s3://bucket/prefix",
            "127.0.0.1:0",
        ],
        vec!["server", &url, "127.0.0.1:0"],
        vec!["init", "--lightning-dir", "/nonexistent-dir", &url],
        vec!["no-such-command"],
        vec!["snapshots", "--no-such-flag", &url],
        vec![],
    ];
    for args in cases {
        let r = run(&args);
        assert_eq!(
            r.code, 2,
            "backup-cli {args:?}\nstdout: {}\nstderr: {}",
            r.stdout, r.stderr
        );
        assert!(!r.stderr.trim().is_empty(), "{args:?} says why");
        assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
    }
    assert!(!dest.exists());
}
