//! Many nodes on one `backup-cli server`: per-node hook latency beside one node's, and beside
//! the floor of a remote durable append.
//!
//! `cargo run --release -p cln-backup-benches --bin server-many -- [--nodes 20] [--batches N]
//!  [--rounds 4] [--plugin target/release/cln-backup] [--cli target/release/backup-cli]`
//!
//! A real `backup-cli server` process on 127.0.0.1 serves one repository per node (a directory
//! under `BENCH_DATA`). Each node is the real plugin under the benches driver, streaming the
//! fixture trace s1 (its first N batches; all by default), encrypted, `fsync` durability:
//! - one node alone;
//! - `--nodes` nodes at once, each its own plugin process and repository.
//!
//! The floor is what any remote durable append pays: a loopback round trip plus the server's
//! `fdatasync`. It is measured with the same record sizes, over TCP on loopback, against a
//! minimal server thread that writes each record into a preallocated file, `fdatasync`s and
//! answers 8 bytes (no framing, no encryption, no checks): once alone, and with as many clients
//! at once as there are nodes (each its own file), since that many syncs then share the disk.
//!
//! The plugin's hook also includes lightningd's pipe round trip to the plugin (a process
//! woken, JSON read and written), which the floor does not. So the same run also measures:
//! - an empty plugin's hook (this binary as a plugin answering `continue` at once): the pipe
//!   round trip and JSON alone, while the machine stays busy;
//! - "floor 2": this binary as a plugin that makes the floor's append (the same minimal server
//!   thread, record size, `fdatasync`) before it answers, alone and `--nodes` at once: what any
//!   plugin storing remotely pays, the original floor plus lightningd's pipe and JSON and one
//!   more process to wake after each `fdatasync`;
//! - the remote append without a plugin: this process's `RemoteBackend` appending records of
//!   the same sizes to `backup-cli server` (Noise, the server's checks, `fdatasync`).
//!
//! The target is stated against the original floor; the ratios to floor 2 are printed beside
//! it, for reference. The measurements take turns, `--rounds` times, each round a part of the
//! trace (the plugin sessions after the first are restarts): a drifting load (a shared
//! machine) then weighs on each alike.

use std::io::{BufRead, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cln_backup_benches::driver;
use cln_backup_benches::measure::{latency_row, summary, target};
use cln_backup_benches::{arg, bench_data, load_trace, testdata};
use serde_json::json;
use store::backend::remote::{auth_line, RemoteBackend, RemoteOptions};
use store::backend::{Backend, Durability};
use store::journal::Batch;
use store::{BackupUrl, ConfigBody, MasterKey, Repository};

fn main() -> anyhow::Result<()> {
    // Re-executed by itself as a stand-in plugin (see `StandIn`).
    if let Some(mode) = arg("--as-plugin") {
        return stand_in_plugin(&mode);
    }
    let nodes: usize = arg("--nodes").map_or(Ok(20), |v| v.parse())?;
    let mut trace = load_trace(&testdata("trace-s1.jsonl"))?;
    if let Some(n) = arg("--batches") {
        trace.truncate(n.parse::<usize>()?.max(20));
    }
    let release = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release");
    let plugin = arg("--plugin").map_or(release.join("cln-backup"), PathBuf::from);
    let cli = arg("--cli").map_or(release.join("backup-cli"), PathBuf::from);
    for b in [&plugin, &cli] {
        anyhow::ensure!(
            b.exists(),
            "{} is missing: cargo build --release -p cln-backup -p backup-cli (or --plugin/--cli PATH)",
            b.display()
        );
    }
    // The plugin runs in each node's directory: an absolute path.
    let (plugin, cli) = (plugin.canonicalize()?, cli.canonicalize()?);
    let work = tempfile::tempdir_in(bench_data())?;
    let records: Vec<Vec<u8>> = trace.iter().map(record_bytes).collect();

    // The server, with one auth line per node (and one for the lone node).
    let keys: Vec<MasterKey> = (0..=nodes).map(|_| MasterKey::generate()).collect();
    let probe_key = MasterKey::generate();
    let auth = work.path().join("auth");
    let mut lines: Vec<String> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| auth_line(&format!("node{i}"), k))
        .collect();
    lines.push(auth_line("probe", &probe_key));
    std::fs::write(&auth, lines.join("\n") + "\n")?;
    let mut server = Server::start(&cli, &work.path().join("root"), &auth)?;
    let url = format!("socket:{}", server.addr);

    let net_of = |i: usize| -> anyhow::Result<PathBuf> {
        let net = work.path().join(format!("node{i}"));
        std::fs::create_dir_all(&net)?;
        let k = keys.get(i).ok_or_else(|| anyhow::anyhow!("no key {i}"))?;
        std::fs::write(net.join("backup.key"), k.to_file_text())?;
        std::fs::write(
            net.join("backup.lock"),
            json!({ "backend_url": url }).to_string(),
        )?;
        Repository::init(
            &BackupUrl::parse(&url)?,
            Some(k),
            true,
            ConfigBody::default(),
        )?;
        Ok(net)
    };
    let cmd = vec![plugin.display().to_string()];
    let options = json!({"backup-compact-journal-bytes": 0});
    let lone = net_of(0)?;
    let nets: Vec<PathBuf> = (1..=nodes).map(net_of).collect::<anyhow::Result<_>>()?;

    // The load of a shared machine drifts: the four measurements take turns, round after
    // round, each round a part of the trace (a plugin session each: a restart after the first).
    let rounds: usize = arg("--rounds").map_or(Ok(4), |v| v.parse())?;
    let (mut floor1, mut floor_n, mut one) = (Vec::new(), Vec::new(), Vec::new());
    // The pieces: an empty plugin, the remote append without a plugin, the floor behind a
    // stand-in plugin (alone and `nodes` at once).
    let (mut empty1, mut probe1, mut plugged1) = (Vec::new(), Vec::new(), Vec::new());
    let mut plugged_n = Vec::new();
    let me = std::env::current_exe()?.display().to_string();
    let mut per_node: Vec<Vec<Duration>> = vec![Vec::new(); nodes];
    let part = trace.len().div_ceil(rounds.max(1));
    for (r, (batches, recs)) in trace.chunks(part).zip(records.chunks(part)).enumerate() {
        let fresh = r == 0;
        floor1.extend(floor(work.path(), recs, 1)?);
        let t = driver::session(&cmd, &lone, batches, fresh, options.clone(), None)?;
        one.extend(t.hooks.iter().map(|h| h.1));
        let empty = [me.clone(), "--as-plugin".into(), "empty".into()];
        let t = driver::session(&empty, work.path(), batches, fresh, json!({}), None)?;
        empty1.extend(t.hooks.iter().map(|h| h.1));
        probe1.extend(remote_probe(&server.addr, &probe_key, recs, r)?);
        plugged1.extend(floor_plugins(work.path(), &me, 1, batches, recs, fresh)?);
        floor_n.extend(floor(work.path(), recs, nodes)?);
        plugged_n.extend(floor_plugins(
            work.path(),
            &me,
            nodes,
            batches,
            recs,
            fresh,
        )?);
        let start = std::sync::Barrier::new(nodes);
        let got: Vec<Vec<Duration>> = std::thread::scope(|s| {
            let handles: Vec<_> = nets
                .iter()
                .map(|net| {
                    let (cmd, options, start) = (&cmd, options.clone(), &start);
                    s.spawn(move || -> anyhow::Result<Vec<Duration>> {
                        start.wait();
                        let t = driver::session(cmd, net, batches, fresh, options, None)?;
                        Ok(t.hooks.iter().map(|h| h.1).collect())
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .map_err(|_| anyhow::anyhow!("a node's thread panicked"))?
                })
                .collect::<anyhow::Result<_>>()
        })?;
        for (acc, g) in per_node.iter_mut().zip(got) {
            acc.extend(g);
        }
    }
    server.stop()?;

    let f1 = summary(&floor1).0;
    println!(
        "{} nodes on one backup-cli server on loopback, fixture trace s1 ({} batches each), fsync, encrypted",
        nodes,
        trace.len()
    );
    println!("| path | calls | p50 µs | p99 µs | max µs | p50 vs floor (first row) |");
    println!("|---|---|---|---|---|---|");
    println!(
        "{}",
        latency_row(
            "floor: loopback round trip + server write + fdatasync (preallocated), 1 client",
            &floor1,
            f1
        )
    );
    println!(
        "{}",
        latency_row(
            &format!("floor, {nodes} clients at once (pooled)"),
            &floor_n,
            f1
        )
    );
    println!(
        "{}",
        latency_row("cln-backup plugin → backup-cli server, 1 node", &one, f1)
    );
    let pooled: Vec<Duration> = per_node.concat();
    println!(
        "{}",
        latency_row(
            &format!("cln-backup plugin → backup-cli server, {nodes} nodes at once (pooled)"),
            &pooled,
            f1
        )
    );
    println!(
        "{}",
        latency_row(
            "piece: an empty plugin's hook (the pipe round trip + JSON both ways, nothing stored), 1 node",
            &empty1,
            f1
        )
    );
    println!(
        "{}",
        latency_row(
            "piece: remote append in-process, no plugin (RemoteBackend → backup-cli server: Noise, checks, fdatasync), 1 client",
            &probe1,
            f1
        )
    );
    println!(
        "{}",
        latency_row(
            "floor 2: a stand-in plugin making the floor's append per hook (pipe round trip + JSON + floor), 1 node",
            &plugged1,
            f1
        )
    );
    println!(
        "{}",
        latency_row(
            &format!("floor 2, {nodes} stand-in plugins at once (pooled)"),
            &plugged_n,
            f1
        )
    );
    let mut p50s: Vec<f64> = per_node.iter().map(|v| summary(v).0).collect();
    let mut p99s: Vec<f64> = per_node.iter().map(|v| summary(v).1).collect();
    p50s.sort_by(f64::total_cmp);
    p99s.sort_by(f64::total_cmp);
    println!(
        "per node, {nodes} at once: p50 from {:.0} to {:.0} µs, p99 from {:.0} to {:.0} µs; \
         floor with {nodes} clients p50 {:.0} µs",
        p50s.first().copied().unwrap_or(0.0),
        p50s.last().copied().unwrap_or(0.0),
        p99s.first().copied().unwrap_or(0.0),
        p99s.last().copied().unwrap_or(0.0),
        summary(&floor_n).0
    );
    println!(
        "{}",
        target(
            "remote hook p50 (1 node) <= 1.2x floor (loopback round trip + server fdatasync)",
            summary(&one).0 / f1,
            1.2
        )
    );
    println!(
        "{}",
        target(
            &format!("remote hook p50 ({nodes} nodes at once) <= 1.2x floor with {nodes} clients"),
            summary(&pooled).0 / summary(&floor_n).0,
            1.2
        )
    );
    // Beside floor 2, which adds what any plugin pays (lightningd's pipe and JSON): for
    // reference, the target stays the one above.
    println!(
        "ratio| remote hook p50 (1 node) / floor 2 (1 stand-in plugin) | {:.3}x |",
        summary(&one).0 / summary(&plugged1).0
    );
    println!(
        "ratio| remote hook p50 ({nodes} nodes at once) / floor 2 ({nodes} stand-in plugins) | {:.3}x |",
        summary(&pooled).0 / summary(&plugged_n).0
    );
    Ok(())
}

/// The bytes a stand-in plugin sends for one db_write: [`record_bytes`]'s size, from the JSON.
fn stand_in_record(writes: &[serde_json::Value], buf: &mut Vec<u8>) {
    let n: usize = writes
        .iter()
        .map(|w| w.as_str().map_or(0, str::len) + 4)
        .sum::<usize>()
        + 8
        + 10
        + 40;
    buf.clear();
    buf.extend_from_slice(&(n as u32).to_le_bytes());
    buf.extend((0..n).map(|i| (i * 31 + 7) as u8));
}

/// This binary as a plugin (`--as-plugin empty|floor:ADDR`): lightningd's JSON read and written
/// as the real plugin does (serde_json, from memory; one object and a blank line out), each
/// db_write answered `continue` at once (`empty`) or after the floor's append to the floor
/// server at ADDR (`floor:`).
fn stand_in_plugin(mode: &str) -> anyhow::Result<()> {
    let mut floor = match mode.strip_prefix("floor:") {
        Some(addr) => {
            let s = TcpStream::connect(addr)?;
            s.set_nodelay(true)?;
            Some(s)
        }
        None => None,
    };
    let mut out = std::io::stdout().lock();
    let mut input = std::io::stdin().lock();
    let mut buf = Vec::new();
    // lightningd's messages, each followed by a blank line: read in blocks, each message parsed
    // from memory (as the plugin does).
    let (mut inbuf, mut filled) = (vec![0u8; 64 << 10], 0usize);
    loop {
        let end = match inbuf
            .get(..filled)
            .unwrap_or_default()
            .windows(2)
            .position(|w| w == b"\n\n")
        {
            Some(end) => end,
            None => {
                if filled == inbuf.len() {
                    inbuf.resize(filled * 2, 0);
                }
                let n = input.read(inbuf.get_mut(filled..).unwrap_or_default())?;
                if n == 0 {
                    return Ok(());
                }
                filled += n;
                continue;
            }
        };
        let m: serde_json::Value = serde_json::from_slice(inbuf.get(..end).unwrap_or_default())?;
        inbuf.copy_within(end + 2..filled, 0);
        filled -= end + 2;
        let Some(id) = m.get("id") else { continue };
        let result = match m.get("method").and_then(|v| v.as_str()) {
            Some("getmanifest") => json!({"options": [], "rpcmethods": [],
                "hooks": [{"name": "db_write"}], "dynamic": false, "nonnumericids": true}),
            Some("db_write") => {
                if let Some(s) = floor.as_mut() {
                    let writes = m["params"]["writes"]
                        .as_array()
                        .map_or(&[][..], Vec::as_slice);
                    stand_in_record(writes, &mut buf);
                    s.write_all(&buf)?;
                    let mut ack = [0u8; 8];
                    s.read_exact(&mut ack)?;
                }
                json!({"result": "continue"})
            }
            _ => json!({}),
        };
        let mut text = json!({"jsonrpc": "2.0", "id": id, "result": result}).to_string();
        text.push_str("\n\n");
        out.write_all(text.as_bytes())?;
        out.flush()?;
    }
}

/// `clients` stand-in plugins at once, each making the floor's append per hook to its own
/// floor server thread: every hook's round trip, one list per plugin, pooled.
fn floor_plugins(
    dir: &Path,
    me: &str,
    clients: usize,
    batches: &[Batch],
    records: &[Vec<u8>],
    fresh: bool,
) -> anyhow::Result<Vec<Duration>> {
    let total: usize = records.iter().map(Vec::len).sum();
    let l = TcpListener::bind("127.0.0.1:0")?;
    let cmd = vec![
        me.to_string(),
        "--as-plugin".into(),
        format!("floor:{}", l.local_addr()?),
    ];
    let start = std::sync::Barrier::new(clients);
    std::thread::scope(|s| {
        let l = &l;
        s.spawn(move || {
            for c in 0..clients {
                let Ok((sock, _)) = l.accept() else { return };
                let path = dir.join(format!("plugged-{clients}-{c}"));
                s.spawn(move || floor_server(sock, &path, total));
            }
        });
        let handles: Vec<_> = (0..clients)
            .map(|_| {
                let (cmd, start) = (&cmd, &start);
                s.spawn(move || -> anyhow::Result<Vec<Duration>> {
                    start.wait();
                    let t = driver::session(cmd, dir, batches, fresh, json!({}), None)?;
                    Ok(t.hooks.iter().map(|h| h.1).collect())
                })
            })
            .collect();
        let mut all = Vec::new();
        for h in handles {
            all.extend(
                h.join()
                    .map_err(|_| anyhow::anyhow!("a stand-in plugin's thread panicked"))??,
            );
        }
        Ok(all)
    })
}

/// The remote append without a plugin: this process's `RemoteBackend` appends `records` to a
/// stream of the probe node, each `fdatasync`'ed by the server before it answers.
fn remote_probe(
    addr: &str,
    key: &MasterKey,
    records: &[Vec<u8>],
    round: usize,
) -> anyhow::Result<Vec<Duration>> {
    let (host, port) = addr
        .rsplit_once(':')
        .ok_or_else(|| anyhow::anyhow!("bad address {addr}"))?;
    let b = RemoteBackend::connect(host, port.parse()?, None, key, RemoteOptions::default())?;
    let mut st = b.stream_open(&format!("probe{round}"), Durability::Fsync)?;
    let mut out = Vec::with_capacity(records.len());
    for r in records {
        let t = Instant::now();
        st.append(r)?;
        out.push(t.elapsed());
    }
    Ok(out)
}

/// Bytes of the size a batch's sealed frame has (its statements, plus the frame and seal).
fn record_bytes(b: &Batch) -> Vec<u8> {
    let n: usize = b.writes.iter().map(|w| w.len() + 4).sum::<usize>() + 8 + 10 + 40;
    (0..n).map(|i| (i * 31 + 7) as u8).collect()
}

/// A connected pair over loopback: (the server's side, the client's).
fn pair(l: &TcpListener) -> anyhow::Result<(TcpStream, TcpStream)> {
    let c = TcpStream::connect(l.local_addr()?)?;
    let (s, _) = l.accept()?;
    Ok((s, c))
}

fn floor_server(mut sock: TcpStream, path: &Path, total: usize) {
    let mut run = || -> std::io::Result<()> {
        sock.set_nodelay(true)?;
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(path)?;
        // Preallocated and written: an append overwrites blocks already there.
        f.write_all_at(&vec![0u8; total + 4096], 0)?;
        f.sync_all()?;
        let mut off = 0u64;
        let mut len = [0u8; 4];
        let mut buf = Vec::new();
        loop {
            if sock.read_exact(&mut len).is_err() {
                return Ok(());
            }
            buf.resize(u32::from_le_bytes(len) as usize, 0);
            sock.read_exact(&mut buf)?;
            f.write_all_at(&buf, off)?;
            f.sync_data()?;
            off += buf.len() as u64;
            sock.write_all(&off.to_le_bytes())?;
        }
    };
    let _ = run();
    let _ = std::fs::remove_file(path);
}

/// The floor of a remote durable append, `clients` at once, each sending `records` in turn:
/// every round trip, pooled.
fn floor(dir: &Path, records: &[Vec<u8>], clients: usize) -> anyhow::Result<Vec<Duration>> {
    let total: usize = records.iter().map(Vec::len).sum();
    let l = TcpListener::bind("127.0.0.1:0")?;
    let start = std::sync::Barrier::new(clients);
    std::thread::scope(|s| {
        let mut handles = Vec::new();
        for c in 0..clients {
            let (srv, mut cli) = pair(&l)?;
            let path = dir.join(format!("floor-{clients}-{c}"));
            s.spawn(move || floor_server(srv, &path, total));
            let start = &start;
            handles.push(s.spawn(move || -> std::io::Result<Vec<Duration>> {
                cli.set_nodelay(true)?;
                start.wait();
                let mut out = Vec::with_capacity(records.len());
                let mut ack = [0u8; 8];
                for r in records {
                    let t = Instant::now();
                    let mut msg = (r.len() as u32).to_le_bytes().to_vec();
                    msg.extend_from_slice(r);
                    cli.write_all(&msg)?;
                    cli.read_exact(&mut ack)?;
                    out.push(t.elapsed());
                }
                Ok(out)
            }));
        }
        let mut all = Vec::new();
        for h in handles {
            all.extend(
                h.join()
                    .map_err(|_| anyhow::anyhow!("a floor client panicked"))??,
            );
        }
        Ok(all)
    })
}

/// A `backup-cli server` process.
struct Server {
    child: Child,
    addr: String,
}

impl Server {
    fn start(cli: &Path, root: &Path, auth: &Path) -> anyhow::Result<Server> {
        let mut child = Command::new(cli)
            .args(["server", "--json"])
            .arg(format!("file://{}", root.display()))
            .arg("127.0.0.1:0")
            .arg("--auth-file")
            .arg(auth)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        let mut first = String::new();
        std::io::BufReader::new(
            child
                .stdout
                .take()
                .ok_or_else(|| anyhow::anyhow!("no stdout"))?,
        )
        .read_line(&mut first)?;
        let j: serde_json::Value = serde_json::from_str(&first)?;
        let addr = j["listening"][0]
            .as_str()
            .ok_or_else(|| anyhow::anyhow!("the server did not say where it listens: {first}"))?
            .to_string();
        Ok(Server { child, addr })
    }

    /// SIGTERM, and wait for its clean exit.
    fn stop(&mut self) -> anyhow::Result<()> {
        Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()?;
        let st = self.child.wait()?;
        anyhow::ensure!(st.success(), "the server exited with {st}");
        Ok(())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
