//! Survivors of the mutation run in the directory backend (docs/mutants.md), killed by what an
//! operator would see.

use store::backend::dir::DirBackend;
use store::backend::Backend;

/// A publish that fails for any reason but "the object is already there" is an error naming
/// the object: taking it for "already stored" would let a compaction publish a manifest whose
/// pack was never written.
#[test]
fn a_failed_publish_is_an_error_never_already_stored() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("repo");
    let b = DirBackend::create(&root).unwrap();
    assert!(b.put_if_absent("packs/first", b"pack bytes").unwrap());
    assert!(!b.put_if_absent("packs/first", b"pack bytes").unwrap());
    // The packs directory gone (removed by hand, a lost mount): the link finds no directory.
    std::fs::remove_dir_all(root.join("packs")).unwrap();
    let e = b
        .put_if_absent("packs/second", b"other bytes")
        .expect_err("a publish into a missing directory must fail");
    let msg = e.to_string();
    assert!(msg.contains("packs/second"), "{msg}");
    assert!(
        b.get("packs/second").is_err(),
        "nothing was published, and nothing claims it was"
    );
}
