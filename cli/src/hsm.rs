//! The node id that an `hsm_secret` derives, so a restore can refuse a database of another node.
//!
//! `lightning-hsmtool getnodeid FILE` answers when it is installed (lightningd's own tool).
//! Otherwise backup-cli derives it as lightningd v26.06's hsmd does (`hsmd/libhsmd.c`
//! `node_key`, `common/hsm_secret.c`), checked against real pairs in `testdata/channels/`:
//!
//! - the file: 32 bytes (a legacy plain seed); or 32 zero bytes then BIP39 mnemonic words (the
//!   v26.06 format without a passphrase; a non-zero first half means a passphrase protects it);
//!   or 73 bytes (legacy, encrypted with a passphrase). The last two need the passphrase, which
//!   backup-cli never asks for: it says to use `lightning-hsmtool` or `--node-id`.
//! - the seed: the 32 bytes, or BIP39's 64-byte seed of the words with an empty passphrase;
//! - the node key: HKDF-SHA256(salt = u32 counter (0, 1, ...) as 4 little-endian bytes,
//!   ikm = the seed's first 32 bytes, info = "nodeid"), 32 bytes, the first that is a valid
//!   secp256k1 secret key; the node id is its public key, compressed (33 bytes, 66 hex digits).
//!
//! Hand-written around well-kept crates (bip39, hkdf, sha2, k256): the derivation is eight lines
//! and no crate offers lightningd's.

use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};
use zeroize::Zeroizing;

pub const HSM_SECRET: &str = "hsm_secret";
pub const HSMTOOL: &str = "lightning-hsmtool";

/// An id and how it was found, for messages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DerivedId {
    pub node_id: String,
    /// "lightning-hsmtool getnodeid" or "derived by backup-cli".
    pub how: String,
}

/// The seed inside an `hsm_secret` file, where it needs no passphrase.
fn seed(data: &[u8], path: &Path) -> Result<Zeroizing<Vec<u8>>> {
    const ENCRYPTED_LEN: usize = 73;
    match data.len() {
        0..=31 => bail!(
            "{} is not an hsm_secret ({} bytes; a real one has 32 or more)",
            path.display(),
            data.len()
        ),
        32 => Ok(Zeroizing::new(data.to_vec())),
        ENCRYPTED_LEN => bail!(
            "{} is encrypted with a passphrase (legacy format), which backup-cli does not ask \
             for: install lightningd's `{HSMTOOL}`, or give --node-id with what \
             `{HSMTOOL} getnodeid {}` prints",
            path.display(),
            path.display()
        ),
        _ => {
            let (hash, words) = data.split_at(32);
            if hash.iter().any(|b| *b != 0) {
                bail!(
                    "{} is protected by a BIP39 passphrase, which backup-cli does not ask for: \
                     install lightningd's `{HSMTOOL}`, or give --node-id with what \
                     `{HSMTOOL} getnodeid {}` prints",
                    path.display(),
                    path.display()
                );
            }
            let words = std::str::from_utf8(words)
                .ok()
                .map(|w| {
                    Zeroizing::new(
                        w.trim_matches(|c: char| c.is_whitespace() || c == '\0')
                            .to_string(),
                    )
                })
                .with_context(|| format!("{}: the mnemonic is not text", path.display()))?;
            let m = bip39::Mnemonic::parse_in_normalized(bip39::Language::English, &words)
                .map_err(|e| {
                    anyhow::anyhow!("{}: not a valid BIP39 mnemonic ({e})", path.display())
                })?;
            Ok(Zeroizing::new(m.to_seed("").to_vec()))
        }
    }
}

/// The node id of a seed, as hsmd's `node_key` derives it.
pub fn node_id_of_seed(seed: &[u8]) -> Result<String> {
    let ikm = seed.get(..32).context("a seed has at least 32 bytes")?;
    for salt in 0u32..1000 {
        let mut key = Zeroizing::new([0u8; 32]);
        hkdf::Hkdf::<sha2::Sha256>::new(Some(&salt.to_le_bytes()), ikm)
            .expand(b"nodeid", key.as_mut())
            .map_err(|e| anyhow::anyhow!("hkdf: {e}"))?;
        // About 1 in 2^127 values is not a valid key: hsmd tries the next salt.
        if let Ok(sk) = k256::SecretKey::from_slice(key.as_ref()) {
            use k256::elliptic_curve::sec1::ToEncodedPoint;
            let compressed = sk.public_key().to_encoded_point(true);
            return Ok(hex::encode(compressed.as_bytes()));
        }
    }
    bail!("no valid node key derived from this seed")
}

/// Derive the node id of the `hsm_secret` at `path` ourselves.
pub fn derive(path: &Path) -> Result<String> {
    let data =
        Zeroizing::new(std::fs::read(path).with_context(|| format!("reading {}", path.display()))?);
    node_id_of_seed(&seed(&data, path)?)
}

/// `lightning-hsmtool getnodeid FILE`, if the tool is on PATH: `None` when it is not.
pub fn hsmtool_node_id(path: &Path) -> Result<Option<String>> {
    let out = match Command::new(HSMTOOL)
        .arg("getnodeid")
        .arg(path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
    {
        Ok(o) => o,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("running {HSMTOOL}")),
    };
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "`{HSMTOOL} getnodeid {}` failed ({}): {}",
            path.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let id = store::node::parse_node_id(text.trim()).with_context(|| {
        format!(
            "`{HSMTOOL} getnodeid {}` printed no node id",
            path.display()
        )
    })?;
    Ok(Some(id))
}

/// The node id of the `hsm_secret` at `path`: lightningd's tool when installed, else our own
/// derivation. Where both can answer they must agree.
pub fn node_id(path: &Path) -> Result<DerivedId> {
    match hsmtool_node_id(path)? {
        Some(tool) => {
            // Our derivation too, where the file needs no passphrase: a disagreement means one
            // of the two is wrong, and a restore must not rely on either.
            if let Ok(ours) = derive(path) {
                if ours != tool {
                    bail!(
                        "{HSMTOOL} says {} derives node {tool}, backup-cli derives {ours}: \
                         refusing to decide which node this is (report this as a bug)",
                        path.display()
                    );
                }
            }
            Ok(DerivedId {
                node_id: tool,
                how: format!("{HSMTOOL} getnodeid"),
            })
        }
        None => Ok(DerivedId {
            node_id: derive(path)?,
            how: "derived by backup-cli".into(),
        }),
    }
}

#[cfg(test)]
mod test {
    use super::*;

    fn fixture(node: &str, file: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../testdata/channels")
            .join(node)
            .join(file)
    }

    /// The three real pairs from a regtest network of lightningd v26.06.6.
    #[test]
    fn derives_the_real_node_ids() {
        for n in ["node-a", "node-b", "node-c"] {
            let want = std::fs::read_to_string(fixture(n, "node_id")).unwrap();
            assert_eq!(derive(&fixture(n, HSM_SECRET)).unwrap(), want.trim(), "{n}");
        }
    }

    #[test]
    fn refuses_what_it_cannot_derive() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join(HSM_SECRET);
        let real = std::fs::read(fixture("node-a", HSM_SECRET)).unwrap();
        // A passphrase-protected mnemonic: a non-zero hash in front.
        let mut with_pass = real.clone();
        with_pass[0] = 1;
        std::fs::write(&p, &with_pass).unwrap();
        assert!(format!("{:#}", derive(&p).unwrap_err()).contains("passphrase"));
        std::fs::write(&p, [7u8; 73]).unwrap();
        assert!(format!("{:#}", derive(&p).unwrap_err()).contains("encrypted"));
        std::fs::write(&p, [7u8; 12]).unwrap();
        assert!(format!("{:#}", derive(&p).unwrap_err()).contains("not an hsm_secret"));
        // A word changed: the BIP39 checksum fails.
        let mut bad = real.clone();
        let at = bad.len() - 1;
        bad[at] = b'x';
        std::fs::write(&p, &bad).unwrap();
        assert!(format!("{:#}", derive(&p).unwrap_err()).contains("BIP39"));
        // A legacy 32-byte seed derives (a different node than the mnemonic's).
        std::fs::write(&p, [7u8; 32]).unwrap();
        let legacy = derive(&p).unwrap();
        assert_eq!(legacy.len(), 66);
        assert_ne!(legacy, derive(&fixture("node-a", HSM_SECRET)).unwrap());
    }
}
