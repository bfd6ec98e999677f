//! Content addresses and object ids, as newtypes with hex display and checked parsing.

use std::fmt;

use crate::error::{Error, Result};

macro_rules! hex_id {
    ($name:ident, $len:expr, $doc:expr) => {
        #[doc = $doc]
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub [u8; $len]);

        impl $name {
            pub const LEN: usize = $len;

            pub fn parse(s: &str) -> Result<Self> {
                let mut out = [0u8; $len];
                hex::decode_to_slice(s, &mut out).map_err(|_| {
                    Error::Invalid(format!(
                        "'{s}' is not a valid {} ({} hex digits)",
                        stringify!($name),
                        $len * 2
                    ))
                })?;
                Ok($name(out))
            }

            pub fn random() -> Self {
                let mut out = [0u8; $len];
                crate::crypto::fill_random(&mut out);
                $name(out)
            }

            pub fn hex(&self) -> String {
                hex::encode(self.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&hex::encode(self.0))
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self)
            }
        }
    };
}

hex_id!(
    ChunkId,
    32,
    "Address of a chunk: blake3 of its plaintext, keyed in encrypted repositories."
);
hex_id!(
    SnapshotId,
    8,
    "Random id of a snapshot; its manifest is `snapshots/<id>`."
);
hex_id!(PackId, 16, "Random id of a pack file `packs/<id>`.");
hex_id!(RepoId, 16, "Random id of a repository, fixed at init.");
hex_id!(
    KeyId,
    8,
    "Public fingerprint of a repository key (derived, reveals nothing of the key)."
);
