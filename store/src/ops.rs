//! One module per user operation.

pub mod check;
pub mod compact;
pub mod prune;
pub mod restore;
pub mod seed;
pub mod snapshots;
pub mod stats;
pub mod upgrade;
pub mod verify;
