//! The attack campaign: someone who can write the backup's storage (a server's operator, a
//! bucket's owner, a thief with the disk) or a misconfigured node tries to make a restore return
//! an old or forged state with success, or to destroy the backup. Each case asserts what the
//! operator sees (exit code, the object named, nothing deleted) and that no restore exits 0 with
//! a state older than the newest the anchors show (`--expect-version`, another copy). Threat
//! model: ARCHITECTURE.md, "Threat model".
//!
//! Setup (once): a node's repository with session 1, an offline compaction, session 2, another
//! compaction, then session 3 (so: two sealed segments, a snapshot whose next batch sits in a
//! sealed segment, and an open newest stream); each case works on a copy.

use std::path::{Path, PathBuf};

use crate::common::*;

struct Pristine {
    node: Node,
    /// The newest data_version (end of session 3).
    newest: u32,
    /// A copy of the repository taken after session 2 (an older valid state).
    after_s2: PathBuf,
}

fn pristine() -> Pristine {
    let node = Node::new();
    let repo = node.repo();
    append_session(&repo, 1);
    run(&["compact", "--lightning-dir", p(&node.dir), &node.url()]).ok();
    append_session(&repo, 2);
    let after_s2 = node.path("after-s2");
    copy_dir(&node.repo_path, &after_s2);
    run(&["compact", "--lightning-dir", p(&node.dir), &node.url()]).ok();
    append_session(&repo, 3);
    Pristine {
        newest: last_version(3),
        node,
        after_s2,
    }
}

fn files_under(dir: &Path, sub: &str, suffix: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir.join(sub))
        .map(|rd| {
            rd.map(|e| e.unwrap().path())
                .filter(|p| p.to_string_lossy().ends_with(suffix))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// One attacked copy of the repository.
struct Case<'a> {
    p: &'a Pristine,
    repo: PathBuf,
    out: PathBuf,
}

impl<'a> Case<'a> {
    fn new(p: &'a Pristine, name: &str) -> Case<'a> {
        let repo = p.node.path(&format!("case-{name}"));
        copy_dir(&p.node.repo_path, &repo);
        let out = p.node.path(&format!("out-{name}"));
        std::fs::create_dir(&out).unwrap();
        Case { p, repo, out }
    }
    fn url(&self) -> String {
        url(&self.repo)
    }
    fn key(&self) -> String {
        p(&self.p.node.key_file()).to_string()
    }
    fn newest_stream(&self) -> PathBuf {
        files_under(&self.repo, "journal", ".log").pop().unwrap()
    }
    /// `restore` with the key and extra arguments into a fresh file.
    fn restore(&self, tag: &str, extra: &[&str]) -> Run {
        let dest = self.out.join(format!("{tag}.sqlite3"));
        let mut args = vec![
            "restore",
            "--key-file",
            self.key().leak(),
            self.url().leak(),
        ];
        args.push(p(&dest).to_string().leak());
        args.extend_from_slice(extra);
        let r = run(&args);
        if r.code != 0 {
            assert!(!dest.exists(), "a failed restore left {}", dest.display());
        }
        r
    }
    fn verify(&self) -> Run {
        run(&[
            "verify",
            "--read-data",
            "--key-file",
            &self.key(),
            &self.url(),
        ])
    }
}

#[derive(Default)]
struct Tally {
    tried: u32,
    stopped: u32,
    log: Vec<String>,
}

impl Tally {
    /// An attack is stopped when no restore returned an old or forged state with exit 0 where
    /// an anchor showed the newest (each case asserts the details before it counts).
    fn stopped(&mut self, what: &str) {
        self.tried += 1;
        self.stopped += 1;
        self.log.push(format!("stopped: {what}"));
    }
}

/// A restore that fails says so with one line naming `needle`, and writes nothing.
#[track_caller]
fn refused(r: Run, code: i32, needle: &str) {
    assert_eq!(
        r.code, code,
        "exit code\nstdout: {}\nstderr: {}",
        r.stdout, r.stderr
    );
    assert!(
        r.stderr.contains(needle),
        "stderr lacks {needle:?}: {}",
        r.stderr
    );
}

#[test]
fn attack_campaign() {
    let pr = pristine();
    let newest = pr.newest.to_string();
    let anchor = ["--expect-version", newest.as_str()];
    let mut t = Tally::default();

    // The untouched copy restores the newest state with the anchor satisfied: the baseline
    // every case is measured against.
    let c = Case::new(&pr, "baseline");
    let j = c
        .restore("ok", &["--json", anchor[0], anchor[1]])
        .ok()
        .json();
    assert_eq!(j["data_version"], pr.newest);
    assert_eq!(j["newest_version"], pr.newest);
    assert!(j["newest_time_ms"].as_u64().unwrap() > 1_700_000_000_000);
    assert!(c.verify().code == 0);

    // 1. Downgrade: the encrypted repository replaced by a plaintext one made by `init
    // --no-encryption` from a database with the right data_version.
    {
        let c = Case::new(&pr, "downgrade");
        std::fs::remove_dir_all(&c.repo).unwrap();
        let forged_db = c.out.join("forged.sqlite3");
        std::fs::copy(testdata("db-s3.sqlite3"), &forged_db).unwrap();
        let ld = c.out.join("ld");
        std::fs::create_dir(&ld).unwrap();
        std::fs::copy(&forged_db, ld.join("lightningd.sqlite3")).unwrap();
        run(&[
            "init",
            "--no-encryption",
            "--lightning-dir",
            p(&ld),
            &c.url(),
        ])
        .ok();
        refused(c.restore("r", &[]), 4, "not authenticated by your key");
        refused(c.verify(), 4, "not authenticated by your key");
        t.stopped("downgrade to a plaintext repository");
    }

    // 2. The newest stream deleted: the sealed segment before it says a segment followed.
    {
        let c = Case::new(&pr, "delete-newest");
        std::fs::remove_file(c.newest_stream()).unwrap();
        refused(c.restore("r", &[]), 1, "is missing");
        assert_eq!(c.verify().code, 3);
        t.stopped("newest journal segment deleted");
    }

    // 3. The newest stream emptied, zero-filled, rolled back to an older copy, or cut at each
    // frame boundary: a prefix of an append-only log is an earlier valid log. Without an anchor
    // restore exits 0 but prints the old newest version and its time; with one it refuses.
    {
        let mut variants: Vec<(String, Vec<u8>)> = Vec::new();
        let c0 = Case::new(&pr, "prefix-src");
        let whole = std::fs::read(c0.newest_stream()).unwrap();
        variants.push(("emptied".into(), Vec::new()));
        variants.push(("zero-filled".into(), vec![0u8; whole.len()]));
        let old_name = c0.newest_stream().file_name().unwrap().to_owned();
        if let Ok(older) = std::fs::read(pr.after_s2.join("journal").join(&old_name)) {
            variants.push(("rolled back to its copy after session 2".into(), older));
        }
        // Every frame boundary: walk the frames by their length fields.
        let mut pos = 40usize;
        let mut cuts = Vec::new();
        while pos + 8 <= whole.len() {
            let len = u32::from_le_bytes(whole[pos..pos + 4].try_into().unwrap()) as usize;
            if len == 0 {
                break;
            }
            cuts.push(pos);
            pos += 8 + len;
        }
        assert!(cuts.len() > 50, "{} frames", cuts.len());
        for cut in cuts {
            variants.push((format!("cut at offset {cut}"), whole[..cut].to_vec()));
        }
        let c = Case::new(&pr, "prefix");
        let stream = c.newest_stream();
        let n = variants.len();
        for (i, (what, bytes)) in variants.into_iter().enumerate() {
            std::fs::write(&stream, &bytes).unwrap();
            // Every variant with the anchor: refused, naming the newest it found.
            refused(c.restore(&format!("a{i}"), &anchor), 4, "older than");
            // A sample without an anchor: exit 0, but the output says how old the state is.
            if i < 3 || i == n - 1 {
                let j = c.restore(&format!("n{i}"), &["--json"]).ok().json();
                assert!(j["data_version"].as_u64().unwrap() < u64::from(pr.newest));
                assert_eq!(j["newest_version"], j["data_version"]);
                assert!(j["newest_time_ms"].as_u64().is_some(), "{what}");
                std::fs::remove_file(c.out.join(format!("n{i}.sqlite3"))).unwrap();
            }
            t.stopped(&format!("newest segment {what} (with an anchor)"));
        }
    }

    // 4. A sealed segment deleted, or replaced by another sealed segment of this repository:
    // the journal jumps, or the next segment's link does not match.
    {
        let c = Case::new(&pr, "delete-sealed");
        let sealed = files_under(&c.repo, "journal", ".seg");
        assert!(sealed.len() >= 2, "{sealed:?}");
        std::fs::remove_file(&sealed[sealed.len() - 1]).unwrap();
        let r = c.restore("r", &[]);
        assert_ne!(r.code, 0, "{}", r.stdout);
        assert!(r.stderr.contains("journal/"), "{}", r.stderr);
        assert_eq!(c.verify().code, 3);
        t.stopped("a sealed segment deleted");

        let c = Case::new(&pr, "swap-sealed");
        let sealed = files_under(&c.repo, "journal", ".seg");
        std::fs::copy(&sealed[0], &sealed[sealed.len() - 1]).unwrap();
        let r = c.restore("r", &[]);
        assert_ne!(r.code, 0, "{}", r.stdout);
        assert_eq!(c.verify().code, 3);
        t.stopped("a sealed segment replaced by another");
    }

    // 5. The journal after the newest snapshot deleted (every segment from the one holding the
    // snapshot's next batch): the manifest says that batch existed.
    {
        let c = Case::new(&pr, "delete-tail");
        for f in files_under(&c.repo, "journal", "") {
            std::fs::remove_file(f).unwrap();
        }
        refused(c.restore("r", &[]), 1, "journal");
        assert_eq!(c.verify().code, 3);
        t.stopped("the whole journal after the newest snapshot deleted");
    }

    // 6. Damage to the last frame, and the two newest frames swapped: not a torn write.
    {
        let c = Case::new(&pr, "damaged-last");
        let s = c.newest_stream();
        let mut b = std::fs::read(&s).unwrap();
        let mut pos = 40usize;
        let mut frames = Vec::new();
        while pos + 8 <= b.len() {
            let len = u32::from_le_bytes(b[pos..pos + 4].try_into().unwrap()) as usize;
            frames.push((pos, 8 + len));
            pos += 8 + len;
        }
        let (off, len) = *frames.last().unwrap();
        b[off + len / 2] ^= 0x10;
        // A zero last byte would read as the unwritten end of a torn write: damage it too.
        if b[off + len - 1] == 0 {
            b[off + len - 1] = 0x5a;
        }
        std::fs::write(&s, &b).unwrap();
        refused(c.restore("r", &[]), 4, "damaged at its end");
        assert_eq!(c.verify().code, 3);
        let r = c.restore("accepted", &["--accept-damaged-tail"]).ok();
        assert!(r.stdout.contains("lost from this copy"), "{}", r.stdout);
        assert!(!r.stdout.contains("never acknowledged"), "{}", r.stdout);
        t.stopped("the newest record damaged");

        let c = Case::new(&pr, "swapped-last");
        let s = c.newest_stream();
        let b = std::fs::read(&s).unwrap();
        let (o1, l1) = frames[frames.len() - 2];
        let (o2, l2) = frames[frames.len() - 1];
        let mut swapped = b[..o1].to_vec();
        swapped.extend_from_slice(&b[o2..o2 + l2]);
        swapped.extend_from_slice(&b[o1..o1 + l1]);
        std::fs::write(&s, &swapped).unwrap();
        refused(c.restore("r", &[]), 4, "damaged at its end");
        t.stopped("the two newest records swapped");
    }

    // 7. Packs, indexes and manifests deleted or swapped with another repository's: restore
    // fails naming the object, or (a newest manifest deleted) still gives the newest state.
    {
        // Another repository sealed with the same key: only the repository binding can tell
        // its objects from ours.
        let other_dir = pr.node.path("other-node");
        std::fs::create_dir(&other_dir).unwrap();
        let other_repo = pr.node.path("other-repo");
        run(&[
            "init",
            "--key-file",
            p(&pr.node.key_file()),
            "--lightning-dir",
            p(&other_dir),
            &url(&other_repo),
        ])
        .ok();
        let other = store::Repository::open(
            &store::BackupUrl::parse(&url(&other_repo)).unwrap(),
            Some(pr.node.key()),
        )
        .unwrap();
        append_session(&other, 1);
        run(&[
            "compact",
            "--key-file",
            p(&pr.node.key_file()),
            &url(&other_repo),
        ])
        .ok();
        let c = Case::new(&pr, "foreign-manifest");
        for theirs in files_under(&other_repo, "snapshots", "") {
            std::fs::copy(
                &theirs,
                c.repo.join("snapshots").join(theirs.file_name().unwrap()),
            )
            .unwrap();
        }
        let r = c.restore("r", &[]);
        assert_ne!(r.code, 0, "{}", r.stdout);
        assert!(r.stderr.contains("snapshots/"), "{}", r.stderr);
        assert_eq!(c.verify().code, 3);
        t.stopped("a manifest of another repository (same key) planted");

        let c = Case::new(&pr, "foreign-segment");
        let ours = files_under(&c.repo, "journal", ".seg");
        let theirs = files_under(&other_repo, "journal", ".seg");
        std::fs::copy(&theirs[0], &ours[0]).unwrap();
        let r = c.restore("r", &["--to-version", "10"]);
        assert_ne!(r.code, 0, "{}", r.stdout);
        assert!(r.stderr.contains("journal/"), "{}", r.stderr);
        assert_eq!(c.verify().code, 3);
        t.stopped("a sealed segment of another repository (same key) in its place");

        let c = Case::new(&pr, "delete-pack");
        for f in files_under(&c.repo, "packs", "") {
            std::fs::remove_file(f).unwrap();
        }
        let r = c.restore("r", &[]);
        assert_ne!(r.code, 0);
        assert!(r.stderr.contains("packs/"), "{}", r.stderr);
        assert_eq!(c.verify().code, 3);
        t.stopped("packs deleted");

        let c = Case::new(&pr, "delete-index");
        for f in files_under(&c.repo, "index", "") {
            std::fs::remove_file(f).unwrap();
        }
        let r = c.restore("r", &[]);
        assert_ne!(r.code, 0);
        assert_eq!(c.verify().code, 3);
        t.stopped("indexes deleted");

        let c = Case::new(&pr, "delete-manifest");
        for f in files_under(&c.repo, "snapshots", "") {
            std::fs::remove_file(f).unwrap();
        }
        // Without its snapshot the journal alone rebuilds everything (nothing was pruned).
        let j = c
            .restore("r", &["--json", anchor[0], anchor[1]])
            .ok()
            .json();
        assert_eq!(j["data_version"], pr.newest);
        assert_same_db(&c.out.join("r.sqlite3"), &testdata("db-s3.sqlite3"));
        t.stopped("manifests deleted (the journal still gives the newest state)");
    }

    // 8. The whole repository rolled back to an older copy: only an anchor shows it.
    {
        let c = Case::new(&pr, "rollback-all");
        std::fs::remove_dir_all(&c.repo).unwrap();
        copy_dir(&pr.after_s2, &c.repo);
        refused(c.restore("r", &anchor), 4, "older than");
        // A second copy of the repository that is newer wins over the rolled-back one.
        let j = c
            .restore("both", &["--json", "--also", &pr.node.url()])
            .ok()
            .json();
        assert_eq!(j["data_version"], pr.newest);
        assert_eq!(j["restored_from"], pr.node.url());
        assert!(j["copies"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["state"].as_str().unwrap().starts_with("behind by")));
        t.stopped("the whole repository rolled back (anchor: --expect-version, another copy)");
    }

    // 9. Stray files in every directory: skipped with a warning, never fatal.
    {
        let c = Case::new(&pr, "stray");
        for d in ["", "snapshots", "index", "packs", "journal"] {
            std::fs::write(c.repo.join(d).join(".DS_Store"), b"Bud1").unwrap();
            std::fs::write(c.repo.join(d).join(".rsync-tmp.XyZ"), b"partial").unwrap();
        }
        let j = c.restore("r", &["--json"]).ok().json();
        assert_eq!(j["data_version"], pr.newest);
        let v = c.verify();
        assert_eq!(v.code, 0, "{} {}", v.stdout, v.stderr);
        t.stopped("stray files in the repository (no effect)");
    }

    // 10. init --force while a writer holds the repository: refused, nothing moved.
    {
        let c = Case::new(&pr, "force");
        let repo = store::Repository::open(
            &store::BackupUrl::parse(&c.url()).unwrap(),
            Some(pr.node.key()),
        )
        .unwrap();
        let _g = fork_guard();
        let w = repo
            .writer("a live plugin", store::Durability::Flush)
            .unwrap();
        drop(_g);
        let r = run(&["init", "--force", "--key-file", &c.key(), &c.url()]);
        refused(r, 4, "stop lightningd");
        assert!(c.repo.join("config").exists(), "the repository was moved");
        drop(w);
        t.stopped("init --force beside a live writer");
    }

    println!(
        "attack campaign: {} attacks tried, {} stopped",
        t.tried, t.stopped
    );
    for l in &t.log {
        println!("  {l}");
    }
    assert_eq!(t.tried, t.stopped);
}
