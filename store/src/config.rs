//! The repository config object (`config`): what a reader needs before anything else.
//!
//! ```text
//! format 1: header (16, kind Config) | repo id (16) | sealed(JSON ConfigBody)
//! format 2: header (16, kind Config) | repo id (16) | u32 sealed length | sealed(JSON ConfigBody)
//!           | u8 binding (0 none, 1 key) | [binding 1: keyed blake3 (32) of everything before it]
//! ```
//! The repository id sits outside the seal so tools can name a repository without its key; the
//! encryption algorithm and key id are in the header, so a wrong or missing key is reported as
//! such before any decryption is tried. Everything else is sealed.
//!
//! **Trust only the key.** An encrypted config is authenticated by its seal. A plaintext one is
//! only checksummed, so anyone who can write the storage could put a plaintext repository where
//! an encrypted one was (a downgrade): a format-2 plaintext config made by someone holding a key
//! carries a binding under that key, and a reader that holds a key refuses a plaintext config
//! without a valid binding ([`Error::Unbound`]).

use serde::{Deserialize, Serialize};

use crate::codec::Dec;
use crate::crypto::{Crypto, Encryption};
use crate::envelope::{self, Header, Kind, HEADER_LEN};
use crate::error::{Error, Result};
use crate::ids::RepoId;

pub const CONFIG_NAME: &str = "config";

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ChunkerParams {
    /// `pages` database pages per chunk; the page size is read from each database's header.
    Pages { pages: u32 },
    /// FastCDC (v2020) with these sizes in bytes.
    FastCdc { min: u32, avg: u32, max: u32 },
}

impl Default for ChunkerParams {
    fn default() -> Self {
        ChunkerParams::Pages { pages: 1 }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ConfigBody {
    pub created: u64,
    pub chunker: ChunkerParams,
    /// Target size of a pack file in bytes.
    pub pack_target: u64,
    /// zstd level for chunks (sealed journal segments use [`SEGMENT_ZSTD_LEVEL`]).
    pub zstd_level: i32,
    /// A full (non-delta) manifest at least every this many snapshots.
    pub full_manifest_every: u32,
    /// The repository's format: 1 for repositories created before format 2 (the field is
    /// absent there), 2 since. Also in the config's header; here it is under the seal.
    #[serde(default = "format_one")]
    pub format: u8,
    /// Whether objects are encrypted (also in every header; here it is under the seal).
    #[serde(default)]
    pub encrypted: bool,
    /// The first journal segment whose records are chained (format 2); 0 for a repository
    /// created at format 2, the first segment after the upgrade for one upgraded from format 1.
    #[serde(default)]
    pub chain_from: u64,
    /// Unix time of the upgrade from format 1, if there was one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upgraded: Option<u64>,
}

fn format_one() -> u8 {
    1
}

/// zstd level of sealed journal segments: text-like SQL that compresses well and is written once
/// per compaction in the background.
pub const SEGMENT_ZSTD_LEVEL: i32 = 3;

impl Default for ConfigBody {
    fn default() -> Self {
        ConfigBody {
            created: now(),
            chunker: ChunkerParams::default(),
            pack_target: 16 << 20,
            // Level 1 compresses this data 1.8x faster than 3 and stores ~1% more (64 KiB groups
            // of the generated 1 GiB database: 383 vs 210 MB/s per core, ratio 1.689 vs 1.707);
            // a first snapshot is bound by compression on small machines.
            zstd_level: 1,
            full_manifest_every: 16,
            format: crate::envelope::FORMAT_VERSION,
            encrypted: false,
            chain_from: 0,
            upgraded: None,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Config {
    pub repo_id: RepoId,
    pub header: Header,
    pub body: ConfigBody,
}

/// Unix time in seconds, from [`crate::clock`] (the real clock unless a benchmark simulates one).
pub fn now() -> u64 {
    crate::clock::now()
}

/// Unix milliseconds (the time journal records carry), from [`crate::clock`].
pub fn now_ms() -> u64 {
    crate::clock::now_ms()
}

impl Config {
    /// The format the config was written at (its header's format byte).
    pub fn format(&self) -> u8 {
        self.header.format
    }

    /// Encode at format 2 (the only format written).
    pub fn encode(&self, crypto: &Crypto) -> Vec<u8> {
        let header = Header::new(Kind::Config, crypto).encode();
        let mut out = header.to_vec();
        out.extend_from_slice(&self.repo_id.0);
        let aad = envelope::object_aad(&out, self.repo_id, CONFIG_NAME);
        let body = serde_json::to_vec(&self.body).unwrap_or_default();
        let sealed = crypto.seal(&aad, &body);
        out.extend_from_slice(&(sealed.len() as u32).to_le_bytes());
        out.extend_from_slice(&sealed);
        match crypto.binding(&out) {
            Some(b) => {
                out.push(1);
                out.extend_from_slice(&b);
            }
            None => out.push(0),
        }
        out
    }

    /// Read the header only: which encryption and key the repository uses.
    pub fn peek(data: &[u8]) -> Result<(Header, RepoId)> {
        let h = Header::decode(data, CONFIG_NAME)?;
        if h.kind != Kind::Config {
            return Err(Error::corrupt(CONFIG_NAME, "not a config object"));
        }
        let id: [u8; 16] = data
            .get(HEADER_LEN..HEADER_LEN + 16)
            .and_then(|s| s.try_into().ok())
            .ok_or_else(|| Error::corrupt(CONFIG_NAME, "truncated"))?;
        Ok((h, RepoId(id)))
    }

    /// Decode and authenticate. `crypto` must be bound to the repository id the config names
    /// (see [`Crypto::for_repository`]); a reader that holds a key refuses a plaintext config
    /// that is not bound to that key.
    pub fn decode(data: &[u8], crypto: &Crypto) -> Result<Config> {
        let (header, repo_id) = Self::peek(data)?;
        envelope::check_key(&header, crypto)?;
        let public = data.get(..HEADER_LEN + 16).unwrap_or_default();
        let aad = envelope::object_aad(public, repo_id, CONFIG_NAME);
        let rest = data.get(HEADER_LEN + 16..).unwrap_or_default();
        let encrypted = header.encryption != Encryption::None;
        let (sealed, binding) = if header.format >= 2 {
            let mut d = Dec::new(rest, CONFIG_NAME);
            let n = d.u32()? as usize;
            let sealed = d.take(n)?;
            let binding = match d.u8()? {
                0 => None,
                1 => {
                    let mac: [u8; 32] = d.array()?;
                    let covered = data.get(..HEADER_LEN + 16 + 4 + n).unwrap_or_default();
                    Some((mac, covered))
                }
                b => {
                    return Err(Error::corrupt(
                        CONFIG_NAME,
                        format!("unknown binding kind {b}"),
                    ))
                }
            };
            d.end()?;
            (sealed, binding)
        } else {
            (rest, None)
        };
        // The seal first: an encrypted config is authenticated by it alone.
        let body = crypto.open(CONFIG_NAME, &aad, sealed)?;
        let bound = match (binding, crypto.binding(b"").is_some()) {
            (Some((mac, covered)), true) => {
                if crypto.binding(covered) != Some(mac) {
                    if encrypted {
                        return Err(Error::corrupt(CONFIG_NAME, "its key binding is damaged"));
                    }
                    return Err(Error::Unbound {
                        why: "its key binding does not match the key given: it was made with another key, or altered".into(),
                    });
                }
                true
            }
            // No key to check it with: the binding says nothing to this reader.
            _ => false,
        };
        if !encrypted && crypto.binding(b"").is_some() && !bound {
            return Err(Error::Unbound {
                why: if header.format >= 2 {
                    "it is not encrypted and was not created with your key".into()
                } else {
                    "it is a format-1 plaintext repository, which nothing binds to your key".into()
                },
            });
        }
        let body: ConfigBody = serde_json::from_slice(&body)
            .map_err(|e| Error::corrupt(CONFIG_NAME, format!("bad body: {e}")))?;
        if header.format >= 2
            && (body.format != header.format
                || body.encrypted != (header.encryption != Encryption::None))
        {
            return Err(Error::corrupt(
                CONFIG_NAME,
                "the sealed body disagrees with the header (format or encryption)",
            ));
        }
        Ok(Config {
            repo_id,
            header,
            body,
        })
    }
}
