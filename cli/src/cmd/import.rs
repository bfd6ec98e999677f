//! `backup-cli import URL OLD.dbak`: a backup of the old Python plugin into a new repository.
//!
//! The file is decoded by `store::legacy` (rewound entries dropped, an unconfirmed tail left out,
//! pre-#4090 statements fixed). A snapshot entry goes in as a snapshot of that database file
//! (written to a temporary file first, then stored through SQLite's backup API); statements are
//! appended to the journal as the plugin would. The journal is then sealed (every object synced)
//! and the result checked by a trial restore before the command reports success.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;
use serde::Serialize;
use store::legacy::{decode_dbak, LegacyEntry};
use store::ops::restore::{restore, RestoreTarget};
use store::{Batch, ConfigBody, Durability, Repository};

use super::init::new_key;
use crate::exit::refused;
use crate::{keys, out, Global};

#[derive(Args, Debug)]
pub struct ImportArgs {
    /// Repository URL (created if absent; an existing one must be empty)
    pub url: String,
    /// The old plugin's backup file (backup.dbak)
    pub file: PathBuf,
    /// Create the repository in plaintext (checksummed, not encrypted).
    #[arg(long)]
    pub no_encryption: bool,
}

#[derive(Serialize)]
struct TailOut {
    offset: u64,
    bytes: u64,
    versions: Vec<u32>,
    unreadable: Option<String>,
}

#[derive(Serialize)]
struct ImportOutput {
    url: String,
    file: String,
    created_repository: bool,
    encrypted: bool,
    key_file: Option<String>,
    /// Only when the key was created by this command.
    key_phrase: Option<String>,
    entries: u64,
    snapshots: u64,
    batches: u64,
    statements: u64,
    statements_fixed: u64,
    /// data_versions of entries the old plugin rewound (replaced by a later entry).
    rewound: Vec<u32>,
    /// Bytes after the old header's end (never confirmed), left out.
    tail_left_out: Option<TailOut>,
    /// The state a restore now gives, checked by a trial restore.
    data_version: u32,
    integrity_check: String,
    duration_ms: u64,
}

pub fn run(g: &Global, a: &ImportArgs) -> Result<()> {
    let started = Instant::now();
    let url = keys::parse_url(&a.url)?;
    let name = a.file.display().to_string();
    let data = std::fs::read(&a.file).with_context(|| format!("reading {name}"))?;
    let mut old = decode_dbak(&data, &name)
        .with_context(|| format!("{name} is not a readable backup of the old plugin"))?;
    drop(data);
    let fixed = old.fix_statements();

    // The repository: an existing empty one, or a new one.
    let nk = new_key(g, !a.no_encryption, g.lightning_dir.as_deref())?;
    let (repo, created) = match keys::open_url(g, &url, nk.key.clone()) {
        Ok(r) => {
            let s = store::ops::stats::stats(&r)?;
            if s.snapshot_count > 0 || s.journal_records > 0 {
                return Err(refused(format!(
                    "{url} already holds a backup (data_version {}); import into a new repository",
                    s.last_version.unwrap_or(0)
                )));
            }
            (r, false)
        }
        Err(store::Error::NoRepository { .. }) => {
            nk.write()?;
            let r = Repository::init(
                &url,
                nk.key.as_ref(),
                nk.key.is_some(),
                ConfigBody::default(),
            )
            .with_context(|| format!("creating the repository {url}"))?;
            (r, true)
        }
        Err(e) => {
            return Err(anyhow::Error::from(e).context(format!("opening the repository {url}")))
        }
    };

    let scratch = tempfile::Builder::new()
        .prefix("cln-backup-import")
        .tempdir()
        .context("creating a temporary directory")?;
    let holder = store::repo::holder("backup-cli import");
    let (mut snapshots, mut batches, mut statements) = (0u64, 0u64, 0u64);
    {
        let _p = out::Progress::start(g.json, "importing");
        let mut writer = None;
        for e in &old.entries {
            match e {
                LegacyEntry::Snapshot { version, db } => {
                    writer = None; // a snapshot resets where the journal continues
                    let tmp = scratch.path().join(format!("snapshot-{version}.sqlite3"));
                    std::fs::write(&tmp, db)
                        .with_context(|| format!("writing {}", tmp.display()))?;
                    store::ops::seed::snapshot_database(&repo, &tmp, scratch.path(), &holder)
                        .with_context(|| {
                            format!("storing the database of data_version {version} from {name}")
                        })?;
                    let _ = std::fs::remove_file(&tmp);
                    snapshots += 1;
                }
                LegacyEntry::Statements { version, writes } => {
                    if writer.is_none() {
                        writer = Some(repo.writer(&holder, Durability::Flush)?);
                    }
                    if let Some(w) = writer.as_mut() {
                        w.append(&Batch {
                            data_version: *version,
                            writes: writes.clone(),
                        })
                        .with_context(|| {
                            format!("appending the batch of data_version {version} from {name}")
                        })?;
                    }
                    batches += 1;
                    statements += writes.len() as u64;
                }
            }
        }
        // Appends above were written without a sync each; sealing the segments publishes them
        // as synced objects, so everything is durable before we report success.
        if let Some(mut w) = writer {
            w.rotate()?;
            store::ops::compact::seal_closed_segments(&repo, w.segment())
                .context("sealing the imported journal")?;
        }
    }

    // A trial restore: the import is only done if it restores.
    let check = scratch.path().join("check.sqlite3");
    let r = restore(&repo, &check, &RestoreTarget::Latest).with_context(|| {
        format!(
            "imported into {url}, but a trial restore failed; the repository is not usable as it is{}",
            if created { " (remove it and report the problem)" } else { "" }
        )
    })?;

    let o = ImportOutput {
        url: url.to_string(),
        file: name,
        created_repository: created,
        encrypted: repo.is_encrypted(),
        key_file: if created {
            nk.path.as_ref().map(|p| p.display().to_string())
        } else {
            None
        },
        key_phrase: (created && nk.created)
            .then(|| nk.key.as_ref().map(|k| k.to_phrase()))
            .flatten(),
        entries: old.entries.len() as u64,
        snapshots,
        batches,
        statements,
        statements_fixed: fixed as u64,
        rewound: old.rewound.iter().map(|r| r.version).collect(),
        tail_left_out: old.tail.take().map(|t| TailOut {
            offset: t.offset,
            bytes: t.bytes,
            versions: t.versions,
            unreadable: t.unreadable,
        }),
        data_version: r.data_version,
        integrity_check: r.integrity_check,
        duration_ms: started.elapsed().as_millis() as u64,
    };
    if g.json {
        return out::json(&o);
    }
    println!(
        "Imported {} into {}: {} entries ({} snapshots, {} batches, {} statements).",
        o.file, o.url, o.entries, o.snapshots, o.batches, o.statements
    );
    if o.statements_fixed > 0 {
        println!(
            "  fixed {} statements from before lightningd PR #4090 (a missing space before WHERE)",
            o.statements_fixed
        );
    }
    if !o.rewound.is_empty() {
        println!(
            "  left out {} batches the old plugin had replaced (data_version {:?}): its own restore would have applied both",
            o.rewound.len(),
            o.rewound
        );
    }
    if let Some(t) = &o.tail_left_out {
        println!(
            "  left out {} bytes at offset {} after the old header's end (never confirmed; data_version {:?})",
            t.bytes, t.offset, t.versions
        );
    }
    println!(
        "  trial restore: data_version {}, integrity_check {} ({})",
        o.data_version,
        o.integrity_check,
        out::duration(std::time::Duration::from_millis(o.duration_ms))
    );
    if let Some(p) = &o.key_phrase {
        println!();
        println!(
            "  !!! WRITE DOWN THIS KEY PHRASE (shown only now; without it or {}, no restore):",
            o.key_file.as_deref().unwrap_or("the key file")
        );
        println!("  {p}");
    }
    println!(
        "Next: to go on with this backup, write DIR/backup.lock as {{\"backend_url\": \"{}\"}}",
        o.url
    );
    println!("  (with the key beside it); the plugin checks the node's data_version against it on the first");
    println!("  write (\"Versions match up\"). Or keep it as an archive and start anew with `backup-cli init`.");
    Ok(())
}
