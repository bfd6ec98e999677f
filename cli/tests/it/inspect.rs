//! `inspect` and `check` as an operator uses them before and after betting a node on a backup,
//! on real lightningd v26.06.6 databases with channels (nodes A and D of a regtest network) and
//! the real traces.

use crate::common::*;
use crate::node::{node_id, Backup, A_VERSION, EXTRA, PAID_MSAT};

/// Node A's only channel, as lightningd stored it: with node B, CHANNELD_NORMAL, 10M sat.
const A_BALANCE_MSAT: i64 = 5_466_162_897;

#[test]
fn inspect_lists_node_a_s_channel_and_counts() {
    let b = Backup::new();
    let key = b.key_file();
    let j = run(&["inspect", "--json", &b.url(), "--key-file", p(&key)])
        .ok()
        .json();
    assert_eq!(j["node_id"], node_id("node-a").as_str());
    assert_eq!(j["repository_node_id"], node_id("node-a").as_str());
    assert_eq!(j["data_version"], A_VERSION + EXTRA);
    assert_eq!(j["older_than_newest"], false);
    assert_eq!(
        (j["schema_version"].as_u64(), j["schema_known"].as_bool()),
        (Some(282), Some(true))
    );
    let ch = j["channels"].as_array().unwrap();
    assert_eq!(ch.len(), 1);
    assert_eq!(ch[0]["peer"], node_id("node-b").as_str());
    assert_eq!(ch[0]["state"], 3);
    assert_eq!(ch[0]["state_name"], "CHANNELD_NORMAL");
    assert_eq!(ch[0]["short_channel_id"], "121x2x0");
    assert_eq!(ch[0]["capacity_sat"], 10_000_000);
    assert_eq!(
        ch[0]["our_balance_msat"],
        A_BALANCE_MSAT - i64::from(EXTRA) * PAID_MSAT
    );
    let c = &j["counts"];
    assert_eq!(
        [
            &c["invoices"],
            &c["invoices_paid"],
            &c["payments"],
            &c["payments_complete"],
            &c["forwards"]
        ],
        [1689, 1481, 2390, 1927, 0]
    );
    assert_eq!(j["notes"].as_array().unwrap().len(), 0, "{j}");

    // The snapshot init made: the balance before the three payments, and its time; older.
    let snaps = run(&["snapshots", "--json", &b.url(), "--key-file", p(&key)])
        .ok()
        .json();
    let id = snaps["snapshots"][0]["id"].as_str().unwrap().to_string();
    let j = run(&[
        "inspect",
        "--json",
        &b.url(),
        "--snapshot",
        &id,
        "--key-file",
        p(&key),
    ])
    .ok()
    .json();
    assert_eq!(j["channels"][0]["our_balance_msat"], A_BALANCE_MSAT);
    // A snapshot of a database file was "written" when the backup stored it.
    let (written, stored) = (
        j["written"].as_u64().unwrap(),
        snaps["snapshots"][0]["time"].as_u64().unwrap(),
    );
    assert!(
        written <= stored && written + 600 > stored,
        "{written} {stored}"
    );
    assert_eq!(j["older_than_newest"], true);
    // By data_version.
    let v = (A_VERSION + 1).to_string();
    let j = run(&[
        "inspect",
        "--json",
        &b.url(),
        "--to-version",
        &v,
        "--key-file",
        p(&key),
    ])
    .ok()
    .json();
    assert_eq!(
        j["channels"][0]["our_balance_msat"],
        A_BALANCE_MSAT - PAID_MSAT
    );

    // The text an operator reads.
    let r = run(&["inspect", &b.url(), "--key-file", p(&key)]).ok();
    for want in [
        "CHANNELD_NORMAL",
        "121x2x0",
        "capacity   10000000 sat",
        &format!("ours {:>18}", "5466159.897 sat"),
        "invoices      1689 (1481 paid)",
        "payments      2390 (1927 complete)",
        "forwards      0",
        &node_id("node-a"),
        "(the newest the backup holds)",
    ] {
        assert!(r.stdout.contains(want), "{want:?} missing:\n{}", r.stdout);
    }
}

#[test]
fn inspect_lists_node_d_s_open_and_closed_channels() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("regtest");
    std::fs::create_dir(&dir).unwrap();
    unzstd(
        &channels("node-d-final-lightningd.sqlite3.zst"),
        &dir.join("lightningd.sqlite3"),
    );
    let repo = url(&t.path().join("backup"));
    run(&["init", "--no-encryption", "--lightning-dir", p(&dir), &repo]).ok();
    let j = run(&["inspect", "--json", &repo]).ok().json();
    assert_eq!(j["data_version"], 14302);
    let got: Vec<(i64, String, String, i64, i64)> = j["channels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["id"].as_i64().unwrap(),
                c["peer"].as_str().unwrap().to_string(),
                c["state_name"].as_str().unwrap().to_string(),
                c["capacity_sat"].as_i64().unwrap(),
                c["our_balance_msat"].as_i64().unwrap(),
            )
        })
        .collect();
    let (nb, nc) = (node_id("node-b"), node_id("node-c"));
    assert_eq!(
        got,
        [
            (
                1,
                nb,
                "CHANNELD_NORMAL".to_string(),
                10_000_000,
                6_477_204_219
            ),
            (
                2,
                nc.clone(),
                "CLOSED".to_string(),
                5_000_000,
                3_994_443_000
            ),
            (3, nc, "CLOSED".to_string(), 4_000_000, 3_755_646_000),
        ]
    );
    assert_eq!(
        (
            j["counts"]["invoices"].as_u64(),
            j["counts"]["payments"].as_u64()
        ),
        (Some(488), Some(612))
    );
}

#[test]
fn inspect_degrades_on_a_schema_it_does_not_know() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("regtest");
    std::fs::create_dir(&dir).unwrap();
    let db = dir.join("lightningd.sqlite3");
    unzstd(&channels("node-a/lightningd.sqlite3.zst"), &db);
    rusqlite::Connection::open(&db)
        .unwrap()
        .execute_batch(
            "UPDATE version SET version = 999;
             ALTER TABLE channels RENAME COLUMN scid TO scid_v9;
             ALTER TABLE channels RENAME COLUMN short_channel_id TO scid_text_v9;
             DROP TABLE forwards;",
        )
        .unwrap();
    let repo = url(&t.path().join("backup"));
    run(&["init", "--no-encryption", "--lightning-dir", p(&dir), &repo]).ok();
    let j = run(&["inspect", "--json", &repo]).ok().json();
    assert_eq!(
        (j["schema_version"].as_u64(), j["schema_known"].as_bool()),
        (Some(999), Some(false))
    );
    // What is there is shown; what is not says so.
    assert_eq!(j["channels"][0]["state_name"], "CHANNELD_NORMAL");
    assert!(j["channels"][0]["short_channel_id"].is_null());
    assert!(j["counts"]["forwards"].is_null());
    assert_eq!(j["counts"]["invoices"], 1689);
    let notes = j["notes"].to_string();
    for want in [
        "schema version 999",
        "no column channels.scid",
        "no table forwarded_payments",
    ] {
        assert!(notes.contains(want), "{want}: {notes}");
    }
    let r = run(&["inspect", &repo]).ok();
    assert!(
        r.stdout.contains("(not one backup-cli knows)"),
        "{}",
        r.stdout
    );
}

/// A node (stopped) whose database is lightningd's real one after session 3, and its backup.
fn checked_node() -> Node {
    let n = Node::new();
    let repo = n.repo();
    for s in 1..=3 {
        append_session(&repo, s);
    }
    std::fs::copy(testdata("db-s3.sqlite3"), n.dir.join("lightningd.sqlite3")).unwrap();
    n
}

#[test]
fn check_with_the_node_stopped() {
    let n = checked_node();
    let j = run(&["check", "--json", "--lightning-dir", p(&n.dir)])
        .ok()
        .json();
    assert_eq!(j["result"], "equal");
    assert_eq!(j["data_version"], last_version(3));
    let r = run(&["check", "--lightning-dir", p(&n.dir)]).ok();
    assert!(r.stdout.starts_with("EQUAL:"), "{}", r.stdout);

    // The node's database altered: exit 3, the first difference named.
    rusqlite::Connection::open(n.dir.join("lightningd.sqlite3"))
        .unwrap()
        .execute_batch("UPDATE invoices SET label = 'x' || label WHERE id = 3")
        .unwrap();
    let r = run(&["check", "--json", "--lightning-dir", p(&n.dir)]);
    assert_eq!(r.code, 3, "{}", r.stderr);
    let j: serde_json::Value = serde_json::from_str(r.stdout.trim()).unwrap();
    assert_eq!(j["result"], "different");
    assert_eq!(
        (
            j["difference"]["table"].as_str(),
            j["difference"]["rowid"].as_i64()
        ),
        (Some("invoices"), Some(3))
    );
    assert!(j["difference"]["what"]
        .as_str()
        .unwrap()
        .starts_with("column label"));
    let r = run(&["check", "--lightning-dir", p(&n.dir)]);
    assert_eq!(r.code, 3);
    assert!(
        r.stdout.contains("first difference: invoices rowid 3"),
        "{}",
        r.stdout
    );

    // Not on a running node (that is the plugin's backup-check).
    let _held = PidFileLock::hold(&n.tmp.path().join("lightningd-regtest.pid"));
    run(&["check", "--lightning-dir", p(&n.dir)]).fails(4, "backup-check");
}
