//! Keys, subkeys, chunk addressing and object sealing.
//!
//! A repository is either plaintext or encrypted with one 32-byte repository key. Subkeys are
//! derived with `blake3::derive_key` for each purpose, so a party given one learns nothing of the
//! others:
//! - `chunk id key`: keyed blake3 for chunk addresses (stored ids reveal nothing of the content);
//! - `seal key`: XChaCha20-Poly1305 for every stored object and journal record;
//! - `auth key`: the client's identity toward a remote server (the server only sees its public half);
//! - `key id`: an 8-byte public fingerprint stored in every object header, to tell a wrong key from
//!   a damaged object.
//!
//! Sealing binds each object to its name and position through associated data, so an object moved
//! to another name, or a record moved to another offset, fails authentication.
//! In plaintext repositories the seal is a 16-byte blake3 checksum over (associated data, body).

use chacha20poly1305::aead::{Aead, AeadInPlace, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};

use crate::error::{Error, Result};
use crate::ids::{ChunkId, KeyId, RepoId};

pub const KEY_LEN: usize = 32;
/// A key file is one line of 80 bytes; a file longer than this is not a key file, and is not
/// read further (`--key-file /dev/zero` must fail at once, not read gigabytes).
pub const KEY_FILE_MAX: u64 = 4096;
const NONCE_LEN: usize = 24;
pub const TAG_LEN: usize = 16;

pub fn fill_random(buf: &mut [u8]) {
    // getrandom only fails on platforms without an entropy source; there is no safe fallback.
    getrandom::fill(buf).expect("the operating system's random source failed");
}

/// Which algorithm seals objects; stored in every object header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encryption {
    None,
    XChaCha20Poly1305,
}

impl Encryption {
    pub fn code(self) -> u8 {
        match self {
            Encryption::None => 0,
            Encryption::XChaCha20Poly1305 => 1,
        }
    }
    pub fn from_code(c: u8, object: &str) -> Result<Self> {
        match c {
            0 => Ok(Encryption::None),
            1 => Ok(Encryption::XChaCha20Poly1305),
            other => Err(Error::Unsupported {
                object: object.to_string(),
                what: "encryption algorithm",
                found: other.into(),
                supported: 1,
            }),
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Encryption::None => "none (plaintext)",
            Encryption::XChaCha20Poly1305 => "xchacha20-poly1305",
        }
    }
}

/// The 32-byte repository key. Never stored in the repository.
#[derive(Clone)]
pub struct MasterKey([u8; KEY_LEN]);

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MasterKey(id {})", self.id())
    }
}

impl MasterKey {
    pub fn generate() -> Self {
        let mut k = [0u8; KEY_LEN];
        fill_random(&mut k);
        MasterKey(k)
    }
    pub fn from_bytes(b: [u8; KEY_LEN]) -> Self {
        MasterKey(b)
    }
    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }
    pub fn id(&self) -> KeyId {
        let d = blake3::derive_key("cln-backup 2026-11 key id", &self.0);
        let mut id = [0u8; 8];
        id.copy_from_slice(d.get(..8).unwrap_or(&[0u8; 8]));
        KeyId(id)
    }
    pub fn subkey(&self, purpose: &str) -> [u8; KEY_LEN] {
        blake3::derive_key(&format!("cln-backup 2026-11 {purpose}"), &self.0)
    }
    /// 24 English words (BIP-39 wordlist) that encode the key and a checksum.
    pub fn to_phrase(&self) -> String {
        match bip39::Mnemonic::from_entropy(&self.0) {
            Ok(m) => m.to_string(),
            Err(_) => String::new(),
        }
    }
    pub fn from_phrase(phrase: &str) -> Result<Self> {
        let norm = phrase
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
            .to_lowercase();
        let m = bip39::Mnemonic::parse_normalized(&norm).map_err(|e| {
            Error::Invalid(format!(
                "that key phrase is not valid ({e}): it must be the 24 words shown at init"
            ))
        })?;
        let ent = m.to_entropy();
        let arr: [u8; KEY_LEN] = ent.as_slice().try_into().map_err(|_| {
            Error::Invalid(format!(
                "that key phrase has {} words; a repository key phrase has 24",
                norm.split(' ').count()
            ))
        })?;
        Ok(MasterKey(arr))
    }
    /// Key file text: one line `cln-backup-key:<64 hex digits>`.
    pub fn to_file_text(&self) -> String {
        format!("cln-backup-key:{}\n", hex::encode(self.0))
    }
    /// Read and parse a key file, reading at most [`KEY_FILE_MAX`] bytes of it.
    pub fn read_file(path: &std::path::Path) -> Result<Self> {
        let object = path.display().to_string();
        let text = read_small_file(path, KEY_FILE_MAX, "a cln-backup key file")
            .map_err(|e| Error::io("read", &object, e))?;
        Self::from_file_text(&text, &object)
    }
    pub fn from_file_text(text: &str, path: &str) -> Result<Self> {
        let t = text.trim();
        let hexpart = t.strip_prefix("cln-backup-key:").ok_or_else(|| {
            Error::Invalid(format!(
                "{path} is not a cln-backup key file (it must start with 'cln-backup-key:')"
            ))
        })?;
        let mut k = [0u8; KEY_LEN];
        hex::decode_to_slice(hexpart, &mut k).map_err(|_| {
            Error::Invalid(format!(
                "{path} holds a damaged or truncated key ({} hex digits, expected 64)",
                hexpart.len()
            ))
        })?;
        Ok(MasterKey(k))
    }
}

/// The text of a small file (a key, an auth key list, `backup.lock`), reading at most `limit`
/// bytes: a longer file (or a device such as `/dev/zero`) is an `InvalidData` error saying it is
/// not `what`, after reading `limit + 1` bytes.
pub fn read_small_file(path: &std::path::Path, limit: u64, what: &str) -> std::io::Result<String> {
    use std::io::Read;
    let mut bytes = Vec::new();
    std::fs::File::open(path)?
        .take(limit + 1)
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("longer than {limit} bytes: not {what}"),
        ));
    }
    String::from_utf8(bytes).map_err(|_| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("not UTF-8 text: not {what}"),
        )
    })
}

/// What a repository handle needs to address chunks and seal objects.
#[derive(Clone)]
pub struct Crypto {
    encryption: Encryption,
    key_id: KeyId,
    id_key: Option<[u8; KEY_LEN]>,
    aead: Option<XChaCha20Poly1305>,
    /// The repository whose objects this seals and opens (format 2 binds it into every seal).
    repo: RepoId,
    /// Whether format-1 objects are accepted (a repository upgraded from format 1).
    format1: bool,
    /// The key's binding subkey, when a key is known: it authenticates the config of a
    /// plaintext repository (whose seals are only checksums) to the key's holder.
    binding_key: Option<[u8; KEY_LEN]>,
}

impl std::fmt::Debug for Crypto {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Crypto({}, key {})", self.encryption.name(), self.key_id)
    }
}

impl Crypto {
    pub fn plaintext() -> Self {
        Crypto {
            encryption: Encryption::None,
            key_id: KeyId([0; 8]),
            id_key: None,
            aead: None,
            repo: RepoId([0; 16]),
            format1: true,
            binding_key: None,
        }
    }
    /// A plaintext repository whose config is bound to `key` (created with `--no-encryption`
    /// by someone holding a key, e.g. for a `socket:` destination's authentication).
    pub fn plaintext_bound(key: &MasterKey) -> Self {
        Crypto {
            binding_key: Some(key.subkey("config binding")),
            ..Self::plaintext()
        }
    }
    pub fn encrypted(key: &MasterKey) -> Self {
        let seal = key.subkey("object seal");
        Crypto {
            encryption: Encryption::XChaCha20Poly1305,
            key_id: key.id(),
            id_key: Some(key.subkey("chunk id")),
            aead: Some(XChaCha20Poly1305::new((&seal).into())),
            repo: RepoId([0; 16]),
            format1: true,
            binding_key: Some(key.subkey("config binding")),
        }
    }
    /// Bind to a repository: its id goes into every format-2 seal; `format1` says whether
    /// format-1 objects are accepted (only in a repository upgraded from format 1).
    pub fn for_repository(mut self, repo: RepoId, format1: bool) -> Self {
        self.repo = repo;
        self.format1 = format1;
        self
    }
    pub fn repo_id(&self) -> RepoId {
        self.repo
    }
    pub fn accepts_format1(&self) -> bool {
        self.format1
    }
    /// The key binding of a config: keyed blake3 of its bytes under the key's binding subkey.
    pub fn binding(&self, data: &[u8]) -> Option<[u8; 32]> {
        self.binding_key
            .as_ref()
            .map(|k| *blake3::keyed_hash(k, data).as_bytes())
    }
    pub fn encryption(&self) -> Encryption {
        self.encryption
    }
    pub fn key_id(&self) -> KeyId {
        self.key_id
    }

    pub fn chunk_id(&self, data: &[u8]) -> ChunkId {
        match &self.id_key {
            Some(k) => ChunkId(*blake3::keyed_hash(k, data).as_bytes()),
            None => ChunkId(*blake3::hash(data).as_bytes()),
        }
    }

    /// Bytes a seal adds to its plaintext.
    pub fn overhead(&self) -> usize {
        match self.encryption {
            Encryption::None => TAG_LEN,
            Encryption::XChaCha20Poly1305 => NONCE_LEN + TAG_LEN,
        }
    }

    pub fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
        let mut out = vec![0u8; plaintext.len() + self.overhead()];
        // Cannot fail: `out` has the size `seal_into` asks for, and encrypting an in-memory
        // buffer does not fail.
        match self.seal_into(aad, plaintext, &mut out) {
            Ok(()) => out,
            Err(_) => Vec::new(),
        }
    }

    /// Seal `plaintext` into `out`, which must be exactly `plaintext.len() + self.overhead()`
    /// bytes: a pack's blobs are sealed in parallel straight into the pack, without a copy each.
    /// Plaintext: body ‖ checksum; encrypted: nonce ‖ ciphertext ‖ tag.
    pub fn seal_into(&self, aad: &[u8], plaintext: &[u8], out: &mut [u8]) -> Result<()> {
        if out.len() != plaintext.len() + self.overhead() {
            return Err(Error::Invalid(format!(
                "sealing {} bytes into {} (overhead {})",
                plaintext.len(),
                out.len(),
                self.overhead()
            )));
        }
        match &self.aead {
            None => {
                let (body, tag) = out.split_at_mut(plaintext.len());
                body.copy_from_slice(plaintext);
                tag.copy_from_slice(&checksum(aad, plaintext));
            }
            Some(aead) => {
                let (nonce, rest) = out.split_at_mut(NONCE_LEN);
                let (body, tag) = rest.split_at_mut(plaintext.len());
                fill_random(nonce);
                body.copy_from_slice(plaintext);
                let t = aead
                    .encrypt_in_place_detached(XNonce::from_slice(nonce), aad, body)
                    .map_err(|_| Error::Invalid("sealing failed".into()))?;
                tag.copy_from_slice(&t);
            }
        }
        Ok(())
    }

    pub fn open(&self, object: &str, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>> {
        match &self.aead {
            None => {
                if sealed.len() < TAG_LEN {
                    return Err(Error::corrupt(object, "shorter than its checksum"));
                }
                let (body, tag) = sealed.split_at(sealed.len() - TAG_LEN);
                let got = checksum(aad, body);
                if got != tag {
                    return Err(Error::ChecksumMismatch {
                        object: object.to_string(),
                        expected: hex::encode(tag),
                        got: hex::encode(got),
                    });
                }
                Ok(body.to_vec())
            }
            Some(aead) => {
                if sealed.len() < NONCE_LEN + TAG_LEN {
                    return Err(Error::AuthenticationFailed {
                        object: object.to_string(),
                    });
                }
                let (nonce, ct) = sealed.split_at(NONCE_LEN);
                aead.decrypt(XNonce::from_slice(nonce), Payload { msg: ct, aad })
                    .map_err(|_| Error::AuthenticationFailed {
                        object: object.to_string(),
                    })
            }
        }
    }

    /// Bytes a seal puts before the body (the nonce, when encrypted).
    pub fn seal_prefix(&self) -> usize {
        match &self.aead {
            None => 0,
            Some(_) => NONCE_LEN,
        }
    }

    /// Seal in place what `buf` holds from `at + self.seal_prefix()` on: the room left at `at`
    /// is filled and the tag appended, giving the bytes [`Self::seal_into`] gives, without a
    /// second copy of a large body (an index or manifest of a big database).
    pub fn seal_in_place(&self, aad: &[u8], buf: &mut Vec<u8>, at: usize) -> Result<()> {
        let body_at = at + self.seal_prefix();
        if buf.len() < body_at {
            return Err(Error::Invalid(format!(
                "sealing in place from {body_at} of {} bytes",
                buf.len()
            )));
        }
        match &self.aead {
            None => {
                let tag = checksum(aad, buf.get(body_at..).unwrap_or_default());
                buf.extend_from_slice(&tag);
            }
            Some(aead) => {
                let (nonce, body) = buf
                    .get_mut(at..)
                    .unwrap_or_default()
                    .split_at_mut(NONCE_LEN);
                fill_random(nonce);
                let t = aead
                    .encrypt_in_place_detached(XNonce::from_slice(nonce), aad, body)
                    .map_err(|_| Error::Invalid("sealing failed".into()))?;
                buf.extend_from_slice(&t);
            }
        }
        Ok(())
    }

    /// Open in place the seal `buf[at..]` (as [`Self::open`] does); returns where the
    /// plaintext lies in `buf`.
    pub fn open_in_place(
        &self,
        object: &str,
        aad: &[u8],
        buf: &mut [u8],
        at: usize,
    ) -> Result<std::ops::Range<usize>> {
        let sealed_len = buf.len().saturating_sub(at);
        if sealed_len < self.overhead() {
            return Err(match &self.aead {
                None => Error::corrupt(object, "shorter than its checksum"),
                Some(_) => Error::AuthenticationFailed {
                    object: object.to_string(),
                },
            });
        }
        let body = at + self.seal_prefix()..buf.len() - TAG_LEN;
        match &self.aead {
            None => {
                let (rest, tag) = buf.split_at(body.end);
                let got = checksum(aad, rest.get(body.clone()).unwrap_or_default());
                if got != tag {
                    return Err(Error::ChecksumMismatch {
                        object: object.to_string(),
                        expected: hex::encode(tag),
                        got: hex::encode(got),
                    });
                }
            }
            Some(aead) => {
                let (rest, tag) = buf.split_at_mut(body.end);
                let (nonce, ct) = rest
                    .get_mut(at..)
                    .unwrap_or_default()
                    .split_at_mut(NONCE_LEN);
                aead.decrypt_in_place_detached(
                    XNonce::from_slice(nonce),
                    aad,
                    ct,
                    chacha20poly1305::Tag::from_slice(tag),
                )
                .map_err(|_| Error::AuthenticationFailed {
                    object: object.to_string(),
                })?;
            }
        }
        Ok(body)
    }
}

fn checksum(aad: &[u8], body: &[u8]) -> [u8; TAG_LEN] {
    let mut h = blake3::Hasher::new();
    h.update(&(aad.len() as u64).to_le_bytes());
    h.update(aad);
    h.update(body);
    let mut out = [0u8; TAG_LEN];
    out.copy_from_slice(
        h.finalize()
            .as_bytes()
            .get(..TAG_LEN)
            .unwrap_or(&[0u8; TAG_LEN]),
    );
    out
}

#[cfg(test)]
mod test {
    use super::*;

    /// A plaintext and an encrypted `Crypto`: every test of sealing runs on both.
    fn both() -> [Crypto; 2] {
        [
            Crypto::plaintext(),
            Crypto::encrypted(&MasterKey::generate()),
        ]
    }

    #[test]
    fn in_place_seals_are_ordinary_seals() {
        for c in both() {
            let mut buf = vec![7u8; 3 + c.seal_prefix()];
            buf.extend_from_slice(b"hello world");
            c.seal_in_place(b"aad", &mut buf, 3).unwrap();
            assert_eq!(c.open("o", b"aad", &buf[3..]).unwrap(), b"hello world");
            let mut s = vec![1u8, 2];
            s.extend_from_slice(&c.seal(b"aad", b"hello world"));
            let body = c.open_in_place("o", b"aad", &mut s, 2).unwrap();
            assert_eq!(&s[body], b"hello world");
            let mut t = s.clone();
            let at = t.len() - 1;
            t[at] ^= 1;
            assert!(c
                .open_in_place("o", b"aad", &mut t, 2)
                .unwrap_err()
                .is_corruption());
            assert!(c.open_in_place("o", b"aad", &mut [0u8; 4], 2).is_err());
        }
    }

    #[test]
    fn seal_round_trip_and_tamper() {
        for c in both() {
            let s = c.seal(b"aad", b"hello world");
            assert_eq!(c.open("o", b"aad", &s).unwrap(), b"hello world");
            let mut into = vec![0u8; s.len()];
            c.seal_into(b"aad", b"hello world", &mut into).unwrap();
            assert_eq!(c.open("o", b"aad", &into).unwrap(), b"hello world");
            if c.overhead() == TAG_LEN {
                assert_eq!(into, s, "a plaintext seal is the same bytes either way");
            }
            assert!(c.seal_into(b"aad", b"hello world", &mut into[1..]).is_err());
            assert!(c.open("o", b"other", &s).unwrap_err().is_corruption());
            let mut t = s.clone();
            t[3] ^= 1;
            assert!(c.open("o", b"aad", &t).unwrap_err().is_corruption());
        }
    }

    /// An empty body seals and opens, by every path; anything shorter than a seal's overhead
    /// is an error naming the object, never a panic.
    #[test]
    fn empty_bodies_round_trip_and_short_seals_are_errors() {
        for c in both() {
            let s = c.seal(b"aad", b"");
            assert_eq!(s.len(), c.overhead());
            assert_eq!(c.open("o", b"aad", &s).unwrap(), b"");
            let mut buf = vec![9u8; 2 + c.seal_prefix()];
            c.seal_in_place(b"aad", &mut buf, 2).unwrap();
            assert_eq!(buf.len(), 2 + c.overhead());
            let body = c.open_in_place("o", b"aad", &mut buf, 2).unwrap();
            assert!(body.is_empty(), "{body:?}");
            for short in [0, 1, c.overhead() / 2, c.overhead() - 1] {
                let e = c.open("obj-x", b"aad", &s[..short]).unwrap_err();
                assert!(e.is_corruption() && e.to_string().contains("obj-x"), "{e}");
                let mut t = s[..short].to_vec();
                let e = c.open_in_place("obj-x", b"aad", &mut t, 0).unwrap_err();
                assert!(e.is_corruption() && e.to_string().contains("obj-x"), "{e}");
            }
            if c.seal_prefix() > 0 {
                let mut short = vec![0u8; 2 + c.seal_prefix() - 1];
                assert!(c.seal_in_place(b"aad", &mut short, 2).is_err());
            }
        }
    }

    #[test]
    fn phrase_round_trip() {
        let k = MasterKey::generate();
        let p = k.to_phrase();
        assert_eq!(p.split(' ').count(), 24);
        assert_eq!(MasterKey::from_phrase(&p).unwrap().as_bytes(), k.as_bytes());
        let short: Vec<&str> = p.split(' ').take(12).collect();
        assert!(MasterKey::from_phrase(&short.join(" ")).is_err());
    }

    #[test]
    fn key_file_truncated_is_refused() {
        let k = MasterKey::generate();
        let t = k.to_file_text();
        assert!(MasterKey::from_file_text(&t, "k").is_ok());
        assert!(MasterKey::from_file_text(&t[..40], "k").is_err());
    }

    /// A small file is read whole up to its limit and refused one byte past it, and a device
    /// that never ends is refused after `limit + 1` bytes, not read until memory runs out.
    #[test]
    fn small_files_are_read_whole_up_to_the_limit_and_refused_past_it() {
        let dir = tempfile::tempdir().unwrap();
        let at = dir.path().join("at");
        let over = dir.path().join("over");
        std::fs::write(&at, "k".repeat(100)).unwrap();
        std::fs::write(&over, "k".repeat(101)).unwrap();
        assert_eq!(read_small_file(&at, 100, "a key").unwrap(), "k".repeat(100));
        let e = read_small_file(&over, 100, "a key").unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidData);
        assert_eq!(e.to_string(), "longer than 100 bytes: not a key");
        let e = read_small_file(std::path::Path::new("/dev/zero"), 100, "a key").unwrap_err();
        assert_eq!(e.to_string(), "longer than 100 bytes: not a key");
        std::fs::write(&at, [0xffu8, 0xfe]).unwrap();
        let e = read_small_file(&at, 100, "a key").unwrap_err();
        assert_eq!(e.to_string(), "not UTF-8 text: not a key");
    }
}
