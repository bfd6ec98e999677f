//! `backup-cli upgrade URL [--bind-plaintext]`: bring a format-1 repository to format 2 in place
//! (`store::ops::upgrade`, docs/format.md "Version changes"), offline. The plugin does the same
//! when it opens a format-1 repository; this is for a repository no plugin writes to (a copy,
//! a destination) or one an operator wants upgraded before the node starts.
//!
//! `--bind-plaintext` is for a format-1 plaintext repository of the operator's own: a reader that
//! holds a key refuses a plaintext config the key does not bind (`Unbound`, a downgrade), and
//! nothing bound format-1 configs. The upgrade writes the format-2 config bound to the key given.

use anyhow::Result;
use clap::Args;
use serde::Serialize;
use store::ops::upgrade::{upgrade, UpgradeReport};

use crate::exit::usage;
use crate::{keys, out, Global};

#[derive(Args, Debug)]
pub struct UpgradeArgs {
    /// Repository URL
    pub url: String,
    /// Bind a format-1 PLAINTEXT repository's config to the key given (--key-file,
    /// --key-phrase, $CLN_BACKUP_KEY_FILE or backup.key in --lightning-dir), so that holders of
    /// that key open it and refuse any other plaintext repository put in its place.
    #[arg(long)]
    pub bind_plaintext: bool,
}

#[derive(Serialize)]
struct UpgradeOutput {
    url: String,
    #[serde(flatten)]
    report: UpgradeReport,
    /// The format the repository is at now.
    format: u8,
    encrypted: bool,
    /// The id of the key a plaintext repository's config was bound to by this run.
    bound_to_key: Option<String>,
}

pub fn run(g: &Global, a: &UpgradeArgs) -> Result<()> {
    let url = keys::parse_url(&a.url)?;
    let holder = store::repo::holder("backup-cli upgrade");
    let (repo, bind) = if a.bind_plaintext {
        let found = keys::find(g, &[])?.ok_or_else(|| {
            usage(
                "--bind-plaintext binds the repository to a key: give --key-file PATH, set \
                 $CLN_BACKUP_KEY_FILE, use --key-phrase, or --lightning-dir DIR with backup.key",
            )
        })?;
        // Opened without the key: a format-1 plaintext config is not bound to it yet.
        match keys::open_url(g, &url, None) {
            Ok(r) if r.is_encrypted() => encrypted_nothing_to_bind(&a.url)?,
            Ok(r) => (r, Some(found.key)),
            Err(store::Error::KeyRequired) => encrypted_nothing_to_bind(&a.url)?,
            Err(e) => {
                return Err(anyhow::Error::from(e).context(format!("opening the repository {url}")))
            }
        }
    } else {
        (keys::open(g, &url, &[])?, None)
    };
    let (upgraded, report) = {
        let _p = out::Progress::start(g.json, "upgrading");
        match upgrade(&repo, &holder, bind.as_ref()) {
            Ok(r) => r,
            Err(e @ store::Error::Locked { .. }) => {
                return Err(anyhow::Error::from(e).context(format!(
                    "upgrading {url}: a plugin (or another command) holds the repository; the \
                     plugin upgrades it itself when it opens it, otherwise stop lightningd first"
                )))
            }
            Err(e) => return Err(anyhow::Error::from(e).context(format!("upgrading {url}"))),
        }
    };
    let bound_to_key = match (&bind, report.already) {
        (Some(k), false) => Some(k.id().to_string()),
        _ => None,
    };
    let o = UpgradeOutput {
        url: url.to_string(),
        format: upgraded.format(),
        encrypted: upgraded.is_encrypted(),
        bound_to_key,
        report,
    };
    if g.json {
        return out::json(&o);
    }
    print_human(&o, a.bind_plaintext);
    Ok(())
}

/// `--bind-plaintext` on an encrypted repository: its own key authenticates it already.
fn encrypted_nothing_to_bind<T>(url: &str) -> Result<T> {
    Err(usage(format!(
        "{url} is encrypted: its own key authenticates it, there is nothing to bind; run \
         `backup-cli upgrade {url}` without --bind-plaintext"
    )))
}

fn print_human(o: &UpgradeOutput, bind: bool) {
    let r = &o.report;
    if r.already {
        println!(
            "{} is already at format {}: nothing to do.",
            o.url,
            o.format.max(r.from_format)
        );
        if bind && !o.encrypted {
            println!(
                "(--bind-plaintext binds only format-1 repositories: a format-2 plaintext \
                 repository is bound at init, or never.)"
            );
        }
        return;
    }
    println!(
        "Upgraded {} from format {} to format {}: {} journal segment(s) sealed; records are chained from segment {}.",
        o.url, r.from_format, o.format, r.sealed_streams, r.chain_from
    );
    if let Some(t) = &r.torn_tail {
        println!(
            "Cut a torn tail (a crash while a record was written; never acknowledged under fsync durability): {t}."
        );
    }
    if let Some(k) = &o.bound_to_key {
        println!(
            "Its config (not encrypted) is now bound to key {k}: open it with that key; a plaintext repository put in its place is refused."
        );
    }
    println!(
        "Snapshots, packs and sealed segments were kept as they are. A cln-backup build that knows only format 1 can no longer write to it; the plugin pins format {} in backup.lock at its next start.",
        o.format
    );
}
