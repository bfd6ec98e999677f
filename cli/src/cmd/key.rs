//! `backup-cli key export [--server]`: show the repository key again.

use anyhow::{bail, Result};
use clap::Subcommand;
use serde::Serialize;

use crate::{keys, out, Global};

#[derive(Subcommand, Debug)]
pub enum KeyCommand {
    /// Show the key's 24-word phrase (found by --key-file, $CLN_BACKUP_KEY_FILE, --key-phrase
    /// or --lightning-dir).
    Export {
        /// Print only the server authentication key (hex) that `backup-cli server
        /// --auth-key-file` needs; it does not reveal the repository key.
        #[arg(long)]
        server: bool,
    },
}

#[derive(Serialize)]
struct ExportOutput {
    key_id: String,
    source: String,
    phrase: Option<String>,
    server_auth_key: Option<String>,
}

pub fn server_auth_hex(key: &store::MasterKey) -> String {
    store::backend::remote::auth_key_hex(key)
}

pub fn run(g: &Global, k: &KeyCommand) -> Result<()> {
    let KeyCommand::Export { server } = k;
    let Some(found) = keys::find(g, &[])? else {
        bail!(
            "no key found: give --key-file PATH, set ${}, or --lightning-dir DIR (for DIR/{})",
            keys::KEY_ENV,
            keys::KEY_FILE_NAME
        );
    };
    let o = ExportOutput {
        key_id: found.key.id().to_string(),
        source: found.source.clone(),
        phrase: (!server).then(|| found.key.to_phrase()),
        server_auth_key: server.then(|| server_auth_hex(&found.key)),
    };
    if g.json {
        return out::json(&o);
    }
    if let Some(a) = &o.server_auth_key {
        // Only the line, so it can be redirected into the server's auth key file.
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
