//! Sealed journal segments merged into runs on S3 (SeaweedFS started by `testsvc::s3`, as in
//! `s3.rs`): the merge goes through the Backend trait only, so a run is one PUT, its members
//! are DELETEs, and the journal restores and verifies as on a directory.

#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

use std::path::Path;
use std::sync::Mutex;

use store::backend::Durability;
use store::journal::parse_sealed_name;
use store::ops::compact::{compact, CompactOptions};
use store::ops::prune;
use store::ops::restore::{restore, RestoreTarget};
use store::BackupUrl;

fn sealed(repo: &store::Repository) -> Vec<(u64, u64)> {
    repo.backend()
        .list("journal/")
        .unwrap()
        .iter()
        .filter_map(|o| parse_sealed_name(&o.name))
        .collect()
}

#[test]
#[cfg_attr(
    no_s3_tests,
    ignore = "CLN_BACKUP_NO_S3_TESTS is set: not tested against S3"
)]
fn sealed_segments_merge_into_runs_on_s3() {
    let mut r = [0u8; 6];
    store::crypto::fill_random(&mut r);
    let url = testsvc::s3::server_url();
    let (bucket, prefix, params) = match BackupUrl::parse(&url).unwrap() {
        BackupUrl::S3 {
            bucket,
            prefix,
            params,
        } => (
            bucket,
            format!("{prefix}/segmerge-{}", hex::encode(r)),
            params,
        ),
        other => panic!("not an s3 URL: {other}"),
    };
    let q: Vec<String> = params.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let repo_url = BackupUrl::parse(&format!(
        "s3://{bucket}/{}?{}",
        prefix.trim_start_matches('/'),
        q.join("&")
    ))
    .unwrap();
    let key = store::MasterKey::generate();
    let repo =
        store::Repository::init(&repo_url, Some(&key), true, store::ConfigBody::default()).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let trace = store::journal::trace::load(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata/trace-s1.jsonl"),
    )
    .unwrap();
    let w = Mutex::new(repo.writer("s3 segmerge", Durability::Fsync).unwrap());
    let opts = CompactOptions {
        cache_dir: tmp.path().join("cache"),
        holder: "s3 segmerge".into(),
    };
    let mut snaps = Vec::new();
    for part in trace.chunks(150) {
        for b in part {
            w.lock().unwrap().append(b).unwrap();
        }
        snaps.extend(compact(&repo, &w, &opts).unwrap().snapshot);
    }
    drop(w);
    let before = sealed(&repo).len();
    let r = prune::collect_garbage(&repo, "s3 segmerge").unwrap();
    let after = sealed(&repo);
    eprintln!("{before} sealed segments -> {after:?}; {r:?}");
    assert!(before >= 12, "{before}");
    assert!(r.written_runs >= 1 && after.len() <= 3, "{after:?}");
    assert!(after.iter().any(|(f, l)| f < l));
    let v = store::ops::verify::verify(
        &repo,
        &store::ops::verify::VerifyOptions {
            read_data: true,
            scratch_dir: tmp.path().to_path_buf(),
        },
    )
    .unwrap();
    assert!(v.ok, "{:?}", v.problems);
    // A state inside the run, and the newest, restored by a new process.
    drop(repo);
    let repo = store::Repository::open(&repo_url, Some(key)).unwrap();
    let inside = snaps[2].data_version + 7;
    let out = tmp.path().join("v.sqlite3");
    assert_eq!(
        restore(&repo, &out, &RestoreTarget::Version(inside))
            .unwrap()
            .data_version,
        inside
    );
    let out = tmp.path().join("latest.sqlite3");
    restore(&repo, &out, &RestoreTarget::Latest).unwrap();
    assert_eq!(
        store::dump::dump(&out).unwrap(),
        store::dump::dump(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata/db-s1.sqlite3"))
            .unwrap()
    );
}
