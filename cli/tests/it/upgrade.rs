//! `backup-cli upgrade`: the real format-1 repository (testdata/format1-repo.tar.zst, made by the
//! format-1 build with `backup-cli demo`: three real sessions, one snapshot, a sealed segment
//! and an open stream) upgraded by the command, then restored exactly; a second run says it is
//! already done; `--bind-plaintext` binds a format-1 plaintext repository to the key, and needs
//! one.

use std::path::{Path, PathBuf};

use crate::common::*;

/// Unpack the format-1 fixture into `dir`: `repo/`, `backup.key`, `backup.lock`.
fn unpack_format1(dir: &Path) -> (PathBuf, PathBuf) {
    let f = std::fs::File::open(testdata("format1-repo.tar.zst")).unwrap();
    let dec = zstd::stream::read::Decoder::new(f).unwrap();
    tar::Archive::new(dec).unpack(dir).unwrap();
    (dir.join("repo"), dir.join("backup.key"))
}

#[test]
fn upgrade_a_real_format1_repository_then_restore_it() {
    let tmp = tempfile::tempdir().unwrap();
    let (root, key) = unpack_format1(tmp.path());
    let u = url(&root);
    let k = p(&key);

    // --bind-plaintext without any key is a usage error, and changes nothing.
    let config_before = std::fs::read(root.join("config")).unwrap();
    run(&["upgrade", &u, "--bind-plaintext"])
        .fails(2, "--bind-plaintext binds the repository to a key");
    // On an encrypted repository there is nothing to bind.
    run(&["upgrade", &u, "--bind-plaintext", "--key-file", k]).fails(2, "is encrypted");
    assert_eq!(std::fs::read(root.join("config")).unwrap(), config_before);

    let up = run(&["upgrade", &u, "--key-file", k]).ok();
    assert!(
        up.stdout
            .contains(&format!("Upgraded {u} from format 1 to format 2: 1 journal segment(s) sealed; records are chained from segment 2.")),
        "{}",
        up.stdout
    );

    // Restore gives lightningd's real database after the three sessions.
    let out = tmp.path().join("restored.sqlite3");
    let r = run(&["restore", &u, p(&out), "--key-file", k]).ok();
    assert!(r.stdout.contains("3231"), "{}", r.stdout);
    assert_same_db(&out, &testdata("db-s3.sqlite3"));
    run(&["verify", "--read-data", &u, "--key-file", k]).ok();

    // A second run: already done.
    let again = run(&["upgrade", &u, "--key-file", k]).ok();
    assert!(
        again
            .stdout
            .contains(&format!("{u} is already at format 2: nothing to do.")),
        "{}",
        again.stdout
    );
    let j = run(&["upgrade", "--json", &u, "--key-file", k]).ok().json();
    assert_eq!(j["already"], true, "{j}");
    assert_eq!(j["format"], 2, "{j}");
}

/// A format-1 plaintext config as the format-1 build wrote it (`init --no-encryption`): header
/// (kind 1, format 1, no encryption, no key id) | repo id | body ‖ checksum over
/// header ‖ repo id ‖ name.
fn format1_plaintext_repository(root: &Path) {
    store::backend::dir::DirBackend::create(root).unwrap();
    let mut header = b"CLNB".to_vec();
    header.extend_from_slice(&[1, 1, 0, 0]);
    header.extend_from_slice(&[0; 8]);
    let mut out = header.clone();
    out.extend_from_slice(&[7u8; 16]);
    let mut aad = out.clone();
    aad.extend_from_slice(b"config");
    let body = br#"{"created":1764000000,"chunker":{"kind":"pages","pages":1},"pack_target":16777216,"zstd_level":3,"full_manifest_every":16}"#;
    out.extend_from_slice(&store::crypto::Crypto::plaintext().seal(&aad, body));
    std::fs::write(root.join("config"), out).unwrap();
}

#[test]
fn bind_plaintext_binds_a_format1_plaintext_repository_to_the_key() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("plain");
    format1_plaintext_repository(&root);
    let u = url(&root);
    let key = tmp.path().join("backup.key");
    std::fs::write(&key, store::MasterKey::generate().to_file_text()).unwrap();
    let k = p(&key);
    let other = tmp.path().join("other.key");
    std::fs::write(&other, store::MasterKey::generate().to_file_text()).unwrap();

    // Without a key it opens (the operator's plaintext choice); with a key it is refused as
    // unbound, and the message names the way out.
    run(&["info", &u]).ok();
    run(&["info", &u, "--key-file", k]).fails(4, "backup-cli upgrade --bind-plaintext");
    // A plain upgrade with the key is refused the same way (nothing is written).
    run(&["upgrade", &u, "--key-file", k]).fails(4, "--bind-plaintext");

    let up = run(&["upgrade", &u, "--bind-plaintext", "--key-file", k]).ok();
    assert!(
        up.stdout.contains("from format 1 to format 2")
            && up.stdout.contains("is now bound to key"),
        "{}",
        up.stdout
    );
    // Now the key opens it, and another key is refused.
    run(&["info", &u, "--key-file", k]).ok();
    run(&["verify", &u, "--key-file", k]).ok();
    run(&["info", &u, "--key-file", p(&other)]).fails(4, "not authenticated by your key");
    // Run again: already done.
    let again = run(&["upgrade", &u, "--bind-plaintext", "--key-file", k]).ok();
    assert!(
        again.stdout.contains("already at format 2"),
        "{}",
        again.stdout
    );
}
