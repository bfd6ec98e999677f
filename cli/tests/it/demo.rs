//! `demo`: the real plugin under the emulator on the bundled traces ends in PASS; a plugin that
//! does not work ends in FAIL with a non-zero exit.

use crate::common::*;

#[test]
fn demo_passes_with_the_real_plugin() {
    let plugin = std::path::Path::new(BIN).with_file_name("cln-backup");
    assert!(
        plugin.exists(),
        "{} is missing: build the plugin first (`cargo build -p cln-backup`; `cargo test --workspace` does)",
        plugin.display()
    );
    let t = tempfile::tempdir().unwrap();
    let work = t.path().join("demo");
    let r = run(&["demo", "--dir", p(&work)]).ok();
    assert!(r.stdout.trim_end().ends_with("PASS"), "{}", r.stdout);
    assert!(r.stdout.contains("identical to lightningd's own database"));
    assert_same_db(
        &work.join("restored-newest.sqlite3"),
        &testdata("db-s3.sqlite3"),
    );
    // --json: one object with the steps.
    let j = run(&["demo", "--json", "--dir", p(&t.path().join("demo2"))])
        .ok()
        .json();
    assert_eq!(j["ok"], true);
    assert!(j["steps"].as_array().unwrap().len() >= 7);
}

#[test]
fn demo_fails_loudly() {
    let t = tempfile::tempdir().unwrap();
    let r = run(&["demo", "--plugin", "/bin/false", "--dir", p(t.path())]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stdout.trim_end().ends_with("FAIL"), "{}", r.stdout);
    run(&["demo", "--plugin", p(&t.path().join("nope"))]).fails(2, "does not exist");
    std::fs::write(t.path().join("x"), "busy").unwrap();
    run(&["demo", "--plugin", "/bin/false", "--dir", p(t.path())]).fails(2, "not empty");
}
