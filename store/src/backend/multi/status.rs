//! What `backup-status` shows of each destination, and waiting for the asynchronous ones.

use std::time::{Duration, Instant};

use super::queue::Phase;
use super::{Mode, MultiBackend};

/// What `backup-status` shows for one destination.
#[derive(Clone, Debug, PartialEq)]
pub struct DestStatus {
    pub url: String,
    pub mode: Mode,
    /// `"live"` (replicating from its queue), `"catching up"` (comparing with the primary),
    /// `"opening"` (not opened yet) or `"down"` (could not be opened yet: see `last_error`).
    pub state: &'static str,
    /// Writes not yet on this destination, and how many of them are journal appends (batches).
    pub lag_writes: u64,
    pub lag_batches: u64,
    /// Bytes of those writes.
    pub lag_bytes: u64,
    /// Age of the oldest write not yet on this destination (0 when caught up).
    pub lag_seconds: f64,
    /// The last failure, kept after recovery for the operator to see.
    pub last_error: Option<String>,
}

impl MultiBackend {
    /// Status of every destination, in the configured order (synchronous first).
    pub fn status(&self) -> Vec<DestStatus> {
        let mut out: Vec<DestStatus> = self
            .sync
            .iter()
            .map(|b| DestStatus {
                url: b.url(),
                mode: Mode::Sync,
                state: "live",
                lag_writes: 0,
                lag_batches: 0,
                lag_bytes: 0,
                lag_seconds: 0.0,
                last_error: None,
            })
            .collect();
        for r in &self.replicas {
            let st = r.lock();
            let (state, writes, batches, bytes, since) = match st.phase {
                Phase::Live => (
                    "live",
                    st.queue.len() as u64,
                    st.queue.iter().filter(|(o, _)| o.is_append()).count() as u64,
                    st.queued_bytes,
                    st.queue.front().map(|(_, t)| *t),
                ),
                Phase::CatchUp | Phase::Down | Phase::Refused => (
                    match st.phase {
                        Phase::Down if st.open_failures == 0 => "opening",
                        Phase::Down => "down",
                        Phase::Refused => "refused",
                        _ => "catching up",
                    },
                    st.missed_writes,
                    st.missed_batches,
                    st.missed_bytes,
                    st.behind_since,
                ),
            };
            out.push(DestStatus {
                url: r.url.clone(),
                mode: Mode::Async,
                state,
                lag_writes: writes,
                lag_batches: batches,
                lag_bytes: bytes,
                lag_seconds: since.map(|t| t.elapsed().as_secs_f64()).unwrap_or(0.0),
                last_error: st.last_error.clone(),
            });
        }
        out
    }

    /// Wait until every asynchronous destination has caught up (queue empty, live), or the
    /// timeout passes. True if caught up.
    pub fn wait_caught_up(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        for r in &self.replicas {
            let mut st = r.lock();
            loop {
                if matches!(st.phase, Phase::Live) && st.queue.is_empty() {
                    break;
                }
                let now = Instant::now();
                if now >= deadline {
                    return false;
                }
                st = match r.cv.wait_timeout(st, deadline - now) {
                    Ok((g, _)) => g,
                    Err(p) => p.into_inner().0,
                };
            }
        }
        true
    }

    /// Give the destinations that are up (not `down`) until `timeout` to take every queued or
    /// missed write; returns the status of those still behind (down ones included), for the
    /// operator. The next start catches up what is left.
    pub fn drain(&self, timeout: Duration) -> Vec<DestStatus> {
        let deadline = Instant::now() + timeout;
        for r in &self.replicas {
            let mut st = r.lock();
            loop {
                let done = match st.phase {
                    Phase::Live => st.queue.is_empty(),
                    Phase::Down | Phase::Refused => true,
                    Phase::CatchUp => false,
                };
                let now = Instant::now();
                if done || now >= deadline {
                    break;
                }
                st = match r.cv.wait_timeout(st, deadline - now) {
                    Ok((g, _)) => g,
                    Err(p) => p.into_inner().0,
                };
            }
        }
        self.status()
            .into_iter()
            .filter(|d| d.mode == Mode::Async && (d.state != "live" || d.lag_writes > 0))
            .collect()
    }
}
