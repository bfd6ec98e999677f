//! A minimal stand-in for lightningd driving a plugin over stdin/stdout, used to time the
//! `db_write` round trip of any plugin (cln-backup, the Python reference) the same way.
//! It follows NOTES.md / the v26.06.6 transcripts: getmanifest, the first db_write calls before
//! init (9 on a fresh node, 3 on a restart), init, the rest; ids `cln:<method>#<n>`; each
//! message followed by a blank line. Used when the `ld-emulator` crate is not available.

use std::io::{BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use store::journal::Batch;

pub struct Driver {
    child: Child,
    stdin: Option<ChildStdin>,
    out: serde_json::StreamDeserializer<
        'static,
        serde_json::de::IoRead<BufReader<ChildStdout>>,
        Value,
    >,
    next_id: u64,
    pub logs: Vec<String>,
    /// When each of `logs` arrived.
    pub log_times: Vec<Instant>,
    /// Replies to requests sent with [`Driver::send`], with the time they arrived.
    pub replies: Vec<(String, Value, Instant)>,
}

impl Driver {
    /// Start `cmd` with its cwd in `network_dir`, as lightningd starts a plugin.
    pub fn spawn(cmd: &[String], network_dir: &Path) -> anyhow::Result<Driver> {
        let (prog, args) = cmd
            .split_first()
            .ok_or_else(|| anyhow::anyhow!("empty command"))?;
        let mut child = Command::new(prog)
            .args(args)
            .current_dir(network_dir)
            .env("LIGHTNINGD_PLUGIN", "1")
            .env("LIGHTNINGD_VERSION", "v26.06.6")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let stdin = child.stdin.take();
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| anyhow::anyhow!("no stdout"))?;
        let out =
            serde_json::Deserializer::from_reader(BufReader::new(stdout)).into_iter::<Value>();
        Ok(Driver {
            child,
            stdin,
            out,
            next_id: 100,
            logs: Vec::new(),
            log_times: Vec::new(),
            replies: Vec::new(),
        })
    }

    /// Send a request without waiting; its reply lands in `replies`.
    pub fn send(&mut self, method: &str, params: Value) -> anyhow::Result<String> {
        self.next_id += 1;
        let id = format!("cln:{method}#{}", self.next_id);
        let mut msg = serde_json::to_vec(
            &json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}),
        )?;
        msg.extend_from_slice(b"\n\n");
        let stdin = self
            .stdin
            .as_mut()
            .ok_or_else(|| anyhow::anyhow!("stdin closed"))?;
        stdin.write_all(&msg)?;
        stdin.flush()?;
        Ok(id)
    }

    /// Wait for the reply to `id` (log notifications and other replies meanwhile are kept).
    pub fn wait(&mut self, id: &str) -> anyhow::Result<Value> {
        if let Some(i) = self.replies.iter().position(|r| r.0 == id) {
            return Ok(self.replies.remove(i).1);
        }
        loop {
            let v = self
                .out
                .next()
                .ok_or_else(|| anyhow::anyhow!("plugin closed stdout while {id} was pending"))??;
            match v.get("id").and_then(|i| i.as_str()) {
                Some(got) if got == id => return Ok(v),
                Some(other) => self.replies.push((other.to_string(), v, Instant::now())),
                None => {
                    if v.get("method").and_then(|m| m.as_str()) == Some("log") {
                        self.logs.push(
                            v["params"]["message"]
                                .as_str()
                                .unwrap_or_default()
                                .to_string(),
                        );
                        self.log_times.push(Instant::now());
                    }
                }
            }
        }
    }

    /// Send a request and wait for its reply.
    pub fn call(&mut self, method: &str, params: Value) -> anyhow::Result<Value> {
        let id = self.send(method, params)?;
        self.wait(&id)
    }

    /// The `init` call, as lightningd v26.06.6 sends it on regtest, with these plugin options.
    pub fn init(&mut self, network_dir: &Path, options: &Value) -> anyhow::Result<Value> {
        self.call(
            "init",
            json!({"options": options, "configuration": {"lightning-dir": network_dir.display().to_string(),
              "rpc-file": "lightning-rpc", "startup": true, "network": "regtest",
              "feature_set": {"init": "800898880a8a59a1", "node": "808898880a8a59a1", "channel": "",
              "invoice": "02000002024100", "bolt12_offer": "", "bolt12_invreq": "", "bolt12_invoice": "020000",
              "channel_type": "08800000800000"}}}),
        )
    }

    /// One db_write round trip; fails unless the answer is `{"result":"continue"}`.
    pub fn db_write(&mut self, b: &Batch) -> anyhow::Result<Duration> {
        let t = Instant::now();
        let r = self.call(
            "db_write",
            json!({"data_version": b.data_version, "writes": b.writes}),
        )?;
        let d = t.elapsed();
        if r.get("result") != Some(&json!({"result": "continue"})) {
            anyhow::bail!(
                "db_write {} answered {r} (logs: {:?})",
                b.data_version,
                self.logs
            );
        }
        Ok(d)
    }

    /// Close stdin, wait for the exit; returns every log message with its arrival time.
    pub fn close(mut self) -> anyhow::Result<Vec<(Instant, String)>> {
        drop(self.stdin.take());
        // Drain what is left (a pending RPC's reply, logs), then wait for the exit.
        while let Some(Ok(v)) = self.out.next() {
            if let Some(id) = v.get("id").and_then(|i| i.as_str()) {
                self.replies.push((id.to_string(), v, Instant::now()));
            } else if v.get("method").and_then(|m| m.as_str()) == Some("log") {
                let m = v["params"]["message"].as_str().unwrap_or_default();
                self.logs.push(m.to_string());
                self.log_times.push(Instant::now());
            }
        }
        let st = self.child.wait()?;
        if !st.success() {
            anyhow::bail!("plugin exited with {st}");
        }
        Ok(self
            .log_times
            .iter()
            .copied()
            .zip(self.logs.iter().cloned())
            .collect())
    }
}

/// What a timed session saw.
#[derive(Default)]
pub struct SessionTimes {
    /// Each db_write: when it was sent and its round trip.
    pub hooks: Vec<(Instant, Duration)>,
    /// Each compaction RPC: sent, answered.
    pub compactions: Vec<(Instant, Instant)>,
    /// The plugin's log messages with their arrival times.
    pub logs: Vec<(Instant, String)>,
}

/// Run one lightningd session of `batches` through the plugin, timing each db_write round trip.
/// With `compact_rpc = Some((method, phase))`, that RPC (e.g. `backup-compact`) is called back to
/// back after init while the db_write calls go on (lightningd forwards RPC calls to the plugin
/// between hooks), in alternating phases: `phase` hooks with compactions, then `phase` hooks
/// counted from when the last compaction answered, without.
pub fn session(
    cmd: &[String],
    network_dir: &Path,
    batches: &[Batch],
    fresh: bool,
    options: Value,
    compact_rpc: Option<(&str, usize)>,
) -> anyhow::Result<SessionTimes> {
    let mut d = Driver::spawn(cmd, network_dir)?;
    d.call("getmanifest", json!({"allow-deprecated-apis": true}))?;
    let pre = if fresh { 9 } else { 3 };
    let mut t = SessionTimes::default();
    let mut pending: Option<(String, Instant)> = None;
    let (mut on, mut count) = (true, 0usize);
    for (i, b) in batches.iter().enumerate() {
        if i == pre {
            d.init(network_dir, &options)?;
        }
        if let (Some((m, phase)), true) = (compact_rpc, i >= pre) {
            if let Some((id, sent)) = &pending {
                if let Some(k) = d.replies.iter().position(|r| &r.0 == id) {
                    let (_, v, at) = d.replies.remove(k);
                    if v.get("error").is_some() {
                        anyhow::bail!("{m} failed: {v}");
                    }
                    t.compactions.push((*sent, at));
                    pending = None;
                }
            }
            if on || pending.is_none() {
                count += 1;
            }
            if count > phase {
                on = !on;
                count = 1;
            }
            if pending.is_none() && on {
                let sent = Instant::now();
                pending = Some((d.send(m, json!({}))?, sent));
            }
        }
        let start = Instant::now();
        t.hooks.push((start, d.db_write(b)?));
    }
    if let Some((id, sent)) = pending {
        d.wait(&id)?;
        t.compactions.push((sent, Instant::now()));
    }
    t.logs = d.close()?;
    Ok(t)
}
