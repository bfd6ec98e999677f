//! A lightningd session: start, getmanifest, db_write before init, init, the rest, shutdown.

use std::io::BufRead;
use std::path::Path;
use std::process::ExitStatus;
use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::Value;

use crate::emulator::{Emulator, HookReply, LogLine};

/// One `db_write` call's params, as in the trace files (one JSON object per line).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DbWrite {
    pub data_version: u32,
    pub writes: Vec<String>,
}

/// Read a trace: one `{"data_version":V,"writes":[...]}` per line; `.zst` files are decompressed.
pub fn load_trace(path: &Path) -> Result<Vec<DbWrite>> {
    let f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let r: Box<dyn BufRead> = if path.extension().is_some_and(|e| e == "zst") {
        Box::new(std::io::BufReader::new(zstd::Decoder::new(f)?))
    } else {
        Box::new(std::io::BufReader::new(f))
    };
    let mut out = Vec::new();
    for (n, line) in r.lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let v: Value = serde_json::from_str(&line)
            .with_context(|| format!("{} line {}", path.display(), n + 1))?;
        let data_version = v
            .get("data_version")
            .and_then(Value::as_u64)
            .and_then(|x| u32::try_from(x).ok())
            .with_context(|| format!("{} line {}: no data_version", path.display(), n + 1))?;
        let writes = v
            .get("writes")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_string))
                    .collect()
            })
            .with_context(|| format!("{} line {}: no writes", path.display(), n + 1))?;
        out.push(DbWrite {
            data_version,
            writes,
        });
    }
    Ok(out)
}

#[derive(Clone, Debug)]
pub struct SessionOptions {
    /// A fresh node sends 9 db_write calls before init, a restart 3.
    pub fresh: bool,
    /// The plugin's option values sent in init (lightningd sends every declared option that is
    /// set or has a default; leave empty to let the plugin use its defaults).
    pub init_options: Vec<(String, Value)>,
    /// RPC calls made after the last db_write, before shutdown.
    pub rpc_after: Vec<(String, Value)>,
    pub timeout: Duration,
    /// Extra environment for the plugin process.
    pub env: Vec<(String, String)>,
}

impl Default for SessionOptions {
    fn default() -> Self {
        SessionOptions {
            fresh: true,
            init_options: Vec::new(),
            rpc_after: Vec::new(),
            timeout: crate::emulator::DEFAULT_TIMEOUT,
            env: Vec::new(),
        }
    }
}

impl SessionOptions {
    pub fn pre_init(&self) -> usize {
        if self.fresh {
            9
        } else {
            3
        }
    }
}

/// Where lightningd stopped: the hook call that was not answered with continue.
#[derive(Clone, Debug)]
pub struct Stop {
    /// Index of the call in the session's trace.
    pub index: usize,
    pub data_version: u32,
    pub reply: HookReply,
}

#[derive(Debug)]
pub struct SessionReport {
    pub manifest: Value,
    /// Hook calls sent, and how many were answered continue.
    pub sent: usize,
    pub continued: usize,
    /// The call at which lightningd would stop without committing, if any.
    pub stop: Option<Stop>,
    /// Whether init was sent (it is not when a pre-init hook stopped the node).
    pub initialized: bool,
    pub rpc_replies: Vec<(String, Value)>,
    pub logs: Vec<LogLine>,
    pub latencies: Vec<Duration>,
    pub exit: Option<ExitStatus>,
    pub stderr: String,
}

impl Emulator {
    /// Send `batches` as one session does: the first `pre_init` before init, then init, then the
    /// rest. Stops at the first answer that is not continue, as lightningd stops there without
    /// committing. Returns that stop, and whether init was sent.
    pub fn run_batches(
        &mut self,
        batches: &[DbWrite],
        pre_init: usize,
        init_options: &[(String, Value)],
    ) -> Result<(usize, Option<Stop>, bool)> {
        let mut sent = 0;
        let mut initialized = false;
        for (i, b) in batches.iter().enumerate() {
            if i == pre_init {
                let dir = self.network_dir().to_path_buf();
                self.init(init_options, &dir)?;
                initialized = true;
            }
            sent += 1;
            let reply = self.db_write(b.data_version, &b.writes)?;
            if !reply.is_continue() {
                let stop = Stop {
                    index: i,
                    data_version: b.data_version,
                    reply,
                };
                return Ok((sent, Some(stop), initialized));
            }
        }
        if !initialized {
            let dir = self.network_dir().to_path_buf();
            self.init(init_options, &dir)?;
            initialized = true;
        }
        Ok((sent, None, initialized))
    }
}

impl Emulator {
    /// Send every batch whatever the answers, as a lightningd that went on after a refusal
    /// would (the real one stops at the first): the answers, in order. For tests of the
    /// plugin's fail-stop: once it refused a batch, it must refuse every later one.
    pub fn send_all(&mut self, batches: &[DbWrite]) -> Result<Vec<HookReply>> {
        batches
            .iter()
            .map(|b| self.db_write(b.data_version, &b.writes))
            .collect()
    }
}

/// One session of `plugin` in `network_dir` over `batches`: start, getmanifest, hooks and init,
/// RPC calls, then close stdin (lightningd's shutdown, or its death after a stop) and wait.
pub fn run_trace_session(
    plugin: &Path,
    network_dir: &Path,
    batches: &[DbWrite],
    opts: &SessionOptions,
) -> Result<SessionReport> {
    let env: Vec<(&str, &str)> = opts
        .env
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let mut em = Emulator::spawn(plugin, network_dir, &env)?;
    em.set_timeout(opts.timeout);
    let manifest = em.getmanifest()?;
    let (sent, stop, initialized) = em.run_batches(batches, opts.pre_init(), &opts.init_options)?;
    let mut rpc_replies = Vec::new();
    if stop.is_none() {
        for (m, p) in &opts.rpc_after {
            let r = em.rpc(m, p.clone())?;
            rpc_replies.push((m.clone(), r));
        }
    }
    let exit = match &stop {
        Some(Stop {
            reply: HookReply::Died(_),
            ..
        }) => {
            em.kill()?;
            None
        }
        _ => Some(em.close_stdin_and_wait()?),
    };
    // Every call before the stop was answered continue.
    let continued = stop.as_ref().map_or(sent, |s| s.index);
    Ok(SessionReport {
        manifest,
        sent,
        continued,
        stop,
        initialized,
        rpc_replies,
        logs: std::mem::take(&mut em.logs),
        latencies: std::mem::take(&mut em.latencies),
        exit,
        stderr: em.stderr_text(),
    })
}
