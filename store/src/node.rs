//! The `node` object: which Lightning node a repository backs up.
//!
//! ```text
//! header (16, kind Node) | sealed(JSON NodeRecord), aad = header ‖ "node"
//! JSON: {"node_id": "<66 hex>", "source": "database" | "getinfo", "time": unix secs}
//! ```
//! Written once (`put_if_absent`): by `backup-cli init --lightning-dir` from the database's
//! `vars.node_id`, or by the plugin from lightningd's `getinfo` after `init`. Recording a
//! different id than the one stored is an error naming both, so a repository never silently
//! changes hands. Restore into a node compares it with the id the node's `hsm_secret` derives.
//!
//! The object's bytes are made by [`encode`] and read by [`decode`] only (format 2 binds the
//! repository id into the seal: docs/format.md).

use serde::{Deserialize, Serialize};

use crate::envelope::{self, Kind};
use crate::error::{Error, Result};
use crate::repo::Repository;

/// The object's name.
pub const NODE_NAME: &str = "node";

/// Where a recorded node id came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeIdSource {
    /// `vars.node_id` of the node's database (`backup-cli init --lightning-dir`).
    Database,
    /// lightningd's `getinfo` (the plugin, after `init`).
    Getinfo,
}

impl NodeIdSource {
    pub fn name(self) -> &'static str {
        match self {
            NodeIdSource::Database => "database",
            NodeIdSource::Getinfo => "getinfo",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeRecord {
    /// The node's public key: 33 bytes compressed, as 66 lower-case hex digits.
    pub node_id: String,
    pub source: NodeIdSource,
    /// When it was recorded (unix seconds).
    pub time: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodeRecordOutcome {
    /// Stored now.
    Recorded(NodeRecord),
    /// The same id was recorded before (that record is returned).
    AlreadyRecorded(NodeRecord),
}

/// A node id as lightningd prints it: 66 hex digits of a compressed public key (02 or 03 first).
/// Returns it in lower case.
pub fn parse_node_id(s: &str) -> Result<String> {
    let t = s.trim().to_ascii_lowercase();
    let ok = t.len() == 66
        && (t.starts_with("02") || t.starts_with("03"))
        && t.bytes().all(|b| b.is_ascii_hexdigit());
    if ok {
        Ok(t)
    } else {
        Err(Error::Invalid(format!(
            "{s:?} is not a node id (66 hex digits of a compressed public key, starting 02 or 03)"
        )))
    }
}

/// The object's bytes.
pub fn encode(repo: &Repository, rec: &NodeRecord) -> Result<Vec<u8>> {
    let body = serde_json::to_vec(rec)
        .map_err(|e| Error::Invalid(format!("encoding the node record: {e}")))?;
    Ok(envelope::seal_object(
        Kind::Node,
        repo.crypto(),
        NODE_NAME,
        &body,
    ))
}

/// Open and parse the object's bytes.
pub fn decode(repo: &Repository, data: &[u8]) -> Result<NodeRecord> {
    let body = envelope::open_object(Kind::Node, repo.crypto(), NODE_NAME, data)?;
    let rec: NodeRecord = serde_json::from_slice(&body)
        .map_err(|e| Error::corrupt(NODE_NAME, format!("bad body: {e}")))?;
    parse_node_id(&rec.node_id)
        .map_err(|_| Error::corrupt(NODE_NAME, format!("bad node id {:?}", rec.node_id)))?;
    Ok(rec)
}

/// The node id recorded in the repository, if any.
pub fn read_node_id(repo: &Repository) -> Result<Option<NodeRecord>> {
    match repo.backend().get(NODE_NAME) {
        Ok(data) => decode(repo, &data).map(Some),
        Err(Error::NotFound { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Record `node_id` as the node this repository backs up, once. The same id again is
/// `AlreadyRecorded`; another id is [`Error::NodeIdMismatch`].
pub fn record_node_id(
    repo: &Repository,
    node_id: &str,
    source: NodeIdSource,
) -> Result<NodeRecordOutcome> {
    let node_id = parse_node_id(node_id)?;
    let rec = NodeRecord {
        node_id,
        source,
        time: crate::config::now(),
    };
    if repo
        .backend()
        .put_if_absent(NODE_NAME, &encode(repo, &rec)?)?
    {
        return Ok(NodeRecordOutcome::Recorded(rec));
    }
    let Some(have) = read_node_id(repo)? else {
        return Err(Error::corrupt(
            NODE_NAME,
            "it exists (it could not be created) but cannot be read back",
        ));
    };
    if have.node_id == rec.node_id {
        Ok(NodeRecordOutcome::AlreadyRecorded(have))
    } else {
        Err(Error::NodeIdMismatch {
            object: NODE_NAME.to_string(),
            recorded: have.node_id,
            given: rec.node_id,
        })
    }
}

#[cfg(test)]
mod test {
    use super::*;
    use crate::backend::dir::DirBackend;
    use crate::{ConfigBody, MasterKey};

    const A: &str = "03e8c0e81647f86f1abfb99a24e7150f8885d3d66be04fb8d796ea8ad363b00f7b";
    const B: &str = "0314c8b4c00ed4ef744b4a6ee4a7749999319342a005c73669d2248bc2d2ee64b9";

    fn repo(tmp: &std::path::Path, encrypted: bool) -> Repository {
        let key = MasterKey::generate();
        let backend = std::sync::Arc::new(DirBackend::create(tmp).unwrap());
        Repository::init_backend(backend, Some(&key), encrypted, ConfigBody::default()).unwrap()
    }

    #[test]
    fn recorded_once_and_a_different_id_is_refused() {
        for encrypted in [false, true] {
            let tmp = tempfile::tempdir().unwrap();
            let r = repo(tmp.path(), encrypted);
            assert_eq!(read_node_id(&r).unwrap(), None);
            let got = record_node_id(&r, &A.to_uppercase(), NodeIdSource::Database).unwrap();
            assert!(matches!(&got, NodeRecordOutcome::Recorded(n) if n.node_id == A));
            let again = record_node_id(&r, A, NodeIdSource::Getinfo).unwrap();
            assert!(
                matches!(&again, NodeRecordOutcome::AlreadyRecorded(n) if n.source == NodeIdSource::Database)
            );
            let e = record_node_id(&r, B, NodeIdSource::Getinfo).unwrap_err();
            assert!(
                matches!(&e, Error::NodeIdMismatch { recorded, given, .. } if recorded == A && given == B)
            );
            let msg = e.to_string();
            assert!(msg.contains(A) && msg.contains(B), "{msg}");
            assert_eq!(read_node_id(&r).unwrap().unwrap().node_id, A);
        }
    }

    #[test]
    fn malformed_ids_and_damaged_objects_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let r = repo(tmp.path(), true);
        for bad in [
            "",
            "04aa",
            &A[..64],
            &format!("04{}", &A[2..]),
            &A.replace('e', "g"),
        ] {
            assert!(matches!(
                record_node_id(&r, bad, NodeIdSource::Getinfo),
                Err(Error::Invalid(_))
            ));
        }
        record_node_id(&r, A, NodeIdSource::Getinfo).unwrap();
        let mut data = r.backend().get(NODE_NAME).unwrap();
        let last = data.len() - 1;
        data[last] ^= 1;
        r.backend().put(NODE_NAME, &data).unwrap();
        assert!(matches!(
            read_node_id(&r),
            Err(Error::AuthenticationFailed { .. })
        ));
        // Another object's bytes under this name (a config): refused by kind.
        let config = r.backend().get(crate::config::CONFIG_NAME).unwrap();
        r.backend().put(NODE_NAME, &config).unwrap();
        assert!(read_node_id(&r).unwrap_err().is_corruption());
    }
}
