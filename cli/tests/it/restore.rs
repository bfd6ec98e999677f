//! `restore`: the newest state, a data_version and a snapshot, compared with lightningd's real
//! databases; and each bad input (unknown snapshot, version beyond the journal, existing target).

use crate::common::*;

/// s1, an offline compaction by `backup-cli compact`, then s2 and s3.
fn three_sessions() -> (Node, String) {
    let n = Node::new();
    let repo = n.repo();
    append_session(&repo, 1);
    let c = run(&["compact", "--json", "--lightning-dir", p(&n.dir), &n.url()])
        .ok()
        .json();
    let snap = c["snapshot"]["id"].as_str().unwrap().to_string();
    // The target is the newest batch known committed: all of s1 but its last batch.
    assert_eq!(c["snapshot"]["data_version"], last_version(1) - 1);
    assert!(c["before"]["backup_size"].as_u64().unwrap() > 0);
    append_session(&repo, 2);
    append_session(&repo, 3);
    (n, snap)
}

#[test]
fn restore_newest_version_and_snapshot_match_the_real_databases() {
    let (n, snap) = three_sessions();
    let u = n.url();

    // Newest state into a directory: DEST/lightningd.sqlite3.
    let d = n.path("restore-dir");
    std::fs::create_dir(&d).unwrap();
    let j = run(&["restore", "--json", &u, p(&d), "--lightning-dir", p(&n.dir)])
        .ok()
        .json();
    assert_eq!(j["data_version"], last_version(3));
    assert_eq!(j["integrity_check"], "ok");
    assert_eq!(j["snapshot"], snap.as_str());
    assert!(j["replayed_batches"].as_u64().unwrap() > 0);
    for f in [
        "path",
        "db_size",
        "snapshot_version",
        "replayed_statements",
        "duration_ms",
    ] {
        assert!(!j[f].is_null(), "{f} missing in {j}");
    }
    assert_same_db(&d.join("lightningd.sqlite3"), &testdata("db-s3.sqlite3"));

    // The state at the end of session 1 and of session 2.
    for (s, name) in [(1, "db-s1.sqlite3"), (2, "db-s2.sqlite3")] {
        let out = n.path(&format!("at-s{s}.sqlite3"));
        let v = last_version(s).to_string();
        let r = run(&[
            "restore",
            &u,
            p(&out),
            "--to-version",
            &v,
            "--lightning-dir",
            p(&n.dir),
        ])
        .ok();
        assert!(
            r.stdout.contains(&format!("data_version     {v}")),
            "{}",
            r.stdout
        );
        assert!(r.stdout.contains("integrity_check  ok"));
        assert_same_db(&out, &testdata(name));
    }

    // Exactly the snapshot (by a unique prefix), without the journal.
    let out = n.path("snap.sqlite3");
    let j = run(&[
        "restore",
        "--json",
        &u,
        p(&out),
        "--snapshot",
        &snap[..6],
        "--lightning-dir",
        p(&n.dir),
    ])
    .ok()
    .json();
    assert_eq!(j["data_version"], last_version(1) - 1);
    assert_eq!(j["replayed_batches"], 0);

    // backup.key beside the restore target is found too.
    let beside = n.path("beside");
    std::fs::create_dir(&beside).unwrap();
    std::fs::copy(n.key_file(), beside.join("backup.key")).unwrap();
    run(&["restore", &u, p(&beside)]).ok();
    assert_same_db(
        &beside.join("lightningd.sqlite3"),
        &testdata("db-s3.sqlite3"),
    );
}

#[test]
fn restore_bad_inputs() {
    let n = Node::new();
    append_session(&n.repo(), 1);
    let u = n.url();
    let ld = p(&n.dir);
    let out = n.path("out.sqlite3");
    run(&[
        "restore",
        &u,
        p(&out),
        "--snapshot",
        "00ff00ff",
        "--lightning-dir",
        ld,
    ])
    .fails(2, "no snapshot 00ff00ff");
    let beyond = (last_version(1) + 5).to_string();
    run(&[
        "restore",
        &u,
        p(&out),
        "--to-version",
        &beyond,
        "--lightning-dir",
        ld,
    ])
    .fails(2, &format!("data_version {beyond} is not restorable"));
    assert!(!out.exists());
    run(&["restore", &u, p(&out), "--lightning-dir", ld]).ok();
    // An existing target is never overwritten: a file, or DIR/lightningd.sqlite3.
    let before = std::fs::read(&out).unwrap();
    run(&["restore", &u, p(&out), "--lightning-dir", ld]).fails(4, "already exists");
    assert_eq!(std::fs::read(&out).unwrap(), before);
    std::fs::write(n.dir.join("lightningd.sqlite3"), b"live db").unwrap();
    // DEST being the node's directory is a restore into the node: refused here (no
    // hsm_secret), and the database is untouched.
    run(&["restore", &u, ld, "--lightning-dir", ld]).fails(4, "has no hsm_secret");
    assert_eq!(
        std::fs::read(n.dir.join("lightningd.sqlite3")).unwrap(),
        b"live db"
    );
    // A missing directory, conflicting flags.
    run(&[
        "restore",
        &u,
        p(&n.path("no/such/dir/x.sqlite3")),
        "--lightning-dir",
        ld,
    ])
    .fails(2, "does not exist");
    let r = run(&[
        "restore",
        &u,
        p(&n.path("y")),
        "--snapshot",
        "ab",
        "--to-version",
        "3",
    ]);
    assert_eq!(r.code, 2);
    // An empty repository.
    let e = n.path("empty");
    run(&["init", "--no-encryption", &url(&e)]).ok();
    run(&["restore", &url(&e), p(&n.path("z"))]).fails(1, "nothing to restore");
}
