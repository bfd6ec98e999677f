//! The services cln-backup's integration tests need, brought up by the tests themselves, so that
//! `cargo test --workspace` on a machine with only the Rust toolchain (and Python's pip, for
//! SeaweedFS's wheel) runs every test: none passes by skipping.
//!
//! - [`s3`]: SeaweedFS (`weed mini`) from its pinned wheel, on 127.0.0.1, one per test process
//!   (plus the ones a test starts and stops itself); stopped when the process exits, however it
//!   exits. A test that cannot get it fails with the command that fixes it, unless
//!   `CLN_BACKUP_NO_S3_TESTS=1` leaves the S3 tests out (they are then listed as ignored).
//! - [`socks5`]: a SOCKS5 proxy (the `fast-socks5` crate's server) in the test process.

pub mod s3;
pub mod socks5;

/// A copy of a directory tree (a repository, to damage, crash or kill a copy of it).
pub fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let t = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &t);
        } else {
            std::fs::copy(e.path(), t).unwrap();
        }
    }
}
