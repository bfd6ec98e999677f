//! cln-backup's storage engine: a journal of lightningd's `db_write` batches, deduplicated
//! chunked snapshots of the database, restore, prune and verify. It knows nothing of JSON-RPC.
//!
//! Start with [`Repository`] (open, init, lock), then [`journal`] (the write path of every batch)
//! and [`ops`] (compact, restore, prune, verify, stats). All I/O goes through [`backend::Backend`].
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::indexing_slicing))]

pub mod backend;
pub mod chunker;
pub mod clock;
pub mod codec;
pub mod config;
pub mod crypto;
pub mod dump;
pub mod envelope;
pub mod error;
pub mod ids;
pub mod journal;
pub mod legacy;
pub mod lockfile;
pub mod manifest;
pub mod mem;
pub mod model;
pub mod node;
pub mod ops;
pub mod pack;
pub mod replay;
pub mod repo;
pub mod snapshot;
pub mod time;
pub mod url;
pub mod warn;

pub use backend::Durability;
pub use config::ConfigBody;
pub use crypto::MasterKey;
pub use error::{Error, Result};
pub use journal::{AppendOutcome, Batch};
pub use repo::Repository;
pub use url::BackupUrl;
