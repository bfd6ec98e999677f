//! The live proof, through the real plugin under the emulator, with lightningd's own database
//! kept as lightningd keeps it (each batch run before its hook call, committed after `continue`)
//! and its RPC socket answering `getinfo`:
//! - `backup-check` says equal on the real trace, and names the first difference once
//!   lightningd's database and the backup drift apart; `backup-status` and lightningd's log
//!   (`broken`) say so too; the periodic drill runs by itself;
//! - the node id comes from `getinfo` into the repository, and a repository that records
//!   another node stops lightningd at its next write;
//! - the metrics file parses with a Prometheus text-format parser (openmetrics-parser's
//!   grammar) and shows what happened.

use std::time::Duration;

use emulator::node::{Database, RpcSocket};
use openmetrics_parser::prometheus::parse_prometheus;
use openmetrics_parser::{PrometheusType, PrometheusValue};

use super::*;

/// `vars.node_id` of the node that recorded trace s1.
const S1_NODE: &str = "02058d9b993785763fac9dd038703cc32ca96ba5cb52ed5ec5b13f33eb85ad7a50";
const WAIT: Duration = Duration::from_secs(120);

struct Live {
    node: Node,
    em: Emulator,
    _rpc: RpcSocket,
}

/// A node running session 1 (the first `batches` of it) with the plugin.
fn live(batches: usize, options: Vec<(String, Value)>) -> Live {
    let node = Node::new(true);
    let rpc = RpcSocket::serve(&node.net, S1_NODE).unwrap();
    let mut em = Emulator::spawn(&plugin(), &node.net, &[]).unwrap();
    em.set_timeout(WAIT);
    em.attach_database(Database::open(&node.net.join("lightningd.sqlite3")).unwrap());
    em.getmanifest().unwrap();
    let (_, stop, _) = em.run_batches(&trace(1)[..batches], 9, &options).unwrap();
    assert!(stop.is_none(), "{stop:?}\n{}", em.log_text());
    Live {
        node,
        em,
        _rpc: rpc,
    }
}

fn opt(k: &str, v: Value) -> (String, Value) {
    (k.to_string(), v)
}

#[test]
fn backup_check_equal_then_the_first_difference_and_metrics() {
    let s1 = trace(1);
    let mut l = live(
        s1.len(),
        vec![opt("backup-metrics-file", json!("metrics.prom"))],
    );
    let last = s1.last().unwrap().data_version;
    let r = l.em.rpc_ok("backup-check", json!({})).unwrap();
    assert_eq!(r["result"], "equal", "{r}");
    assert_eq!(
        (r["data_version"].as_u64(), r["data_version_end"].as_u64()),
        (Some(last.into()), Some(last.into()))
    );
    assert!(
        r["tables"].as_u64().unwrap() > 30 && r["rows"].as_u64().unwrap() > 1000,
        "{r}"
    );
    l.em.wait_log(WAIT, |g| {
        g.level == "info" && g.message.contains("backup-check: equal")
    })
    .unwrap();
    // The node id, from lightningd's getinfo.
    l.em.wait_log(WAIT, |g| {
        g.message.contains(&format!("recorded node {S1_NODE}"))
    })
    .unwrap();
    let st = l.em.rpc_ok("backup-status", json!({})).unwrap();
    assert_eq!(st["last_check"]["result"], "equal");
    assert_eq!(st["node_id"], S1_NODE);
    assert_eq!(st["check_running"], false);

    // lightningd's database changed behind the backup's back.
    rusqlite::Connection::open(l.node.net.join("lightningd.sqlite3"))
        .unwrap()
        .execute("UPDATE invoices SET msatoshi = 1 WHERE id = 2", [])
        .unwrap();
    let r = l.em.rpc_ok("backup-check", json!({})).unwrap();
    assert_eq!(r["result"], "different", "{r}");
    assert_eq!(
        (
            r["difference"]["table"].as_str(),
            r["difference"]["rowid"].as_i64()
        ),
        (Some("invoices"), Some(2))
    );
    assert!(r["difference"]["what"]
        .as_str()
        .unwrap()
        .starts_with("column msatoshi"));
    let broken =
        l.em.wait_log(WAIT, |g| {
            g.level == "broken" && g.message.contains("does NOT restore")
        })
        .unwrap();
    assert!(
        broken.message.contains("invoices rowid 2"),
        "{}",
        broken.message
    );
    let st = l.em.rpc_ok("backup-status", json!({})).unwrap();
    assert_eq!(st["last_check"]["result"], "different");

    // The metrics file shows the difference (it is rewritten every 5 s).
    let path = l.node.net.join("metrics.prom");
    let mut text = String::new();
    for _ in 0..600 {
        text = std::fs::read_to_string(&path).unwrap_or_default();
        if text.contains("cln_backup_check_result{result=\"different\"} 1") {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let m = parse_prometheus(&text).unwrap_or_else(|e| panic!("{e:?}:\n{text}"));
    // The sample of `name` with these labels (the parser keeps labels sorted by name).
    let gauge = |name: &str, labels: &[(&str, &str)]| -> f64 {
        let f = m
            .families
            .get(name)
            .unwrap_or_else(|| panic!("no {name} in\n{text}"));
        assert_eq!(f.family_type, PrometheusType::Gauge, "{name}");
        let s = f
            .iter_samples()
            .find(|s| {
                let set = s.get_labelset().unwrap();
                set.iter().count() == labels.len()
                    && labels
                        .iter()
                        .all(|(k, v)| set.get_label_value(k) == Some(*v))
            })
            .unwrap_or_else(|| panic!("{name}{labels:?} in\n{text}"));
        match &s.value {
            PrometheusValue::Gauge(n) => n.as_f64(),
            v => panic!("{name}: {v:?}"),
        }
    };
    assert_eq!(
        gauge("cln_backup_check_result", &[("result", "different")]),
        1.0
    );
    assert_eq!(
        gauge("cln_backup_check_result", &[("result", "equal")]),
        0.0
    );
    assert_eq!(
        gauge("cln_backup_acknowledged_data_version", &[]),
        f64::from(last)
    );
    let url = format!("file://{}", l.node.repo.display());
    assert_eq!(
        gauge(
            "cln_backup_destination_up",
            &[("url", &url), ("mode", "sync")]
        ),
        1.0
    );
    assert_eq!(
        gauge(
            "cln_backup_destination_lag_batches",
            &[("url", &url), ("mode", "sync")]
        ),
        0.0
    );
    assert!(gauge("cln_backup_check_age_seconds", &[]) >= 0.0);
    assert!(gauge("cln_backup_journal_bytes_since_snapshot", &[]) > 0.0);
    let hist = &m.families["cln_backup_hook_duration_seconds"];
    assert_eq!(hist.family_type, PrometheusType::Histogram);
    let PrometheusValue::Histogram(h) = &hist.iter_samples().next().unwrap().value else {
        panic!("not a histogram")
    };
    // Every hook of the session, in buckets that only grow.
    assert_eq!(h.count, Some(s1.len() as u64));
    let counts: Vec<f64> = h.buckets.iter().map(|b| b.count.as_f64()).collect();
    assert!(counts.windows(2).all(|w| w[0] <= w[1]), "{counts:?}");
    assert_eq!(counts.last().copied(), Some(s1.len() as f64));
    let errors = &m.families["cln_backup_errors_total"];
    assert_eq!(errors.family_type, PrometheusType::Counter);
    assert_eq!(errors.iter_samples().count(), 3);
    assert!(l.em.close_stdin_and_wait().unwrap().success());
}

/// A compaction asked for while a backup-check runs is refused with the reason (both read the
/// whole journal; the check compares against what it restored). The check is held running by
/// an exclusive lock on lightningd's database, as a long write of lightningd's would: it waits
/// for it (its busy timeout is 60 s), so nothing here depends on how fast the check is.
#[test]
fn backup_compact_is_refused_while_a_backup_check_runs() {
    let mut l = live(400, vec![]);
    let db = rusqlite::Connection::open(l.node.net.join("lightningd.sqlite3")).unwrap();
    db.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let check = l.em.rpc_start("backup-check", json!({})).unwrap();
    for _ in 0..1200 {
        let st = l.em.rpc_ok("backup-status", json!({})).unwrap();
        if st["check_running"] == true {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let r = l.em.rpc("backup-compact", json!({})).unwrap();
    let msg = r["error"]["message"].as_str().unwrap_or_default();
    assert!(msg.contains("a backup-check is running"), "{r}");
    db.execute_batch("ROLLBACK").unwrap();
    let done = l.em.rpc_wait(&check).unwrap();
    assert_eq!(done["result"]["result"], "equal", "{done}");
    // Once it ended, a compaction runs.
    let r = l.em.rpc_ok("backup-compact", json!({})).unwrap();
    assert!(r.get("error").is_none(), "{r}");
    assert!(l.em.close_stdin_and_wait().unwrap().success());
}

#[test]
fn the_periodic_drill_runs_by_itself() {
    let n = 400;
    let mut l = live(n, vec![opt("backup-check-interval", json!(1))]);
    let g =
        l.em.wait_log(WAIT, |g| {
            g.message.starts_with("periodic backup-check: equal")
        })
        .unwrap();
    // It ran while lightningd went on writing, and followed it.
    assert!(g.message.contains("data_version "), "{}", g.message);
    assert!(l.em.close_stdin_and_wait().unwrap().success());
}

#[test]
fn a_repository_of_another_node_stops_lightningd() {
    let node_a = "03e8c0e81647f86f1abfb99a24e7150f8885d3d66be04fb8d796ea8ad363b00f7b";
    let s1 = trace(1);
    let node = Node::new(false);
    store::node::record_node_id(&node.open(), node_a, store::node::NodeIdSource::Database).unwrap();
    let _rpc = RpcSocket::serve(&node.net, S1_NODE).unwrap();
    let mut em = Emulator::spawn(&plugin(), &node.net, &[]).unwrap();
    em.set_timeout(WAIT);
    em.getmanifest().unwrap();
    // The writes before init, then init: the node id is asked for after it.
    let (_, stop, _) = em.run_batches(&s1[..9], 9, &[]).unwrap();
    assert!(stop.is_none());
    let g = em
        .wait_log(WAIT, |g| {
            g.level == "broken" && g.message.contains("belongs to another node")
        })
        .unwrap();
    assert!(
        g.message.contains(node_a) && g.message.contains(S1_NODE),
        "{}",
        g.message
    );
    let reply = em.db_write(s1[9].data_version, &s1[9].writes).unwrap();
    let HookReply::Error(e) = reply else {
        panic!("{reply:?}")
    };
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("belongs to another node"),
        "{e}"
    );
}

/// Every file under `dir` with its bytes.
fn files_of(dir: &std::path::Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push((p.clone(), std::fs::read(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

/// Found under a real lightningd: backup.lock and backup.key copied from node A into node B's
/// directory. lightningd sends its restart batches before `init`, before `getinfo` can be
/// asked, so the check after init came too late: B's batches landed in A's journal (or replaced
/// A's last batch). The node id in B's own database is read at open: the first write is refused
/// and A's repository is left byte for byte as it was.
#[test]
fn a_copied_backup_lock_of_another_node_is_refused_before_the_first_write() {
    let node_a = "03e8c0e81647f86f1abfb99a24e7150f8885d3d66be04fb8d796ea8ad363b00f7b";
    let s1 = trace(1);
    let s2 = trace(2);
    // Node B ran session 1: its database holds its node id (S1_NODE), its backup records it.
    let Live {
        node: node_b,
        em: mut b,
        _rpc,
    } = live(s1.len(), vec![]);
    b.wait_log(WAIT, |g| {
        g.message.contains(&format!("recorded node {S1_NODE}"))
    })
    .unwrap();
    assert!(b.close_stdin_and_wait().unwrap().success());
    // Node A's repository (same kind of key file, another node recorded).
    let a = Node::new(true);
    store::node::record_node_id(&a.open(), node_a, store::node::NodeIdSource::Getinfo).unwrap();
    for f in ["backup.lock", "backup.key"] {
        std::fs::copy(a.net.join(f), node_b.net.join(f)).unwrap();
    }
    let before = files_of(&a.repo);

    let mut em = Emulator::spawn(&plugin(), &node_b.net, &[]).unwrap();
    em.set_timeout(WAIT);
    em.attach_database(Database::open(&node_b.net.join("lightningd.sqlite3")).unwrap());
    em.getmanifest().unwrap();
    let first = &s2[0];
    let reply = em.db_write(first.data_version, &first.writes).unwrap();
    let HookReply::Error(e) = reply else {
        panic!("the first write was answered {reply:?}\n{}", em.log_text())
    };
    let msg = e["message"].as_str().unwrap();
    assert!(
        msg.contains(&format!("belongs to node {node_a}"))
            && msg.contains(&format!("is node {S1_NODE}"))
            && msg.contains("backup-cli init --lightning-dir"),
        "{msg}"
    );
    assert_eq!(files_of(&a.repo), before, "node A's repository changed");
}
