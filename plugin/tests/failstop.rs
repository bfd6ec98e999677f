//! Fail-stop, through the real plugin binary: once one `db_write` was refused, every later one
//! is refused too, also one the backup could store, until lightningd restarts. lightningd itself
//! stops at the first refusal, so this acts out a caller that keeps sending (the check the
//! mutation run found untested: docs/mutants.md).

use std::path::{Path, PathBuf};

use emulator::{load_trace, Emulator, HookReply};
use serde_json::json;
use store::ops::restore::{restore, RestoreTarget};
use store::{BackupUrl, ConfigBody, Repository};

#[test]
fn after_a_refused_db_write_every_later_one_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let net = tmp.path().join("regtest");
    let repo = tmp.path().join("backup");
    std::fs::create_dir(&net).unwrap();
    Repository::init(
        &BackupUrl::File(repo.clone()),
        None,
        false,
        ConfigBody::default(),
    )
    .unwrap();
    std::fs::write(
        net.join("backup.lock"),
        json!({ "backend_url": format!("file://{}", repo.display()) }).to_string(),
    )
    .unwrap();
    let t = load_trace(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata/trace-s1.jsonl"))
        .unwrap();
    // The first three batches of the trace, one per data_version (the pragma-only ones after
    // them carry the same version).
    let mut real: Vec<_> = t.iter().collect();
    real.dedup_by_key(|b| b.data_version);
    let (a, b, c) = (real[0], real[1], real[2]);
    assert_eq!(
        (b.data_version, c.data_version),
        (a.data_version + 1, a.data_version + 2)
    );

    let plugin = PathBuf::from(env!("CARGO_BIN_EXE_cln-backup"));
    let mut emu = Emulator::spawn(&plugin, &net, &[]).unwrap();
    emu.getmanifest().unwrap();
    let first = emu.db_write(a.data_version, &a.writes).unwrap();
    assert!(first.is_continue(), "{first}\n{}", emu.stderr_text());
    // A gap: refused by the journal's own check, which leaves the writer usable.
    let gap = emu.db_write(c.data_version, &c.writes).unwrap();
    assert!(matches!(gap, HookReply::Error(_)), "{gap}");
    // The batch that would follow: the backup could store it, the plugin must not.
    let next = emu.db_write(b.data_version, &b.writes).unwrap();
    let HookReply::Error(e) = &next else {
        panic!(
            "a db_write after a refusal was answered {next}\n{}",
            emu.log_text()
        )
    };
    let msg = e["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains(&format!(
            "refusing db_write for data_version {}",
            b.data_version
        )) && msg.contains("earlier failure"),
        "{e}"
    );
    let exit = emu.close_stdin_and_wait().unwrap();
    assert!(exit.success(), "{exit:?} {}", emu.stderr_text());

    // The backup ends at the last batch answered continue.
    let r = Repository::open(&BackupUrl::File(repo), None).unwrap();
    let out = tmp.path().join("restored.sqlite3");
    let report = restore(&r, &out, &RestoreTarget::Latest).unwrap();
    assert_eq!(report.data_version, a.data_version);
}
