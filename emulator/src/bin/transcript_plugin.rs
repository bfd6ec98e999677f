//! A plugin that plays the plugin's side of a recorded lightningd transcript.
//!
//! `TRANSCRIPT=path transcript-plugin`: for each message it receives, it checks that it equals the
//! next `ld->plugin` message of the transcript (ids aside: lightningd's counter has gaps), then
//! sends the `plugin->ld` messages recorded after it, with the received id. A mismatch is answered
//! with a JSON-RPC error naming the difference, so the emulator's tests see it.

use std::io::{BufRead, Write};

use serde_json::Value;

fn without_id(v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(o) = v.as_object_mut() {
        o.remove("id");
    }
    v
}

fn main() -> anyhow::Result<()> {
    let path = std::env::var("TRANSCRIPT")?;
    // (message from lightningd, the plugin's answers to it)
    let mut script: Vec<(Value, Vec<Value>)> = Vec::new();
    for line in std::io::BufReader::new(std::fs::File::open(&path)?).lines() {
        let e: Value = serde_json::from_str(&line?)?;
        let (Some(dir), Some(msg)) = (e.get("dir").and_then(Value::as_str), e.get("msg")) else {
            continue;
        };
        if e.get("raw").is_none() {
            continue;
        }
        match dir {
            "ld->plugin" => script.push((msg.clone(), Vec::new())),
            _ => {
                if let Some(last) = script.last_mut() {
                    last.1.push(msg.clone());
                }
            }
        }
    }
    let stdin = std::io::stdin().lock();
    let mut out = std::io::stdout().lock();
    let mut steps = script.into_iter();
    for msg in serde_json::Deserializer::from_reader(stdin).into_iter::<Value>() {
        let msg = msg?;
        let id = msg.get("id").cloned();
        let Some((want, answers)) = steps.next() else {
            anyhow::bail!("message beyond the transcript: {msg}");
        };
        if without_id(&want) != without_id(&msg) {
            let err = serde_json::json!({"jsonrpc":"2.0","id":id,
                "error":{"code":-32600,"message":format!("transcript mismatch: want {want}, got {msg}")}});
            write!(out, "{err}\n\n")?;
            out.flush()?;
            continue;
        }
        for mut a in answers {
            if a.get("id").is_some() {
                if let (Some(o), Some(id)) = (a.as_object_mut(), id.clone()) {
                    o.insert("id".into(), id);
                }
            }
            write!(out, "{a}\n\n")?;
        }
        out.flush()?;
    }
    Ok(())
}
