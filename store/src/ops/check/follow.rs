//! The backup's copy of the database, brought forward batch by batch to whatever version the
//! live database shows next: materialised once by [`crate::ops::restore::restore`] at the first
//! version, then the journal records after it applied as they are needed.

use std::collections::VecDeque;
use std::path::Path;

use rusqlite::Connection;

use crate::error::{Error, Result};
use crate::journal::segment::Recovery;
use crate::journal::{reader, Record};
use crate::manifest;
use crate::ops::restore::{restore, RestoreReport, RestoreTarget};
use crate::replay::{self, Replayer};
use crate::repo::Repository;

/// Why the backup cannot be brought to a version: not damage, a finding of the check.
#[derive(Debug)]
pub enum Behind {
    /// The backup's newest batch is older than the version lightningd committed.
    EndsAt(u32),
}

pub struct Follower {
    repo: Repository,
    rp: Replayer,
    version: u32,
    /// Records after `version` read from the journal, in order, supersedes resolved.
    pending: VecDeque<Record>,
    /// The segment read last, and how many of its records were taken.
    last_seq: u64,
    taken_in_last: usize,
    pub restore: RestoreReport,
}

impl Follower {
    /// The backup at `version`, in a new file at `path`. `Ok(Err(Behind))` when the backup
    /// does not reach `version`.
    pub fn start(
        repo: &Repository,
        path: &Path,
        version: u32,
    ) -> Result<std::result::Result<Follower, Behind>> {
        let report = match restore(repo, path, &RestoreTarget::Version(version)) {
            Ok(r) => r,
            Err(Error::VersionNotAvailable { asked, .. }) if asked == version => {
                let newest = crate::ops::stats::stats(repo)?.last_version.unwrap_or(0);
                if newest < version {
                    return Ok(Err(Behind::EndsAt(newest)));
                }
                return Err(Error::VersionNotAvailable {
                    asked: version,
                    why: "the backup does not hold it (pruned?)".into(),
                });
            }
            Err(e) => return Err(e),
        };
        // Where replay continues, and the foreign_keys setting at `version` (lightningd turns it
        // off only around migrations; a replay must do as it did).
        let snap = match &report.snapshot {
            Some(id) => Some(manifest::find(repo, id)?),
            None => None,
        };
        let from_seq = snap.as_ref().map(|m| m.journal_segment).unwrap_or(0);
        let mut fk = snap.as_ref().map(|m| m.foreign_keys).unwrap_or(true);
        let base = snap.as_ref().map(|m| m.data_version).unwrap_or(0);
        // The journal streams through (one segment in memory at a time): only the records after
        // `version` are kept, to apply as the live database moves on.
        let mut j = reader::JournalReader::open(repo, from_seq, Recovery::TruncateTornTail)?;
        let mut last_seq = from_seq;
        let mut taken_in_last = 0usize;
        let records = j.by_ref().filter_map(|r| match r {
            Ok((seq, r)) => {
                if seq != last_seq {
                    last_seq = seq;
                    taken_in_last = 0;
                }
                taken_in_last += 1;
                (r.batch.data_version > base).then_some(Ok(r))
            }
            Err(e) => Some(Err(e)),
        });
        // Restore applied every batch up to `version`, and the PRAGMA-only batches at or below
        // it (they repeat the version of the batch before them).
        let mut pending = VecDeque::new();
        for r in replay::Effective::new(records, "journal") {
            let r = r?;
            if r.batch.data_version > version {
                pending.push_back(r);
            } else if r.pragma_only() {
                for w in &r.batch.writes {
                    if let Some(on) = replay::foreign_keys_setting(w) {
                        fk = on;
                    }
                }
            }
        }
        let rp = Replayer::open(path, fk)?;
        Ok(Ok(Follower {
            repo: repo.clone(),
            rp,
            version,
            pending,
            last_seq,
            taken_in_last,
            restore: report,
        }))
    }

    pub fn connection(&self) -> &Connection {
        self.rp.connection()
    }

    /// Read the journal records appended since the last read.
    fn refresh(&mut self) -> Result<()> {
        let mut fresh = Vec::new();
        let mut in_last = 0usize;
        for r in reader::JournalReader::open(&self.repo, self.last_seq, Recovery::TruncateTornTail)?
        {
            let (seq, r) = r?;
            if seq < self.last_seq {
                // Garbage collection merged the segment read last into a run since: its records
                // are numbered by the run's first segment now, so which of them were applied
                // cannot be told by counting. Stop rather than apply one twice.
                return Err(Error::Invalid(format!(
                    "journal segment {:016x} was merged into a sealed run during the check: run it again",
                    self.last_seq
                )));
            }
            if seq == self.last_seq {
                in_last += 1;
                if in_last <= self.taken_in_last {
                    continue;
                }
            }
            if seq != self.last_seq {
                self.last_seq = seq;
                in_last = 1;
            }
            fresh.push(r);
        }
        self.taken_in_last = in_last;
        let mut all: Vec<Record> = self.pending.drain(..).collect();
        all.extend(fresh);
        // A superseding record whose target was applied already: lightningd replaced a batch
        // the check took as committed. That happens only across a crash of lightningd, never
        // under a running check; say so rather than compare against a mix.
        let resolved = replay::effective(all, "journal").map_err(|_| {
            Error::Invalid(
                "the journal changed under the check (a batch it applied was replaced); run it again"
                    .into(),
            )
        })?;
        self.pending = resolved.into();
        Ok(())
    }

    /// Apply records up to `target`. `Ok(Err(Behind))` when the backup ends before it.
    pub fn advance_to(&mut self, target: u32) -> Result<std::result::Result<(), Behind>> {
        if target < self.version {
            return Err(Error::Invalid(format!(
                "lightningd's database went back from data_version {} to {target} during the check",
                self.version
            )));
        }
        let mut refreshed = false;
        while self.version < target {
            match self.pending.pop_front() {
                Some(r) if r.pragma_only() => self.rp.apply(&r)?,
                Some(r) if r.batch.data_version == self.version + 1 => {
                    self.rp.apply(&r)?;
                    self.version = r.batch.data_version;
                }
                Some(r) => {
                    return Err(Error::corrupt(
                        "journal",
                        format!(
                            "batch for data_version {} follows {}: the journal has a gap",
                            r.batch.data_version, self.version
                        ),
                    ))
                }
                None if !refreshed => {
                    self.refresh()?;
                    refreshed = true;
                }
                None => return Ok(Err(Behind::EndsAt(self.version))),
            }
        }
        Ok(Ok(()))
    }
}
