//! snapshots, info, prune, compact and verify, with their --json fields; bad URLs and missing or
//! corrupt repositories.

use crate::common::*;

fn compact(n: &Node) -> serde_json::Value {
    run(&["compact", "--json", "--lightning-dir", p(&n.dir), &n.url()])
        .ok()
        .json()
}

#[test]
fn snapshots_info_prune_verify() {
    let n = Node::new();
    let repo = n.repo();
    let u = n.url();
    let ld = p(&n.dir);
    for s in 1..=3 {
        append_session(&repo, s);
        let c = compact(&n);
        assert_eq!(c["snapshot"]["data_version"], last_version(s) - 1);
        for f in [
            "bytes_added",
            "dedup_ratio",
            "duration_ms",
            "before",
            "after",
        ] {
            assert!(!c[f].is_null(), "compact --json lacks {f}: {c}");
        }
    }
    // Nothing new: no snapshot, said so.
    let c = compact(&n);
    assert!(c["snapshot"].is_null());
    assert!(c["note"].as_str().unwrap().contains("nothing to compact"));

    let j = run(&["snapshots", "--json", &u, "--lightning-dir", ld])
        .ok()
        .json();
    let snaps = j["snapshots"].as_array().unwrap();
    assert_eq!(snaps.len(), 3);
    for s in snaps {
        for f in ["id", "data_version", "time", "db_size", "stored_bytes"] {
            assert!(!s[f].is_null(), "snapshot lacks {f}: {s}");
        }
    }
    let human = run(&["snapshots", &u, "--lightning-dir", ld]).ok();
    assert!(human.stdout.contains("DATA_VERSION"));
    assert!(human.stdout.contains(snaps[0]["id"].as_str().unwrap()));
    assert!(human.stdout.contains("MiB"));

    let i = run(&["info", "--json", &u, "--lightning-dir", ld])
        .ok()
        .json();
    assert_eq!(i["snapshot_count"], 3);
    assert_eq!(i["last_version"], last_version(3));
    assert_eq!(i["encryption"], "xchacha20-poly1305");
    assert!(i["dedup_ratio"].as_f64().unwrap() > 1.0);
    for f in [
        "url",
        "repo_id",
        "backup_size",
        "journal_bytes",
        "journal_records",
    ] {
        assert!(!i[f].is_null(), "info lacks {f}");
    }

    // Prune: a dry run changes nothing; then keep the newest only.
    let d = run(&[
        "prune",
        "--json",
        "--keep-last",
        "1",
        "--dry-run",
        &u,
        "--lightning-dir",
        ld,
    ])
    .ok()
    .json();
    assert_eq!(d["dry_run"], true);
    assert_eq!(d["plan"]["remove"].as_array().unwrap().len(), 2);
    assert!(d["report"].is_null());
    assert_eq!(
        run(&["snapshots", "--json", &u, "--lightning-dir", ld])
            .ok()
            .json()["snapshots"]
            .as_array()
            .unwrap()
            .len(),
        3
    );
    let a = run(&[
        "prune",
        "--json",
        "--keep-last",
        "1",
        &u,
        "--lightning-dir",
        ld,
    ])
    .ok()
    .json();
    assert_eq!(a["report"]["removed_snapshots"], 2);
    assert!(a["report"]["bytes_after"].as_u64() < a["report"]["bytes_before"].as_u64());
    let out = n.path("after-prune.sqlite3");
    run(&["restore", &u, p(&out), "--lightning-dir", ld]).ok();
    assert_same_db(&out, &testdata("db-s3.sqlite3"));
    run(&["prune", &u, "--lightning-dir", ld]).fails(2, "give a retention policy");

    // Verify: clean, then a damaged pack is found (exit 3).
    let v = run(&["verify", "--json", "--read-data", &u, "--lightning-dir", ld])
        .ok()
        .json();
    assert_eq!(v["ok"], true);
    assert_eq!(v["restored_version"], last_version(3));
    let pack = std::fs::read_dir(n.repo_path.join("packs"))
        .unwrap()
        .flatten()
        .find(|e| e.path().is_file())
        .unwrap()
        .path();
    let mut b = std::fs::read(&pack).unwrap();
    let mid = b.len() / 2;
    b[mid] ^= 0x55;
    std::fs::write(&pack, &b).unwrap();
    let bad = run(&["verify", "--read-data", &u, "--lightning-dir", ld]).fails(3, "problem");
    assert!(bad.stdout.contains("PROBLEM"));
    let bj = run(&["verify", "--json", "--read-data", &u, "--lightning-dir", ld]);
    assert_eq!(bj.code, 3);
    let bj = bj.json();
    assert_eq!(bj["ok"], false);
    assert!(!bj["problems"].as_array().unwrap().is_empty());
}

/// `prune --keep-within` keeps every data_version of the span restorable and what is older
/// goes; `info` says how far back a restore reaches. Time is the simulated clock the benchmarks
/// use (`CLN_BACKUP_SIMULATED_CLOCK_FILE`), so snapshots are days apart.
#[test]
fn keep_within_keeps_the_span_restorable() {
    let n = Node::new();
    let repo = n.repo();
    let u = n.url();
    let ld = p(&n.dir);
    let clock = n.path("clock");
    let env = [(store::clock::SIMULATED_CLOCK_ENV, clock.as_path())];
    let at = |ms: u64, args: &[&str]| {
        std::fs::write(&clock, ms.to_string()).unwrap();
        run_env(args, &env)
    };
    let day = 86_400_000u64;
    let t0 = 1_780_000_000_000u64;
    for (s, t) in [(1, t0), (2, t0 + 10 * day), (3, t0 + 40 * day)] {
        append_session(&repo, s);
        let c = at(t, &["compact", "--json", "--lightning-dir", ld, &u])
            .ok()
            .json();
        assert_eq!(c["snapshot"]["time"], t / 1000, "{c}");
    }
    // 45 days on: the span starts at day 15, so the snapshot of day 10 is where replay starts.
    let a = at(
        t0 + 45 * day,
        &[
            "prune",
            "--json",
            "--keep-within",
            "30d",
            &u,
            "--lightning-dir",
            ld,
        ],
    )
    .ok()
    .json();
    let kept: Vec<u64> = a["plan"]["keep"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["snapshot"]["data_version"].as_u64().unwrap())
        .collect();
    let v2 = u64::from(last_version(2) - 1);
    assert_eq!(kept, [v2, u64::from(last_version(3) - 1)], "{a}");
    assert!(a["plan"]["keep"][0]["reasons"]
        .to_string()
        .contains("within 30d"));
    assert_eq!(a["report"]["removed_snapshots"], 1);

    let i = at(
        t0 + 45 * day,
        &["info", "--json", &u, "--lightning-dir", ld],
    )
    .ok()
    .json();
    assert_eq!(i["oldest_restorable"]["data_version"], v2, "{i}");
    assert_eq!(i["oldest_restorable"]["time"], (t0 + 10 * day) / 1000);
    let human = run(&["info", &u, "--lightning-dir", ld]).ok();
    assert!(
        human.stdout.contains(&format!("back to data_version {v2}")),
        "{}",
        human.stdout
    );
    // Every version of the span restores; one before it does not.
    let mid = last_version(2).to_string();
    let out = n.path("mid.sqlite3");
    run(&[
        "restore",
        &u,
        p(&out),
        "--to-version",
        &mid,
        "--lightning-dir",
        ld,
    ])
    .ok();
    let old = (last_version(1) - 5).to_string();
    run(&[
        "restore",
        &u,
        p(&n.path("old.sqlite3")),
        "--to-version",
        &old,
        "--lightning-dir",
        ld,
    ])
    .fails(2, "oldest restorable");
    run(&["prune", "--keep-within", "30", &u, "--lightning-dir", ld]).fails(2, "unit");
}

#[test]
fn compact_refuses_while_the_writer_is_held() {
    let n = Node::new();
    let repo = n.repo();
    append_session(&repo, 1);
    // Held across the spawn on purpose (the lock must be seen taken), so not under FORK.
    let _w = repo.writer("the plugin", store::Durability::Flush).unwrap();
    run(&["compact", &n.url(), "--lightning-dir", p(&n.dir)]).fails(1, "backup-compact");
}

#[test]
fn bad_urls_and_missing_or_corrupt_repositories() {
    let t = tempfile::tempdir().unwrap();
    run(&["info", "file://relative/path"]).fails(2, "absolute path");
    run(&["snapshots", "socket:host"]).fails(2, "socket:HOST:PORT");
    run(&["info", "/var/backup"]).fails(2, "did you mean file:///var/backup");
    run(&["info", "backup-dir"]).fails(2, "file:///absolute/path");
    run(&["info", &url(&t.path().join("none"))]).fails(1, "no backup repository");
    // --json errors are JSON too.
    let j = run(&["info", "--json", &url(&t.path().join("none"))]);
    assert_eq!(j.code, 1);
    assert_eq!(j.json()["exit_code"], 1);
    // Damaged config: plaintext (checksum) and encrypted (authentication).
    let plain = t.path().join("plain");
    run(&["init", "--no-encryption", &url(&plain)]).ok();
    let mut c = std::fs::read(plain.join("config")).unwrap();
    let last = c.len() - 3;
    c[last] ^= 1;
    std::fs::write(plain.join("config"), &c).unwrap();
    run(&["info", &url(&plain)]).fails(1, "corrupt");
    let n = Node::new();
    let cfg = n.repo_path.join("config");
    let orig = std::fs::read(&cfg).unwrap();
    // The sealed body (its tag sits before the 33-byte key binding), then the binding itself.
    let mut c = orig.clone();
    let tag = c.len() - 40;
    c[tag] ^= 1;
    std::fs::write(&cfg, &c).unwrap();
    run(&["info", &n.url(), "--lightning-dir", p(&n.dir)]).fails(1, "failed authentication");
    let mut c = orig.clone();
    let last = c.len() - 3;
    c[last] ^= 1;
    std::fs::write(&cfg, &c).unwrap();
    run(&["info", &n.url(), "--lightning-dir", p(&n.dir)]).fails(1, "key binding is damaged");
    // Clap usage errors exit 2.
    assert_eq!(run(&["restore"]).code, 2);
    assert_eq!(run(&["frobnicate"]).code, 2);
}
