use crate::common::*;
#[allow(dead_code)] fn _unused() { let _ = testdata; }
