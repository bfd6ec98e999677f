//! Format 1 to format 2: a real format-1 repository (made by the format-1 build, commit 4cb4d3d,
//! with `backup-cli demo`: the three real sessions, one snapshot, a sealed segment and an open
//! stream) is read as it is, refused for writing until upgraded, upgraded in place, and then
//! restores exactly, verifies, takes new batches, and is never downgraded again.

use std::path::{Path, PathBuf};

use store::ops::restore::{restore, RestoreTarget};
use store::ops::upgrade::upgrade;
use store::ops::verify::{verify, VerifyOptions};
use store::{BackupUrl, Batch, Durability, MasterKey, Repository};

use crate::common::*;

/// Unpack testdata/format1-repo.tar.zst into `dir`: `repo/`, `backup.key`, `backup.lock`.
fn unpack(dir: &Path) -> (PathBuf, MasterKey) {
    let f = std::fs::File::open(testdata("format1-repo.tar.zst")).unwrap();
    let dec = zstd::stream::read::Decoder::new(f).unwrap();
    tar::Archive::new(dec).unpack(dir).unwrap();
    let text = std::fs::read_to_string(dir.join("backup.key")).unwrap();
    (
        dir.join("repo"),
        MasterKey::from_file_text(&text, "backup.key").unwrap(),
    )
}

fn check_newest(repo: &Repository, dir: &Path, tag: &str) {
    let out = dir.join(format!("{tag}.sqlite3"));
    let r = restore(repo, &out, &RestoreTarget::Latest).unwrap();
    assert_eq!(r.data_version, 3231, "{tag}");
    assert_eq!(dump(&out), dump(&testdata("db-s3.sqlite3")), "{tag}");
}

#[test]
fn a_format1_repository_is_read_upgraded_and_written() {
    let tmp = tempfile::tempdir().unwrap();
    let (root, key) = unpack(tmp.path());
    let url = BackupUrl::File(root.clone());
    let v1 = Repository::open(&url, Some(key.clone())).unwrap();
    assert_eq!(v1.format(), 1);
    // Readers read it as it is.
    check_newest(&v1, tmp.path(), "v1");
    // Writers refuse it until it is upgraded (the plugin upgrades it itself).
    let e = v1.writer("w", Durability::Flush).err().unwrap();
    assert!(matches!(e, store::Error::NeedsUpgrade { .. }), "{e}");

    let (v2, rep) = upgrade(&v1, "test", None).unwrap();
    assert!(!rep.already);
    assert_eq!(rep.from_format, 1);
    assert_eq!(rep.sealed_streams, 1, "the open format-1 stream is sealed");
    assert_eq!(v2.format(), 2);
    assert_eq!(rep.chain_from, 2);
    check_newest(&v2, tmp.path(), "v2");
    let v = verify(
        &v2,
        &VerifyOptions {
            read_data: true,
            scratch_dir: tmp.path().join("scratch"),
        },
    )
    .unwrap();
    assert!(v.ok, "{v:?}");
    assert_eq!(v.restored_version, Some(3231));

    // Upgrading again does nothing; the handle re-opened sees format 2.
    let again = Repository::open(&url, Some(key.clone())).unwrap();
    assert_eq!(again.format(), 2);
    assert!(upgrade(&again, "test", None).unwrap().1.already);

    // New batches go into the first chained segment, linked to the format-1 one before it.
    let mut w = again.writer("w", Durability::Fsync).unwrap();
    assert_eq!(w.last_version(), Some(3231));
    assert_eq!(w.segment(), 2);
    w.append(&Batch {
        data_version: 3232,
        writes: vec![
            "UPDATE vars SET intval = intval + 1 WHERE name = 'data_version' AND intval = 3231"
                .into(),
        ],
    })
    .unwrap();
    drop(w);
    let out = tmp.path().join("after.sqlite3");
    let r = restore(&again, &out, &RestoreTarget::Latest).unwrap();
    assert_eq!(r.data_version, 3232);
    assert!(r.newest_time_ms > 0, "format-2 records carry their time");

    // The old format-1 config put back (a rollback to before the upgrade) is refused by a node
    // that pinned format 2.
    let pin = again.identity();
    assert_eq!(pin.format, 2);
    let tmp2 = tempfile::tempdir().unwrap();
    let (old_root, _) = unpack(tmp2.path());
    std::fs::copy(old_root.join("config"), root.join("config")).unwrap();
    let rolled = Repository::open(&url, Some(key)).unwrap();
    let e = rolled.check_identity(&pin).err().unwrap();
    assert!(e.to_string().contains("format 1"), "{e}");
}

/// A format-1 repository whose newest stream has no record yet (a format-1 compaction had just
/// begun it) is refused for writing too: a link and batches written into a stream whose header
/// says format 1 would be unreadable, every acknowledged batch with them.
#[test]
fn a_format1_repository_with_an_empty_newest_stream_is_refused_for_writing() {
    let tmp = tempfile::tempdir().unwrap();
    let (root, key) = unpack(tmp.path());
    let url = BackupUrl::File(root.clone());
    let v1 = Repository::open(&url, Some(key)).unwrap();
    // The newest stream's header, for the number after it: what a format-1 rotation wrote.
    let newest = store::journal::reader::segments(&v1)
        .unwrap()
        .last()
        .cloned()
        .unwrap();
    assert!(!newest.sealed);
    let name = |seq: u64| root.join(format!("journal/{}.log", store::journal::stream_name(seq)));
    let mut header = std::fs::read(name(newest.seq)).unwrap();
    let len = store::journal::segment::STREAM_HEADER_LEN;
    header.truncate(len);
    header[len - 8..].copy_from_slice(&(newest.seq + 1).to_le_bytes());
    std::fs::write(name(newest.seq + 1), &header).unwrap();
    let segs = store::journal::reader::segments(&v1).unwrap();
    assert_eq!(segs.last().map(|s| s.seq), Some(newest.seq + 1));

    let e = v1.writer("w", Durability::Fsync).err().unwrap();
    assert!(matches!(e, store::Error::NeedsUpgrade { .. }), "{e}");
    // Readers still read it as it is.
    check_newest(&v1, tmp.path(), "v1");
}

/// A crash between sealing the format-1 streams and publishing the format-2 config: the
/// repository still reads as format 1, and the next upgrade carries on.
#[test]
fn an_upgrade_cut_before_its_config_carries_on() {
    let tmp = tempfile::tempdir().unwrap();
    let (root, key) = unpack(tmp.path());
    let url = BackupUrl::File(root.clone());
    let v1 = Repository::open(&url, Some(key.clone())).unwrap();
    let config = std::fs::read(root.join("config")).unwrap();
    upgrade(&v1, "test", None).unwrap();
    // Put the format-1 config back: what a crash before step 3 leaves.
    std::fs::write(root.join("config"), &config).unwrap();
    let half = Repository::open(&url, Some(key.clone())).unwrap();
    assert_eq!(half.format(), 1);
    check_newest(&half, tmp.path(), "half");
    let (v2, rep) = upgrade(&half, "test", None).unwrap();
    assert_eq!((v2.format(), rep.sealed_streams, rep.chain_from), (2, 0, 2));
    check_newest(&v2, tmp.path(), "done");
}

/// Format-1 objects carry no repository id, so a snapshot of one node's old format-1 repository
/// (its manifest, packs and index) could be copied into a format-2 repository the node made
/// later with the same key, by whoever holds the storage. A repository created at format 2
/// accepts no format-1 object: the restore is refused naming the object, never the old state
/// (3115) returned. (Its journal copied in too is refused by other checks: the open stream's
/// header names another repository, a sealed segment without its follower is a rollback.)
#[test]
fn format1_objects_of_the_same_key_put_into_a_format2_repository_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let (old, key) = unpack(tmp.path());
    let root = tmp.path().join("new");
    let url = BackupUrl::File(root.clone());
    Repository::init(&url, Some(&key), true, store::ConfigBody::default()).unwrap();
    for dir in ["snapshots", "packs", "index"] {
        for e in std::fs::read_dir(old.join(dir)).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), root.join(dir).join(e.file_name())).unwrap();
        }
    }
    let repo = Repository::open(&url, Some(key)).unwrap();
    assert_eq!(repo.format(), 2);
    let out = tmp.path().join("out.sqlite3");
    match restore(&repo, &out, &RestoreTarget::Latest) {
        Ok(r) => panic!("restored the old repository's state {}", r.data_version),
        Err(e) => {
            let m = e.to_string();
            assert!(e.is_corruption(), "{m}");
            assert!(
                m.contains("a format-1 object in a repository created at format 2"),
                "{m}"
            );
        }
    }
    assert!(!out.exists(), "nothing restored");
}

/// Format-1 batch `version` (type 1: no time) with `writes`, framed at the end of the open
/// format-1 stream `seq` of the repository at `root`, as the format-1 plugin appended it.
fn append_format1(root: &Path, key: &MasterKey, seq: u64, version: u32, writes: &[&str]) {
    use store::journal::segment::{encode_frame, parse_stream, Recovery, STREAM_HEADER_LEN};
    let repo = Repository::open(&BackupUrl::File(root.to_path_buf()), Some(key.clone())).unwrap();
    let name = store::journal::stream_name(seq);
    let path = root.join(format!("journal/{name}.log"));
    let mut data = std::fs::read(&path).unwrap();
    let p = parse_stream(
        &data,
        repo.crypto(),
        repo.repo_id(),
        seq,
        &name,
        Recovery::Strict,
    )
    .unwrap();
    let mut rec = vec![1u8, 0];
    rec.extend_from_slice(&version.to_le_bytes());
    rec.extend_from_slice(&(writes.len() as u32).to_le_bytes());
    for w in writes {
        rec.extend_from_slice(&(w.len() as u32).to_le_bytes());
        rec.extend_from_slice(w.as_bytes());
    }
    let header = data[..STREAM_HEADER_LEN].to_vec();
    let at = p.valid_len;
    let frame = encode_frame(repo.crypto(), &header, seq, at, &p.chain, &rec);
    data.truncate(at as usize);
    data.extend_from_slice(&frame);
    std::fs::write(&path, &data).unwrap();
    let again = parse_stream(
        &data,
        repo.crypto(),
        repo.repo_id(),
        seq,
        &name,
        Recovery::Strict,
    );
    assert_eq!(again.unwrap().frames, p.frames + 1, "the frame reads back");
}

/// The format-1 stream an upgrade seals keeps its chain (the tag of its last frame), and the
/// first format-2 segment's link is checked against it. Here two copies of one format-1
/// repository (a fork: the same key, each written on by a format-1 plugin) took one more batch
/// each, of the same version, with different statements, and were upgraded. Swapping the sealed
/// format-1 segment of the node's repository for the fork's (as many frames, the same newest
/// version) is refused by the chain: never the fork's batch restored as the node's.
#[test]
fn an_upgraded_segment_swapped_for_a_forks_is_refused_by_its_chain() {
    let tmp = tempfile::tempdir().unwrap();
    let (root, key) = unpack(&tmp.path().join("node"));
    let (fork, _) = unpack(&tmp.path().join("fork"));
    let bump = "UPDATE vars SET intval = intval + 1 WHERE name = 'data_version' AND intval = 3231";
    append_format1(&root, &key, 1, 3232, &[bump]);
    let forged = "UPDATE vars SET val = 'forged' WHERE name = 'bip32_max_index'";
    append_format1(&fork, &key, 1, 3232, &[forged, bump]);
    let mut sealed = Vec::new();
    for r in [&root, &fork] {
        let v1 = Repository::open(&BackupUrl::File(r.clone()), Some(key.clone())).unwrap();
        let (_, rep) = upgrade(&v1, "test", None).unwrap();
        assert_eq!(rep.sealed_streams, 1);
        let seg = store::journal::reader::segments(&v1).unwrap();
        let one = seg.iter().find(|s| s.seq == 1).unwrap().clone();
        assert!(one.sealed);
        sealed.push(
            std::fs::read(r.join(format!("journal/{}.seg", store::journal::stream_name(1))))
                .unwrap(),
        );
    }
    assert_ne!(sealed[0], sealed[1]);
    let url = BackupUrl::File(root.clone());
    let repo = Repository::open(&url, Some(key.clone())).unwrap();
    let mut w = repo.writer("w", Durability::Fsync).unwrap();
    assert_eq!((w.segment(), w.last_version()), (2, Some(3232)));
    w.append(&Batch {
        data_version: 3233,
        writes: vec![bump.replace("3231", "3232")],
    })
    .unwrap();
    drop(w);
    let out = tmp.path().join("node.sqlite3");
    assert_eq!(
        restore(&repo, &out, &RestoreTarget::Latest)
            .unwrap()
            .data_version,
        3233
    );
    let name = root.join(format!("journal/{}.seg", store::journal::stream_name(1)));
    std::fs::write(&name, &sealed[1]).unwrap();
    let out = tmp.path().join("swapped.sqlite3");
    match restore(&repo, &out, &RestoreTarget::Latest) {
        Ok(r) => panic!(
            "restored the fork's segment as the node's, at {}",
            r.data_version
        ),
        Err(e) => {
            let m = e.to_string();
            assert!(e.is_corruption(), "{m}");
            assert!(m.contains("does not follow the segment before it"), "{m}");
        }
    }
}
