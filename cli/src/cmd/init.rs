//! `backup-cli init`: create a repository, its key, backup.lock, and the first snapshot.
//!
//! Safety order: refuse while lightningd runs, refuse a backup.lock that points elsewhere and an
//! existing repository (unless --force, which moves a local one aside, never deletes it); write
//! the key durably before the repository exists (a repository whose key was lost is useless);
//! write backup.lock last, after the repository and its first snapshot exist.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args;
use serde::Serialize;
use store::manifest::SnapshotInfo;
use store::{BackupUrl, ConfigBody, MasterKey, Repository};

use crate::exit::{refused, usage};
use crate::keys::{self, KEY_FILE_NAME};
use crate::node::{self, DB_FILE_NAME};
use crate::{out, Global};

#[derive(Args, Debug)]
pub struct InitArgs {
    /// Repository URL: file:///abs/path, socket:HOST:PORT, s3://BUCKET/PREFIX
    pub url: String,
    /// Replace an existing repository (a local one is moved aside, never deleted) or a
    /// backup.lock that points elsewhere.
    #[arg(long)]
    pub force: bool,
    /// Store the backup in plaintext (checksummed, not encrypted).
    #[arg(long)]
    pub no_encryption: bool,
}

#[derive(Serialize)]
struct InitOutput {
    url: String,
    encrypted: bool,
    key_id: Option<String>,
    key_file: Option<String>,
    key_created: bool,
    /// Only when the key was created by this command: the 24 words to write down.
    key_phrase: Option<String>,
    lock_file: Option<String>,
    previous_backend_url: Option<String>,
    moved_aside: Option<String>,
    snapshot: Option<SnapshotInfo>,
    /// The node id recorded in the repository (from the database's vars.node_id).
    node_id: Option<String>,
    plugin_config: String,
}

/// Is there a repository (or something else) at `url`? For a local directory, a non-empty
/// directory that is not a repository counts too: init would mix its files into it.
fn existing(g: &Global, url: &BackupUrl, key: Option<&MasterKey>) -> Result<Option<String>> {
    match keys::open_url(g, url, key.cloned()) {
        Err(store::Error::NoRepository { .. }) => {}
        Ok(_)
        | Err(store::Error::KeyRequired)
        | Err(store::Error::WrongKey { .. })
        | Err(store::Error::Unbound { .. }) => {
            return Ok(Some(format!("a repository already exists at {url}")))
        }
        Err(e) => return Err(anyhow::Error::from(e).context(format!("checking {url} before init"))),
    }
    if let BackupUrl::File(p) = url {
        if let Ok(mut rd) = std::fs::read_dir(p) {
            if rd.next().is_some() {
                return Ok(Some(format!(
                    "{} exists and is not empty, but holds no repository",
                    p.display()
                )));
            }
        }
    }
    Ok(None)
}

/// Why init refuses an existing repository, and the two ways on: continue it (a restore into
/// the node, which checks the node and writes backup.lock), or start over (which moves it aside).
fn existing_message(what: &str, url: &str, dir: Option<&Path>) -> String {
    let dir = dir
        .map(|d| d.display().to_string())
        .unwrap_or_else(|| "DIR".into());
    format!(
        "{what}. To continue it on this node (its database was lost or replaced, or backup.lock \
         was): `backup-cli restore {url} --lightning-dir {dir}` restores the newest state if \
         needed, checks that it belongs to this node's hsm_secret, and writes backup.lock so the \
         plugin goes on in the same repository. Only to abandon that backup: --force MOVES THE \
         EXISTING REPOSITORY ASIDE (a local one is renamed, nothing deleted) and starts a new, \
         empty one here"
    )
}

fn plugin_path() -> String {
    std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(|d| d.join("cln-backup")))
        .filter(|p| p.exists())
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "/path/to/cln-backup".into())
}

/// Record the database's `vars.node_id` in the repository (a node that never started has none).
fn record_node_id(repo: &Repository, db: &Path) -> Result<Option<String>> {
    let Some(id) = node::db_state(db)?.node_id else {
        return Ok(None);
    };
    store::node::record_node_id(repo, &id, store::node::NodeIdSource::Database)
        .with_context(|| format!("recording node {id} in {}", repo.url()))?;
    Ok(Some(id))
}

pub fn write_new_key(path: &Path, key: &MasterKey) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o400)
        .open(path)
        .with_context(|| format!("creating the key file {}", path.display()))?;
    f.write_all(key.to_file_text().as_bytes())
        .and_then(|_| f.sync_all())
        .with_context(|| format!("writing the key file {}", path.display()))?;
    if let Some(d) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(d)
            .and_then(|f| f.sync_all())
            .with_context(|| format!("syncing {}", d.display()))?;
    }
    Ok(())
}

/// The key of a repository about to be created.
pub struct NewKey {
    pub key: Option<MasterKey>,
    pub path: Option<PathBuf>,
    /// Generated now (so its phrase must be shown).
    pub created: bool,
    /// The file does not exist yet: [`NewKey::write`] creates it.
    to_write: bool,
}

impl NewKey {
    /// Write the key file if it is new (mode 0400, synced); returns its path if it wrote one.
    pub fn write(&self) -> Result<Option<PathBuf>> {
        match (&self.key, &self.path) {
            (Some(k), Some(p)) if self.to_write => {
                write_new_key(p, k)?;
                Ok(Some(p.clone()))
            }
            _ => Ok(None),
        }
    }
}

/// Find or make the key for a new repository: an existing key file (--key-file,
/// $CLN_BACKUP_KEY_FILE, DIR/backup.key) is reused, never overwritten; else the key is the
/// --key-phrase's or a new random one, to be written there.
pub fn new_key(g: &Global, encrypt: bool, dir: Option<&Path>) -> Result<NewKey> {
    if !encrypt {
        return Ok(NewKey {
            key: None,
            path: None,
            created: false,
            to_write: false,
        });
    }
    let path = keys::explicit_file(g)
        .or_else(|| dir.map(|d| d.join(KEY_FILE_NAME)))
        .ok_or_else(|| {
            usage(
                "an encrypted repository needs a place for its key: give --lightning-dir DIR \
                 (writes DIR/backup.key) or --key-file PATH, or choose --no-encryption",
            )
        })?;
    if path.exists() {
        let k = keys::read_key_file(&path).context(
            "an existing key file is reused, never overwritten; move it aside to create a new key",
        )?;
        return Ok(NewKey {
            key: Some(k),
            path: Some(path),
            created: false,
            to_write: false,
        });
    }
    let (k, created) = if g.key_phrase {
        (keys::read_phrase()?, false)
    } else {
        (MasterKey::generate(), true)
    };
    Ok(NewKey {
        key: Some(k),
        path: Some(path),
        created,
        to_write: true,
    })
}

pub fn run(g: &Global, a: &InitArgs) -> Result<()> {
    let url = keys::parse_url(&a.url)?;
    let url_text = url.to_string();
    let dir = g.lightning_dir.as_deref();

    // 1. The node directory: exists, is the network dir, no running node, backup.lock.
    let mut previous = None;
    if let Some(d) = dir {
        if !d.is_dir() {
            return Err(usage(format!(
                "--lightning-dir {} is not a directory",
                d.display()
            )));
        }
        node::check_stopped_network_dir(d, DB_FILE_NAME, "init must see the database at rest")?;
        if let Some(l) = node::read_lock(d)? {
            if l.backend_url != url_text && l.backend_url != a.url {
                if !a.force {
                    return Err(refused(format!(
                        "{} points to {}: this node is already backed up there; \
                         use --force to switch to {url_text}",
                        d.join(node::LOCK_FILE_NAME).display(),
                        l.backend_url
                    )));
                }
                previous = Some(l.backend_url);
            }
        }
    }

    // 2. The key: reuse one that exists (never overwrite a key), else make one (written below).
    let encrypt = !a.no_encryption;
    let nk = new_key(g, encrypt, dir)?;
    let (key, key_file, key_created) = (nk.key.clone(), nk.path.clone(), nk.created);

    // 3. The destination must be empty (or moved aside with --force).
    let mut moved_aside = None;
    if let Some(what) = existing(g, &url, key.as_ref())? {
        if !a.force {
            return Err(refused(existing_message(&what, &url_text, dir)));
        }
        match &url {
            BackupUrl::File(p) => {
                // Never beside a live writer: its later batches would land in neither place.
                let backend = store::backend::dir::DirBackend::open(p)?;
                let _writer = store::backend::Backend::lock(
                    &backend,
                    store::repo::WRITER_LOCK,
                    &store::repo::holder("backup-cli init --force"),
                )
                .map_err(|e| {
                    refused(format!(
                        "{e}: a plugin (or another command) is writing to {url}; stop lightningd before you move its repository aside"
                    ))
                })?;
                moved_aside = Some(node::move_aside(p)?);
            }
            _ => {
                return Err(refused(format!(
                    "{what}; --force cannot move a remote repository aside: remove it there first"
                )))
            }
        }
    }

    let created_path = nk.write()?;

    // 4. The repository.
    let created = store::backend::open_with(&url, key.as_ref(), true, &keys::remote_options(g))
        .and_then(|b| {
            Repository::init_backend(
                b,
                key.as_ref().filter(|_| encrypt),
                encrypt,
                ConfigBody::default(),
            )
        });
    let repo = match created {
        Ok(r) => r,
        Err(e) => {
            if let Some(p) = &created_path {
                let _ = std::fs::remove_file(p);
            }
            return Err(anyhow::Error::from(e).context(format!("creating the repository {url}")));
        }
    };

    // 5. The first snapshot, from the node's database.
    let mut snapshot = None;
    let mut node_id = None;
    if let Some(d) = dir {
        let db = d.join(DB_FILE_NAME);
        if db.exists() {
            let _p = out::Progress::start(g.json, "storing the first snapshot");
            let scratch = tempfile::Builder::new()
                .prefix(".cln-backup-init")
                .tempdir_in(d)
                .with_context(|| format!("creating a scratch directory in {}", d.display()))?;
            let m = store::ops::seed::snapshot_database(
                &repo,
                &db,
                scratch.path(),
                &store::repo::holder("backup-cli init"),
            )
            .with_context(|| format!("storing {} as the first snapshot", db.display()))?;
            snapshot = Some(m.info());
            node_id = record_node_id(&repo, &db)?;
        }
    }

    // 6. backup.lock, last: the plugin starts only once everything above exists.
    let lock_file = match dir {
        Some(d) => Some(node::write_lock(d, &url_text, repo.identity())?),
        None => None,
    };

    let plugin_config = format!("important-plugin={}", plugin_path());
    let o = InitOutput {
        url: url_text.clone(),
        encrypted: encrypt,
        key_id: key.as_ref().map(|k| k.id().to_string()),
        key_file: key_file.as_ref().map(|p| p.display().to_string()),
        key_created,
        key_phrase: if key_created {
            key.as_ref().map(|k| k.to_phrase())
        } else {
            None
        },
        lock_file: lock_file.as_ref().map(|p| p.display().to_string()),
        previous_backend_url: previous,
        moved_aside: moved_aside.as_ref().map(|p| p.display().to_string()),
        snapshot,
        node_id,
        plugin_config,
    };
    if g.json {
        return out::json(&o);
    }
    print_human(&o, dir);
    Ok(())
}

/// The 24 words in numbered rows of six, to write down.
pub fn phrase_rows(phrase: &str) -> Vec<String> {
    let words: Vec<&str> = phrase.split(' ').collect();
    words
        .chunks(6)
        .enumerate()
        .map(|(i, row)| {
            let cells: Vec<String> = row
                .iter()
                .enumerate()
                .map(|(j, w)| format!("{:>2}. {w:<9}", i * 6 + j + 1))
                .collect();
            format!("  {}", cells.join(" ").trim_end())
        })
        .collect()
}

fn print_human(o: &InitOutput, dir: Option<&Path>) {
    println!("Created the repository {}.", o.url);
    if let Some(m) = &o.moved_aside {
        println!("The repository that was there is now {m} (nothing was deleted).");
    }
    match (&o.key_file, o.key_created) {
        (Some(f), true) => println!("Created the key {f} (mode 0400)."),
        (Some(f), false) => println!("Using the existing key {f}."),
        (None, _) => println!("Not encrypted (--no-encryption): anyone who reads the repository reads the node's secrets."),
    }
    if let Some(p) = &o.key_phrase {
        println!();
        println!(
            "  !!! WRITE DOWN THIS KEY PHRASE. It is shown only now. Without it (or {}),",
            KEY_FILE_NAME
        );
        println!(
            "  !!! the backup CANNOT be restored. Keep it apart from the node, like hsm_secret."
        );
        println!();
        for row in phrase_rows(p) {
            println!("{row}");
        }
        println!();
        println!("  (`backup-cli key export` shows it again while the key file exists.)");
    }
    if let Some(s) = &o.snapshot {
        println!(
            "Stored lightningd.sqlite3 as the first snapshot {} (data_version {}, {}, {} stored).",
            s.id,
            s.data_version,
            out::bytes(s.db_size),
            out::bytes(s.stored_bytes)
        );
    }
    if let Some(id) = &o.node_id {
        println!("Recorded node {id} (the database's vars.node_id) in the repository.");
    }
    if let Some(l) = &o.lock_file {
        match &o.previous_backend_url {
            Some(p) => println!("Wrote {l} (it pointed to {p} before)."),
            None => println!("Wrote {l}."),
        }
    }
    println!();
    println!("Next:");
    match dir {
        Some(d) => {
            println!(
                "  1. Add this line to lightningd's config (or pass it as --important-plugin):"
            );
            println!("       {}", o.plugin_config);
            println!(
                "  2. Start lightningd. The plugin reads {} in {} and logs",
                node::LOCK_FILE_NAME,
                d.display()
            );
            println!("     \"Versions match up\" on the first write: every change is then durable before it commits.");
            println!("  3. Check it: backup-cli info {}", o.url);
            println!(
                "     After a disaster: backup-cli restore {} --lightning-dir {}",
                o.url,
                d.display()
            );
        }
        None => {
            println!("  Run init with --lightning-dir DIR (the node's network directory) to write");
            println!("  backup.lock there, or write DIR/backup.lock yourself: {{\"backend_url\": \"{}\"}}", o.url);
            println!("  Then add to lightningd's config: {}", o.plugin_config);
        }
    }
}
