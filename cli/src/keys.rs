//! Finding the repository key, and opening a repository with it.
//!
//! Order (first hit wins): `--key-file PATH`, `$CLN_BACKUP_KEY_FILE`, `--key-phrase` (read from
//! the terminal without echo, or from stdin), then `backup.key` in the places a command knows
//! (beside the restore target, in `--lightning-dir`). A named source that is missing or damaged
//! is an error, never skipped; an implicit `backup.key` that is absent is skipped.

use std::io::{BufRead, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use store::backend::remote::client::Notify;
use store::backend::remote::RemoteOptions;
use store::{BackupUrl, MasterKey, Repository};

use crate::Global;

pub const KEY_FILE_NAME: &str = "backup.key";
pub const KEY_ENV: &str = "CLN_BACKUP_KEY_FILE";

pub struct FoundKey {
    pub key: MasterKey,
    /// Where it came from, for messages: a path or "the key phrase".
    pub source: String,
}

/// The key file a command was told about explicitly (`--key-file`, then the environment).
pub fn explicit_file(g: &Global) -> Option<PathBuf> {
    g.key_file.clone().or_else(|| {
        std::env::var_os(KEY_ENV)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    })
}

pub fn read_key_file(path: &Path) -> Result<MasterKey> {
    let text =
        store::crypto::read_small_file(path, store::crypto::KEY_FILE_MAX, "a cln-backup key file")
            .map_err(|e| {
                anyhow::anyhow!(
                    "cannot read the key file {}: {e}{}",
                    path.display(),
                    if e.kind() == std::io::ErrorKind::NotFound {
                        " (give the right --key-file, or --key-phrase to type the 24 words)"
                    } else {
                        ""
                    }
                )
            })?;
    Ok(MasterKey::from_file_text(
        &text,
        &path.display().to_string(),
    )?)
}

/// Read the phrase: from the terminal with echo off, or all of stdin.
pub fn read_phrase() -> Result<MasterKey> {
    let stdin = std::io::stdin();
    let phrase = if stdin.is_terminal() {
        eprint!("Repository key phrase (24 words): ");
        let _ = std::io::stderr().flush();
        let fd = rustix::stdio::stdin();
        let saved = rustix::termios::tcgetattr(fd).ok();
        if let Some(t) = &saved {
            let mut quiet = t.clone();
            quiet.local_modes.remove(rustix::termios::LocalModes::ECHO);
            let _ = rustix::termios::tcsetattr(fd, rustix::termios::OptionalActions::Now, &quiet);
        }
        let mut line = String::new();
        let res = stdin.lock().read_line(&mut line);
        if let Some(t) = &saved {
            let _ = rustix::termios::tcsetattr(fd, rustix::termios::OptionalActions::Now, t);
        }
        eprintln!();
        res.context("reading the key phrase from the terminal")?;
        line
    } else {
        let mut s = String::new();
        stdin
            .lock()
            .take(64 * 1024)
            .read_to_string(&mut s)
            .context("reading the key phrase from stdin")?;
        s
    };
    if phrase.trim().is_empty() {
        bail!("no key phrase given: type the 24 words shown at init");
    }
    Ok(MasterKey::from_phrase(&phrase)?)
}

/// Find the key; `beside` are directories where an implicit `backup.key` may be.
pub fn find(g: &Global, beside: &[PathBuf]) -> Result<Option<FoundKey>> {
    if let Some(p) = &g.key_file {
        return Ok(Some(FoundKey {
            key: read_key_file(p)?,
            source: p.display().to_string(),
        }));
    }
    if let Some(p) = explicit_file(g) {
        return Ok(Some(FoundKey {
            key: read_key_file(&p).with_context(|| format!("from ${KEY_ENV}"))?,
            source: format!("{} (from ${KEY_ENV})", p.display()),
        }));
    }
    if g.key_phrase {
        return Ok(Some(FoundKey {
            key: read_phrase()?,
            source: "the key phrase".into(),
        }));
    }
    for dir in beside.iter().chain(g.lightning_dir.iter()) {
        let p = dir.join(KEY_FILE_NAME);
        if p.exists() {
            return Ok(Some(FoundKey {
                key: read_key_file(&p)?,
                source: p.display().to_string(),
            }));
        }
    }
    Ok(None)
}

pub fn parse_url(url: &str) -> Result<BackupUrl> {
    BackupUrl::parse(url).map_err(|e| {
        let hint = if url.starts_with('/') {
            format!(" (did you mean file://{url}?)")
        } else if !url.contains(':') {
            " (a local repository is file:///absolute/path)".to_string()
        } else {
            String::new()
        };
        crate::exit::usage(format!("{e}{hint}"))
    })
}

/// How `backup-cli` reaches a `socket:` repository: the plugin's reconnect policy, but every
/// wait is printed and `--connect-timeout` bounds them all.
pub fn remote_options(g: &Global) -> RemoteOptions {
    let limit = Duration::from_secs_f64(g.connect_timeout.clamp(0.1, 86_400.0));
    let defaults = RemoteOptions::default();
    RemoteOptions {
        connect_timeout: defaults.connect_timeout.min(limit),
        deadline: Some(limit),
        notify: Notify::new(|m| eprintln!("{m}")),
        ..defaults
    }
}

/// Open the repository at `url` with [`remote_options`].
pub fn open_url(g: &Global, url: &BackupUrl, key: Option<MasterKey>) -> store::Result<Repository> {
    let _p = matches!(url, BackupUrl::Socket { .. }).then(|| {
        crate::out::Progress::start(g.json, &format!("connecting to the backup server {url}"))
    });
    Repository::open_with(url, key, &remote_options(g))
}

/// Open the repository at `url`, finding its key as above.
pub fn open(g: &Global, url: &BackupUrl, beside: &[PathBuf]) -> Result<Repository> {
    open_with_key(g, url, beside).map(|(r, _)| r)
}

/// [`open`], and the key that opened it (none for a plaintext repository).
pub fn open_with_key(
    g: &Global,
    url: &BackupUrl,
    beside: &[PathBuf],
) -> Result<(Repository, Option<FoundKey>)> {
    let found = find(g, beside)?;
    let source = found.as_ref().map(|f| f.source.clone());
    let key = found.as_ref().map(|f| f.key.clone());
    match open_url(g, url, key) {
        Ok(r) => Ok((r, found)),
        Err(store::Error::KeyRequired) => {
            let mut looked: Vec<String> = beside
                .iter()
                .chain(g.lightning_dir.iter())
                .map(|d| d.join(KEY_FILE_NAME).display().to_string())
                .collect();
            looked.dedup();
            bail!(
                "{url} is encrypted and no key was found: give --key-file PATH, set ${KEY_ENV}, \
                 or use --key-phrase to type the 24 words{}",
                if looked.is_empty() {
                    String::new()
                } else {
                    format!(" (looked for {})", looked.join(", "))
                }
            )
        }
        Err(e @ store::Error::WrongKey { .. }) => Err(anyhow::Error::from(e).context(format!(
            "the key from {} does not open {url}",
            source.unwrap_or_default()
        ))),
        Err(e) => Err(anyhow::Error::from(e).context(format!("opening the repository {url}"))),
    }
}
