//! Keys: the lookup order, and a wrong, truncated, damaged or missing key failing clearly.

use crate::common::*;

#[test]
fn key_lookup_and_bad_keys() {
    let n = Node::new();
    append_session(&n.repo(), 1);
    let u = n.url();
    let kf = n.key_file();

    // No key anywhere: says where to give one.
    run(&["info", &u]).fails(1, "is encrypted and no key was found");
    // --key-file, then the environment variable.
    run(&["info", "--key-file", p(&kf), &u]).ok();
    let r = spawn(
        cmd(&["info", "--json", &u])
            .env("CLN_BACKUP_KEY_FILE", &kf)
            .stdout(std::process::Stdio::piped()),
    )
    .wait_with_output()
    .unwrap();
    assert!(r.status.success());
    let j: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();
    assert_eq!(j["encrypted"], true);
    assert_eq!(j["last_version"], last_version(1));

    // A wrong key: named as such, never garbage.
    let other = n.path("other.key");
    std::fs::write(&other, store::MasterKey::generate().to_file_text()).unwrap();
    run(&["snapshots", "--key-file", p(&other), &u]).fails(1, "wrong key for this repository");
    // --key-file wins over backup.key in --lightning-dir.
    run(&[
        "info",
        "--key-file",
        p(&other),
        "--lightning-dir",
        p(&n.dir),
        &u,
    ])
    .fails(1, "wrong key");
    // A truncated key file, a file that is not a key, a missing one.
    let text = std::fs::read_to_string(&kf).unwrap();
    let trunc = n.path("trunc.key");
    std::fs::write(&trunc, &text[..40]).unwrap();
    run(&["info", "--key-file", p(&trunc), &u]).fails(1, "damaged or truncated key");
    let notkey = n.path("not.key");
    std::fs::write(&notkey, "hello").unwrap();
    run(&["info", "--key-file", p(&notkey), &u]).fails(1, "is not a cln-backup key file");
    run(&["info", "--key-file", p(&n.path("missing.key")), &u])
        .fails(1, "cannot read the key file");

    // The phrase from stdin: right, wrong, short.
    let phrase = n.key().to_phrase();
    run_with_stdin(&["info", "--key-phrase", &u], &format!("{phrase}\n")).ok();
    let wrong = store::MasterKey::generate().to_phrase();
    run_with_stdin(&["info", "--key-phrase", &u], &wrong).fails(1, "wrong key");
    let short: Vec<&str> = phrase.split(' ').take(12).collect();
    run_with_stdin(&["info", "--key-phrase", &u], &short.join(" ")).fails(1, "key phrase");
    run_with_stdin(&["info", "--key-phrase", &u], "").fails(1, "no key phrase given");
}

#[test]
fn key_export() {
    let n = Node::new();
    let j = run(&["key", "export", "--json", "--key-file", p(&n.key_file())])
        .ok()
        .json();
    assert_eq!(j["phrase"], n.key().to_phrase());
    assert_eq!(j["key_id"], n.key().id().to_string());
    // --server: only the line the server's auth file expects (name and auth key), not the key.
    let s = run(&[
        "key",
        "export",
        "--server",
        "--name",
        "n1",
        "--lightning-dir",
        p(&n.dir),
    ])
    .ok();
    let line = s.stdout.trim();
    assert_eq!(
        line,
        format!("n1 {}", store::backend::remote::auth_key_hex(&n.key()))
    );
    assert!(!line.contains(&hex_of(&n.key())));
    run(&[
        "key",
        "export",
        "--server",
        "--name",
        "../x",
        "--lightning-dir",
        p(&n.dir),
    ])
    .fails(2, "bad node name");
    run(&["key", "export"]).fails(1, "no key found");
}

fn hex_of(k: &store::MasterKey) -> String {
    k.as_bytes().iter().map(|b| format!("{b:02x}")).collect()
}
