//! What encryption promises, checked from outside: a fresh nonce for every seal (two
//! repositories of one key holding the same batches and pages share no ciphertext), chunk
//! addresses keyed in encrypted repositories (no confirmation of a guessed page), and a journal
//! record bound to its place (moved within its stream, it fails authentication, whatever
//! checks around it were recomputed).

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use store::ops::restore::{restore, RestoreTarget};
use store::{BackupUrl, ConfigBody, Durability, MasterKey, Repository};

use crate::common::*;

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(files(&p));
        } else {
            out.push(p);
        }
    }
    out.sort();
    out
}

/// A repository made with `key` from the first 600 batches of trace s1, with a snapshot after
/// 400 of them (so it has journal streams, sealed segments, packs, an index and a manifest).
fn made_with(key: &MasterKey, dir: &Path, encrypted: bool) -> (PathBuf, Repository) {
    let root = dir.join("repo");
    let repo = Repository::init(
        &BackupUrl::File(root.clone()),
        Some(key),
        encrypted,
        ConfigBody::default(),
    )
    .unwrap();
    let s1 = load_trace("trace-s1.jsonl");
    let w = Mutex::new(repo.writer("w", Durability::Flush).unwrap());
    append_all(&mut w.lock().unwrap(), &s1[..400]);
    store::ops::compact::compact(
        &repo,
        &w,
        &store::ops::compact::CompactOptions {
            cache_dir: dir.join("cache"),
            holder: "c".into(),
        },
    )
    .unwrap();
    append_all(&mut w.lock().unwrap(), &s1[400..600]);
    (root, repo)
}

/// The longest run of equal bytes at equal offsets of `a` and `b`, past their first `skip`.
fn longest_equal_run(a: &[u8], b: &[u8], skip: usize) -> usize {
    let (mut best, mut run) = (0, 0);
    for (x, y) in a.iter().zip(b).skip(skip) {
        run = if x == y { run + 1 } else { 0 };
        best = best.max(run);
    }
    best
}

/// A node re-initialised with the key it kept (`init --force` keeps backup.key) stores the same
/// batches and the same pages again: with a nonce reused, the ciphertexts would be equal byte
/// for byte (a keystream XOR the same plaintext), telling an observer of both repositories that
/// their content is the same, and handing over the XOR of any two plaintexts sealed under one
/// nonce. Every object of one repository is compared with every object of the other of the
/// same kind: no run of 16 equal bytes at equal offsets past the headers.
#[test]
fn no_two_seals_share_a_nonce_even_across_repositories_of_one_key() {
    let key = MasterKey::generate();
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let (ra, _) = made_with(&key, a.path(), true);
    let (rb, _) = made_with(&key, b.path(), true);
    let fa = files(&ra);
    let fb = files(&rb);
    let kind = |root: &Path, p: &Path| {
        p.strip_prefix(root)
            .unwrap()
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default()
    };
    let mut compared = 0;
    for x in &fa {
        let dx = std::fs::read(x).unwrap();
        for y in fb.iter().filter(|y| kind(&rb, y) == kind(&ra, x)) {
            if kind(&ra, x).as_os_str() == "locks" {
                continue;
            }
            let dy = std::fs::read(y).unwrap();
            // Headers (envelope, repository and object ids, frame lengths) may be equal.
            let run = longest_equal_run(&dx, &dy, 48);
            assert!(
                run < 16,
                "{} and {} share {run} bytes of ciphertext at one offset: a nonce was reused",
                x.display(),
                y.display()
            );
            compared += 1;
        }
    }
    assert!(compared >= 5, "compared only {compared} pairs");
    // The same key holds the same journal: open streams and packs of the two are the same
    // length. (Not the sealed segments: format 2 records carry the time they were stored, and
    // a sealed segment is compressed, so its length follows the clock.)
    let lens = |f: &[PathBuf], dir: &str| -> Vec<u64> {
        let mut v: Vec<u64> = f
            .iter()
            .filter(|p| p.to_string_lossy().contains(dir) && !p.to_string_lossy().ends_with(".seg"))
            .map(|p| std::fs::metadata(p).unwrap().len())
            .collect();
        v.sort();
        v
    };
    assert_eq!(lens(&fa, "/journal/"), lens(&fb, "/journal/"));
    assert_eq!(lens(&fa, "/packs/"), lens(&fb, "/packs/"));
}

/// Chunk addresses are blake3 keyed with the `chunk id` subkey in an encrypted repository
/// (docs/format.md, "Keys"), plain blake3 in a plaintext one: whoever reads the addresses of an
/// encrypted repository cannot confirm a guess of a page's content.
#[test]
fn chunk_addresses_are_keyed_in_encrypted_repositories() {
    for encrypted in [true, false] {
        let key = MasterKey::generate();
        let dir = tempfile::tempdir().unwrap();
        let (_, repo) = made_with(&key, dir.path(), encrypted);
        let m = store::manifest::latest(&repo).unwrap().unwrap();
        let refs = store::manifest::resolve(&repo, &m).unwrap();
        let snap = dir.path().join("snap.sqlite3");
        restore(&repo, &snap, &RestoreTarget::Snapshot(m.id.to_string())).unwrap();
        let db = std::fs::read(&snap).unwrap();
        let id_key = blake3::derive_key("cln-backup 2026-11 chunk id", key.as_bytes());
        assert_eq!(refs.len(), db.len() / 4096);
        for (page, (id, len)) in db.chunks(4096).zip(&refs) {
            assert_eq!(*len, 4096);
            let want = match encrypted {
                true => blake3::keyed_hash(&id_key, page),
                false => blake3::hash(page),
            };
            assert_eq!(id.0, *want.as_bytes(), "encrypted {encrypted}");
            if encrypted {
                assert_ne!(id.0, *blake3::hash(page).as_bytes());
            }
        }
    }
}

/// `u32 len | u32 check | sealed record` frames of a stream, from the offset after its header.
fn frames(data: &[u8]) -> Vec<(usize, Vec<u8>)> {
    let mut out = Vec::new();
    let mut pos = 40;
    while pos + 8 <= data.len() {
        let len = u32::from_le_bytes(data[pos..pos + 4].try_into().unwrap()) as usize;
        if len == 0 {
            break;
        }
        out.push((pos, data[pos + 8..pos + 8 + len].to_vec()));
        pos += 8 + len;
    }
    out
}

/// The frame check of docs/format.md: first 4 bytes of blake3(u64 seq | u64 offset | u32 len).
fn frame(seq: u64, offset: usize, sealed: &[u8]) -> Vec<u8> {
    let mut h = blake3::Hasher::new();
    h.update(&seq.to_le_bytes());
    h.update(&(offset as u64).to_le_bytes());
    h.update(&(sealed.len() as u32).to_le_bytes());
    let mut out = (sealed.len() as u32).to_le_bytes().to_vec();
    out.extend_from_slice(&h.finalize().as_bytes()[..4]);
    out.extend_from_slice(sealed);
    out
}

/// Two records swapped in the middle of a stream, their lengths and checks rewritten for their
/// new offsets (anyone can compute those): each now sits where it was not sealed, so it fails
/// its seal, and since valid records follow, restore and the writer report the segment corrupt
/// at that offset. Bound only by their own content, they would replay out of order.
#[test]
fn a_record_moved_within_its_stream_fails_authentication() {
    for encrypted in [true, false] {
        let key = MasterKey::generate();
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("repo");
        let repo = Repository::init(
            &BackupUrl::File(root.clone()),
            Some(&key),
            encrypted,
            ConfigBody::default(),
        )
        .unwrap();
        let s1 = load_trace("trace-s1.jsonl");
        let mut w = repo.writer("w", Durability::Flush).unwrap();
        append_all(&mut w, &s1[..60]);
        drop(w);
        let seg = root.join("journal/0000000000000000.log");
        let data = std::fs::read(&seg).unwrap();
        let f = frames(&data);
        // Format 2: the segment's link (what it follows), then the 60 records.
        assert_eq!(f.len(), 61);
        let (at, first) = &f[30];
        let (_, second) = &f[31];
        let mut moved = data[..*at].to_vec();
        moved.extend(frame(0, moved.len(), second));
        moved.extend(frame(0, moved.len(), first));
        moved.extend_from_slice(&data[moved.len()..]);
        assert_eq!(moved.len(), data.len());
        std::fs::write(&seg, &moved).unwrap();

        let out = dir.path().join("out.sqlite3");
        let err = restore(&repo, &out, &RestoreTarget::Latest).unwrap_err();
        let msg = err.to_string();
        let seal = match encrypted {
            true => "failed authentication",
            false => "checksum mismatch",
        };
        assert!(
            err.is_corruption()
                && msg.contains("0000000000000000")
                && msg.contains(&format!("offset {at}"))
                && msg.contains(seal),
            "encrypted {encrypted}: {msg}"
        );
        assert!(!out.exists());
        let err = repo.writer("w", Durability::Flush).err().unwrap();
        assert!(err.to_string().contains(seal), "{err}");
    }
}

/// The one snapshot of `root`, by path.
fn only_snapshot(root: &Path) -> PathBuf {
    let s = files(&root.join("snapshots"));
    assert_eq!(s.len(), 1, "{s:?}");
    s[0].clone()
}

/// Another node's object (sealed with its key: another repository on the same server or
/// bucket, encrypted or not) put in place of this repository's is refused as put there from
/// elsewhere, naming it: not taken for a wrong key, or a missing one, given by the operator.
#[test]
fn an_object_sealed_with_another_key_is_refused_as_put_there_from_elsewhere() {
    for (mine_encrypted, theirs_encrypted, why) in [
        (true, true, "not this repository's key"),
        (true, false, "a plaintext object in an encrypted repository"),
        (false, true, "an encrypted object in a plaintext repository"),
    ] {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let (ra, repo) = made_with(&MasterKey::generate(), a.path(), mine_encrypted);
        let (rb, _) = made_with(&MasterKey::generate(), b.path(), theirs_encrypted);
        let mine = only_snapshot(&ra);
        let theirs = only_snapshot(&rb);
        std::fs::remove_file(&mine).unwrap();
        let planted = ra.join("snapshots").join(theirs.file_name().unwrap());
        std::fs::copy(&theirs, &planted).unwrap();
        let name = format!(
            "snapshots/{}",
            theirs.file_name().unwrap().to_str().unwrap()
        );
        let e = restore(&repo, &a.path().join("out.sqlite3"), &RestoreTarget::Latest).unwrap_err();
        assert!(e.is_corruption(), "{e}");
        let m = e.to_string();
        assert!(
            m.contains(&name) && m.contains(why) && m.contains("put there from elsewhere"),
            "{m}"
        );
    }
}

/// An object of a format newer than this build (or the impossible format 0) is refused as
/// unsupported, naming the object and the format, so the operator upgrades: not as damage.
#[test]
fn an_object_of_an_unknown_format_is_refused_as_unsupported() {
    for encrypted in [true, false] {
        let a = tempfile::tempdir().unwrap();
        let (ra, repo) = made_with(&MasterKey::generate(), a.path(), encrypted);
        let snap = only_snapshot(&ra);
        let good = std::fs::read(&snap).unwrap();
        for format in [0u8, 3, 255] {
            let mut bytes = good.clone();
            bytes[5] = format; // magic (4), kind (1), format (1)
            std::fs::write(&snap, &bytes).unwrap();
            let e =
                restore(&repo, &a.path().join("out.sqlite3"), &RestoreTarget::Latest).unwrap_err();
            match e {
                store::Error::Unsupported {
                    ref object, found, ..
                } => {
                    assert!(object.starts_with("snapshots/"), "{e}");
                    assert_eq!(found, u32::from(format), "{e}");
                }
                other => panic!("format {format} (encrypted {encrypted}): {other}"),
            }
        }
        std::fs::write(&snap, &good).unwrap();
        restore(&repo, &a.path().join("out.sqlite3"), &RestoreTarget::Latest).unwrap();
    }
}
