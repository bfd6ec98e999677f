//! Integration tests of the store, against the real lightningd traces in testdata/.
#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

mod check;
mod common;
mod corruption;
mod faults;
mod fixtures;
mod gc;
mod model;
mod mutants_dir;
mod mutants_journal;
mod mutants_restore;
mod mutants_sealing;
mod power;
mod prune;
mod restore_checks;
mod sealing;
mod segmerge;
mod upgrade;
