//! The server's status file: what `backup-cli server status` shows.
//!
//! The server cannot read a node's records (it lacks the key), so "newest data_version" is what
//! the node *said* with its appends (`stream_append` carries it): a claim, shown as such, that
//! lets an operator see which node stopped writing. Sizes are what the server counted as it
//! stored; `backup-cli server status` counts a directory root's files again.
//!
//! JSON, written every few seconds when something changed and when the server stops (temp
//! file and rename; not synced: it is a report, not data).

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerStatus {
    pub root: String,
    pub listening: Vec<String>,
    pub pid: u32,
    /// Unix seconds when written.
    pub written: u64,
    /// False in the file a stopped server wrote last.
    pub running: bool,
    pub nodes: Vec<NodeStatus>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    pub name: String,
    pub repository: String,
    pub append_only: bool,
    /// Bytes (0: no quota).
    pub quota: u64,
    /// Bytes stored, as the server counted (None: not opened since the server started, and no
    /// earlier count).
    pub used: Option<u64>,
    /// Unix seconds of its last request (0: never).
    pub last_contact: u64,
    /// The newest data_version the node reported (0: none).
    pub data_version: u32,
    /// Journal appends since the server started.
    pub appends: u64,
    pub connections: usize,
}

pub fn write(path: &Path, s: &ServerStatus) -> Result<()> {
    let text = serde_json::to_vec_pretty(s)
        .map_err(|e| Error::Invalid(format!("encoding the status: {e}")))?;
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, text)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| Error::io("write", path.display().to_string(), e))
}

pub fn read(path: &Path) -> Result<ServerStatus> {
    let text = std::fs::read(path).map_err(|e| Error::io("read", path.display().to_string(), e))?;
    serde_json::from_slice(&text).map_err(|e| {
        Error::corrupt(
            path.display().to_string(),
            format!("not a server status file: {e}"),
        )
    })
}
