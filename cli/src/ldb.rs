//! What backup-cli reads in lightningd's database, by SQL against its schema: the node id,
//! channels (peer, state, short channel id, capacity, our balance) and counts of invoices,
//! payments and forwards.
//!
//! Schema versions (the `version` table counts lightningd's migrations): checked on 282
//! (lightningd v26.06). Every column is looked up by name first, so another version gives what
//! it has and says what it lacks: the integer `channels.scid` exists from 208 on (before it, the
//! text `short_channel_id`), `forwards` from 203 on (before it, `forwarded_payments`).

use std::collections::HashSet;
use std::path::Path;

use anyhow::{Context, Result};
use rusqlite::{Connection, OpenFlags, OptionalExtension};
use serde::Serialize;

/// The schema versions whose tables and columns this was written and tested against.
pub const KNOWN_SCHEMAS: (u32, u32) = (208, 282);

/// lightningd's `enum channel_state` (lightningd/channel_state.h; numbers stored in the database).
const CHANNEL_STATES: [&str; 14] = [
    "DUALOPEND_OPEN_INIT",
    "CHANNELD_AWAITING_LOCKIN",
    "CHANNELD_NORMAL",
    "CHANNELD_SHUTTING_DOWN",
    "CLOSINGD_SIGEXCHANGE",
    "CLOSINGD_COMPLETE",
    "AWAITING_UNILATERAL",
    "FUNDING_SPEND_SEEN",
    "ONCHAIN",
    "CLOSED",
    "DUALOPEND_OPEN_COMMITTED",
    "DUALOPEND_AWAITING_LOCKIN",
    "CHANNELD_AWAITING_SPLICE",
    "DUALOPEND_OPEN_COMMIT_READY",
];

pub fn state_name(state: i64) -> String {
    usize::try_from(state)
        .ok()
        .and_then(|s| s.checked_sub(1))
        .and_then(|i| CHANNEL_STATES.get(i))
        .map(|s| s.to_string())
        .unwrap_or_else(|| format!("UNKNOWN({state})"))
}

/// A short channel id stored as an integer: block << 40 | transaction << 16 | output.
pub fn scid_text(v: i64) -> String {
    let v = v as u64;
    format!("{}x{}x{}", v >> 40, (v >> 16) & 0xFF_FFFF, v & 0xFFFF)
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Channel {
    pub id: i64,
    /// The peer's node id.
    pub peer: Option<String>,
    pub state: Option<i64>,
    pub state_name: Option<String>,
    pub short_channel_id: Option<String>,
    pub capacity_sat: Option<i64>,
    pub our_balance_msat: Option<i64>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Counts {
    pub invoices: Option<u64>,
    pub invoices_paid: Option<u64>,
    pub payments: Option<u64>,
    pub payments_complete: Option<u64>,
    pub forwards: Option<u64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Contents {
    pub schema_version: Option<u32>,
    /// Whether `schema_version` is within [`KNOWN_SCHEMAS`].
    pub schema_known: bool,
    pub data_version: u32,
    pub node_id: Option<String>,
    pub channels: Vec<Channel>,
    pub counts: Counts,
    /// What could not be read, and why (another schema version).
    pub notes: Vec<String>,
}

struct Db {
    conn: Connection,
    notes: Vec<String>,
}

impl Db {
    fn has_table(&self, t: &str) -> bool {
        self.conn
            .query_row(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1",
                [t],
                |_| Ok(()),
            )
            .optional()
            .ok()
            .flatten()
            .is_some()
    }

    fn columns(&self, t: &str) -> HashSet<String> {
        let Ok(mut st) = self.conn.prepare(&format!("PRAGMA table_info(\"{t}\")")) else {
            return HashSet::new();
        };
        st.query_map([], |r| r.get::<_, String>(1))
            .map(|rows| rows.flatten().collect())
            .unwrap_or_default()
    }

    /// `SELECT count(*) FROM table [WHERE cond]`, or None (with a note) when it cannot be read.
    fn count(&mut self, table: &str, cond: Option<(&str, &str)>) -> Option<u64> {
        if !self.has_table(table) {
            self.notes.push(format!("no table {table}"));
            return None;
        }
        let sql = match cond {
            Some((col, val)) => {
                if !self.columns(table).contains(col) {
                    self.notes.push(format!("no column {table}.{col}"));
                    return None;
                }
                format!("SELECT count(*) FROM \"{table}\" WHERE \"{col}\" = {val}")
            }
            None => format!("SELECT count(*) FROM \"{table}\""),
        };
        match self.conn.query_row(&sql, [], |r| r.get::<_, i64>(0)) {
            Ok(n) => Some(n as u64),
            Err(e) => {
                self.notes.push(format!("counting {table}: {e}"));
                None
            }
        }
    }

    fn channels(&mut self) -> Vec<Channel> {
        if !self.has_table("channels") {
            self.notes.push("no table channels".into());
            return Vec::new();
        }
        let have = self.columns("channels");
        let col = |c: &str, notes: &mut Vec<String>| -> String {
            if have.contains(c) {
                format!("c.\"{c}\"")
            } else {
                notes.push(format!("no column channels.{c}"));
                "NULL".into()
            }
        };
        let mut notes = Vec::new();
        let scid = if have.contains("scid") {
            "c.scid".to_string()
        } else if have.contains("short_channel_id") {
            "c.short_channel_id".to_string()
        } else {
            notes.push("no column channels.scid or short_channel_id".into());
            "NULL".into()
        };
        let peer = if self.columns("peers").contains("node_id") && have.contains("peer_id") {
            "(SELECT p.node_id FROM peers p WHERE p.id = c.peer_id)".to_string()
        } else {
            notes.push("no peers.node_id".into());
            "NULL".into()
        };
        let sql = format!(
            "SELECT c.id, {peer}, {}, {scid}, {}, {} FROM channels c ORDER BY c.id",
            col("state", &mut notes),
            col("funding_satoshi", &mut notes),
            col("msatoshi_local", &mut notes),
        );
        self.notes.extend(notes);
        let read = || -> rusqlite::Result<Vec<Channel>> {
            let mut st = self.conn.prepare(&sql)?;
            let rows = st.query_map([], |r| {
                let state: Option<i64> = r.get(2)?;
                let scid = match r.get_ref(3)? {
                    rusqlite::types::ValueRef::Integer(v) => Some(scid_text(v)),
                    rusqlite::types::ValueRef::Text(t) => {
                        Some(String::from_utf8_lossy(t).into_owned())
                    }
                    _ => None,
                };
                Ok(Channel {
                    id: r.get(0)?,
                    peer: r.get::<_, Option<Vec<u8>>>(1)?.map(hex::encode),
                    state,
                    state_name: state.map(state_name),
                    short_channel_id: scid,
                    capacity_sat: r.get(4)?,
                    our_balance_msat: r.get(5)?,
                })
            })?;
            rows.collect()
        };
        match read() {
            Ok(c) => c,
            Err(e) => {
                self.notes.push(format!("reading channels: {e}"));
                Vec::new()
            }
        }
    }
}

/// Read a lightningd database (read-only).
pub fn read(path: &Path) -> Result<Contents> {
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .with_context(|| format!("opening {}", path.display()))?;
    let mut db = Db {
        conn,
        notes: Vec::new(),
    };
    let schema_version: Option<u32> = if db.has_table("version") {
        db.conn
            .query_row("SELECT version FROM version", [], |r| r.get::<_, i64>(0))
            .optional()
            .ok()
            .flatten()
            .and_then(|v| u32::try_from(v).ok())
    } else {
        None
    };
    let schema_known =
        schema_version.is_some_and(|v| (KNOWN_SCHEMAS.0..=KNOWN_SCHEMAS.1).contains(&v));
    if !schema_known {
        db.notes.push(format!(
            "schema version {}: backup-cli knows {} to {} (lightningd v26.06 is {}); what it \
             reads is looked up by name, and what is missing is shown as unknown",
            schema_version.map_or("unknown".into(), |v| v.to_string()),
            KNOWN_SCHEMAS.0,
            KNOWN_SCHEMAS.1,
            KNOWN_SCHEMAS.1
        ));
    }
    let data_version = store::replay::data_version(&db.conn, &path.display().to_string())?;
    let node_id = db
        .conn
        .query_row("SELECT blobval FROM vars WHERE name = 'node_id'", [], |r| {
            r.get::<_, Option<Vec<u8>>>(0)
        })
        .optional()
        .ok()
        .flatten()
        .flatten()
        .map(hex::encode);
    let channels = db.channels();
    // lightningd's enums: invoice state 1 = PAID, payment status 1 = COMPLETE.
    let counts = Counts {
        invoices: db.count("invoices", None),
        invoices_paid: db.count("invoices", Some(("state", "1"))),
        payments: db.count("payments", None),
        payments_complete: db.count("payments", Some(("status", "1"))),
        forwards: if db.has_table("forwards") {
            db.count("forwards", None)
        } else {
            db.count("forwarded_payments", None)
        },
    };
    Ok(Contents {
        schema_version,
        schema_known,
        data_version,
        node_id,
        channels,
        counts,
        notes: db.notes,
    })
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn names_and_scids() {
        assert_eq!(state_name(3), "CHANNELD_NORMAL");
        assert_eq!(state_name(10), "CLOSED");
        assert_eq!(state_name(99), "UNKNOWN(99)");
        assert_eq!(state_name(0), "UNKNOWN(0)");
        assert_eq!(scid_text(133_040_907_091_968), "121x2x0");
        assert_eq!(
            scid_text((700_000 << 40) | (1234 << 16) | 1),
            "700000x1234x1"
        );
    }
}
