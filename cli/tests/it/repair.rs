//! `backup-cli repair --cut-damaged-tail`, end to end with the real plugin under the emulator:
//! a real backup (session 1 in two plugin runs with a compaction between) whose newest record
//! is then damaged in a way no crash leaves; the plugin refuses the next start, naming the
//! command; the command keeps the damaged segment aside, cuts it after its last authentic
//! record and stores the node's database; the plugin then continues, and restore gives exactly
//! lightningd's database.

use std::path::{Path, PathBuf};
use std::time::Duration;

use emulator::{load_trace, run_trace_session, DbWrite, HookReply, SessionOptions};
use serde_json::json;

use crate::common::*;

fn writes(session: u32) -> Vec<DbWrite> {
    load_trace(&testdata(&format!("trace-s{session}.jsonl"))).unwrap()
}

fn session(net: &Path, batches: &[DbWrite], fresh: bool, compact: bool) -> emulator::SessionReport {
    let _g = fork_guard();
    let opts = SessionOptions {
        fresh,
        init_options: vec![("backup-compact-journal-bytes".into(), json!(0))],
        rpc_after: if compact {
            vec![("backup-compact".into(), json!({}))]
        } else {
            Vec::new()
        },
        timeout: Duration::from_secs(120),
        ..Default::default()
    };
    run_trace_session(&plugin(), net, batches, &opts).unwrap()
}

/// The newest journal stream file of a local repository.
fn newest_stream(repo: &Path) -> PathBuf {
    let mut logs: Vec<PathBuf> = std::fs::read_dir(repo.join("journal"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    logs.sort();
    logs.pop().expect("an open journal stream")
}

/// Flip the last byte of the stream's last frame (its tag): a whole record that fails
/// authentication, which no crash leaves. Frames: `u32 len | u32 check | len bytes` after the
/// 40-byte stream header. Returns the damaged stream's bytes.
fn damage_last_record(stream: &Path) -> Vec<u8> {
    let mut bytes = std::fs::read(stream).unwrap();
    let (mut pos, mut end) = (40usize, 0usize);
    while let Some(l) = bytes.get(pos..pos + 4) {
        let len = u32::from_le_bytes(l.try_into().unwrap()) as usize;
        if len == 0 || pos + 8 + len > bytes.len() {
            break;
        }
        end = pos + 8 + len;
        pos = end;
    }
    assert!(end > 40, "no record in {}", stream.display());
    let b = &mut bytes[end - 1];
    *b = if *b == 0xff { 0x01 } else { 0xff };
    std::fs::write(stream, &bytes).unwrap();
    bytes
}

#[test]
fn a_damaged_tail_stops_the_plugin_until_repair_cuts_it_and_stores_the_node() {
    let node = Node::new();
    let net = node.dir.clone();
    let u = node.url();
    let key = node.key_file();
    let k = p(&key);
    let s1 = writes(1);
    let half = s1.len() / 2;
    let a = session(&net, &s1[..half], true, true);
    assert!(a.stop.is_none(), "{:?}\n{}", a.stop, a.stderr);
    let b = session(&net, &s1[half..], false, false);
    assert!(b.stop.is_none(), "{:?}\n{}", b.stop, b.stderr);
    // lightningd's database after session 1 (the real one).
    std::fs::copy(testdata("db-s1.sqlite3"), net.join("lightningd.sqlite3")).unwrap();
    let v1 = s1.last().unwrap().data_version;

    // Damage the newest record's tag: a whole frame that fails authentication, not a torn
    // write (its last byte is not zero).
    let stream = newest_stream(&node.repo_path);
    let damaged = damage_last_record(&stream);
    let object = format!("journal/{}", stream.file_name().unwrap().to_str().unwrap());

    // Restore refuses it (naming the object), unless told to accept the loss.
    let out = node.path("refused.sqlite3");
    run(&["restore", &u, p(&out), "--key-file", k]).fails(4, &object);

    // The plugin refuses to start on it, naming the command that gets the node going again.
    let s2 = writes(2);
    let refused = session(&net, &s2, false, false);
    let stop = refused.stop.expect("the plugin refused the first write");
    assert_eq!((stop.index, refused.continued), (0, 0));
    let HookReply::Error(e) = &stop.reply else {
        panic!("{:?}", stop.reply)
    };
    let msg = e["message"].as_str().unwrap_or_default();
    let command = format!(
        "backup-cli repair {u} --cut-damaged-tail --lightning-dir {}",
        net.display()
    );
    assert!(msg.contains(&command), "{msg}");
    assert!(msg.contains(&object), "{msg}");

    // The repair: a flag is required; then it keeps, cuts, and stores the node's database.
    run(&["repair", &u, "--lightning-dir", p(&net)]).fails(2, "--cut-damaged-tail");
    let kept = node.path("kept.log");
    let r = run(&[
        "repair",
        &u,
        "--cut-damaged-tail",
        "--lightning-dir",
        p(&net),
        "--keep-damaged",
        p(&kept),
    ])
    .ok();
    for needle in [
        format!("{object} was damaged at its end"),
        format!("Kept the whole segment as it was in {}", kept.display()),
        format!("last authentic record (data_version {})", v1 - 1),
        "as snapshot".to_string(),
        format!("(data_version {v1})"),
    ] {
        assert!(
            r.stdout.contains(&needle),
            "lacks {needle:?}:\n{}",
            r.stdout
        );
    }
    // The damaged segment is kept byte for byte; the stream is a prefix of it (nothing
    // readable removed: only the damaged record).
    assert_eq!(std::fs::read(&kept).unwrap(), damaged);
    let now = std::fs::read(&stream).unwrap();
    assert!(now.len() < damaged.len() && damaged.starts_with(&now));
    // The backup restores the node's database.
    let out1 = node.path("after-repair.sqlite3");
    run(&["restore", &u, p(&out1), "--key-file", k]).ok();
    assert_same_db(&out1, &testdata("db-s1.sqlite3"));
    // Run again (a crash after the cut, or an operator's second try): nothing more to do.
    let again = run(&[
        "repair",
        &u,
        "--cut-damaged-tail",
        "--lightning-dir",
        p(&net),
    ])
    .ok();
    assert!(again.stdout.contains("is not damaged"), "{}", again.stdout);
    assert!(
        again.stdout.contains("which the backup holds"),
        "{}",
        again.stdout
    );

    // The plugin starts and continues; the next restore equals lightningd's database.
    let next = session(&net, &s2, false, false);
    assert!(next.stop.is_none(), "{:?}\n{}", next.stop, next.stderr);
    assert_eq!(next.continued, s2.len());
    let out2 = node.path("s2.sqlite3");
    run(&["restore", &u, p(&out2), "--key-file", k]).ok();
    assert_same_db(&out2, &testdata("db-s2.sqlite3"));
    // Verify passes: the gap the cut left is bridged by the repair's snapshot (a warning).
    let v = run(&["verify", "--json", "--read-data", &u, "--key-file", k])
        .ok()
        .json();
    assert_eq!(v["ok"], true, "{v}");
    assert!(
        v["warnings"].to_string().contains("a damaged end was cut"),
        "{v}"
    );
    // States before the cut still restore; the lost one exists only in the snapshot.
    let older = node.path("older.sqlite3");
    run(&[
        "restore",
        &u,
        p(&older),
        "--to-version",
        &(v1 - 1).to_string(),
        "--key-file",
        k,
    ])
    .ok();
}

#[test]
fn repair_refuses_an_older_node_database_and_changes_nothing() {
    let node = Node::new();
    let net = node.dir.clone();
    let u = node.url();
    let s1 = writes(1);
    let a = session(&net, &s1, true, false);
    assert!(a.stop.is_none(), "{:?}", a.stop);
    let stream = newest_stream(&node.repo_path);
    let bytes = damage_last_record(&stream);
    // A node database older than what the backup authentically holds (a node run on a
    // restored old copy): never stored.
    let old = node.path("old.sqlite3");
    let _g = fork_guard();
    let mut conn = rusqlite::Connection::open(&old).unwrap();
    let tx = conn.transaction().unwrap();
    tx.execute_batch("CREATE TABLE vars (name TEXT, val TEXT, intval INTEGER, blobval BLOB); INSERT INTO vars (name, intval) VALUES ('data_version', 5);").unwrap();
    tx.commit().unwrap();
    drop(conn);
    drop(_g);
    std::fs::copy(&old, net.join("lightningd.sqlite3")).unwrap();
    run(&[
        "repair",
        &u,
        "--cut-damaged-tail",
        "--lightning-dir",
        p(&net),
    ])
    .fails(4, "older than the backup's authentic state");
    assert_eq!(std::fs::read(&stream).unwrap(), bytes, "nothing was cut");
}
