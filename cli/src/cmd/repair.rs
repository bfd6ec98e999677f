//! `backup-cli repair URL --cut-damaged-tail [--lightning-dir DIR] [--keep-damaged PATH]`: the
//! way out when the newest journal segment's end is damaged in a way a crash cannot explain
//! (`store::Error::DamagedTail`): the plugin refuses to open such a backup, so lightningd stops.
//!
//! Order (docs/format.md "Repair of a damaged tail"): every check first (lightningd stopped, the
//! node's database no older than the backup's authentic state, the same node, backup.lock naming
//! this repository); then, under the repository's writer lock: 1. the whole damaged segment is
//! written aside (a local file, synced), 2. the segment is cut after its last authentic record,
//! 3. with --lightning-dir, the node's database (which still holds the batches that were lost
//! from the backup) is stored as a snapshot, so the backup is complete and the plugin continues.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args;
use serde::Serialize;
use store::manifest::SnapshotInfo;
use store::ops::repair::{cut_damaged_tail, TailRepair};

use crate::exit::{refused, usage};
use crate::node::{self, DB_FILE_NAME};
use crate::{keys, out, Global};

#[derive(Args, Debug)]
pub struct RepairArgs {
    /// Repository URL
    pub url: String,
    /// Cut the newest journal segment after its last authentic record when its end is damaged
    /// (the whole segment is kept aside first). With --lightning-dir (the node stopped), also
    /// store the node's database as a snapshot, so the backup holds the node's newest state
    /// again.
    #[arg(long)]
    pub cut_damaged_tail: bool,
    /// Where to keep the damaged segment, as it was (default: DIR, else the current directory,
    /// `cln-backup-damaged-<segment>-<unix time>.log`). Never overwritten.
    #[arg(long, value_name = "PATH")]
    pub keep_damaged: Option<PathBuf>,
}

#[derive(Serialize)]
struct RepairOutput {
    url: String,
    #[serde(flatten)]
    tail: TailRepair,
    /// Where the damaged segment was kept.
    kept: Option<String>,
    /// The node's database's data_version, with --lightning-dir.
    node_version: Option<u32>,
    /// The backup's newest authentic data_version before the repair's snapshot.
    backup_version: u32,
    snapshot: Option<SnapshotInfo>,
}

pub fn run(g: &Global, a: &RepairArgs) -> Result<()> {
    if !a.cut_damaged_tail {
        return Err(usage(
            "say what to repair: --cut-damaged-tail (cut the newest journal segment after its last authentic record, keeping it aside first)",
        ));
    }
    let url = keys::parse_url(&a.url)?;
    let url_text = url.to_string();
    let dir = g.lightning_dir.as_deref();

    // The node: stopped, its database, its backup.lock naming this repository.
    let mut node_state = None;
    if let Some(d) = dir {
        node::check_given_dir(
            d,
            DB_FILE_NAME,
            "the repair stores the node's database, which must be at rest",
        )?;
        let db = d.join(DB_FILE_NAME);
        if !db.exists() {
            return Err(usage(format!(
                "{} does not exist: the repair stores the node's database as a snapshot; without a node, only `backup-cli restore --accept-damaged-tail` reads this backup",
                db.display()
            )));
        }
        if let Some(l) = node::read_lock(d)? {
            let mut names =
                std::iter::once(&l.backend_url).chain(l.destinations.iter().map(|d| &d.url));
            if !names.any(|u| *u == url_text || *u == a.url) {
                return Err(refused(format!(
                    "{} points to {}, not {url_text}: repair the repository this node backs up to",
                    d.join(node::LOCK_FILE_NAME).display(),
                    l.backend_url
                )));
            }
        }
        node_state = Some((db.clone(), node::db_state(&db)?));
    }

    let repo = keys::open(g, &url, &[])?;
    let holder = store::repo::holder("backup-cli repair");
    let writer = repo
        .lock(store::repo::WRITER_LOCK, &holder)
        .map_err(|e| {
            refused(format!(
                "{e}: the plugin (lightningd) or another command is using {url_text}; stop lightningd first"
            ))
        })?;

    // The backup's newest authentic state, and the checks against the node, before any change.
    let newest = store::ops::restore::newest(&repo, true)
        .with_context(|| format!("reading the journal of {url_text}"))?;
    if let Some((db, st)) = &node_state {
        if st.data_version < newest.data_version {
            return Err(refused(format!(
                "{} is at data_version {}, older than the backup's authentic state {}: the node runs on an old database; do not store it (`backup-cli restore {url_text} --lightning-dir DIR` puts the backup's state back)",
                db.display(),
                st.data_version,
                newest.data_version
            )));
        }
        if let (Some(id), Some(rec)) = (&st.node_id, store::node::read_node_id(&repo)?) {
            if *id != rec.node_id {
                return Err(refused(format!(
                    "{} is node {id}, but {url_text} backs up node {}: this is another node's repository",
                    db.display(),
                    rec.node_id
                )));
            }
        }
    }

    // 1-2. Keep the damaged segment aside, then cut it.
    let mut kept = None;
    let tail = cut_damaged_tail(&repo, &*writer, |object, data| {
        let p = keep_path(a.keep_damaged.as_deref(), dir, object);
        write_new(&p, data).map_err(|e| store::Error::io("keep", p.display().to_string(), e))?;
        kept = Some(p.display().to_string());
        Ok(())
    })
    .with_context(|| format!("repairing the journal of {url_text}"))?;

    // 3. The node's database as a snapshot, when it is newer than what the backup holds.
    let mut snapshot = None;
    let backup_version = store::ops::restore::newest(&repo, false)
        .with_context(|| format!("reading the journal of {url_text} after the repair"))?
        .data_version;
    if let (Some(d), Some((db, st))) = (dir, &node_state) {
        if st.data_version > backup_version {
            let _p = out::Progress::start(g.json, "storing the node's database as a snapshot");
            let scratch = tempfile::Builder::new()
                .prefix(".cln-backup-repair")
                .tempdir_in(d)
                .with_context(|| format!("creating a scratch directory in {}", d.display()))?;
            let m = store::ops::seed::snapshot_database(&repo, db, scratch.path(), &holder)
                .with_context(|| format!("storing {} as a snapshot", db.display()))?;
            snapshot = Some(m.info());
        }
    }
    drop(writer);

    let o = RepairOutput {
        url: url_text,
        tail,
        kept,
        node_version: node_state.as_ref().map(|(_, s)| s.data_version),
        backup_version,
        snapshot,
    };
    if g.json {
        return out::json(&o);
    }
    print_human(&o);
    Ok(())
}

fn keep_path(given: Option<&Path>, dir: Option<&Path>, object: &str) -> PathBuf {
    if let Some(p) = given {
        return p.to_path_buf();
    }
    let seg = object
        .trim_start_matches("journal/")
        .trim_end_matches(".log");
    let name = format!("cln-backup-damaged-{seg}-{}.log", store::config::now());
    match dir {
        Some(d) => d.join(name),
        None => PathBuf::from(name),
    }
}

/// Write `data` to a new file (never over one), synced with its directory.
fn write_new(p: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(p)?;
    f.write_all(data)?;
    f.sync_all()?;
    let parent = p
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::File::open(parent)?.sync_all()
}

fn print_human(o: &RepairOutput) {
    let t = &o.tail;
    let object = t.object.as_deref().unwrap_or("the journal");
    match &t.damaged {
        Some(what) => {
            println!("{object} was damaged at its end: {what}.");
            if let Some(k) = &o.kept {
                println!(
                    "Kept the whole segment as it was in {k} ({} bytes), for forensics.",
                    t.len_before
                );
            }
            println!(
                "Cut {object} after its last authentic record (data_version {}): {} bytes removed, every readable record kept.",
                t.last_version.map_or("none".into(), |v| v.to_string()),
                t.len_before - t.len_after
            );
        }
        None => {
            println!("The end of {object} is not damaged: nothing was cut.");
            if let Some(torn) = &t.torn {
                println!(
                    "(It ends in a crash's torn write, which the plugin cuts itself: {torn}.)"
                );
            }
        }
    }
    println!(
        "The backup's newest state is data_version {}.",
        o.backup_version
    );
    match (&o.snapshot, o.node_version) {
        (Some(s), _) => println!(
            "Stored the node's lightningd.sqlite3 as snapshot {} (data_version {}): the backup holds the node's newest state again. Start lightningd: the plugin continues at data_version {}.",
            s.id,
            s.data_version,
            s.data_version + 1
        ),
        (None, Some(v)) => println!(
            "The node's database is at data_version {v}, which the backup holds: start lightningd."
        ),
        (None, None) => println!(
            "Without --lightning-dir no snapshot was taken: if the node's database is newer than data_version {}, the plugin stops with \"Backup is out of date\"; run `backup-cli repair {} --cut-damaged-tail --lightning-dir DIR` with lightningd stopped to store it.",
            o.backup_version, o.url
        ),
    }
}
