//! The plugin side of lightningd's JSON-RPC 2.0 wire, by hand with serde_json.
//!
//! Why not `cln-plugin` 0.7: its `Builder::configure` rejects any message between getmanifest
//! and init, and lightningd sends `db_write` there (9 calls on a fresh node, 3 on each restart),
//! so the plugin would exit and lightningd die at start. The protocol is small:
//! - input: JSON objects, as lightningd writes them each followed by a blank line; parsed with a
//!   stream deserializer, so any whitespace between objects is accepted;
//! - output: one compact JSON object followed by `\n\n`, flushed, written under a lock so replies
//!   from background threads (compaction) never interleave with the main loop's;
//! - ids are strings (`"nonnumericids": true`) and echoed unchanged.

use std::io::{Read, Write};
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};

/// JSON-RPC error codes used in replies.
pub const METHOD_NOT_FOUND: i64 = -32601;
pub const INVALID_PARAMS: i64 = -32602;
/// A plugin-side failure (lightningd treats any error to a hook as "stop without committing").
pub const PLUGIN_ERROR: i64 = -32000;

/// One message from lightningd.
#[derive(Debug, Clone, PartialEq)]
pub enum Incoming {
    /// A call that wants an answer.
    Request {
        id: Value,
        method: String,
        params: Value,
    },
    /// A notification (no id), e.g. `shutdown`.
    Notification { method: String, params: Value },
    /// Something that is neither (a reply to a call we never make, or a malformed object).
    Other(Value),
}

impl Incoming {
    pub fn classify(v: Value) -> Incoming {
        let method = v.get("method").and_then(Value::as_str).map(str::to_string);
        let params = v.get("params").cloned().unwrap_or(Value::Null);
        match (method, v.get("id").cloned()) {
            (Some(method), Some(id)) if !id.is_null() => Incoming::Request { id, method, params },
            (Some(method), _) => Incoming::Notification { method, params },
            _ => Incoming::Other(v),
        }
    }
}

/// Reads lightningd's messages from `r` until end of input. A malformed stream ends in `Err`.
pub fn messages<R: Read>(r: R) -> impl Iterator<Item = Result<Incoming, serde_json::Error>> {
    serde_json::Deserializer::from_reader(r)
        .into_iter::<Value>()
        .map(|m| m.map(Incoming::classify))
}

/// The output side: shared by the main loop and background threads.
#[derive(Clone)]
pub struct Out {
    w: Arc<Mutex<Box<dyn Write + Send>>>,
}

impl Out {
    pub fn new(w: Box<dyn Write + Send>) -> Out {
        Out {
            w: Arc::new(Mutex::new(w)),
        }
    }

    pub fn stdout() -> Out {
        Out::new(Box::new(std::io::stdout()))
    }

    /// Write one message and flush. If lightningd is gone there is no one to tell: the error is
    /// returned and the main loop ends at the next read.
    pub fn send(&self, v: &Value) -> std::io::Result<()> {
        let mut text = v.to_string();
        text.push_str("\n\n");
        let mut w = self
            .w
            .lock()
            .map_err(|_| std::io::Error::other("output lock poisoned"))?;
        w.write_all(text.as_bytes())?;
        w.flush()
    }

    pub fn result(&self, id: &Value, result: Value) -> std::io::Result<()> {
        self.send(&json!({"jsonrpc": "2.0", "id": id, "result": result}))
    }

    pub fn error(&self, id: &Value, code: i64, message: &str) -> std::io::Result<()> {
        self.send(&json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}}))
    }

    /// A line in lightningd's log. Levels: debug, info, unusual, broken.
    pub fn log(&self, level: &str, message: &str) {
        // Multi-line messages become several log lines, as lightningd shows one per entry.
        for line in message.lines() {
            let _ = self.send(&json!({"jsonrpc": "2.0", "method": "log",
                "params": {"level": level, "message": line}}));
        }
    }
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn framing_variants_parse_alike() {
        let a = r#"{"jsonrpc":"2.0","id":"cln:db_write#21","method":"db_write","params":{"data_version":1,"writes":["x"]}}"#;
        let b = r#"{"jsonrpc":"2.0","method":"shutdown","params":{"shutdown":{}}}"#;
        for sep in ["\n\n", "\n", "", " \r\n\t"] {
            let input = format!("{a}{sep}{b}{sep}");
            let got: Vec<Incoming> = messages(input.as_bytes()).map(|m| m.unwrap()).collect();
            assert_eq!(got.len(), 2, "separator {sep:?}");
            assert!(
                matches!(&got[0], Incoming::Request { id, method, .. } if id == "cln:db_write#21" && method == "db_write")
            );
            assert!(
                matches!(&got[1], Incoming::Notification { method, .. } if method == "shutdown")
            );
        }
    }

    #[test]
    fn truncated_input_is_an_error_not_a_message() {
        let mut it = messages(&br#"{"jsonrpc":"2.0","id":"x","meth"#[..]);
        assert!(matches!(it.next(), Some(Err(_))));
    }

    #[test]
    fn replies_are_one_object_and_a_blank_line() {
        let buf = Arc::new(Mutex::new(Vec::<u8>::new()));
        struct W(Arc<Mutex<Vec<u8>>>);
        impl Write for W {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let out = Out::new(Box::new(W(buf.clone())));
        out.result(&json!("cli:x#1/cln:x#2"), json!({"result": "continue"}))
            .unwrap();
        out.log("info", "two\nlines");
        let text = String::from_utf8(buf.lock().unwrap().clone()).unwrap();
        let parts: Vec<&str> = text.split_terminator("\n\n").collect();
        assert_eq!(parts.len(), 3, "{text:?}");
        assert_eq!(
            serde_json::from_str::<Value>(parts[0]).unwrap(),
            json!({"jsonrpc":"2.0","id":"cli:x#1/cln:x#2","result":{"result":"continue"}})
        );
        assert!(text.ends_with("\n\n"));
    }
}
