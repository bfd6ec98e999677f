//! `backup-cli restore URL --lightning-dir DIR`: the day of the disaster, guarded.
//!
//! A database restored into a node decides whether its channels live: started on an old state,
//! lightningd sends revoked commitments and its peers may take every channel's funds; started
//! with another node's `hsm_secret`, nothing in it can be used. So, before anything in DIR
//! changes, this refuses:
//! - while lightningd runs there ([`node::running_node`]);
//! - when DIR's `hsm_secret` derives another node than the restored database's `vars.node_id`
//!   or the node recorded in the repository (`store::node`), or DIR has no `hsm_secret`;
//! - when DIR holds a database at a newer data_version than the state restored;
//! - when the state restored is older than the newest the backup holds, unless
//!   `--accept-old-state-penalty-risk`;
//! - when DIR's `backup.lock` points to another repository, or its `backup.key` is another key.
//!
//! Then it leaves DIR ready to continue the same repository: `backup.key` (written first,
//! synced), the database (built and checked in a scratch directory inside DIR, then linked into
//! place, never over an existing file: an older database and SQLite's files beside it are moved
//! aside), and `backup.lock` last, so the plugin's first write after the start finds the journal
//! at the restored version ("Versions match up"). Running it again after an interruption
//! finishes what is missing.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use serde::Serialize;
use store::ops::restore::{restore_with, RestoreOptions, RestoreReport};
use store::{BackupUrl, Repository};

use super::restore::{copy_urls, newest_version, survey, Copy, RestoreArgs};
use crate::exit::{refused, usage};
use crate::hsm::{self, HSM_SECRET};
use crate::keys::{self, KEY_FILE_NAME};
use crate::node::{self, DB_FILE_NAME, LOCK_FILE_NAME};
use crate::{out, Global};

#[derive(Serialize)]
struct NodeRestoreOutput {
    #[serde(flatten)]
    report: RestoreReport,
    duration_ms: u64,
    lightning_dir: String,
    /// The node id DIR's hsm_secret derives, and how it was found.
    node_id: String,
    node_id_from: String,
    /// The node id in the restored database (`vars.node_id`) and in the repository.
    database_node_id: Option<String>,
    repository_node_id: Option<String>,
    newest_data_version: u32,
    older_than_newest: bool,
    /// The copies read (the URL and backup.lock's destinations), and what each holds.
    copies: Vec<Copy>,
    /// "restored", or "already there" when DIR held exactly this state.
    database: &'static str,
    moved_aside: Vec<String>,
    key_file: Option<String>,
    key_written: bool,
    /// backup.lock: written now, already pointing here, or (after an old state) not written.
    lock_file: Option<String>,
    lock_written: bool,
    next: Vec<String>,
}

/// The node id DIR's hsm_secret derives (or `--node-id` where it cannot be derived).
fn hsm_identity(dir: &Path, given: Option<&str>) -> Result<hsm::DerivedId> {
    let path = dir.join(HSM_SECRET);
    let given = given.map(store::node::parse_node_id).transpose()?;
    if !path.exists() {
        return Err(refused(format!(
            "{} has no {HSM_SECRET}: lightningd would create a NEW one at its first start, a \
             different node that cannot use the channels of the restored database. Put the \
             node's {HSM_SECRET} there first (a copy, or `lightning-hsmtool generatehsm {}` with \
             the node's words), then run this again",
            dir.display(),
            path.display()
        )));
    }
    match (hsm::node_id(&path), given) {
        (Ok(d), Some(g)) if d.node_id != g => Err(refused(format!(
            "--node-id {g} is not the node {} derives ({}, {})",
            path.display(),
            d.node_id,
            d.how
        ))),
        (Ok(d), _) => Ok(d),
        (Err(_), Some(g)) => Ok(hsm::DerivedId {
            node_id: g,
            how: "given with --node-id".into(),
        }),
        (Err(e), None) => Err(e.context(format!(
            "cannot tell which node {} is; give --node-id",
            path.display()
        ))),
    }
}

/// DIR's backup.key must be the key that opens the repository (or absent).
fn check_key_file(dir: &Path, key: Option<&store::MasterKey>) -> Result<()> {
    let p = dir.join(KEY_FILE_NAME);
    if let (Some(k), true) = (key, p.exists()) {
        let have = keys::read_key_file(&p)?;
        if have.id() != k.id() {
            return Err(refused(format!(
                "{} is another key (id {}) than the one that opens this repository (id {}): \
                 it belongs to another repository; move it aside first if that one is \
                 abandoned",
                p.display(),
                have.id(),
                k.id()
            )));
        }
    }
    Ok(())
}

/// What DIR already holds where the database goes.
enum Existing {
    Nothing,
    /// A database at this data_version.
    Database(u32),
}

fn existing_database(dir: &Path) -> Result<Existing> {
    let db = dir.join(DB_FILE_NAME);
    if !db.exists() {
        return Ok(Existing::Nothing);
    }
    // A rollback journal beside it (a crash mid-commit) is part of its state: lightningd rolls
    // it back when it opens the database. Read that state from copies, never touching DIR.
    let journal = dir.join(format!("{DB_FILE_NAME}-journal"));
    let state = if journal.exists() {
        (|| {
            let t = tempfile::Builder::new()
                .prefix(".cln-backup-look")
                .tempdir_in(dir)?;
            std::fs::copy(&db, t.path().join(DB_FILE_NAME))?;
            std::fs::copy(&journal, t.path().join(format!("{DB_FILE_NAME}-journal")))?;
            node::db_state_rw(&t.path().join(DB_FILE_NAME))
        })()
    } else {
        node::db_state(&db)
    };
    match state {
        Ok(s) => Ok(Existing::Database(s.data_version)),
        Err(e) => Err(refused(format!(
            "{} already exists and cannot be read as lightningd's database ({e:#}): if it is \
             damaged, move it aside yourself (with any {DB_FILE_NAME}-journal beside it) and run \
             this again",
            db.display()
        ))),
    }
}

/// Move the database and SQLite's files beside it aside (never deleted).
fn move_db_files_aside(dir: &Path) -> Result<Vec<String>> {
    let mut moved = Vec::new();
    for p in node::db_files(dir) {
        if p.exists() {
            moved.push(node::move_aside(&p)?.display().to_string());
        }
    }
    Ok(moved)
}

/// The base directory and network of a network directory, for the start command.
fn start_command(dir: &Path) -> String {
    match (dir.parent(), dir.file_name()) {
        (Some(base), Some(net)) if !base.as_os_str().is_empty() => format!(
            "lightningd --lightning-dir={} --network={}",
            base.display(),
            net.to_string_lossy()
        ),
        _ => format!("lightningd (with its network directory {})", dir.display()),
    }
}

pub fn run(g: &Global, a: &RestoreArgs, url: &BackupUrl, dir: &Path) -> Result<()> {
    let started = Instant::now();
    // 1. The directory, and no lightningd on it.
    if !dir.is_dir() {
        return Err(usage(format!(
            "{} is not a directory: create the node's network directory (e.g. \
             ~/.lightning/bitcoin) and put its {HSM_SECRET} there",
            dir.display()
        )));
    }
    node::check_stopped_network_dir(
        dir,
        HSM_SECRET,
        "a database must never be replaced under a running node",
    )?;
    // 2. Which node DIR is.
    let hsm = hsm_identity(dir, a.node_id.as_deref())?;
    // 3. Where DIR backs up to, and with which key.
    let url_text = url.to_string();
    let lock = node::read_lock(dir)?;
    if let Some(l) = &lock {
        if l.backend_url != url_text && l.backend_url != a.url {
            return Err(refused(format!(
                "{} points to {}, not {url_text}: this node is backed up there. Restore from \
                 that repository, or move {} aside if it is abandoned",
                dir.join(LOCK_FILE_NAME).display(),
                l.backend_url,
                LOCK_FILE_NAME
            )));
        }
    }
    let (first, found) = keys::open_with_key(g, url, &[dir.to_path_buf()])?;
    let key = found.map(|f| f.key).filter(|_| first.is_encrypted());
    check_key_file(dir, key.as_ref())?;
    if let Some(pin) = lock.as_ref().and_then(|l| l.repository.as_ref()) {
        first.check_identity(pin).with_context(|| {
            format!(
                "{} pins repository {}",
                dir.join(LOCK_FILE_NAME).display(),
                pin.id
            )
        })?;
    }
    // Every copy the node's backup.lock names: the newest authentic state wins.
    let urls = copy_urls(Some(dir), a, url)?;
    let (repo, copies) = survey(first, &urls, a.accept_damaged_tail)?;
    // 4. The node the repository records.
    let recorded = store::node::read_node_id(&repo)
        .with_context(|| format!("reading the node id recorded in {url}"))?;
    if let Some(r) = &recorded {
        if r.node_id != hsm.node_id {
            return Err(refused(format!(
                "{url} backs up node {} (recorded from its {}), but {} is node {} ({}): \
                 refusing to give a node another node's database",
                r.node_id,
                r.source.name(),
                dir.join(HSM_SECRET).display(),
                hsm.node_id,
                hsm.how
            )));
        }
    }
    // 5. Restore into a scratch directory inside DIR (same filesystem: linked into place).
    let scratch = tempfile::Builder::new()
        .prefix(".cln-backup-restore")
        .tempdir_in(dir)
        .with_context(|| format!("creating a scratch directory in {}", dir.display()))?;
    let tmp_db = scratch.path().join(DB_FILE_NAME);
    let target = a.target();
    let report = {
        let _p = out::Progress::start(g.json, "restoring");
        restore_with(
            &repo,
            &tmp_db,
            &target,
            &RestoreOptions {
                accept_damaged_tail: a.accept_damaged_tail,
                expect_version: a.expect_version,
            },
        )
        .with_context(|| format!("restoring {}", repo.url()))?
    };
    let restored = node::db_state(&tmp_db)?;
    if let Some(id) = &restored.node_id {
        if *id != hsm.node_id {
            return Err(refused(format!(
                "the database in {url} belongs to node {id}, but {} is node {} ({}): refusing \
                 to give a node another node's database",
                dir.join(HSM_SECRET).display(),
                hsm.node_id,
                hsm.how
            )));
        }
    }
    // 6. Never an older state than the backup holds, unless the operator accepts the risk.
    let newest = newest_version(&report);
    let older = report.data_version < newest;
    if older && !a.accept_old_state_penalty_risk {
        return Err(refused(format!(
            "refusing to restore data_version {} into a node: the backup holds a newer state \
             (data_version {newest}). A node started on an old state sends its peers revoked \
             channel states, and they may take ALL the funds of those channels (a penalty \
             close). Restore the newest state (leave out --to-version and --snapshot). Only if \
             every channel of that state has been closed since, or on a test network, add \
             --accept-old-state-penalty-risk",
            report.data_version
        )));
    }
    // 7. What DIR holds already.
    let database = match existing_database(dir)? {
        Existing::Database(v) if v > report.data_version => {
            return Err(refused(format!(
                "{} is at data_version {v}, NEWER than the state restored ({}; the backup's \
                 newest is {newest}): the node's own database is ahead of the backup. Keep it \
                 and start lightningd on it; restoring would go back in time",
                dir.join(DB_FILE_NAME).display(),
                report.data_version
            )))
        }
        Existing::Database(v) if v == report.data_version => {
            let diff = store::ops::check::compare_databases(&dir.join(DB_FILE_NAME), &tmp_db)?;
            if let Some(d) = diff {
                return Err(refused(format!(
                    "{} is at data_version {v} too, but its content differs from the backup's \
                     (first difference: {d}): one of them holds a batch the other never saw. Do \
                     not start lightningd on either until you know which is right",
                    dir.join(DB_FILE_NAME).display(),
                )));
            }
            "already there"
        }
        Existing::Database(_) | Existing::Nothing => "restored",
    };
    // 8. The key first (synced), then the database, then backup.lock.
    let key_path = dir.join(KEY_FILE_NAME);
    let key_written = match &key {
        Some(k) if !key_path.exists() => {
            super::init::write_new_key(&key_path, k)?;
            true
        }
        _ => false,
    };
    let mut moved_aside = Vec::new();
    if database == "restored" {
        moved_aside = move_db_files_aside(dir)?;
        std::fs::hard_link(&tmp_db, dir.join(DB_FILE_NAME))
            .and_then(|_| std::fs::File::open(dir)?.sync_all())
            .with_context(|| format!("placing the database into {}", dir.display()))?;
    }
    drop(scratch);
    let mut report = report;
    report.path = dir.join(DB_FILE_NAME).display().to_string();
    let lock_path = dir.join(LOCK_FILE_NAME);
    let mut lock_written = false;
    let mut lock_file = Some(lock_path.display().to_string());
    if older {
        // The repository holds batches after this state: the plugin would refuse it ("lost some
        // state"). This node needs a new repository.
        if lock.is_some() {
            moved_aside.push(node::move_aside(&lock_path)?.display().to_string());
        }
        lock_file = None;
    } else if lock.is_none() {
        node::write_lock(dir, &url_text, repo.identity())?;
        lock_written = true;
    }

    let next = next_steps(dir, &url_text, older, report.data_version);
    let o = NodeRestoreOutput {
        duration_ms: started.elapsed().as_millis() as u64,
        lightning_dir: dir.display().to_string(),
        node_id: hsm.node_id.clone(),
        node_id_from: hsm.how.clone(),
        database_node_id: restored.node_id.clone(),
        repository_node_id: recorded.as_ref().map(|r| r.node_id.clone()),
        newest_data_version: newest,
        older_than_newest: older,
        copies,
        database,
        moved_aside,
        key_file: key.as_ref().map(|_| key_path.display().to_string()),
        key_written,
        lock_file,
        lock_written,
        next,
        report,
    };
    if g.json {
        return out::json(&o);
    }
    print_human(&o, &repo);
    Ok(())
}

fn next_steps(dir: &Path, url: &str, older: bool, version: u32) -> Vec<String> {
    let plugin = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(|d| d.join("cln-backup")))
        .filter(|p| p.exists())
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "/path/to/cln-backup".into());
    let mut next = Vec::new();
    if older {
        next.push(format!(
            "This old state cannot continue {url} (it holds batches after data_version \
             {version}). Back the node up into a NEW repository before starting it: \
             backup-cli init --lightning-dir {} file:///path/to/new/backup",
            dir.display()
        ));
    }
    next.push(format!(
        "Make sure lightningd's config loads the plugin: important-plugin={plugin}"
    ));
    next.push(format!(
        "Start lightningd: {}. {}",
        start_command(dir),
        if older {
            "Watch its channels: peers that hold a newer state will say so".to_string()
        } else {
            format!(
                "Its log shows \"Versions match up: the backup continues at data_version {}\": \
                 the same repository goes on, no init needed",
                version + 1
            )
        }
    ));
    next.push(
        "Check it: lightning-cli backup-status, then lightning-cli backup-check (compares the \
         node's database with the backup), and lightning-cli listpeerchannels"
            .to_string(),
    );
    next
}

fn print_human(o: &NodeRestoreOutput, repo: &Repository) {
    let r = &o.report;
    match o.database {
        "restored" => println!(
            "Restored {} into {} at data_version {}.",
            repo.url(),
            o.lightning_dir,
            r.data_version
        ),
        _ => println!(
            "{} already holds exactly this state (data_version {}): left as it is.",
            PathBuf::from(&o.lightning_dir).join(DB_FILE_NAME).display(),
            r.data_version
        ),
    }
    if o.older_than_newest {
        println!(
            "  !!! OLD STATE: the backup holds data_version {} (--accept-old-state-penalty-risk).",
            o.newest_data_version
        );
    } else {
        println!("  the newest state the backup holds");
    }
    match (&r.snapshot, r.snapshot_version) {
        (Some(id), Some(v)) => println!(
            "  from snapshot {id} (data_version {v}) + {} journal batches",
            r.replayed_batches
        ),
        _ => println!("  from the journal: {} batches", r.replayed_batches),
    }
    println!("  integrity_check {}", r.integrity_check);
    println!(
        "  node {}: {HSM_SECRET} ({}){}{}",
        o.node_id,
        o.node_id_from,
        o.database_node_id
            .as_ref()
            .map(|_| ", the database's vars.node_id")
            .unwrap_or_default(),
        o.repository_node_id
            .as_ref()
            .map(|_| " and the repository agree")
            .unwrap_or(" agree (the repository records no node id yet)"),
    );
    for m in &o.moved_aside {
        println!("  moved aside (nothing deleted): {m}");
    }
    if let Some(k) = &o.key_file {
        println!(
            "  {k} {}",
            if o.key_written {
                "written (mode 0400)"
            } else {
                "already there"
            }
        );
    }
    if let Some(l) = &o.lock_file {
        println!(
            "  {l} {} {}",
            if o.lock_written {
                "written: points to"
            } else {
                "already points to"
            },
            repo.url()
        );
    }
    if let Some(t) = &r.torn_tail {
        println!("  note: left out {t}: a batch cut by a crash while it was written (never acknowledged to lightningd)");
    }
    println!();
    println!("Next:");
    for (i, s) in o.next.iter().enumerate() {
        println!("  {}. {s}", i + 1);
    }
}
