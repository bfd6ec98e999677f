//! A flipped byte in any stored object is found by verify or restore, and no restore ever
//! yields a wrong database: it fails with a typed error, or (a damaged last journal record,
//! indistinguishable from a torn write) says it left that record out, and then holds exactly
//! lightningd's database before that record. Every restore that succeeds is compared with
//! lightningd's database by contents.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use store::ops::restore::{restore, RestoreTarget};
use store::ops::verify::{verify, VerifyOptions};
use store::{MasterKey, Repository};

use crate::common::*;

fn files(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for d in ["", "snapshots", "index", "packs", "journal"] {
        for e in std::fs::read_dir(root.join(d)).unwrap() {
            let p = e.unwrap().path();
            if p.is_file() {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

fn campaign(encrypted: bool) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("repo");
    let url = store::BackupUrl::File(root.clone());
    let key = MasterKey::generate();
    let repo = Repository::init(&url, Some(&key), encrypted, store::ConfigBody::default()).unwrap();
    let s1 = load_trace("trace-s1.jsonl");
    {
        let w = Mutex::new(repo.writer("w", store::Durability::Flush).unwrap());
        let opts = store::ops::compact::CompactOptions {
            cache_dir: dir.path().join("cache"),
            holder: "c".into(),
        };
        append_all(&mut w.lock().unwrap(), &s1[..700]);
        store::ops::compact::compact(&repo, &w, &opts).unwrap();
        append_all(&mut w.lock().unwrap(), &s1[700..1400]);
        store::ops::compact::compact(&repo, &w, &opts).unwrap();
        append_all(&mut w.lock().unwrap(), &s1[1400..1600]);
    }
    let good = dir.path().join("good.sqlite3");
    restore(&repo, &good, &RestoreTarget::Latest).unwrap();
    let good_dump = dump(&good);
    assert!(good_dump == dump_after(&s1, 1600, dir.path()));
    // What a restore may hold when it leaves out a torn last record: the state one batch before.
    let before_last = dump_after(&s1, 1599, dir.path());

    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut flips = 0;
    let kinds: Vec<PathBuf> = files(&root);
    assert!(kinds.iter().any(|p| p.to_string_lossy().contains("packs/")));
    assert!(kinds.iter().any(|p| p.to_string_lossy().ends_with(".seg")));
    assert!(kinds.iter().any(|p| p.to_string_lossy().ends_with(".log")));
    for file in kinds {
        let orig = std::fs::read(&file).unwrap();
        if orig.is_empty() {
            continue;
        }
        // The first bytes (headers) and random places.
        let mut positions = vec![0, 5, 8, 12, 20, orig.len() - 1];
        for _ in 0..6 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            positions.push((seed % orig.len() as u64) as usize);
        }
        for pos in positions {
            let mut bad = orig.clone();
            bad[pos] ^= 1 << (pos % 8);
            std::fs::write(&file, &bad).unwrap();
            flips += 1;
            let tag = format!("{} byte {pos}", file.display());
            match Repository::open(&url, Some(key.clone())) {
                Err(e) => assert!(
                    e.is_corruption()
                        || matches!(
                            e,
                            store::Error::WrongKey { .. }
                                | store::Error::Unsupported { .. }
                                | store::Error::KeyRequired
                                | store::Error::Unbound { .. }
                                | store::Error::Invalid(_)
                        ),
                    "{tag}: {e}"
                ),
                Ok(r) => {
                    let v = verify(
                        &r,
                        &VerifyOptions {
                            read_data: true,
                            scratch_dir: dir.path().join("scratch"),
                        },
                    );
                    let detected = match &v {
                        Ok(v) => !v.ok,
                        Err(_) => true,
                    };
                    assert!(detected, "{tag}: verify did not notice");
                    let out = dir.path().join("out.sqlite3");
                    match restore(&r, &out, &RestoreTarget::Latest) {
                        Err(_) => assert!(!out.exists(), "{tag}: partial output left"),
                        Ok(rep) => {
                            let got = dump(&out);
                            match &rep.torn_tail {
                                // Only the last record may be taken for a torn write: damage
                                // anywhere before it is an error, never a shorter journal.
                                Some(t) => assert!(
                                    rep.data_version == s1[1598].data_version && got == before_last,
                                    "{tag}: restore left out more than the last record ({t}): \
                                     it reached data_version {}",
                                    rep.data_version
                                ),
                                None => assert!(
                                    got == good_dump,
                                    "{tag}: restore produced a different database without saying so"
                                ),
                            }
                            std::fs::remove_file(&out).unwrap();
                        }
                    }
                }
            }
            std::fs::write(&file, &orig).unwrap();
        }
    }
    assert!(flips > 60, "only {flips} flips");
}

#[test]
fn every_flip_detected_plaintext() {
    campaign(false);
}

#[test]
fn every_flip_detected_encrypted() {
    campaign(true);
}
