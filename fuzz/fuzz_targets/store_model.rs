//! The whole store against a reference model (`store::model::run`): the input chooses appends,
//! lightningd crashing before COMMIT, injected ENOSPC/EIO, crashes and torn appends, restarts,
//! compactions, prunes and restores; every restore must equal the model's database.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir().expect("a temporary directory");
    if let Err(e) = store::model::run(&data[..data.len().min(300)], dir.path()) {
        panic!("diverged from the model: {e}");
    }
});
