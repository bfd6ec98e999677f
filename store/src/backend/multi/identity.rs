//! Is a destination this repository's, or empty? Asked before anything is written or deleted
//! there: a `backup.lock` whose destination holds another node's repository must never make
//! catch-up delete that repository and mirror this one over it, nor land this node's journal in
//! it.

use super::catch_up::COMPARED_DIRS;
use crate::backend::Backend;
use crate::config::CONFIG_NAME;
use crate::envelope::HEADER_LEN;
use crate::error::{Error, Result};

/// What a destination holds, compared with the primary.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The same repository (its config names the same id, key and encryption).
    Same,
    /// Nothing of any repository: safe to fill.
    Empty,
    /// Something else: never written to. Says what.
    Foreign(String),
}

/// The bytes of a config that say which repository it is: the header without its format byte
/// (an upgrade changes it) and the repository id.
fn identity_bytes(config: &[u8]) -> Vec<u8> {
    let mut id = config.get(..HEADER_LEN + 16).unwrap_or(config).to_vec();
    if let Some(f) = id.get_mut(5) {
        *f = 0;
    }
    id
}

fn describe(config: &[u8]) -> String {
    match crate::config::Config::peek(config) {
        Ok((h, id)) => format!(
            "repository {id} ({}, key {})",
            h.encryption.name(),
            h.key_id
        ),
        Err(_) => "an object named config that is not a cln-backup config".into(),
    }
}

/// Compare `dst` with the primary's config (`None`: the primary has none yet).
pub fn check(primary_config: Option<&[u8]>, dst: &dyn Backend) -> Result<Verdict> {
    match dst.get(CONFIG_NAME) {
        Ok(theirs) => Ok(match primary_config {
            Some(ours) if identity_bytes(ours) == identity_bytes(&theirs) => Verdict::Same,
            Some(ours) => Verdict::Foreign(format!(
                "it holds {}, not this node's {}",
                describe(&theirs),
                describe(ours)
            )),
            None => Verdict::Foreign(format!("it holds {} already", describe(&theirs))),
        }),
        Err(Error::NotFound { .. }) => {
            for dir in COMPARED_DIRS {
                if let Some(o) = dst
                    .list(dir)?
                    .into_iter()
                    .find(|o| !o.name.starts_with("locks/") && !o.name.starts_with("tmp/"))
                {
                    return Ok(Verdict::Foreign(format!(
                        "it has no repository config but holds {} (not an empty destination)",
                        o.name
                    )));
                }
            }
            if let Some(s) = dst.stream_list()?.first() {
                return Ok(Verdict::Foreign(format!(
                    "it has no repository config but holds the journal stream {}",
                    s.name
                )));
            }
            Ok(Verdict::Empty)
        }
        Err(e) => Err(e),
    }
}

/// The primary's config, if it has one.
pub fn primary_config(primary: &dyn Backend) -> Result<Option<Vec<u8>>> {
    match primary.get(CONFIG_NAME) {
        Ok(c) => Ok(Some(c)),
        Err(Error::NotFound { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}
