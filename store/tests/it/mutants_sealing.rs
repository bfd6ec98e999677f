//! Survivors of the mutation run in keys and sealing (docs/mutants.md).

use store::{BackupUrl, ConfigBody, Error, MasterKey, Repository};

/// A plaintext repository made by someone holding the key is bound to it: one put in its place
/// (made without a key, or with another) is refused when the node opens it with its key, and
/// the refusal says why.
#[test]
fn a_plaintext_repository_not_made_with_your_key_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let key = MasterKey::generate();
    let url = |n: &str| BackupUrl::File(tmp.path().join(n));
    Repository::init(&url("mine"), Some(&key), false, ConfigBody::default()).unwrap();
    Repository::init(&url("unbound"), None, false, ConfigBody::default()).unwrap();
    let other = MasterKey::generate();
    Repository::init(&url("other"), Some(&other), false, ConfigBody::default()).unwrap();

    Repository::open(&url("mine"), Some(key.clone())).unwrap();
    for (name, why) in [
        ("unbound", "not created with your key"),
        ("other", "does not match the key given"),
    ] {
        match Repository::open(&url(name), Some(key.clone())) {
            Err(e @ Error::Unbound { .. }) => assert!(e.to_string().contains(why), "{name}: {e}"),
            Err(e) => panic!("{name}: refused for another reason: {e}"),
            Ok(_) => panic!("{name}: a plaintext repository not bound to the key was opened"),
        }
    }
}
