//! The 16-byte header at the start of every stored object and journal stream.
//!
//! ```text
//! 0      4     5        6           7     8            16
//! +------+-----+--------+-----------+-----+------------+
//! | CLNB | kind| format | encryption| 0   | key id (8) |
//! +------+-----+--------+-----------+-----+------------+
//! ```
//! The header is folded into the associated data of everything sealed after it, so changing the
//! format byte or the kind of an object fails authentication. From format 2 on, whole objects
//! also bind the repository id (associated data `header ‖ repo id ‖ name`), so an object of
//! another repository sealed with the same key fails authentication too.
//!
//! Format per kind: config, manifests, journal streams, sealed segments and the node record are
//! written at format 2; packs and indexes keep format 1 (their layout did not change, and a pack's
//! blobs are content addressed, so binding them to a repository adds nothing). A repository
//! created at format 2 refuses format-1 objects of the kinds that moved on; one upgraded from
//! format 1 keeps reading the format-1 objects it had.

use crate::codec::Dec;
use crate::crypto::{Crypto, Encryption};
use crate::error::{Error, Result};
use crate::ids::{KeyId, RepoId};

pub const MAGIC: &[u8; 4] = b"CLNB";
pub const HEADER_LEN: usize = 16;
/// The newest object format this build writes (per kind: [`Kind::format`]).
pub const FORMAT_VERSION: u8 = 2;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    Config = 1,
    Manifest = 2,
    Index = 3,
    Pack = 4,
    SealedSegment = 5,
    JournalStream = 6,
    Lock = 7,
    Node = 8,
}

impl Kind {
    fn from_code(c: u8) -> Option<Kind> {
        Some(match c {
            1 => Kind::Config,
            2 => Kind::Manifest,
            3 => Kind::Index,
            4 => Kind::Pack,
            5 => Kind::SealedSegment,
            6 => Kind::JournalStream,
            7 => Kind::Lock,
            8 => Kind::Node,
            _ => return None,
        })
    }

    /// The format this build writes objects of this kind at.
    pub fn format(self) -> u8 {
        match self {
            Kind::Pack | Kind::Index => 1,
            _ => FORMAT_VERSION,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub kind: Kind,
    pub format: u8,
    pub encryption: Encryption,
    pub key_id: KeyId,
}

impl Header {
    pub fn new(kind: Kind, crypto: &Crypto) -> Self {
        Header {
            kind,
            format: kind.format(),
            encryption: crypto.encryption(),
            key_id: crypto.key_id(),
        }
    }

    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        let mut v = Vec::with_capacity(HEADER_LEN);
        v.extend_from_slice(MAGIC);
        v.push(self.kind as u8);
        v.push(self.format);
        v.push(self.encryption.code());
        v.push(0);
        v.extend_from_slice(&self.key_id.0);
        h.copy_from_slice(&v);
        h
    }

    /// Decode and check a header: magic, kind, format version, and that the key matches.
    pub fn decode_expect(data: &[u8], kind: Kind, crypto: &Crypto, object: &str) -> Result<Header> {
        let h = Self::decode(data, object)?;
        if h.kind != kind {
            return Err(Error::corrupt(
                object,
                format!("is a {:?} object, expected {kind:?}", h.kind),
            ));
        }
        match check_key(&h, crypto) {
            // Inside a repository already opened (by its config, with its key): an object sealed
            // with another key, or sealed where this one is not, was put there from elsewhere.
            // Not the operator's key error the config's check reports.
            Err(e) if kind != Kind::Config => {
                let why = match e {
                    Error::WrongKey { expected, got } => {
                        format!("sealed with key {expected}, not this repository's key {got}")
                    }
                    _ if h.encryption == Encryption::None => {
                        "a plaintext object in an encrypted repository".to_string()
                    }
                    _ => "an encrypted object in a plaintext repository".to_string(),
                };
                return Err(Error::corrupt(
                    object,
                    format!("{why}: it was put there from elsewhere"),
                ));
            }
            other => other?,
        }
        if h.format < kind.format() && !crypto.accepts_format1() {
            return Err(Error::corrupt(
                object,
                format!(
                    "a format-{} object in a repository created at format {}: it was put there from elsewhere",
                    h.format,
                    kind.format()
                ),
            ));
        }
        Ok(h)
    }

    pub fn decode(data: &[u8], object: &str) -> Result<Header> {
        let mut d = Dec::new(data, object);
        let magic = d.array::<4>()?;
        if &magic != MAGIC {
            return Err(Error::corrupt(object, "bad magic: not a cln-backup object"));
        }
        let kind_code = d.u8()?;
        let kind = Kind::from_code(kind_code)
            .ok_or_else(|| Error::corrupt(object, format!("unknown object kind {kind_code}")))?;
        let format = d.u8()?;
        if format == 0 || format > kind.format() {
            return Err(Error::Unsupported {
                object: object.to_string(),
                what: "format version",
                found: format.into(),
                supported: kind.format().into(),
            });
        }
        let encryption = Encryption::from_code(d.u8()?, object)?;
        let _reserved = d.u8()?;
        let key_id = KeyId(d.array::<8>()?);
        Ok(Header {
            kind,
            format,
            encryption,
            key_id,
        })
    }
}

pub fn check_key(h: &Header, crypto: &Crypto) -> Result<()> {
    if h.encryption != crypto.encryption() {
        return match h.encryption {
            Encryption::None => Err(Error::Invalid(
                "this repository is not encrypted, but a key was given".to_string(),
            )),
            _ => Err(Error::KeyRequired),
        };
    }
    if h.key_id != crypto.key_id() {
        return Err(Error::WrongKey {
            expected: h.key_id.to_string(),
            got: crypto.key_id().to_string(),
        });
    }
    Ok(())
}

/// Seal a whole object: header, then one sealed body bound to the header, the repository (from
/// format 2) and the object name.
pub fn seal_object(kind: Kind, crypto: &Crypto, name: &str, body: &[u8]) -> Vec<u8> {
    let header = Header::new(kind, crypto).encode();
    let aad = object_aad(&header, crypto.repo_id(), name);
    let mut out = header.to_vec();
    out.extend_from_slice(&crypto.seal(&aad, body));
    out
}

/// A buffer to write an object's body into (after room for its header and seal), to be sealed
/// by [`seal_object_in_place`]: a large body is then never copied (e.g. zstd writes into it).
pub fn object_buffer(crypto: &Crypto, capacity: usize) -> Vec<u8> {
    let room = HEADER_LEN + crypto.seal_prefix();
    let mut buf = Vec::with_capacity(room + capacity + crate::crypto::TAG_LEN);
    buf.resize(room, 0);
    buf
}

/// Seal a body written into an [`object_buffer`]: the same bytes [`seal_object`] gives.
pub fn seal_object_in_place(
    kind: Kind,
    crypto: &Crypto,
    name: &str,
    mut buf: Vec<u8>,
) -> Result<Vec<u8>> {
    let header = Header::new(kind, crypto).encode();
    let aad = object_aad(&header, crypto.repo_id(), name);
    buf.get_mut(..HEADER_LEN)
        .ok_or_else(|| Error::Invalid(format!("{name}: no room for its header")))?
        .copy_from_slice(&header);
    crypto.seal_in_place(&aad, &mut buf, HEADER_LEN)?;
    Ok(buf)
}

/// Open in place an object sealed by [`seal_object`]; returns where its body lies in `data`.
pub fn open_object_in_place(
    kind: Kind,
    crypto: &Crypto,
    name: &str,
    data: &mut [u8],
) -> Result<std::ops::Range<usize>> {
    Header::decode_expect(data, kind, crypto, name)?;
    let aad = object_aad(
        data.get(..HEADER_LEN).unwrap_or_default(),
        crypto.repo_id(),
        name,
    );
    crypto.open_in_place(name, &aad, data, HEADER_LEN)
}

/// Open an object sealed by [`seal_object`].
pub fn open_object(kind: Kind, crypto: &Crypto, name: &str, data: &[u8]) -> Result<Vec<u8>> {
    Header::decode_expect(data, kind, crypto, name)?;
    let header = data.get(..HEADER_LEN).unwrap_or_default();
    let aad = object_aad(header, crypto.repo_id(), name);
    crypto.open(name, &aad, data.get(HEADER_LEN..).unwrap_or_default())
}

/// Associated data of a whole object: `header ‖ name` at format 1, `header ‖ repo id ‖ name`
/// from format 2 (the format byte of `header` says which).
pub fn object_aad(header: &[u8], repo: RepoId, name: &str) -> Vec<u8> {
    let mut aad = Vec::with_capacity(header.len() + 16 + name.len());
    aad.extend_from_slice(header);
    if header.get(5).is_some_and(|&f| f >= 2) {
        aad.extend_from_slice(&repo.0);
    }
    aad.extend_from_slice(name.as_bytes());
    aad
}
