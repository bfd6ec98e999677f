//! The plugin side of lightningd's JSON-RPC 2.0 wire, by hand with serde_json.
//!
//! Why not `cln-plugin` 0.7: its `Builder::configure` rejects any message between getmanifest
//! and init, and lightningd sends `db_write` there (9 calls on a fresh node, 3 on each restart),
//! so the plugin would exit and lightningd die at start. The protocol is small:
//! - input: JSON objects, as lightningd writes them each followed by a blank line; any whitespace
//!   between objects is accepted. Read in blocks: an object's end is found by one pass over its
//!   bytes (brackets outside strings), then the object is parsed from memory. serde_json's
//!   reader-based parser took a call and a line/column update per byte: a quarter of the
//!   plugin's own time on the hook path (`perf`, benches/REPORT.md section 9);
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
    Messages::new(r).map(|m| m.map(Incoming::classify))
}

/// Where the search for the end of the next value stands (in `buf[start + at..]`).
#[derive(Default)]
struct Scan {
    /// Bytes of the value looked at so far.
    at: usize,
    /// Open brackets; 0 before the value starts.
    depth: usize,
    started: bool,
    in_string: bool,
    escaped: bool,
}

struct Messages<R> {
    r: R,
    /// Input read, `buf[..filled]`; the rest is room for the next read.
    buf: Vec<u8>,
    filled: usize,
    /// Where the next value (or the whitespace before it) starts.
    start: usize,
    scan: Scan,
    eof: bool,
    failed: bool,
}

impl<R: Read> Messages<R> {
    fn new(r: R) -> Messages<R> {
        Messages {
            r,
            buf: Vec::new(),
            filled: 0,
            start: 0,
            scan: Scan::default(),
            eof: false,
            failed: false,
        }
    }

    /// The length of the value at `buf[start..]` if it is whole in the buffer. A value that is
    /// no object or array (never sent by lightningd) is handed whole to the parser as it is.
    fn find_end(&mut self) -> Option<usize> {
        let s = &mut self.scan;
        let bytes = self.buf.get(self.start..self.filled).unwrap_or_default();
        while let Some(&b) = bytes.get(s.at) {
            s.at += 1;
            if s.in_string {
                if s.escaped {
                    s.escaped = false;
                } else if b == b'\\' {
                    s.escaped = true;
                } else if b == b'"' {
                    s.in_string = false;
                }
                continue;
            }
            match b {
                b'{' | b'[' => {
                    s.started = true;
                    s.depth += 1;
                }
                b'}' | b']' if s.depth > 0 => {
                    s.depth -= 1;
                    if s.depth == 0 {
                        return Some(s.at);
                    }
                }
                b'"' if s.started => s.in_string = true,
                b' ' | b'\n' | b'\r' | b'\t' if !s.started => {}
                // Anything else outside a value: the parser says what it is.
                _ if !s.started => return Some(bytes.len()),
                _ => {}
            }
        }
        None
    }

    /// Read more input; false at its end.
    fn read_more(&mut self) -> Result<bool, serde_json::Error> {
        if self.start > 0 && self.start * 2 >= self.filled {
            self.buf.copy_within(self.start..self.filled, 0);
            self.filled -= self.start;
            self.start = 0;
            // A large message's room is not kept once it is parsed.
            if self.buf.len() > 1 << 20 && self.filled < 64 << 10 {
                self.buf.truncate(128 << 10);
                self.buf.shrink_to_fit();
            }
        }
        let room = (self.filled - self.start).clamp(64 << 10, 16 << 20);
        if self.buf.len() < self.filled + room {
            self.buf.resize(self.filled + room, 0);
        }
        loop {
            match self
                .r
                .read(self.buf.get_mut(self.filled..).unwrap_or_default())
            {
                Ok(n) => {
                    self.filled += n;
                    return Ok(n > 0);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(serde_json::Error::io(e)),
            }
        }
    }
}

impl<R: Read> Iterator for Messages<R> {
    type Item = Result<Value, serde_json::Error>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        loop {
            let end = match self.find_end() {
                Some(end) => Some(end),
                None if self.eof => {
                    let rest = self.buf.get(self.start..self.filled).unwrap_or_default();
                    if rest.iter().all(u8::is_ascii_whitespace) {
                        return None;
                    }
                    // A value cut short by the end of input: the parser's error.
                    Some(rest.len())
                }
                None => None,
            };
            if let Some(end) = end {
                let text = self
                    .buf
                    .get(self.start..self.start + end)
                    .unwrap_or_default();
                let mut de = serde_json::Deserializer::from_slice(text).into_iter::<Value>();
                let res = de.next();
                let used = de.byte_offset();
                return match res {
                    Some(Ok(v)) => {
                        self.start += used;
                        self.scan = Scan::default();
                        Some(Ok(v))
                    }
                    // A scalar still being written (never sent by lightningd).
                    Some(Err(e)) if e.is_eof() && !self.eof => match self.read_more() {
                        Ok(more) => {
                            self.eof = !more;
                            self.scan = Scan::default();
                            continue;
                        }
                        Err(e) => {
                            self.failed = true;
                            Some(Err(e))
                        }
                    },
                    Some(Err(e)) => {
                        self.failed = true;
                        Some(Err(e))
                    }
                    None => None,
                };
            }
            match self.read_more() {
                Ok(more) => self.eof = !more,
                Err(e) => {
                    self.failed = true;
                    return Some(Err(e));
                }
            }
        }
    }
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

    /// A reader handing out its input a few bytes at a time, as a pipe may.
    struct Trickle<'a>(&'a [u8], usize);
    impl Read for Trickle<'_> {
        fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
            let n = self.1.min(self.0.len()).min(b.len());
            b[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    #[test]
    fn messages_split_anywhere_parse_alike() {
        let a = json!({"jsonrpc": "2.0", "id": "cln:db_write#1", "method": "db_write",
            "params": {"data_version": 7, "writes": ["INSERT INTO t VALUES ('{[}]', '\\\"}')", "x"]}});
        let big = json!({"jsonrpc": "2.0", "id": "cln:db_write#2", "method": "db_write",
            "params": {"data_version": 8, "writes": ["y".repeat(300_000)]}});
        let b = json!({"jsonrpc": "2.0", "method": "shutdown", "params": {}});
        let input = format!("{a}\n\n{big}\n\n {b}\n\n");
        for step in [1, 2, 7, 4096, 1 << 20] {
            let got: Vec<Value> = Messages::new(Trickle(input.as_bytes(), step))
                .map(|m| m.unwrap())
                .collect();
            assert_eq!(got, vec![a.clone(), big.clone(), b.clone()], "step {step}");
        }
    }

    #[test]
    fn garbage_between_messages_is_an_error() {
        let input = br#"{"jsonrpc":"2.0","method":"a"}}{"jsonrpc":"2.0","method":"b"}"#;
        let mut it = messages(&input[..]);
        assert!(matches!(it.next(), Some(Ok(_))));
        assert!(matches!(it.next(), Some(Err(_))));
        assert!(it.next().is_none());
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
