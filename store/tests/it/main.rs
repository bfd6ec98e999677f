//! Integration tests of the store, against the real lightningd traces in testdata/.
#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

mod check;
mod common;
mod corruption;
mod faults;
mod fixtures;
mod gc;
mod model;
mod power;
mod prune;
mod restore_checks;
mod sealing;
mod upgrade;
