//! Integration tests of `backup-cli`: every command run as the built binary, on real files,
//! with databases compared against lightningd's real ones (testdata/db-s*.sqlite3).

mod attacks;
mod common;
mod demo;
mod import;
mod init;
mod inspect;
mod keys;
mod maintenance;
mod node;
mod nonregular;
mod prune_killed;
mod repair;
mod restore;
mod scripts;
mod server;
mod upgrade;
