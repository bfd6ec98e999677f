//! `backup-cli server ROOT HOST:PORT`: serve one repository per node (`socket:HOST:PORT` URLs),
//! by `store::backend::remote::server`; `server status` and `server migrate` beside it.
//!
//! ROOT is a directory (`file:///srv/cln-backup`; each node's repository is
//! `ROOT/nodes/NAME`) or an S3 prefix (`s3://bucket/prefix`: the server keeps nothing itself).
//! The auth file names each node and its key (`backup-cli key create` prints the line on the
//! node); the server never needs a repository key, and stores only sealed bytes.
//!
//! SIGTERM and SIGINT stop it cleanly: connections closed, streams closed (a directory cuts the
//! zeros it wrote ahead), S3 leases deleted, the status file written, exit 0.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use serde::Serialize;
use store::backend::remote::server::status::{self, NodeStatus, ServerStatus};
use store::backend::remote::server::{check_node_name, parse_size, NODES_DIR};
use store::backend::remote::{ServerAuth, ServerHandle, ServerOptions, ServerRoot};
use store::BackupUrl;

use crate::exit::{refused, usage};
use crate::{keys, out, Global};

#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct ServerArgs {
    #[command(subcommand)]
    pub command: Option<ServerCommand>,
    #[command(flatten)]
    pub serve: ServeArgs,
}

#[derive(Subcommand, Debug)]
pub enum ServerCommand {
    /// Each node's last contact, size, quota and newest data_version (as the node reported it).
    Status {
        /// The served root (file:///abs/path), or the server's status file.
        root: String,
    },
    /// Move a repository served by an older server (one repository at the top of ROOT, shared
    /// by every key) under a node's name, ROOT/nodes/NAME. Stop the server first.
    Migrate {
        /// The served directory: file:///abs/path
        root: String,
        /// The node that owns the repository, as named in the new auth file.
        name: String,
    },
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Where the nodes' repositories live: file:///abs/path (ROOT/nodes/NAME, created as
    /// needed) or s3://BUCKET/PREFIX
    #[arg(required = true)]
    pub url: Option<String>,
    /// Address to listen on, e.g. 127.0.0.1:9735, [::1]:9735, or a VPN/Tor-facing address (port
    /// 0 picks one). Expose only what the nodes need: see the README, "A backup server".
    #[arg(required = true)]
    pub listen: Option<String>,
    /// The auth file: one line per node, `NAME AUTH-KEY [quota=SIZE] [append-only]`, from
    /// `backup-cli key create` on each node. Re-read when an unknown key connects.
    #[arg(long, alias = "auth-key-file", value_name = "FILE")]
    pub auth_file: Option<PathBuf>,
    /// Every node append-only: no delete, no replacement, no cut below what was acknowledged
    /// (prune and GC then run on this host, against the directory).
    #[arg(long)]
    pub append_only: bool,
    /// The quota of nodes whose line sets none, e.g. 20G.
    #[arg(long, value_name = "SIZE")]
    pub quota: Option<String>,
    /// Where to write the status (default: ROOT/server-status.json for a directory,
    /// $STATE_DIRECTORY/server-status.json for S3 under systemd).
    #[arg(long, value_name = "FILE")]
    pub status_file: Option<PathBuf>,
}

#[derive(Serialize)]
struct Listening {
    url: String,
    listening: Vec<String>,
    nodes: usize,
    status_file: Option<String>,
}

pub const STATUS_FILE: &str = "server-status.json";

pub fn run(g: &Global, a: &ServerArgs) -> Result<()> {
    match &a.command {
        Some(ServerCommand::Status { root }) => status_cmd(g, root),
        Some(ServerCommand::Migrate { root, name }) => migrate(g, root, name),
        None => serve(g, &a.serve),
    }
}

fn root_of(url: &BackupUrl) -> Result<ServerRoot> {
    match url {
        BackupUrl::File(p) => Ok(ServerRoot::Dir(p.clone())),
        BackupUrl::S3 {
            bucket,
            prefix,
            params,
        } => Ok(ServerRoot::S3 {
            bucket: bucket.clone(),
            prefix: prefix.clone(),
            params: params.clone(),
        }),
        BackupUrl::Socket { .. } => Err(usage(format!(
            "the server keeps its nodes' repositories in a local directory (file:///abs/path) or in S3 (s3://BUCKET/PREFIX), not at {url}"
        ))),
    }
}

fn default_status_file(url: &BackupUrl) -> Option<PathBuf> {
    match url {
        BackupUrl::File(p) => Some(p.join(STATUS_FILE)),
        _ => std::env::var_os("STATE_DIRECTORY").map(|d| PathBuf::from(d).join(STATUS_FILE)),
    }
}

fn serve(g: &Global, a: &ServeArgs) -> Result<()> {
    let (Some(url_text), Some(listen)) = (&a.url, &a.listen) else {
        return Err(usage("give the root to serve and the address: backup-cli server file:///srv/cln-backup 127.0.0.1:9735 --auth-file FILE"));
    };
    let url = keys::parse_url(url_text)?;
    let root = root_of(&url)?;
    let Some(auth_file) = &a.auth_file else {
        return Err(usage(
            "the server admits only the nodes its auth file names: give --auth-file FILE, one \
             line per node as `backup-cli key create` prints it there",
        ));
    };
    let auth = ServerAuth::from_file(auth_file)
        .with_context(|| format!("reading the auth file {}", auth_file.display()))?;
    let quota = match &a.quota {
        Some(q) => Some(parse_size(q).ok_or_else(|| {
            usage(format!(
                "--quota {q}: expected bytes, or a number with K, M, G or T"
            ))
        })?),
        None => None,
    };
    let status_file = a.status_file.clone().or_else(|| default_status_file(&url));
    let opts = ServerOptions {
        append_only: a.append_only,
        quota,
        auth_file: Some(auth_file.clone()),
        status_file: status_file.clone(),
        ..ServerOptions::default()
    };
    // Signals first: every thread the server starts inherits the mask, and one thread waits
    // for them.
    let signals = signals::block();
    let n = auth.len();
    let handle = ServerHandle::spawn(root, listen, auth, opts)
        .with_context(|| format!("serving {url} on {listen}"))?;
    let o = Listening {
        url: url.to_string(),
        listening: handle.addrs().iter().map(|a| a.to_string()).collect(),
        nodes: n,
        status_file: status_file.map(|p| p.display().to_string()),
    };
    if g.json {
        out::json(&o)?;
    } else {
        println!(
            "Serving the repositories of {} node(s) under {} on {}. Stop with Ctrl-C or SIGTERM.",
            o.nodes,
            o.url,
            o.listening.join(", ")
        );
    }
    use std::io::Write;
    let _ = std::io::stdout().flush();
    let stopper = handle.stopper();
    std::thread::spawn(move || {
        let sig = signals::wait(&signals);
        eprintln!("<6>signal {sig}: stopping (closing connections and streams, releasing locks)");
        stopper.stop();
    });
    handle.wait();
    eprintln!("<6>stopped");
    Ok(())
}

/// SIGTERM and SIGINT, taken by one thread with `sigwait` rather than a handler, so that the
/// stop runs as ordinary code.
mod signals {
    pub struct Set(libc::sigset_t);

    /// Block SIGTERM and SIGINT in this thread (and so in every thread it starts).
    pub fn block() -> Set {
        // SAFETY: sigset_t is plain data initialised by sigemptyset before use; the calls
        // pass pointers to it that live for the call; pthread_sigmask changes only this
        // thread's mask.
        #[allow(unsafe_code)]
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGTERM);
            libc::sigaddset(&mut set, libc::SIGINT);
            libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
            Set(set)
        }
    }

    /// Wait for one of them; its number.
    pub fn wait(s: &Set) -> i32 {
        let mut sig = 0;
        // SAFETY: `s.0` was initialised by `block`; `sig` outlives the call.
        #[allow(unsafe_code)]
        unsafe {
            libc::sigwait(&s.0, &mut sig);
        }
        sig
    }
}

#[derive(Serialize)]
struct StatusOutput {
    status_file: String,
    #[serde(flatten)]
    status: ServerStatus,
}

/// The size of every file under `dir` (a node's repository on disk; `tmp/` and `locks/` hold
/// no data).
fn dir_size(dir: &Path) -> u64 {
    let mut total = 0;
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let Ok(m) = e.metadata() else { continue };
            let name = e.file_name();
            if m.is_dir() {
                if d != dir || (name != "tmp" && name != "locks") {
                    todo.push(e.path());
                }
            } else {
                total += m.len();
            }
        }
    }
    total
}

fn ago(now: u64, t: u64) -> String {
    if t == 0 {
        return "never".into();
    }
    let s = now.saturating_sub(t);
    if s < 120 {
        format!("{s} s ago")
    } else if s < 7200 {
        format!("{} min ago", s / 60)
    } else if s < 172_800 {
        format!("{} h ago", s / 3600)
    } else {
        format!("{} days ago", s / 86400)
    }
}

fn status_cmd(g: &Global, root: &str) -> Result<()> {
    let (file, dir) = if root.contains("://") {
        let url = keys::parse_url(root)?;
        match &url {
            BackupUrl::File(p) => (p.join(STATUS_FILE), Some(p.clone())),
            _ => bail!(
                "for a server whose root is {url}, give its status file (--status-file of the server, by default $STATE_DIRECTORY/{STATUS_FILE})"
            ),
        }
    } else {
        (PathBuf::from(root), None)
    };
    let mut s = status::read(&file).with_context(|| {
        format!(
            "reading the server's status file {} (the server writes it while it runs)",
            file.display()
        )
    })?;
    // A directory's sizes are counted again here: the file may be older than the data.
    if let Some(d) = &dir {
        for n in &mut s.nodes {
            let p = d.join(NODES_DIR).join(&n.name);
            if p.is_dir() {
                n.used = Some(dir_size(&p));
            }
        }
    }
    if g.json {
        return out::json(&StatusOutput {
            status_file: file.display().to_string(),
            status: s,
        });
    }
    let now = store::config::now();
    println!(
        "Server of {} (pid {}, {}; status written {}).",
        s.root,
        s.pid,
        if s.running { "running" } else { "stopped" },
        ago(now, s.written)
    );
    let rows: Vec<[String; 6]> = s
        .nodes
        .iter()
        .map(|n: &NodeStatus| {
            [
                n.name.clone(),
                ago(now, n.last_contact),
                n.used.map_or("-".into(), out::bytes),
                if n.quota > 0 {
                    out::bytes(n.quota)
                } else {
                    "none".into()
                },
                if n.data_version > 0 {
                    n.data_version.to_string()
                } else {
                    "-".into()
                },
                if n.append_only {
                    "append-only".into()
                } else {
                    String::new()
                },
            ]
        })
        .collect();
    let head = [
        "NODE",
        "LAST CONTACT",
        "SIZE",
        "QUOTA",
        "DATA_VERSION",
        "RULES",
    ];
    let mut w = head.map(str::len);
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            if let Some(x) = w.get_mut(i) {
                *x = (*x).max(c.len());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let parts: Vec<String> = cells
            .iter()
            .zip(w)
            .map(|(c, n)| format!("{c:<n$}"))
            .collect();
        println!("{}", parts.join("  ").trim_end());
    };
    line(head.to_vec());
    for r in &rows {
        line(r.iter().map(String::as_str).collect());
    }
    println!("(DATA_VERSION is what each node reported with its appends: the server cannot read the backup.)");
    Ok(())
}

#[derive(Serialize)]
struct MigrateOutput {
    root: String,
    node: String,
    repository: String,
    moved: Vec<String>,
}

/// Move the top-level repository of ROOT into ROOT/nodes/NAME, entry by entry (each a rename
/// on one filesystem), `config` last: while ROOT/config exists the migration is unfinished, and
/// running it again moves what is left.
fn migrate(g: &Global, root: &str, name: &str) -> Result<()> {
    let url = keys::parse_url(root)?;
    let BackupUrl::File(dir) = &url else {
        return Err(usage(format!(
            "migrate works on a local directory (file:///abs/path), not {url}"
        )));
    };
    check_node_name(name).map_err(|e| usage(e.to_string()))?;
    if !dir.join("config").exists() {
        return Err(refused(format!(
            "{} holds no repository at its top (no config): nothing to migrate",
            dir.display()
        )));
    }
    let nodes = dir.join(NODES_DIR);
    let dest = nodes.join(name);
    // The server holds ROOT/locks/server while it runs.
    let server_lock = dir.join("locks").join("server");
    if server_lock.exists() {
        let f = std::fs::File::open(&server_lock)
            .with_context(|| format!("opening {}", server_lock.display()))?;
        if f.try_lock().is_err() {
            return Err(refused(format!(
                "a backup-cli server is serving {}: stop it first",
                dir.display()
            )));
        }
    }
    std::fs::create_dir_all(&dest).with_context(|| format!("creating {}", dest.display()))?;
    let mut entries: Vec<String> = std::fs::read_dir(dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != NODES_DIR && n != STATUS_FILE && n != "config")
        .collect();
    entries.sort();
    entries.push("config".into());
    let mut moved = Vec::new();
    for e in &entries {
        let (from, to) = (dir.join(e), dest.join(e));
        if to.exists() {
            if e == "locks" || e == "tmp" {
                // Left from an earlier, interrupted run; nothing of value inside.
                continue;
            }
            return Err(refused(format!(
                "both {} and {} exist: move one aside by hand, then run migrate again",
                from.display(),
                to.display()
            )));
        }
        std::fs::rename(&from, &to)
            .with_context(|| format!("moving {} to {}", from.display(), to.display()))?;
        moved.push(e.clone());
    }
    for d in [&dest, &nodes, dir] {
        std::fs::File::open(d)
            .and_then(|f| f.sync_all())
            .with_context(|| format!("syncing {}", d.display()))?;
    }
    let o = MigrateOutput {
        root: url.to_string(),
        node: name.to_string(),
        repository: format!("file://{}", dest.display()),
        moved,
    };
    if g.json {
        return out::json(&o);
    }
    println!(
        "Moved the repository at the top of {} to {} (node {name}). Name that node {name} in the \
         auth file and start the server again; the node's socket: URL does not change.",
        o.root, o.repository
    );
    Ok(())
}
