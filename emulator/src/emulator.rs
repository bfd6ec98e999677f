//! One plugin process, spoken to as lightningd speaks to it.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;

use crate::wire;

/// How long to wait for any one answer before giving up (lightningd itself would wait forever).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);

/// What the plugin answered to a `db_write` hook call.
#[derive(Clone, Debug, PartialEq)]
pub enum HookReply {
    /// `{"result":"continue"}`: lightningd commits and goes on.
    Continue,
    /// A JSON-RPC error object: lightningd stops without committing.
    Error(Value),
    /// Any other result: lightningd stops without committing.
    Other(Value),
    /// The plugin closed its stdout or exited with the call pending: lightningd stops.
    Died(String),
}

impl HookReply {
    pub fn is_continue(&self) -> bool {
        matches!(self, HookReply::Continue)
    }
}

impl std::fmt::Display for HookReply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HookReply::Continue => write!(f, "continue"),
            HookReply::Error(e) => write!(f, "error {e}"),
            HookReply::Other(v) => write!(f, "unexpected result {v}"),
            HookReply::Died(why) => write!(f, "plugin died ({why})"),
        }
    }
}

/// A `log` notification from the plugin.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogLine {
    pub level: String,
    pub message: String,
}

enum Incoming {
    Msg(Value),
    Eof,
    Garbage(String),
    /// Nothing complete arrived within the wait.
    Timeout,
}

/// The plugin's stdout, read on the calling thread as lightningd's poll loop reads it (a reader
/// thread would add a wake-up to every round trip, which the hook latency benchmark would count).
struct PluginOutput {
    out: ChildStdout,
    buf: Vec<u8>,
    eof: bool,
}

impl PluginOutput {
    /// The next whole JSON message, waiting at most `wait`.
    fn next(&mut self, wait: Duration) -> Incoming {
        let deadline = Instant::now() + wait;
        loop {
            let mut it = serde_json::Deserializer::from_slice(&self.buf).into_iter::<Value>();
            match it.next() {
                Some(Ok(v)) => {
                    let used = it.byte_offset();
                    self.buf.drain(..used);
                    return Incoming::Msg(v);
                }
                Some(Err(e)) if !e.is_eof() => return Incoming::Garbage(e.to_string()),
                // Incomplete (or only whitespace so far): read more.
                _ => {}
            }
            if self.eof {
                return Incoming::Eof;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let mut pfd = libc::pollfd {
                fd: self.out.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            let ms = left.as_millis().min(i32::MAX as u128) as libc::c_int;
            // SAFETY: one valid pollfd for a descriptor this struct owns.
            #[allow(unsafe_code)]
            let n = unsafe { libc::poll(&mut pfd, 1, ms) };
            if n < 0 {
                if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Incoming::Eof;
            }
            if n == 0 {
                return Incoming::Timeout;
            }
            let mut chunk = [0u8; 65536];
            match self.out.read(&mut chunk) {
                Ok(0) | Err(_) => self.eof = true,
                Ok(k) => self
                    .buf
                    .extend_from_slice(chunk.get(..k).unwrap_or_default()),
            }
        }
    }
}

pub struct Emulator {
    child: Child,
    stdin: Option<ChildStdin>,
    rx: PluginOutput,
    /// Replies that arrived while waiting for another id.
    pending: HashMap<String, Value>,
    /// lightningd's id counter (shared by all its calls, like lightningd's).
    next_id: u64,
    next_client_id: u64,
    closed: Option<String>,
    stderr: Arc<Mutex<Vec<u8>>>,
    network_dir: PathBuf,
    timeout: Duration,
    /// Every `log` notification received, in order.
    pub logs: Vec<LogLine>,
    /// Other messages from the plugin that were neither replies nor logs.
    pub other: Vec<Value>,
    /// Round-trip time of each answered `db_write`, in order.
    pub latencies: Vec<Duration>,
    /// lightningd's own database, when attached: each batch is run before its hook call and
    /// committed after `continue`, as lightningd does.
    db: Option<crate::node::Database>,
}

impl Emulator {
    /// Start `plugin` with `network_dir` as its working directory, as lightningd does.
    pub fn spawn(plugin: &Path, network_dir: &Path, env: &[(&str, &str)]) -> Result<Emulator> {
        // lightningd resolves plugin paths before changing the working directory.
        let plugin = match plugin.is_relative() && plugin.exists() {
            true => std::env::current_dir()?.join(plugin),
            false => plugin.to_path_buf(),
        };
        let mut cmd = Command::new(&plugin);
        cmd.current_dir(network_dir)
            .env("LIGHTNINGD_PLUGIN", "1")
            .env("LIGHTNINGD_VERSION", wire::LIGHTNINGD_VERSION)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting plugin {}", plugin.display()))?;
        let stdout = child.stdout.take().context("plugin stdout")?;
        let rx = PluginOutput {
            out: stdout,
            buf: Vec::new(),
            eof: false,
        };
        let stderr = Arc::new(Mutex::new(Vec::new()));
        if let Some(mut err) = child.stderr.take() {
            let buf = stderr.clone();
            std::thread::spawn(move || {
                let mut chunk = [0u8; 4096];
                while let Ok(n) = err.read(&mut chunk) {
                    if n == 0 {
                        break;
                    }
                    if let (Ok(mut b), Some(c)) = (buf.lock(), chunk.get(..n)) {
                        b.extend_from_slice(c);
                    }
                }
            });
        }
        Ok(Emulator {
            stdin: child.stdin.take(),
            child,
            rx,
            pending: HashMap::new(),
            next_id: 20,
            next_client_id: 600,
            closed: None,
            stderr,
            network_dir: network_dir.to_path_buf(),
            timeout: DEFAULT_TIMEOUT,
            logs: Vec::new(),
            other: Vec::new(),
            latencies: Vec::new(),
            db: None,
        })
    }

    /// Keep lightningd's database from now on ([`crate::node::Database`]).
    pub fn attach_database(&mut self, db: crate::node::Database) {
        self.db = Some(db);
    }

    pub fn database(&self) -> Option<&crate::node::Database> {
        self.db.as_ref()
    }

    /// Wait (at most `timeout`) for a log line that `pred` accepts, taking in everything else
    /// that arrives meanwhile; returns it.
    pub fn wait_log(
        &mut self,
        timeout: Duration,
        pred: impl Fn(&LogLine) -> bool,
    ) -> Result<LogLine> {
        let deadline = Instant::now() + timeout;
        let mut seen = 0;
        loop {
            if let Some(l) = self
                .logs
                .get(seen..)
                .and_then(|ls| ls.iter().find(|l| pred(l)))
            {
                return Ok(l.clone());
            }
            seen = self.logs.len();
            if let Some(why) = &self.closed {
                bail!(
                    "plugin {why} before the log line awaited; logs:\n{}",
                    self.log_text()
                );
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!(
                    "no such log line within {timeout:?}; logs:\n{}",
                    self.log_text()
                );
            }
            match self.rx.next(left.min(Duration::from_millis(100))) {
                Incoming::Msg(v) => self.dispatch(v),
                Incoming::Timeout => {}
                Incoming::Eof | Incoming::Garbage(_) => {
                    self.closed = Some("closed its stdout".into())
                }
            }
        }
    }

    pub fn set_timeout(&mut self, t: Duration) {
        self.timeout = t;
    }
    pub fn network_dir(&self) -> &Path {
        &self.network_dir
    }
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
    /// What the plugin wrote to stderr so far (lightningd passes it to its own stderr).
    pub fn stderr_text(&self) -> String {
        self.stderr
            .lock()
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }
    /// Every log message so far, one per line.
    pub fn log_text(&self) -> String {
        self.logs
            .iter()
            .map(|l| format!("{}: {}\n", l.level, l.message))
            .collect()
    }

    fn next(&mut self, method: &str) -> String {
        let id = wire::cln_id(method, self.next_id);
        self.next_id += 1;
        id
    }

    /// Send one message, framed as lightningd frames it.
    pub fn send_raw(&mut self, msg: &str) -> Result<()> {
        let stdin = self.stdin.as_mut().context("plugin stdin already closed")?;
        stdin
            .write_all(msg.as_bytes())
            .and_then(|_| stdin.write_all(wire::FRAME_END.as_bytes()))
            .and_then(|_| stdin.flush())
            .context("writing to the plugin (did it exit?)")
    }

    /// Wait for the reply to `id`, collecting logs meanwhile. Err(reason) if the plugin is gone.
    fn wait(&mut self, id: &str) -> Result<std::result::Result<Value, String>> {
        let deadline = Instant::now() + self.timeout;
        loop {
            if let Some(v) = self.pending.remove(id) {
                return Ok(Ok(v));
            }
            if let Some(why) = &self.closed {
                return Ok(Err(why.clone()));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.next(left) {
                Incoming::Msg(v) => self.dispatch(v),
                Incoming::Eof => {
                    self.closed = Some(self.exit_reason("closed its stdout"));
                }
                Incoming::Garbage(e) => {
                    self.closed = Some(self.exit_reason(&format!("wrote invalid JSON: {e}")));
                }
                Incoming::Timeout => {
                    bail!(
                        "no answer to {id} within {:?} (lightningd would wait forever); stderr: {}",
                        self.timeout,
                        self.stderr_text()
                    )
                }
            }
        }
    }

    fn exit_reason(&mut self, what: &str) -> String {
        // Give the process a moment to finish exiting so the status can be shown.
        for _ in 0..50 {
            if let Ok(Some(st)) = self.child.try_wait() {
                return format!("{what}, {st}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        what.to_string()
    }

    fn dispatch(&mut self, v: Value) {
        let is_reply =
            v.get("method").is_none() && (v.get("result").is_some() || v.get("error").is_some());
        if is_reply {
            if let Some(id) = v.get("id").and_then(Value::as_str) {
                self.pending.insert(id.to_string(), v);
                return;
            }
        }
        if v.get("method").and_then(Value::as_str) == Some("log") {
            let p = v.get("params").cloned().unwrap_or(Value::Null);
            let field = |k: &str| p.get(k).and_then(Value::as_str).unwrap_or("").to_string();
            self.logs.push(LogLine {
                level: field("level"),
                message: field("message"),
            });
            return;
        }
        self.other.push(v);
    }

    /// A call lightningd makes itself; returns the `result` or fails with the error.
    fn call(&mut self, method: &str, params_json: &str) -> Result<Value> {
        let id = self.next(method);
        self.send_raw(&wire::encode(Some(&id), method, params_json))?;
        match self.wait(&id)? {
            Ok(v) => match v.get("result") {
                Some(r) => Ok(r.clone()),
                None => Err(anyhow!(
                    "{method} failed: {}",
                    v.get("error").cloned().unwrap_or(v)
                )),
            },
            Err(why) => Err(anyhow!(
                "plugin {why} during {method}; stderr: {}",
                self.stderr_text()
            )),
        }
    }

    /// `getmanifest` with the params lightningd sends. Returns the manifest.
    pub fn getmanifest(&mut self) -> Result<Value> {
        self.call("getmanifest", r#"{"allow-deprecated-apis":true}"#)
    }

    /// `init` with the given option values and lightningd's configuration (regtest).
    pub fn init(&mut self, options: &[(String, Value)], lightning_dir: &Path) -> Result<Value> {
        let params = wire::init_params(options, &lightning_dir.display().to_string(), "regtest");
        self.call("init", &params)
    }

    /// One `db_write` hook call; waits for the answer and records the round trip.
    pub fn db_write(&mut self, data_version: u32, writes: &[String]) -> Result<HookReply> {
        let id = self.next("db_write");
        let msg = wire::encode(
            Some(&id),
            "db_write",
            &wire::db_write_params(data_version, writes),
        );
        if let Some(db) = &mut self.db {
            db.begin(writes)?;
        }
        let t = Instant::now();
        if let Err(e) = self.send_raw(&msg) {
            self.end_transaction(false)?;
            return Ok(HookReply::Died(self.exit_reason(&format!("{e:#}"))));
        }
        let reply = match self.wait(&id)? {
            Err(why) => {
                self.end_transaction(false)?;
                return Ok(HookReply::Died(why));
            }
            Ok(v) => v,
        };
        self.latencies.push(t.elapsed());
        let reply = match (reply.get("result"), reply.get("error")) {
            (Some(r), _) if r.get("result").and_then(Value::as_str) == Some("continue") => {
                HookReply::Continue
            }
            (_, Some(e)) => HookReply::Error(e.clone()),
            (Some(r), None) => HookReply::Other(r.clone()),
            (None, None) => HookReply::Other(reply),
        };
        self.end_transaction(reply.is_continue())?;
        Ok(reply)
    }

    /// lightningd's COMMIT after `continue`, its stop without committing otherwise.
    fn end_transaction(&mut self, commit: bool) -> Result<()> {
        match &mut self.db {
            Some(db) if commit => db.commit(),
            Some(db) => db.rollback(),
            None => Ok(()),
        }
    }

    /// Forward an RPC call as lightningd forwards a client's; returns its id without waiting.
    pub fn rpc_start(&mut self, method: &str, params: Value) -> Result<String> {
        let id = wire::forwarded_id(method, self.next_client_id, self.next_id);
        self.next_client_id += 1;
        self.next_id += 1;
        self.send_raw(&wire::encode(Some(&id), method, &params.to_string()))?;
        Ok(id)
    }

    /// Wait for the reply to a forwarded RPC call: the whole reply object (`result` or `error`).
    pub fn rpc_wait(&mut self, id: &str) -> Result<Value> {
        match self.wait(id)? {
            Ok(v) => Ok(v),
            Err(why) => Err(anyhow!(
                "plugin {why} before answering {id}; stderr: {}",
                self.stderr_text()
            )),
        }
    }

    /// The reply to a forwarded RPC call if it has arrived (without waiting).
    pub fn rpc_poll(&mut self, id: &str) -> Option<Value> {
        self.drain();
        self.pending.remove(id)
    }

    /// An RPC call and its reply object.
    pub fn rpc(&mut self, method: &str, params: Value) -> Result<Value> {
        let id = self.rpc_start(method, params)?;
        self.rpc_wait(&id)
    }

    /// An RPC call that must succeed: its `result`.
    pub fn rpc_ok(&mut self, method: &str, params: Value) -> Result<Value> {
        let v = self.rpc(method, params)?;
        match v.get("result") {
            Some(r) => Ok(r.clone()),
            None => bail!("{method} failed: {}", v.get("error").cloned().unwrap_or(v)),
        }
    }

    /// A notification (no id, no answer), e.g. `shutdown`.
    pub fn notify(&mut self, method: &str, params: Value) -> Result<()> {
        self.send_raw(&wire::encode(None, method, &params.to_string()))
    }

    /// Take in messages that arrived without waiting for anything (logs, late replies).
    pub fn drain(&mut self) {
        if self.closed.is_some() {
            return;
        }
        loop {
            match self.rx.next(Duration::ZERO) {
                Incoming::Msg(v) => self.dispatch(v),
                Incoming::Timeout => return,
                Incoming::Eof | Incoming::Garbage(_) => {
                    self.closed = Some("closed its stdout".into());
                    return;
                }
            }
        }
    }

    /// lightningd's shutdown: close the plugin's stdin, then wait for it to exit (bounded).
    pub fn close_stdin_and_wait(&mut self) -> Result<ExitStatus> {
        self.stdin = None;
        let deadline = Instant::now() + self.timeout;
        loop {
            // Keep reading its output so it never blocks on a full pipe.
            self.drain();
            if let Some(st) = self.child.try_wait()? {
                // Collect what it wrote just before exiting.
                let until = Instant::now() + Duration::from_secs(2);
                while self.closed.is_none() && Instant::now() < until {
                    match self.rx.next(Duration::from_millis(50)) {
                        Incoming::Msg(v) => self.dispatch(v),
                        Incoming::Timeout => {}
                        Incoming::Eof | Incoming::Garbage(_) => self.closed = Some("exited".into()),
                    }
                }
                return Ok(st);
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                bail!(
                    "plugin did not exit within {:?} after its stdin closed",
                    self.timeout
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// SIGKILL, as when lightningd is killed with its plugin (or the machine stops).
    pub fn kill(&mut self) -> Result<()> {
        self.stdin = None;
        let _ = self.child.kill();
        self.child.wait()?;
        self.drain();
        Ok(())
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
