//! Remote repositories: `backup-cli server` and the `socket:` destination.
//!
//! A server serves many nodes, each its own repository (`ROOT/nodes/NAME`, chosen by the
//! node's auth key). It stores opaque bytes: everything
//! a client sends is already sealed with subkeys of the repository key, which the server never
//! holds. It is given only the *auth key* of each node, `link_key.subkey("server auth")`, used
//! as the pre-shared key of a Noise `NNpsk0` handshake: a peer without it completes no handshake
//! and is sent nothing but a one-shot refusal marker.
//!
//! Guarantees (read [`proto`] for the wire format, then [`client`] and [`server`]):
//! - every [`Backend`](super::Backend) call is one request/response over an encrypted,
//!   authenticated link; a stream append is acknowledged only after the server's stream append
//!   returned (fdatasync under [`Durability::Fsync`](super::Durability::Fsync));
//! - appends are idempotent by offset, so a batch re-sent after a lost acknowledgement is stored
//!   once; every other request is idempotent by nature or made so (`put_if_absent`);
//! - when the link drops, the client redials with exponential back-off, re-takes its locks and
//!   re-issues the request; when the tries run out it fails with an error naming the server;
//! - locks belong to a client *session*: held while any connection of the session lives,
//!   released when the last one closes (or the server stops), taken over by the same session
//!   after a reconnect;
//! - garbage, unknown versions and oversize frames drop that connection only.

pub mod channel;
pub mod client;
pub mod proto;
pub mod server;
pub mod socks;

#[cfg(test)]
mod test;

pub use client::{RemoteBackend, RemoteOptions};
pub use server::{serve, NodeEntry, ServerAuth, ServerHandle, ServerOptions, ServerRoot, Stopper};

use crate::crypto::MasterKey;

/// Purpose string of the auth subkey: `link_key.subkey(AUTH_PURPOSE)`.
pub const AUTH_PURPOSE: &str = "server auth";

/// The 32-byte key a server needs to admit this repository's clients (never the repository key).
pub fn auth_key(link_key: &MasterKey) -> [u8; 32] {
    link_key.subkey(AUTH_PURPOSE)
}

/// [`auth_key`] in hex.
pub fn auth_key_hex(link_key: &MasterKey) -> String {
    hex::encode(auth_key(link_key))
}

/// The line the server's auth file needs to admit this repository's node as `name`.
pub fn auth_line(name: &str, link_key: &MasterKey) -> String {
    server::auth_line(name, &auth_key(link_key))
}
