//! Upgrade a format-1 repository to format 2, in place (docs/format.md "Version changes").
//!
//! Format 2 chains journal records by their MACs, links each segment to the one before it, binds
//! every object to the repository id and authenticates the config to the key. A format-1
//! repository keeps its sealed segments, manifests, packs and indexes as they are (readers read
//! both formats); the upgrade, under the writer and maintenance locks:
//! 1. seals every format-1 stream as a format-2 sealed segment (its records, its frame count and
//!    the tag of its last frame, so the next segment's link can name it), then deletes the stream;
//! 2. starts the first format-2 stream after the newest segment (or reuses an empty one a crashed
//!    upgrade left);
//! 3. publishes the format-2 config (the commit point): `chain_from` names that first segment,
//!    `upgraded` the time.
//!
//! A crash before 3 leaves a format-1 repository whose streams are sealed (and maybe an empty
//! format-2 stream): readers read it as before, and the next upgrade carries on from there.

use serde::Serialize;

use crate::config::{Config, CONFIG_NAME};
use crate::crypto::{Crypto, MasterKey};
use crate::error::{Error, Result};
use crate::journal::reader;
use crate::journal::segment::{self, Recovery, Sealed, STREAM_HEADER_LEN};
use crate::journal::{sealed_name, stream_name};
use crate::repo::{Repository, MAINTENANCE_LOCK, WRITER_LOCK};
use crate::Durability;

#[derive(Clone, Debug, Default, Serialize)]
pub struct UpgradeReport {
    /// The repository was already at format 2: nothing was done.
    pub already: bool,
    pub from_format: u8,
    /// Format-1 streams sealed.
    pub sealed_streams: u64,
    /// The first segment whose records are chained.
    pub chain_from: u64,
    /// A torn tail cut from the newest format-1 stream (never acknowledged).
    pub torn_tail: Option<String>,
}

/// Upgrade `repo` to format 2 and return the upgraded handle. `bind` is the key to bind a
/// plaintext repository's config to (the operator's choice: `backup-cli upgrade
/// --bind-plaintext`); an encrypted repository is bound by its own key.
pub fn upgrade(
    repo: &Repository,
    holder: &str,
    bind: Option<&MasterKey>,
) -> Result<(Repository, UpgradeReport)> {
    let mut rep = UpgradeReport {
        from_format: repo.format(),
        ..Default::default()
    };
    if repo.format() >= 2 {
        rep.already = true;
        rep.chain_from = repo.config().body.chain_from;
        return Ok((repo.clone(), rep));
    }
    let _writer = repo.lock(WRITER_LOCK, holder)?;
    let _maintenance = repo.lock(MAINTENANCE_LOCK, holder)?;
    let b = repo.backend();

    // 1. Seal the format-1 streams.
    let segs = reader::segments(repo)?;
    let newest = segs.last().map(|s| s.last);
    let mut reuse = None;
    for s in segs.iter().filter(|s| !s.sealed) {
        let name = s.object_name();
        let data = b.stream_read(&stream_name(s.seq))?;
        let recovery = if Some(s.seq) == newest {
            Recovery::TruncateTornTail
        } else {
            Recovery::Strict
        };
        let p =
            segment::parse_stream(&data, repo.crypto(), repo.repo_id(), s.seq, &name, recovery)?;
        if p.format >= 2 {
            if p.frames > 0 || Some(s.seq) != newest {
                return Err(Error::corrupt(
                    name,
                    "a format-2 segment with records in a format-1 repository",
                ));
            }
            reuse = Some(s.seq); // left by an upgrade that crashed before its config
            continue;
        }
        if let Some(t) = &p.tail {
            rep.torn_tail = Some(format!("{name}: {}", t.describe()));
        }
        let sealed = Sealed {
            first: s.seq,
            last: s.seq,
            frames: p.frames,
            chain: p.frame_chain(),
            link: None,
            records: p.records,
        };
        let obj = sealed_name(s.seq);
        b.put(
            &obj,
            &segment::encode_sealed(
                &upgraded_crypto(repo, bind),
                &obj,
                &sealed,
                crate::config::SEGMENT_ZSTD_LEVEL,
            )?,
        )?;
        b.stream_delete(&stream_name(s.seq))?;
        rep.sealed_streams += 1;
    }

    // 2. The first format-2 stream.
    let first = match reuse {
        Some(seq) => seq,
        None => newest.map_or(0, |n| n + 1),
    };
    let mut stream = b.stream_open(&stream_name(first), Durability::Fsync)?;
    if stream.len() < STREAM_HEADER_LEN as u64 {
        stream.truncate(0)?;
        stream.append(&segment::stream_header(
            &upgraded_crypto(repo, bind),
            repo.repo_id(),
            first,
        ))?;
    }
    drop(stream);

    // 3. The format-2 config: the commit point.
    let crypto = upgraded_crypto(repo, bind);
    let mut body = repo.config().body.clone();
    body.format = crate::envelope::FORMAT_VERSION;
    body.encrypted = repo.is_encrypted();
    body.chain_from = first;
    body.upgraded = Some(crate::config::now());
    let config = Config {
        repo_id: repo.repo_id(),
        header: crate::envelope::Header::new(crate::envelope::Kind::Config, &crypto),
        body,
    };
    b.put(CONFIG_NAME, &config.encode(&crypto))?;
    rep.chain_from = first;
    drop((_writer, _maintenance));
    let key = bind.cloned().or_else(|| repo.key().cloned());
    Ok((Repository::open_backend(b.clone(), key)?, rep))
}

/// The crypto of the upgraded repository: the same keys, bound to its id, format-1 objects
/// still accepted.
fn upgraded_crypto(repo: &Repository, bind: Option<&MasterKey>) -> Crypto {
    let c = match (repo.is_encrypted(), bind) {
        (false, Some(k)) => Crypto::plaintext_bound(k),
        _ => repo.crypto().clone(),
    };
    c.for_repository(repo.repo_id(), true)
}
