//! `init`: the key, backup.lock, the first snapshot, and each refusal (running node, existing
//! repository, backup.lock pointing elsewhere) with its exit code.

use std::os::unix::fs::PermissionsExt;

use crate::common::*;

#[test]
fn init_writes_key_lock_and_first_snapshot() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("node");
    std::fs::create_dir(&dir).unwrap();
    std::fs::copy(testdata("db-s3.sqlite3"), dir.join("lightningd.sqlite3")).unwrap();
    let repo = url(&t.path().join("repo"));
    let r = run(&["init", "--json", "--lightning-dir", p(&dir), &repo]).ok();
    let j = r.json();
    assert_eq!(j["url"], repo);
    assert_eq!(j["encrypted"], true);
    assert_eq!(j["key_created"], true);
    let phrase = j["key_phrase"].as_str().unwrap();
    assert_eq!(phrase.split(' ').count(), 24);
    assert_eq!(j["snapshot"]["data_version"], last_version(3));
    assert!(j["plugin_config"]
        .as_str()
        .unwrap()
        .starts_with("important-plugin="));

    let key = dir.join("backup.key");
    let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o400);
    let lock: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("backup.lock")).unwrap()).unwrap();
    assert_eq!(lock["backend_url"], repo);

    // The phrase is the key: export shows it again, and it opens the repository.
    let e = run(&["key", "export", "--json", "--lightning-dir", p(&dir)]).ok();
    assert_eq!(e.json()["phrase"], phrase);
    let out = t.path().join("restored.sqlite3");
    run_with_stdin(&["restore", "--key-phrase", &repo, p(&out)], phrase).ok();
    assert_same_db(&out, &testdata("db-s3.sqlite3"));

    // Human output shows the phrase once, with a warning, and what to do next.
    let t2 = tempfile::tempdir().unwrap();
    let h = run(&[
        "init",
        "--lightning-dir",
        p(t2.path()),
        &url(&t2.path().join("r")),
    ])
    .ok();
    assert!(h.stdout.contains("WRITE DOWN THIS KEY PHRASE"));
    assert!(h.stdout.contains("important-plugin="));
    assert!(h.stdout.contains("24. "));
}

#[test]
fn init_refuses_while_the_node_runs() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("regtest");
    std::fs::create_dir(&dir).unwrap();
    // lightningd locks its pid file, in the base dir (the parent of the network dir), for as
    // long as it runs.
    let pid_file = t.path().join("lightningd-regtest.pid");
    let running = PidFileLock::hold(&pid_file);
    let repo = url(&t.path().join("repo"));
    run(&["init", "--lightning-dir", p(&dir), &repo]).fails(4, "lightningd is running");
    assert!(!t.path().join("repo").exists());
    assert!(!dir.join("backup.key").exists());
    drop(running);

    // Its RPC socket accepting connections shows it too.
    let rpc = std::os::unix::net::UnixListener::bind(dir.join("lightning-rpc")).unwrap();
    run(&["init", "--lightning-dir", p(&dir), &repo]).fails(4, "accepts connections");
    assert!(!t.path().join("repo").exists());
    drop(rpc);

    // What a crash leaves (kill -9): the pid file, unlocked, with a pid that is alive again
    // (reused; here our own), and the socket file, refusing connections. Neither blocks.
    assert!(pid_file.exists() && dir.join("lightning-rpc").exists());
    run(&["init", "--lightning-dir", p(&dir), &repo]).ok();
}

#[test]
fn init_refuses_an_existing_repository_unless_forced() {
    let n = Node::new();
    let r = run(&["init", "--lightning-dir", p(&n.dir), &n.url()])
        .fails(4, "a repository already exists");
    // The way to continue it (a restore into the node) is named first, and --force says that
    // it moves the only backup aside.
    assert!(
        r.stderr.contains(&format!(
            "backup-cli restore {} --lightning-dir {}",
            n.url(),
            n.dir.display()
        )),
        "{}",
        r.stderr
    );
    assert!(r
        .stderr
        .contains("--force MOVES THE EXISTING REPOSITORY ASIDE"));
    // A non-empty directory that is not a repository is refused too.
    let other = n.path("stuff");
    std::fs::create_dir(&other).unwrap();
    std::fs::write(other.join("notes.txt"), "mine").unwrap();
    run(&["init", "--no-encryption", &url(&other)]).fails(4, "not empty");

    // --force moves the old repository aside (nothing deleted) and reuses the key file.
    let r = run(&[
        "init",
        "--json",
        "--force",
        "--lightning-dir",
        p(&n.dir),
        &n.url(),
    ])
    .ok();
    let j = r.json();
    let aside = j["moved_aside"].as_str().unwrap();
    assert!(std::path::Path::new(aside).join("config").exists());
    assert_eq!(j["key_created"], false);
    assert!(j["key_phrase"].is_null());
}

#[test]
fn init_refuses_a_lock_pointing_elsewhere_unless_forced() {
    let n = Node::new();
    let other = url(&n.path("other"));
    run(&["init", "--lightning-dir", p(&n.dir), &other]).fails(4, "points to");
    assert!(!n.path("other").exists());
    let j = run(&[
        "init",
        "--json",
        "--force",
        "--lightning-dir",
        p(&n.dir),
        &other,
    ])
    .ok()
    .json();
    assert_eq!(j["previous_backend_url"], n.url());
    let lock = std::fs::read_to_string(n.dir.join("backup.lock")).unwrap();
    assert!(lock.contains(&other));
}

#[test]
fn init_usage_errors() {
    let t = tempfile::tempdir().unwrap();
    // An encrypted repository needs somewhere to keep its key.
    run(&["init", &url(&t.path().join("r"))]).fails(2, "a place for its key");
    // The base lightning dir instead of the network dir.
    let net = t.path().join("bitcoin");
    std::fs::create_dir(&net).unwrap();
    std::fs::copy(testdata("db-s1.sqlite3"), net.join("lightningd.sqlite3")).unwrap();
    run(&[
        "init",
        "--lightning-dir",
        p(t.path()),
        &url(&t.path().join("r")),
    ])
    .fails(2, "give the network directory");
    run(&[
        "init",
        "--lightning-dir",
        p(&t.path().join("nope")),
        &url(&t.path().join("r")),
    ])
    .fails(2, "is not a directory");
    // Plaintext on request; info says which.
    let r = url(&t.path().join("plain"));
    run(&["init", "--no-encryption", &r]).ok();
    let j = run(&["info", "--json", &r]).ok().json();
    assert_eq!(j["encrypted"], false);
    assert_eq!(j["encryption"], "none (plaintext)");
}

#[test]
fn init_with_a_known_key() {
    // --key-phrase: the operator's existing key, written to --key-file, phrase not shown again.
    let t = tempfile::tempdir().unwrap();
    let k = store::MasterKey::generate();
    let kf = t.path().join("my.key");
    let r = url(&t.path().join("r"));
    let j = run_with_stdin(
        &["init", "--json", "--key-phrase", "--key-file", p(&kf), &r],
        &k.to_phrase(),
    )
    .ok()
    .json();
    assert_eq!(j["key_created"], false);
    assert!(j["key_phrase"].is_null());
    assert_eq!(j["key_id"], k.id().to_string());
    let written = std::fs::read_to_string(&kf).unwrap();
    assert_eq!(written, k.to_file_text());
    run(&["info", "--key-file", p(&kf), &r]).ok();
    // An existing --key-file is reused as it is.
    let r2 = url(&t.path().join("r2"));
    let j = run(&["init", "--json", "--key-file", p(&kf), &r2])
        .ok()
        .json();
    assert_eq!(j["key_id"], k.id().to_string());
    assert_eq!(std::fs::read_to_string(&kf).unwrap(), written);
}
