//! The server's auth file: which nodes it admits, under which name, with which rules.
//!
//! ```text
//! # NAME   AUTH-KEY (64 hex, from `backup-cli key create` on the node)   [RULES]
//! alice    3f2a…                                                          quota=20G
//! bob      9c01…                                                          quota=5G append-only
//! ```
//! One node per line; `#` starts a comment. The name chooses the node's repository
//! (`ROOT/nodes/NAME`); names and keys are unique. Rules: `quota=SIZE` (bytes, or with a K, M,
//! G or T suffix, powers of 1024) and `append-only`. A line of only a key is the format of
//! protocol version 1, when every key shared one repository: it is refused with the line to
//! write instead, since the repository it used must be moved under a name first
//! (`backup-cli server migrate`).

use std::path::Path;

use crate::error::{Error, Result};

/// One admitted node.
#[derive(Clone, PartialEq, Eq)]
pub struct NodeEntry {
    pub name: String,
    pub key: [u8; 32],
    /// Bytes the node may store; `None`: the server's default.
    pub quota: Option<u64>,
    /// Only creates and appends (or the server's `--append-only`).
    pub append_only: bool,
}

impl std::fmt::Debug for NodeEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "NodeEntry({}, quota {:?}, append-only {})",
            self.name, self.quota, self.append_only
        )
    }
}

impl NodeEntry {
    pub fn new(name: &str, key: [u8; 32]) -> NodeEntry {
        NodeEntry {
            name: name.to_string(),
            key,
            quota: None,
            append_only: false,
        }
    }
}

/// The nodes a server admits.
#[derive(Clone, Default)]
pub struct ServerAuth {
    pub(crate) nodes: Vec<NodeEntry>,
}

impl std::fmt::Debug for ServerAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ServerAuth({} nodes)", self.nodes.len())
    }
}

/// A node name: what its repository directory is called. Lower-case letters, digits, `.`, `_`
/// and `-`, starting with a letter or digit, at most 64 bytes.
pub fn check_node_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "bad node name '{name}': use lower-case letters, digits, '.', '_' and '-' (at most 64, starting with a letter or digit)"
        )))
    }
}

/// `20G`, `512M`, `1048576`: bytes, with an optional K/M/G/T suffix (powers of 1024).
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last()? {
        (i, 'K' | 'k') => (s.get(..i)?, 1u64 << 10),
        (i, 'M' | 'm') => (s.get(..i)?, 1 << 20),
        (i, 'G' | 'g') => (s.get(..i)?, 1 << 30),
        (i, 'T' | 't') => (s.get(..i)?, 1 << 40),
        _ => (s, 1),
    };
    num.parse::<u64>().ok()?.checked_mul(mult)
}

/// The line a server's auth file needs for a node: its name and auth key.
pub fn auth_line(name: &str, auth_key: &[u8; 32]) -> String {
    format!("{name} {}", hex::encode(auth_key))
}

impl ServerAuth {
    pub fn from_nodes(nodes: Vec<NodeEntry>) -> Result<ServerAuth> {
        let a = ServerAuth { nodes };
        a.check_unique("the node list")?;
        Ok(a)
    }

    /// One node (tests, and a server started with a node's key file).
    pub fn single(name: &str, key: [u8; 32]) -> ServerAuth {
        ServerAuth {
            nodes: vec![NodeEntry::new(name, key)],
        }
    }

    fn check_unique(&self, path: &str) -> Result<()> {
        for (i, a) in self.nodes.iter().enumerate() {
            for b in self.nodes.iter().skip(i + 1) {
                if a.name == b.name {
                    return Err(Error::Invalid(format!(
                        "{path}: the node name '{}' appears twice: each node needs its own name (its repository)",
                        a.name
                    )));
                }
                if a.key == b.key {
                    return Err(Error::Invalid(format!(
                        "{path}: nodes '{}' and '{}' have the same auth key: each node has its own key",
                        a.name, b.name
                    )));
                }
            }
        }
        Ok(())
    }

    /// Parse an auth file (format in the module documentation).
    pub fn parse(text: &str, path: &str) -> Result<ServerAuth> {
        let mut nodes = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let l = line.split('#').next().unwrap_or_default().trim();
            if l.is_empty() {
                continue;
            }
            let at = |what: String| Error::Invalid(format!("{path} line {}: {what}", i + 1));
            let mut words = l.split_whitespace();
            let first = words.next().unwrap_or_default();
            let Some(second) = words.next() else {
                if first.len() == 64 && first.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(at(format!(
                        "a key without a node name (the format before protocol version 2, when \
                         every key shared one repository). Write `NAME {first}`; if the server's \
                         directory holds that repository, move it under NAME first with \
                         `backup-cli server migrate ROOT NAME`"
                    )));
                }
                return Err(at(
                    "expected `NAME AUTH-KEY [quota=SIZE] [append-only]` (the line `backup-cli key create` prints on the node)".into(),
                ));
            };
            check_node_name(first).map_err(|e| at(e.to_string()))?;
            let mut key = [0u8; 32];
            hex::decode_to_slice(second, &mut key).map_err(|_| {
                at(format!(
                    "the auth key of '{first}' is not 64 hex digits (the line `backup-cli key create` prints on the node)"
                ))
            })?;
            let mut entry = NodeEntry::new(first, key);
            for w in words {
                match w.split_once('=') {
                    Some(("quota", v)) => {
                        entry.quota = Some(parse_size(v).ok_or_else(|| {
                            at(format!(
                                "quota '{v}': expected bytes, or a number with K, M, G or T"
                            ))
                        })?);
                    }
                    None if w == "append-only" => entry.append_only = true,
                    _ => {
                        return Err(at(format!(
                            "unknown rule '{w}' (known: quota=SIZE, append-only)"
                        )))
                    }
                }
            }
            nodes.push(entry);
        }
        if nodes.is_empty() {
            return Err(Error::Invalid(format!(
                "{path} admits no node: add the line `backup-cli key create` prints on each node"
            )));
        }
        let a = ServerAuth { nodes };
        a.check_unique(path)?;
        Ok(a)
    }

    pub fn from_file(path: &Path) -> Result<ServerAuth> {
        // A line per node: 1 MiB is thousands of nodes.
        let text = crate::crypto::read_small_file(path, 1 << 20, "an auth key file")
            .map_err(|e| Error::io("read", path.display().to_string(), e))?;
        Self::parse(&text, &path.display().to_string())
    }

    pub fn nodes(&self) -> &[NodeEntry] {
        &self.nodes
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    pub(crate) fn keys(&self) -> Vec<[u8; 32]> {
        self.nodes.iter().map(|n| n.key).collect()
    }
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn parses_names_keys_and_rules() {
        let k1 = "11".repeat(32);
        let k2 = "22".repeat(32);
        let text = format!("# nodes\n\nalice {k1}\nbob {k2} quota=5G append-only # the shop\n");
        let a = ServerAuth::parse(&text, "auth").unwrap();
        assert_eq!(a.len(), 2);
        assert_eq!(a.nodes[0].name, "alice");
        assert_eq!(a.nodes[0].quota, None);
        assert_eq!(a.nodes[1].quota, Some(5 << 30));
        assert!(a.nodes[1].append_only && !a.nodes[0].append_only);
    }

    #[test]
    fn refuses_what_it_cannot_place() {
        let k = "ab".repeat(32);
        let cases = [
            (format!("{k}\n"), "without a node name"),
            (format!("Alice {k}\n"), "bad node name"),
            (format!("../x {k}\n"), "bad node name"),
            ("alice xyz\n".to_string(), "not 64 hex"),
            (format!("alice {k} quota=lots\n"), "quota 'lots'"),
            (format!("alice {k} delete-ok\n"), "unknown rule"),
            (
                format!("alice {k}\nalice {}\n", "cd".repeat(32)),
                "appears twice",
            ),
            (format!("alice {k}\nbob {k}\n"), "same auth key"),
            ("# nothing\n".to_string(), "admits no node"),
        ];
        for (text, needle) in cases {
            let e = ServerAuth::parse(&text, "auth").unwrap_err().to_string();
            assert!(e.contains(needle), "{text:?}: {e}");
        }
        assert!(ServerAuth::parse(&format!("{k}\n"), "auth")
            .unwrap_err()
            .to_string()
            .contains("backup-cli server migrate"));
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1024"), Some(1024));
        assert_eq!(parse_size("2K"), Some(2048));
        assert_eq!(parse_size("3g"), Some(3 << 30));
        assert_eq!(parse_size("G"), None);
        assert_eq!(parse_size("99999999999T"), None);
    }
}
