//! The emulator must speak to a plugin exactly as lightningd v26.06.6 did in the recorded
//! transcripts (testdata/transcript-session*.jsonl): same bytes for getmanifest, db_write, init and
//! shutdown, db_write before init (9 on a fresh node, 3 on a restart), RPC pass-through. If it
//! drifts, every plugin test built on it proves less than it claims.

use std::path::{Path, PathBuf};
use std::time::Duration;

use emulator::{run_trace_session, wire, DbWrite, Emulator, HookReply, SessionOptions};
use serde_json::{json, Value};

fn testdata(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../testdata")
        .join(name)
}

/// (direction, raw bytes, parsed message) of every message in a transcript.
fn transcript(n: u32) -> Vec<(String, String, Value)> {
    let text = std::fs::read_to_string(testdata(&format!("transcript-session{n}.jsonl"))).unwrap();
    text.lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|e| e.get("raw").is_some())
        .map(|e| {
            (
                e["dir"].as_str().unwrap().to_string(),
                e["raw"].as_str().unwrap().to_string(),
                e["msg"].clone(),
            )
        })
        .collect()
}

const OPTION_ORDER: [&str; 2] = ["recorder-file", "rec-opt"];

fn init_options(init: &Value) -> Vec<(String, Value)> {
    OPTION_ORDER
        .iter()
        .map(|k| (k.to_string(), init["params"]["options"][*k].clone()))
        .collect()
}

#[test]
fn encodings_equal_lightningd_bytes() {
    let mut checked = 0;
    for n in 1..=4 {
        for (dir, raw, msg) in transcript(n) {
            if dir != "ld->plugin" {
                continue;
            }
            let id = msg["id"].as_str();
            let method = msg["method"].as_str().unwrap();
            let mine = match method {
                "getmanifest" => wire::encode(id, method, r#"{"allow-deprecated-apis":true}"#),
                "db_write" => {
                    let p = &msg["params"];
                    let writes: Vec<String> = serde_json::from_value(p["writes"].clone()).unwrap();
                    let v = p["data_version"].as_u64().unwrap() as u32;
                    wire::encode(id, method, &wire::db_write_params(v, &writes))
                }
                "init" => {
                    let dir = msg["params"]["configuration"]["lightning-dir"]
                        .as_str()
                        .unwrap();
                    wire::encode(
                        id,
                        method,
                        &wire::init_params(&init_options(&msg), dir, "regtest"),
                    )
                }
                "shutdown" => wire::encode(None, method, r#"{"shutdown":{}}"#),
                // RPC calls carry the client's own bytes; compared as values below.
                _ => continue,
            };
            assert_eq!(mine, raw, "session {n} {method}");
            checked += 1;
        }
    }
    assert!(checked >= 60, "only {checked} messages compared");
}

/// The db_write calls of a transcript, how many came before init, the init message, RPC calls.
type Script = (Vec<DbWrite>, usize, Value, Vec<(String, Value, Value)>);

fn script(n: u32) -> Script {
    let t = transcript(n);
    let mut writes = Vec::new();
    let mut pre_init = None;
    let mut init = Value::Null;
    let mut rpcs = Vec::new();
    for (i, (dir, _, msg)) in t.iter().enumerate() {
        if dir != "ld->plugin" {
            continue;
        }
        match msg["method"].as_str().unwrap() {
            "db_write" => writes.push(DbWrite {
                data_version: msg["params"]["data_version"].as_u64().unwrap() as u32,
                writes: serde_json::from_value(msg["params"]["writes"].clone()).unwrap(),
            }),
            "init" => {
                pre_init = Some(writes.len());
                init = msg.clone();
            }
            "getmanifest" | "shutdown" => {}
            m => {
                let reply = t[i + 1..]
                    .iter()
                    .find(|x| x.2["id"] == msg["id"])
                    .unwrap()
                    .2
                    .clone();
                rpcs.push((m.to_string(), msg["params"].clone(), reply));
            }
        }
    }
    (writes, pre_init.unwrap(), init, rpcs)
}

fn transcript_plugin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_transcript-plugin"))
}

#[test]
fn sessions_replay_as_recorded() {
    for n in 1..=4 {
        let t = transcript(n);
        let (_, pre_init, init, _) = script(n);
        assert_eq!(
            pre_init,
            if n == 1 { 9 } else { 3 },
            "session {n}: calls before init"
        );
        let tp = testdata(&format!("transcript-session{n}.jsonl"))
            .display()
            .to_string();
        let dir = tempfile::tempdir().unwrap();
        let mut em =
            Emulator::spawn(&transcript_plugin(), dir.path(), &[("TRANSCRIPT", &tp)]).unwrap();
        em.set_timeout(Duration::from_secs(60));
        let mut hooks = 0;
        // Every message lightningd sent, in its order, through the emulator's API.
        for (i, (dir, _, msg)) in t.iter().enumerate() {
            if dir != "ld->plugin" {
                continue;
            }
            match msg["method"].as_str().unwrap() {
                "getmanifest" => {
                    let manifest = em.getmanifest().unwrap();
                    assert_eq!(manifest["hooks"], json!([{"name": "db_write"}]));
                }
                "db_write" => {
                    let p = &msg["params"];
                    let writes: Vec<String> = serde_json::from_value(p["writes"].clone()).unwrap();
                    let r = em
                        .db_write(p["data_version"].as_u64().unwrap() as u32, &writes)
                        .unwrap();
                    assert_eq!(r, HookReply::Continue, "session {n} message {i}");
                    hooks += 1;
                }
                "init" => {
                    // The transcript plugin compares lightning-dir too: give the recorded one.
                    let d = init["params"]["configuration"]["lightning-dir"]
                        .as_str()
                        .unwrap();
                    em.init(&init_options(&init), Path::new(d)).unwrap();
                }
                "shutdown" => em.notify("shutdown", msg["params"].clone()).unwrap(),
                m => {
                    let want = &t[i + 1..]
                        .iter()
                        .find(|x| x.2["id"] == msg["id"])
                        .unwrap()
                        .2;
                    let got = em.rpc(m, msg["params"].clone()).unwrap();
                    assert_eq!(got["result"], want["result"], "rpc {m}");
                    assert!(got["id"]
                        .as_str()
                        .unwrap()
                        .starts_with(&format!("cli:{m}#")));
                }
            }
        }
        assert!(
            em.log_text().contains("recorder-v2 start info"),
            "{}",
            em.log_text()
        );
        assert_eq!(em.latencies.len(), hooks);
        let st = em.close_stdin_and_wait().unwrap();
        assert!(st.success(), "{st} {}", em.stderr_text());
    }
}

#[test]
fn session_driver_sends_pre_init_calls_then_init() {
    // Session 1 has no RPC call between hooks: the driver alone reproduces it.
    let (writes, _, init, rpcs) = script(1);
    let dir = tempfile::tempdir().unwrap();
    let tp = testdata("transcript-session1.jsonl").display().to_string();
    let opts = SessionOptions {
        fresh: true,
        init_options: init_options(&init),
        rpc_after: rpcs.iter().map(|r| (r.0.clone(), r.1.clone())).collect(),
        timeout: Duration::from_secs(60),
        env: vec![("TRANSCRIPT".into(), tp)],
    };
    // The driver gives its own network dir as lightning-dir, which the transcript plugin
    // rejects at init: so the run must stop exactly there, after the 9 pre-init calls.
    let r = run_trace_session(&transcript_plugin(), dir.path(), &writes, &opts);
    let e = format!("{:#}", r.unwrap_err());
    let want = e
        .split_once("want ")
        .and_then(|(_, w)| w.split_once(", got"))
        .map(|w| w.0);
    assert!(want.is_some_and(|w| w.contains("cln:init#")), "{e}");
    assert!(e.contains("init failed"), "{e}");
}

#[test]
fn shutdown_notification_as_recorded() {
    let (writes, pre_init, init, _) = script(3);
    assert_eq!(pre_init, 3);
    let tp = testdata("transcript-session3.jsonl").display().to_string();
    let dir = tempfile::tempdir().unwrap();
    let mut em = Emulator::spawn(&transcript_plugin(), dir.path(), &[("TRANSCRIPT", &tp)]).unwrap();
    em.getmanifest().unwrap();
    let recorded_dir = init["params"]["configuration"]["lightning-dir"]
        .as_str()
        .unwrap()
        .to_string();
    for (i, w) in writes.iter().enumerate() {
        if i == pre_init {
            em.init(&init_options(&init), Path::new(&recorded_dir))
                .unwrap();
        }
        assert!(em
            .db_write(w.data_version, &w.writes)
            .unwrap()
            .is_continue());
    }
    em.notify("shutdown", json!({"shutdown": {}})).unwrap();
    assert!(
        em.close_stdin_and_wait().unwrap().success(),
        "{}",
        em.stderr_text()
    );
}

#[test]
fn a_wrong_message_or_a_dead_plugin_is_a_stop() {
    let tp = testdata("transcript-session2.jsonl").display().to_string();
    let (writes, _, _, _) = script(2);
    let dir = tempfile::tempdir().unwrap();
    let opts = SessionOptions {
        fresh: false,
        env: vec![("TRANSCRIPT".into(), tp.clone())],
        timeout: Duration::from_secs(60),
        ..Default::default()
    };
    // Statements differ from the recording: the transcript plugin answers an error.
    let mut bad = writes.clone();
    bad[1].writes[0].push(' ');
    let r = run_trace_session(&transcript_plugin(), dir.path(), &bad, &opts).unwrap();
    let stop = r.stop.expect("a stop");
    assert_eq!((stop.index, r.continued, r.sent), (1, 1, 2));
    assert!(
        matches!(stop.reply, HookReply::Error(_)),
        "{:?}",
        stop.reply
    );
    assert!(!r.initialized);

    // The plugin exits with a call pending (a call beyond its transcript): died.
    let full = std::fs::read_to_string(&tp).unwrap();
    let short: Vec<&str> = full
        .lines()
        .take_while(|l| !l.contains("cln:db_write#26"))
        .collect();
    let short_path = dir.path().join("short.jsonl");
    std::fs::write(&short_path, short.join("\n")).unwrap();
    let sp = short_path.display().to_string();
    let mut em = Emulator::spawn(&transcript_plugin(), dir.path(), &[("TRANSCRIPT", &sp)]).unwrap();
    em.set_timeout(Duration::from_secs(60));
    em.getmanifest().unwrap();
    assert!(em
        .db_write(writes[0].data_version, &writes[0].writes)
        .unwrap()
        .is_continue());
    let r = em
        .db_write(writes[1].data_version, &writes[1].writes)
        .unwrap();
    assert!(matches!(r, HookReply::Died(_)), "{r:?}");
}
