//! `backup-cli server`: a node's repository over `socket:` on loopback, admitted by its auth key.

use std::io::BufRead;
use std::process::Stdio;

use crate::common::*;

struct Server(std::process::Child);
impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn serve_init_restore_over_socket() {
    let t = tempfile::tempdir().unwrap();
    let node = t.path().join("node");
    std::fs::create_dir(&node).unwrap();
    std::fs::copy(testdata("db-s2.sqlite3"), node.join("lightningd.sqlite3")).unwrap();
    // The node's key first, so the server can be given its auth key.
    let key = store::MasterKey::generate();
    let kf = node.join("backup.key");
    std::fs::write(&kf, key.to_file_text()).unwrap();
    let auth = t.path().join("auth-keys");
    let line = run(&["key", "export", "--server", "--key-file", p(&kf)])
        .ok()
        .stdout;
    std::fs::write(&auth, line).unwrap();

    let served = t.path().join("served");
    let mut child = spawn(
        cmd(&[
            "server",
            "--json",
            &url(&served),
            "127.0.0.1:0",
            "--auth-key-file",
            p(&auth),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null()),
    );
    let mut first = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let _server = Server(child);
    let j: serde_json::Value = serde_json::from_str(&first).unwrap();
    let addr = j["listening"][0].as_str().unwrap().to_string();
    let u = format!("socket:{addr}");

    run(&["init", "--lightning-dir", p(&node), &u]).ok();
    let out = t.path().join("out.sqlite3");
    run(&["restore", &u, p(&out), "--lightning-dir", p(&node)]).ok();
    assert_same_db(&out, &testdata("db-s2.sqlite3"));
    // The node's next session streams its batches through the server, as the plugin does.
    let repo =
        store::Repository::open(&store::BackupUrl::parse(&u).unwrap(), Some(key.clone())).unwrap();
    append_session(&repo, 3);
    drop(repo);
    let out3 = t.path().join("out3.sqlite3");
    run(&["restore", &u, p(&out3), "--lightning-dir", p(&node)]).ok();
    assert_same_db(&out3, &testdata("db-s3.sqlite3"));
    // The server stored only sealed bytes: neither the database's pages nor the statements of
    // the batches are in its files.
    let mut files = vec![served.clone()];
    let mut seen = 0;
    while let Some(d) = files.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let f = e.unwrap().path();
            if f.is_dir() {
                files.push(f);
                continue;
            }
            let bytes = std::fs::read(&f).unwrap();
            for needle in [
                &b"SQLite format 3"[..],
                b"CREATE TABLE",
                b"INSERT INTO",
                b"UPDATE vars SET",
            ] {
                assert!(
                    !bytes.windows(needle.len()).any(|w| w == needle),
                    "{} holds {:?} in plaintext",
                    f.display(),
                    String::from_utf8_lossy(needle)
                );
            }
            seen += 1;
        }
    }
    assert!(seen >= 5, "only {seen} files served");
    // A node with another key is not admitted.
    let other = t.path().join("other.key");
    std::fs::write(&other, store::MasterKey::generate().to_file_text()).unwrap();
    let r = run(&["info", "--key-file", p(&other), &u]);
    assert_eq!(r.code, 1, "{}", r.stderr);

    // Usage: a server serves a local directory, and needs an auth key.
    run(&["server", &u, "127.0.0.1:0"]).fails(2, "local directory");
    run(&["server", &url(&served), "127.0.0.1:0"]).fails(2, "auth key");
}
