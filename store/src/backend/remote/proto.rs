//! The remote protocol's messages (all integers little-endian; `blob` = u32 length + bytes,
//! `str` = blob of UTF-8).
//!
//! Hellos ride in the Noise handshake payloads:
//! ```text
//! client hello: magic "clnbkrmt" (8) | u16 version | session id (16)
//! server hello: magic "clnbkrmt" (8) | u16 version | u8 status (0 ok, 1 version refused) | str message
//!               version 2, status 0 only: str node name | u8 flags (bit 0 append-only)
//!                                          | u64 quota (bytes, 0 none) | u64 bytes used
//! ```
//! Version 1 (before one server held a repository per node) differs in the server hello (no
//! node fields) and `stream_append` (no data_version). Each side refuses the other's version
//! with a message saying which side to upgrade; the hellos' first fields never change, so an
//! old peer can read that refusal.
//! Then one request frame, one response frame, in turn:
//! ```text
//! request:  u64 id | u8 op | arguments (see `Request`)
//! response: u64 id (same) | u8 status | body (status 0: per op; else the error, see `RemoteError`)
//! ```
//! A frame is at most [`MAX_FRAME`] bytes; data in one response at most [`MAX_DATA`].

use crate::backend::{Durability, ObjectInfo};
use crate::codec::{Dec, Enc};
use crate::error::{Error, Result};

pub const MAGIC: [u8; 8] = *b"clnbkrmt";
pub const VERSION: u16 = 2;
/// Largest frame either side accepts: a 64 MiB journal record plus headroom.
pub const MAX_FRAME: usize = (64 << 20) + (64 << 10);
/// Largest data carried in one response (`get`, `get_range`, `stream_read` pieces).
pub const MAX_DATA: usize = 16 << 20;
/// Largest data a request may carry (`put`, `append`).
pub const MAX_REQUEST_DATA: usize = MAX_FRAME - (16 << 10);

const WIRE: &str = "remote protocol message";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientHello {
    pub version: u16,
    pub session: [u8; 16],
}

impl ClientHello {
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Enc::new();
        e.bytes(&MAGIC).u16(self.version).bytes(&self.session);
        e.finish()
    }
    pub fn decode(b: &[u8]) -> Result<ClientHello> {
        let mut d = Dec::new(b, "client hello");
        if d.array::<8>()? != MAGIC {
            return Err(d.err("not a cln-backup client (bad magic)"));
        }
        let version = d.u16()?;
        // Later versions may append fields: read only what version 1 defines.
        let session = d.array::<16>()?;
        Ok(ClientHello { version, session })
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerHello {
    pub version: u16,
    /// 0: accepted; 1: the client's version is refused (see `message`).
    pub status: u8,
    pub message: String,
    /// What the server grants this node (version 2, status 0).
    pub node: Option<NodeGrant>,
}

/// The node the auth key named, and the rules of its repository on this server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeGrant {
    pub name: String,
    /// Only creates and appends: deletes, replacements and cuts below what was acknowledged are
    /// refused.
    pub append_only: bool,
    /// Bytes the node may store (0: no quota).
    pub quota: u64,
    /// Bytes it stores now.
    pub used: u64,
}

impl ServerHello {
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Enc::new();
        e.bytes(&MAGIC)
            .u16(self.version)
            .u8(self.status)
            .blob(self.message.as_bytes());
        if let Some(n) = &self.node {
            e.blob(n.name.as_bytes())
                .u8(u8::from(n.append_only))
                .u64(n.quota)
                .u64(n.used);
        }
        e.finish()
    }
    /// Reads any version's hello: the node fields only where version 2 accepted the client.
    pub fn decode(b: &[u8]) -> Result<ServerHello> {
        let mut d = Dec::new(b, "server hello");
        if d.array::<8>()? != MAGIC {
            return Err(d.err("not a cln-backup server (bad magic)"));
        }
        let version = d.u16()?;
        let status = d.u8()?;
        let message = string(&mut d)?;
        let node = if version == VERSION && status == 0 {
            let name = string(&mut d)?;
            let flags = d.u8()?;
            Some(NodeGrant {
                name,
                append_only: flags & 1 != 0,
                quota: d.u64()?,
                used: d.u64()?,
            })
        } else {
            None
        };
        Ok(ServerHello {
            version,
            status,
            message,
            node,
        })
    }
}

fn string<'a>(d: &mut Dec<'a>) -> Result<String> {
    let b = d.blob()?;
    String::from_utf8(b.to_vec()).map_err(|_| d.err("a string is not UTF-8"))
}

fn str_ref<'a>(d: &mut Dec<'a>) -> Result<&'a str> {
    let b = d.blob()?;
    std::str::from_utf8(b).map_err(|_| d.err("a string is not UTF-8"))
}

fn durability_code(d: Durability) -> u8 {
    match d {
        Durability::Fsync => 0,
        Durability::Flush => 1,
    }
}

fn durability(d: &mut Dec<'_>) -> Result<Durability> {
    match d.u8()? {
        0 => Ok(Durability::Fsync),
        1 => Ok(Durability::Flush),
        c => Err(d.err(format!("unknown durability {c}"))),
    }
}

/// A request; op codes in brackets. Responses (status 0) carry:
/// put, delete, stream_truncate, stream_delete, lock, unlock, ping: nothing;
/// put_if_absent: u8 stored; get, get_range, stream_read: blob; list, stream_list: u64 count,
/// then (str name, u64 size) each; stream_open: u64 length; stream_append: u8 (0 appended,
/// 1 already stored) | u64 new length.
///
/// Names are repository-relative and checked by the server ([`crate::backend::check_name`],
/// list prefixes by [`crate::backend::check_prefix`]), inside the node's own repository.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request<'a> {
    /// [1]
    Put { name: &'a str, data: &'a [u8] },
    /// [2]
    PutIfAbsent { name: &'a str, data: &'a [u8] },
    /// [3] The whole object, or status TooLarge when it exceeds [`MAX_DATA`].
    Get { name: &'a str },
    /// [4] `len` at most [`MAX_DATA`].
    GetRange {
        name: &'a str,
        offset: u64,
        len: u64,
    },
    /// [5]
    List { prefix: &'a str },
    /// [6]
    Delete { name: &'a str },
    /// [7] Open (create) the stream, answer its length.
    StreamOpen {
        name: &'a str,
        durability: Durability,
    },
    /// [8] Append iff the stream is `offset` bytes long; "already stored" iff it is
    /// `offset + data.len()` long and ends with `data`; a torn copy of `data` (its start, then
    /// zeros) left by a server crash is completed; otherwise a conflict. `data_version` is the
    /// newest lightningd data_version the client has stored with this append, as it claims (0:
    /// unknown), for the server's status: the server cannot read the records.
    StreamAppend {
        name: &'a str,
        durability: Durability,
        offset: u64,
        data: &'a [u8],
        data_version: u32,
    },
    /// [9]
    StreamTruncate {
        name: &'a str,
        durability: Durability,
        len: u64,
    },
    /// [10] At most `max` bytes from `offset` (short or empty at the end).
    StreamRead {
        name: &'a str,
        offset: u64,
        max: u64,
    },
    /// [11]
    StreamList,
    /// [12]
    StreamDelete { name: &'a str },
    /// [13]
    Lock { name: &'a str, holder: &'a str },
    /// [14]
    Unlock { name: &'a str },
    /// [15]
    Ping,
}

impl<'a> Request<'a> {
    /// What the request does, for messages.
    pub fn op_name(&self) -> &'static str {
        match self {
            Request::Put { .. } => "put",
            Request::PutIfAbsent { .. } => "put",
            Request::Get { .. } | Request::GetRange { .. } => "get",
            Request::List { .. } => "list",
            Request::Delete { .. } => "delete",
            Request::StreamOpen { .. } => "open stream",
            Request::StreamAppend { .. } => "append",
            Request::StreamTruncate { .. } => "truncate",
            Request::StreamRead { .. } => "read stream",
            Request::StreamList => "list streams",
            Request::StreamDelete { .. } => "delete stream",
            Request::Lock { .. } => "lock",
            Request::Unlock { .. } => "unlock",
            Request::Ping => "ping",
        }
    }

    pub fn encode(&self, id: u64) -> Vec<u8> {
        let mut e = Enc::new();
        e.u64(id);
        match self {
            Request::Put { name, data } => {
                e.u8(1).blob(name.as_bytes()).blob(data);
            }
            Request::PutIfAbsent { name, data } => {
                e.u8(2).blob(name.as_bytes()).blob(data);
            }
            Request::Get { name } => {
                e.u8(3).blob(name.as_bytes());
            }
            Request::GetRange { name, offset, len } => {
                e.u8(4).blob(name.as_bytes()).u64(*offset).u64(*len);
            }
            Request::List { prefix } => {
                e.u8(5).blob(prefix.as_bytes());
            }
            Request::Delete { name } => {
                e.u8(6).blob(name.as_bytes());
            }
            Request::StreamOpen { name, durability } => {
                e.u8(7)
                    .blob(name.as_bytes())
                    .u8(durability_code(*durability));
            }
            Request::StreamAppend {
                name,
                durability,
                offset,
                data,
                data_version,
            } => {
                e.u8(8)
                    .blob(name.as_bytes())
                    .u8(durability_code(*durability))
                    .u64(*offset)
                    .blob(data)
                    .u32(*data_version);
            }
            Request::StreamTruncate {
                name,
                durability,
                len,
            } => {
                e.u8(9)
                    .blob(name.as_bytes())
                    .u8(durability_code(*durability))
                    .u64(*len);
            }
            Request::StreamRead { name, offset, max } => {
                e.u8(10).blob(name.as_bytes()).u64(*offset).u64(*max);
            }
            Request::StreamList => {
                e.u8(11);
            }
            Request::StreamDelete { name } => {
                e.u8(12).blob(name.as_bytes());
            }
            Request::Lock { name, holder } => {
                e.u8(13).blob(name.as_bytes()).blob(holder.as_bytes());
            }
            Request::Unlock { name } => {
                e.u8(14).blob(name.as_bytes());
            }
            Request::Ping => {
                e.u8(15);
            }
        }
        e.finish()
    }

    pub fn decode(b: &'a [u8]) -> Result<(u64, Request<'a>)> {
        let mut d = Dec::new(b, "request");
        let id = d.u64()?;
        let req = match d.u8()? {
            1 => Request::Put {
                name: str_ref(&mut d)?,
                data: d.blob()?,
            },
            2 => Request::PutIfAbsent {
                name: str_ref(&mut d)?,
                data: d.blob()?,
            },
            3 => Request::Get {
                name: str_ref(&mut d)?,
            },
            4 => Request::GetRange {
                name: str_ref(&mut d)?,
                offset: d.u64()?,
                len: d.u64()?,
            },
            5 => Request::List {
                prefix: str_ref(&mut d)?,
            },
            6 => Request::Delete {
                name: str_ref(&mut d)?,
            },
            7 => Request::StreamOpen {
                name: str_ref(&mut d)?,
                durability: durability(&mut d)?,
            },
            8 => Request::StreamAppend {
                name: str_ref(&mut d)?,
                durability: durability(&mut d)?,
                offset: d.u64()?,
                data: d.blob()?,
                data_version: d.u32()?,
            },
            9 => Request::StreamTruncate {
                name: str_ref(&mut d)?,
                durability: durability(&mut d)?,
                len: d.u64()?,
            },
            10 => Request::StreamRead {
                name: str_ref(&mut d)?,
                offset: d.u64()?,
                max: d.u64()?,
            },
            11 => Request::StreamList,
            12 => Request::StreamDelete {
                name: str_ref(&mut d)?,
            },
            13 => Request::Lock {
                name: str_ref(&mut d)?,
                holder: str_ref(&mut d)?,
            },
            14 => Request::Unlock {
                name: str_ref(&mut d)?,
            },
            15 => Request::Ping,
            op => return Err(d.err(format!("unknown op {op}"))),
        };
        d.end()?;
        Ok((id, req))
    }
}

/// Status codes of a response and the errors they carry:
/// ```text
/// 0 ok
/// 1 not found   str object
/// 2 locked      str object | str holder
/// 3 corrupt     str object | str what
/// 4 io          str object | str op | u32 errno (0: none) | str message
/// 5 invalid     str message
/// 6 too large   u64 size          (get: fetch it with get_range)
/// 7 conflict    str message       (append at an offset the stream is not at)
/// 8 append-only str object | str op   (the node's repository refuses deletes and rewrites)
/// 9 refused     str message       (over the node's quota, or a name outside its repository)
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RemoteError {
    NotFound {
        object: String,
    },
    Locked {
        object: String,
        holder: String,
    },
    Corrupt {
        object: String,
        what: String,
    },
    Io {
        object: String,
        op: String,
        errno: u32,
        message: String,
    },
    Invalid(String),
    TooLarge(u64),
    Conflict(String),
    AppendOnly {
        object: String,
        op: String,
    },
    Refused(String),
}

impl RemoteError {
    /// How the server reports a store error.
    pub fn from_error(e: &Error) -> RemoteError {
        match e {
            Error::NotFound { object } => RemoteError::NotFound {
                object: object.clone(),
            },
            Error::Locked { object, holder } => RemoteError::Locked {
                object: object.clone(),
                holder: holder.clone(),
            },
            Error::Corrupt { object, what } => RemoteError::Corrupt {
                object: object.clone(),
                what: what.clone(),
            },
            Error::ChecksumMismatch { object, .. } | Error::AuthenticationFailed { object } => {
                RemoteError::Corrupt {
                    object: object.clone(),
                    what: e.to_string(),
                }
            }
            Error::Io { object, op, source } => RemoteError::Io {
                object: object.clone(),
                op: (*op).to_string(),
                errno: source
                    .raw_os_error()
                    .and_then(|n| u32::try_from(n).ok())
                    .unwrap_or(0),
                message: source.to_string(),
            },
            Error::AppendOnly { object, op } => RemoteError::AppendOnly {
                object: object.clone(),
                op: (*op).to_string(),
            },
            other => RemoteError::Invalid(other.to_string()),
        }
    }

    /// The store error a client returns; `server` (the URL) is added to objects so the operator
    /// knows where to look.
    pub fn into_error(self, server: &str) -> Error {
        match self {
            RemoteError::NotFound { object } => Error::NotFound { object },
            RemoteError::Locked { object, holder } => Error::Locked { object, holder },
            RemoteError::Corrupt { object, what } => Error::Corrupt {
                object: format!("{object} on {server}"),
                what,
            },
            RemoteError::Io {
                object,
                op,
                errno,
                message,
            } => Error::Io {
                object: format!("{object} on {server}"),
                op: static_op(&op),
                source: match i32::try_from(errno) {
                    Ok(n) if n > 0 => std::io::Error::from_raw_os_error(n),
                    _ => std::io::Error::other(message),
                },
            },
            RemoteError::Invalid(m) => Error::Remote(format!("{server}: {m}")),
            RemoteError::TooLarge(size) => Error::Remote(format!(
                "{server}: object of {size} bytes too large for one response"
            )),
            RemoteError::Conflict(m) => Error::Remote(format!("{server}: {m}")),
            RemoteError::AppendOnly { object, op } => Error::AppendOnly {
                object: format!("{object} on {server}"),
                op: static_op(&op),
            },
            RemoteError::Refused(m) => Error::Remote(format!("{server}: {m}")),
        }
    }

    fn encode_into(&self, e: &mut Enc) {
        match self {
            RemoteError::NotFound { object } => {
                e.u8(1).blob(object.as_bytes());
            }
            RemoteError::Locked { object, holder } => {
                e.u8(2).blob(object.as_bytes()).blob(holder.as_bytes());
            }
            RemoteError::Corrupt { object, what } => {
                e.u8(3).blob(object.as_bytes()).blob(what.as_bytes());
            }
            RemoteError::Io {
                object,
                op,
                errno,
                message,
            } => {
                e.u8(4)
                    .blob(object.as_bytes())
                    .blob(op.as_bytes())
                    .u32(*errno)
                    .blob(message.as_bytes());
            }
            RemoteError::Invalid(m) => {
                e.u8(5).blob(m.as_bytes());
            }
            RemoteError::TooLarge(size) => {
                e.u8(6).u64(*size);
            }
            RemoteError::Conflict(m) => {
                e.u8(7).blob(m.as_bytes());
            }
            RemoteError::AppendOnly { object, op } => {
                e.u8(8).blob(object.as_bytes()).blob(op.as_bytes());
            }
            RemoteError::Refused(m) => {
                e.u8(9).blob(m.as_bytes());
            }
        }
    }
}

/// The op names `Error::Io` displays (it holds a `&'static str`).
fn static_op(op: &str) -> &'static str {
    const OPS: &[&str] = &[
        "read",
        "write",
        "publish",
        "append",
        "fdatasync",
        "truncate",
        "delete",
        "list",
        "open",
        "lock",
        "create",
        "sync directory",
        "replace",
        "delete stream",
        "cut",
    ];
    OPS.iter().find(|o| **o == op).copied().unwrap_or("remote")
}

pub fn encode_ok(id: u64, body: &[u8]) -> Vec<u8> {
    let mut e = Enc::new();
    e.u64(id).u8(0).bytes(body);
    e.finish()
}

pub fn encode_err(id: u64, err: &RemoteError) -> Vec<u8> {
    let mut e = Enc::new();
    e.u64(id);
    err.encode_into(&mut e);
    e.finish()
}

/// A decoded response: the id and either the ok body or the error.
pub fn decode_response(b: &[u8]) -> Result<(u64, std::result::Result<&[u8], RemoteError>)> {
    let mut d = Dec::new(b, WIRE);
    let id = d.u64()?;
    let status = d.u8()?;
    let res = match status {
        0 => {
            let rest = d.take(d.remaining())?;
            return Ok((id, Ok(rest)));
        }
        1 => RemoteError::NotFound {
            object: string(&mut d)?,
        },
        2 => RemoteError::Locked {
            object: string(&mut d)?,
            holder: string(&mut d)?,
        },
        3 => RemoteError::Corrupt {
            object: string(&mut d)?,
            what: string(&mut d)?,
        },
        4 => RemoteError::Io {
            object: string(&mut d)?,
            op: string(&mut d)?,
            errno: d.u32()?,
            message: string(&mut d)?,
        },
        5 => RemoteError::Invalid(string(&mut d)?),
        6 => RemoteError::TooLarge(d.u64()?),
        7 => RemoteError::Conflict(string(&mut d)?),
        8 => RemoteError::AppendOnly {
            object: string(&mut d)?,
            op: string(&mut d)?,
        },
        9 => RemoteError::Refused(string(&mut d)?),
        s => return Err(d.err(format!("unknown status {s}"))),
    };
    d.end()?;
    Ok((id, Err(res)))
}

pub fn encode_list(items: &[ObjectInfo]) -> Vec<u8> {
    let mut e = Enc::new();
    e.u64(items.len() as u64);
    for o in items {
        e.blob(o.name.as_bytes()).u64(o.size);
    }
    e.finish()
}

pub fn decode_list(b: &[u8]) -> Result<Vec<ObjectInfo>> {
    let mut d = Dec::new(b, WIRE);
    let n = d.count(12)?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let name = string(&mut d)?;
        let size = d.u64()?;
        out.push(ObjectInfo { name, size });
    }
    d.end()?;
    Ok(out)
}

pub fn decode_blob(b: &[u8]) -> Result<Vec<u8>> {
    let mut d = Dec::new(b, WIRE);
    let v = d.blob()?.to_vec();
    d.end()?;
    Ok(v)
}

pub fn decode_u64(b: &[u8]) -> Result<u64> {
    let mut d = Dec::new(b, WIRE);
    let v = d.u64()?;
    d.end()?;
    Ok(v)
}

pub fn decode_u8(b: &[u8]) -> Result<u8> {
    let mut d = Dec::new(b, WIRE);
    let v = d.u8()?;
    d.end()?;
    Ok(v)
}

/// stream_append's answer: (already stored, new length).
pub fn decode_append(b: &[u8]) -> Result<(bool, u64)> {
    let mut d = Dec::new(b, WIRE);
    let already = d.u8()? == 1;
    let len = d.u64()?;
    d.end()?;
    Ok((already, len))
}
