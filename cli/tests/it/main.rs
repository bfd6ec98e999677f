//! Integration tests of `backup-cli`: every command run as the built binary, on real files,
//! with databases compared against lightningd's real ones (testdata/db-s*.sqlite3).

mod common;
mod demo;
mod import;
mod init;
mod keys;
mod maintenance;
mod prune_killed;
mod restore;
mod server;
