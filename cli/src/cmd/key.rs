//! `backup-cli key create`: a node's new repository key, and the one line its backup server's
//! auth file needs; `backup-cli key export [--server]`: show them again.
//!
//! Onboarding a node to a `backup-cli server` (three steps, no server reachable for the first):
//! 1. on the node, `backup-cli key create --lightning-dir DIR` writes DIR/backup.key and prints
//!    `NAME AUTH-KEY`;
//! 2. on the server, that line goes into the auth file (re-read when the node first connects);
//! 3. on the node, `backup-cli init --lightning-dir DIR socket:HOST:PORT` uses that key.

use anyhow::{bail, Result};
use clap::Subcommand;
use serde::Serialize;

use crate::cmd::init::{phrase_rows, write_new_key};
use crate::exit::{refused, usage};
use crate::{keys, out, Global};

#[derive(Subcommand, Debug)]
pub enum KeyCommand {
    /// Create the repository key (--key-file PATH, or DIR/backup.key with --lightning-dir) and
    /// print the line a backup server's auth file needs for this node. Nothing is contacted.
    Create {
        /// The node's name on the server (its repository there): default this machine's host
        /// name.
        #[arg(long)]
        name: Option<String>,
    },
    /// Show the key's 24-word phrase (found by --key-file, $CLN_BACKUP_KEY_FILE, --key-phrase
    /// or --lightning-dir).
    Export {
        /// Print only the line a backup server's auth file needs (`NAME AUTH-KEY`); it does not
        /// reveal the repository key.
        #[arg(long)]
        server: bool,
        /// The node's name in that line: default this machine's host name.
        #[arg(long, requires = "server")]
        name: Option<String>,
    },
}

#[derive(Serialize)]
struct ExportOutput {
    key_id: String,
    source: String,
    phrase: Option<String>,
    server_line: Option<String>,
}

#[derive(Serialize)]
struct CreateOutput {
    key_id: String,
    key_file: String,
    phrase: String,
    name: String,
    server_line: String,
}

/// This machine's host name as a node name (lower case; other characters become '-').
fn default_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let mut n: String = host
        .trim()
        .to_ascii_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '-'
            }
        })
        .take(64)
        .collect();
    while n.starts_with(['.', '_', '-']) {
        n.remove(0);
    }
    if n.is_empty() {
        "node".into()
    } else {
        n
    }
}

fn node_name(name: &Option<String>) -> Result<String> {
    let n = name.clone().unwrap_or_else(default_name);
    store::backend::remote::server::check_node_name(&n).map_err(|e| usage(e.to_string()))?;
    Ok(n)
}

pub fn run(g: &Global, k: &KeyCommand) -> Result<()> {
    match k {
        KeyCommand::Create { name } => create(g, name),
        KeyCommand::Export { server, name } => export(g, *server, name),
    }
}

fn create(g: &Global, name: &Option<String>) -> Result<()> {
    let name = node_name(name)?;
    let path = keys::explicit_file(g)
        .or_else(|| g.lightning_dir.as_ref().map(|d| d.join(keys::KEY_FILE_NAME)))
        .ok_or_else(|| {
            usage("where should the key go? give --lightning-dir DIR (writes DIR/backup.key) or --key-file PATH")
        })?;
    if path.exists() {
        return Err(refused(format!(
            "{} exists; a key is never overwritten. `backup-cli key export --server --key-file {}` \
             prints its line for the server",
            path.display(),
            path.display()
        )));
    }
    let key = store::MasterKey::generate();
    write_new_key(&path, &key)?;
    let o = CreateOutput {
        key_id: key.id().to_string(),
        key_file: path.display().to_string(),
        phrase: key.to_phrase(),
        server_line: store::backend::remote::auth_line(&name, &key),
        name,
    };
    if g.json {
        return out::json(&o);
    }
    eprintln!("Created the key {} (mode 0400).", o.key_file);
    eprintln!();
    eprintln!(
        "  !!! WRITE DOWN THIS KEY PHRASE. Without it (or the key file) the backup CANNOT be"
    );
    eprintln!("  !!! restored. Keep it apart from the node, like hsm_secret.");
    eprintln!();
    for row in phrase_rows(&o.phrase) {
        eprintln!("{row}");
    }
    eprintln!();
    eprintln!("Add this line to the backup server's auth file (it holds no secret of the backup):");
    println!("{}", o.server_line);
    eprintln!(
        "Then: backup-cli init{} socket:HOST:PORT",
        match &g.lightning_dir {
            Some(d) => format!(" --lightning-dir {}", d.display()),
            None => format!(" --key-file {}", o.key_file),
        }
    );
    Ok(())
}

fn export(g: &Global, server: bool, name: &Option<String>) -> Result<()> {
    let Some(found) = keys::find(g, &[])? else {
        bail!(
            "no key found: give --key-file PATH, set ${}, or --lightning-dir DIR (for DIR/{})",
            keys::KEY_ENV,
            keys::KEY_FILE_NAME
        );
    };
    let line = if server {
        Some(store::backend::remote::auth_line(
            &node_name(name)?,
            &found.key,
        ))
    } else {
        None
    };
    let o = ExportOutput {
        key_id: found.key.id().to_string(),
        source: found.source.clone(),
        phrase: (!server).then(|| found.key.to_phrase()),
        server_line: line,
    };
    if g.json {
        return out::json(&o);
    }
    if let Some(a) = &o.server_line {
        // Only the line, so it can be appended to the server's auth file.
        println!("{a}");
        return Ok(());
    }
    eprintln!(
        "Key {} from {}. Anyone with these words can read the backup:",
        o.key_id, o.source
    );
    println!("{}", o.phrase.unwrap_or_default());
    Ok(())
}
