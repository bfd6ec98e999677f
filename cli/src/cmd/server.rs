//! `backup-cli server URL HOST:PORT`: serve a repository directory to remote nodes
//! (`socket:HOST:PORT` URLs), by `store::backend::remote::server`.
//!
//! The server admits only nodes whose auth key it holds: `--auth-key-file F` (one hex key per
//! line, from `backup-cli key export --server` on each node), or, without it, the auth key of
//! the repository key found the usual way (--key-file, $CLN_BACKUP_KEY_FILE, --lightning-dir).
//! It never needs the repository key itself, and stores only sealed bytes.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Args;
use serde::Serialize;
use store::backend::dir::DirBackend;
use store::backend::remote::{auth_key, ServerAuth, ServerHandle, ServerOptions};
use store::BackupUrl;

use crate::exit::usage;
use crate::{keys, out, Global};

#[derive(Args, Debug)]
pub struct ServerArgs {
    /// The repository directory to serve: file:///abs/path (created if absent)
    pub url: String,
    /// Address to listen on, e.g. 127.0.0.1:9735 or [::1]:9735 (port 0 picks one)
    pub listen: String,
    /// File with the auth keys of the nodes allowed in (hex, one per line), from
    /// `backup-cli key export --server` on each node.
    #[arg(long, value_name = "FILE")]
    pub auth_key_file: Option<PathBuf>,
}

#[derive(Serialize)]
struct Listening {
    url: String,
    listening: Vec<String>,
    auth_keys: usize,
}

pub fn run(g: &Global, a: &ServerArgs) -> Result<()> {
    let url = keys::parse_url(&a.url)?;
    let BackupUrl::File(dir) = &url else {
        return Err(usage(format!(
            "the server serves a local directory: give file:///abs/path, not {url}"
        )));
    };
    let auth = match &a.auth_key_file {
        Some(f) => ServerAuth::from_file(f)
            .with_context(|| format!("reading the auth key file {}", f.display()))?,
        None => match keys::find(g, &[])? {
            Some(k) => ServerAuth::from_keys(vec![auth_key(&k.key)]),
            None => return Err(usage(
                "the server admits only nodes whose auth key it holds: give --auth-key-file FILE \
                     (lines from `backup-cli key export --server` on each node), or the node's key \
                     with --key-file",
            )),
        },
    };
    let backend = DirBackend::create(dir)
        .with_context(|| format!("opening the directory to serve, {}", dir.display()))?;
    let n = auth.len();
    let handle = ServerHandle::spawn(Arc::new(backend), &a.listen, auth, ServerOptions::default())
        .with_context(|| format!("listening on {}", a.listen))?;
    let o = Listening {
        url: url.to_string(),
        listening: handle.addrs().iter().map(|a| a.to_string()).collect(),
        auth_keys: n,
    };
    if g.json {
        out::json(&o)?;
    } else {
        println!(
            "Serving {} on {} to {} node key(s). Stop with Ctrl-C.",
            o.url,
            o.listening.join(", "),
            o.auth_keys
        );
    }
    use std::io::Write;
    let _ = std::io::stdout().flush();
    handle.wait();
    Ok(())
}
