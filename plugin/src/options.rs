//! The manifest, the plugin's options (which arrive only at init), and the SQLite-only check.

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};
use store::backend::remote::RemoteOptions;
use store::backend::Durability;
use store::ops::prune::Retention;

use crate::protocol::Out;

pub const OPT_COMPACT_BYTES: &str = "backup-compact-journal-bytes";
pub const OPT_DURABILITY: &str = "backup-durability";
pub const DEFAULT_COMPACT_BYTES: u64 = 64 * 1024 * 1024;
/// Default of [`OPT_COMPACTION_NICE`].
pub const DEFAULT_COMPACTION_NICE: i32 = 19;
pub const OPT_RETENTION: &str = "backup-retention";
pub const DEFAULT_RETENTION: &str = "last=10,daily=7,weekly=4,monthly=6";
pub const OPT_COMPACTION_NICE: &str = "backup-compaction-nice";
pub const OPT_RECONNECT_TRIES: &str = "backup-reconnect-tries";
pub const OPT_RECONNECT_WAIT: &str = "backup-reconnect-wait";
pub const OPT_RECONNECT_FACTOR: &str = "backup-reconnect-factor";
pub const OPT_CHECK_INTERVAL: &str = "backup-check-interval";
/// Default of [`OPT_CHECK_INTERVAL`]: daily.
pub const DEFAULT_CHECK_INTERVAL: u64 = 86_400;
pub const OPT_METRICS_FILE: &str = "backup-metrics-file";

#[derive(Clone, Debug, PartialEq)]
pub struct Options {
    /// Start a compaction when the journal since the last snapshot passes this; 0 = never.
    pub compact_journal_bytes: u64,
    pub durability: Durability,
    /// Reconnect policy of `socket:` destinations (the old plugin's 5 tries, 5 s, 1.5).
    pub remote: RemoteOptions,
    /// Snapshots kept after each compaction (None: keep everything).
    pub retention: Option<Retention>,
    /// CPU nice value of the compaction thread (above 0, with `SCHED_IDLE` too).
    pub compaction_nice: i32,
    /// Seconds between two restore drills (`backup-check`) in the background; 0 = never.
    pub check_interval: u64,
    /// Where to write the Prometheus metrics (relative to the network dir); None = nowhere.
    pub metrics_file: Option<std::path::PathBuf>,
}

/// `last=N,hourly=N,daily=N,weekly=N,monthly=N,within=30d` (any subset), or `off`.
pub fn parse_retention(s: &str) -> Result<Option<Retention>, String> {
    let s = s.trim();
    if s == "off" || s == "0" {
        return Ok(None);
    }
    let mut r = Retention::default();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = part
            .split_once('=')
            .ok_or_else(|| format!("{OPT_RETENTION}: '{part}' is not key=N"))?;
        if k.trim() == "within" {
            r.keep_within = store::ops::prune::parse_duration(v)
                .map_err(|e| format!("{OPT_RETENTION}: within: {e}"))?;
            continue;
        }
        let n: u32 = v
            .trim()
            .parse()
            .map_err(|_| format!("{OPT_RETENTION}: '{v}' is not a count"))?;
        match k.trim() {
            "last" => r.keep_last = n,
            "hourly" => r.keep_hourly = n,
            "daily" => r.keep_daily = n,
            "weekly" => r.keep_weekly = n,
            "monthly" => r.keep_monthly = n,
            other => {
                return Err(format!(
                    "{OPT_RETENTION}: unknown key '{other}' (last, hourly, daily, weekly, monthly, within)"
                ))
            }
        }
    }
    if r.is_empty() {
        return Err(format!(
            "{OPT_RETENTION}: keep at least one snapshot, or say off"
        ));
    }
    Ok(Some(r))
}

impl Default for Options {
    fn default() -> Self {
        Options {
            compact_journal_bytes: DEFAULT_COMPACT_BYTES,
            durability: Durability::Fsync,
            remote: RemoteOptions::default(),
            retention: parse_retention(DEFAULT_RETENTION).unwrap_or_default(),
            compaction_nice: DEFAULT_COMPACTION_NICE,
            check_interval: DEFAULT_CHECK_INTERVAL,
            metrics_file: None,
        }
    }
}

fn number(v: &Value) -> Option<f64> {
    v.as_f64()
        .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
}

impl Options {
    /// Read our options from init's params; absent ones keep their defaults.
    pub fn from_init(params: &Value) -> Result<Options, String> {
        let mut o = Options::default();
        let opts = params.get("options").cloned().unwrap_or(Value::Null);
        if let Some(v) = opts.get(OPT_COMPACT_BYTES) {
            o.compact_journal_bytes = v
                .as_u64()
                .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
                .ok_or_else(|| {
                    format!("{OPT_COMPACT_BYTES} must be a byte count (0 disables), not {v}")
                })?;
        }
        if let Some(v) = opts.get(OPT_COMPACTION_NICE) {
            o.compaction_nice = number(v)
                .filter(|n| (0.0..=19.0).contains(n) && n.fract() == 0.0)
                .ok_or_else(|| format!("{OPT_COMPACTION_NICE} must be 0 to 19, not {v}"))?
                as i32;
        }
        if let Some(v) = opts.get(OPT_RETENTION) {
            let text = v.as_str().ok_or_else(|| {
                format!("{OPT_RETENTION} must be text like {DEFAULT_RETENTION}, not {v}")
            })?;
            o.retention = parse_retention(text)?;
        }
        if let Some(v) = opts.get(OPT_RECONNECT_TRIES) {
            o.remote.tries = number(v)
                .filter(|n| *n >= 0.0 && n.fract() == 0.0 && *n <= 1000.0)
                .ok_or_else(|| {
                    format!("{OPT_RECONNECT_TRIES} must be a whole number of tries, not {v}")
                })? as u32;
        }
        if let Some(v) = opts.get(OPT_RECONNECT_WAIT) {
            let secs = number(v)
                .filter(|n| *n >= 0.0 && *n <= 3600.0)
                .ok_or_else(|| {
                    format!("{OPT_RECONNECT_WAIT} must be seconds (0 to 3600), not {v}")
                })?;
            o.remote.first_wait = Duration::from_secs_f64(secs);
        }
        if let Some(v) = opts.get(OPT_RECONNECT_FACTOR) {
            o.remote.factor = number(v)
                .filter(|n| (1.0..=10.0).contains(n))
                .ok_or_else(|| {
                    format!("{OPT_RECONNECT_FACTOR} must be a number from 1 to 10, not {v}")
                })?;
        }
        if let Some(v) = opts.get(OPT_CHECK_INTERVAL) {
            o.check_interval = number(v)
                .filter(|n| *n >= 0.0 && n.fract() == 0.0)
                .ok_or_else(|| {
                    format!("{OPT_CHECK_INTERVAL} must be whole seconds (0 disables), not {v}")
                })? as u64;
        }
        if let Some(v) = opts.get(OPT_METRICS_FILE) {
            let p = v
                .as_str()
                .ok_or_else(|| format!("{OPT_METRICS_FILE} must be a file path, not {v}"))?;
            o.metrics_file = (!p.trim().is_empty()).then(|| std::path::PathBuf::from(p.trim()));
        }
        if let Some(v) = opts.get(OPT_DURABILITY) {
            o.durability = v
                .as_str()
                .and_then(Durability::parse)
                .ok_or_else(|| format!("{OPT_DURABILITY} must be fsync or flush, not {v}"))?;
        }
        Ok(o)
    }
}

pub fn manifest() -> Value {
    json!({
        "options": [
            {
                "name": OPT_COMPACT_BYTES,
                "type": "int",
                "default": DEFAULT_COMPACT_BYTES,
                "description": "Make a snapshot in the background when the journal since the last one passes this many bytes (0: only on backup-compact)"
            },
            {
                "name": OPT_COMPACTION_NICE,
                "type": "int",
                "default": DEFAULT_COMPACTION_NICE,
                "description": "CPU priority (nice, 0 to 19) of the background compaction, so db_write hooks never wait behind it for a CPU; above 0 it also runs under SCHED_IDLE"
            },
            {
                "name": OPT_RETENTION,
                "type": "string",
                "default": DEFAULT_RETENTION,
                "description": "Snapshots kept after each compaction (keys last, hourly, daily, weekly, monthly, and within=30d: every data_version of the last 30 days stays restorable; the newest is always kept); the journal from the oldest kept snapshot on is kept, so every data_version since then stays restorable. off keeps everything."
            },
            {
                "name": OPT_RECONNECT_TRIES,
                "type": "int",
                "default": 5,
                "description": "socket: destinations: how many times to reconnect, with exponential back-off, when the connection drops while storing a change, before the change fails (and lightningd stops)"
            },
            {
                "name": OPT_RECONNECT_WAIT,
                "type": "string",
                "default": "5",
                "description": "socket: destinations: seconds to wait before the first reconnect"
            },
            {
                "name": OPT_RECONNECT_FACTOR,
                "type": "string",
                "default": "1.5",
                "description": "socket: destinations: each wait is this many times the previous one"
            },
            {
                "name": OPT_CHECK_INTERVAL,
                "type": "int",
                "default": DEFAULT_CHECK_INTERVAL,
                "description": "Seconds between restore drills in the background (backup-check: the backup restored and compared table by table with lightningd's database, at low priority, reading it in short steps); 0: only on request"
            },
            {
                "name": OPT_METRICS_FILE,
                "type": "string",
                "default": "",
                "description": "Write Prometheus metrics to this file every 5 s (for node_exporter's textfile collector, e.g. /var/lib/node_exporter/textfile/cln_backup.prom; relative to the network dir); empty: off"
            },
            {
                "name": OPT_DURABILITY,
                "type": "string",
                "default": "fsync",
                "description": "fsync: each change is on stable storage before lightningd commits it (survives power loss); flush: only handed to the OS (survives a crash of lightningd, not of the machine)"
            }
        ],
        "rpcmethods": [
            {
                "name": "backup-compact",
                "usage": "",
                "description": "Make a snapshot of the database now, in the background; answers when it is stored (keys before/after as the old backup plugin, plus snapshot, data_version, bytes_added, dedup_ratio, duration_ms)"
            },
            {
                "name": "backup-status",
                "usage": "",
                "description": "The backup's URL, last data_version, journal bytes since the last snapshot, last snapshot, whether a compaction runs"
            },
            {
                "name": "backup-check",
                "usage": "",
                "description": "Restore drill: restore the backup and compare it table by table with lightningd's own database, in the background without stalling lightningd; answers equal or the first difference"
            },
            {
                "name": "backup-snapshots",
                "usage": "",
                "description": "The snapshots in the backup, oldest first"
            }
        ],
        "hooks": ["db_write"],
        "subscriptions": [],
        "dynamic": false,
        "nonnumericids": true
    })
}

/// A `wallet` setting in init's params that is not SQLite (lightningd does not send it today:
/// see [`check_wallet_in_background`]).
pub fn non_sqlite_wallet(params: &Value) -> Option<String> {
    ["options", "configuration"]
        .iter()
        .filter_map(|k| params.get(*k)?.get("wallet")?.as_str())
        .find(|w| !w.starts_with("sqlite3"))
        .map(str::to_string)
}

pub fn sqlite_only_message(wallet: &str) -> String {
    format!(
        "cln-backup works with SQLite databases only, but wallet is {wallet}: lightningd does not call the db_write hook for it, so nothing is backed up. Use PostgreSQL's own replication instead."
    )
}

/// Ask lightningd for its `wallet` setting over its RPC socket, on a thread (never on the hook
/// path, never waited for), and log if it is not SQLite. Silent if the socket is not there.
pub fn check_wallet_in_background(params: &Value, dir: &Path, out: &Out) {
    let path = crate::lnrpc::socket_path(params, dir);
    let out = out.clone();
    std::thread::spawn(move || {
        let wallet = crate::lnrpc::call(&path, "listconfigs", json!({"config": "wallet"}));
        if let Some(w) = wallet.ok().and_then(|v| {
            v.pointer("/configs/wallet/value_str")
                .and_then(Value::as_str)
                .map(str::to_string)
        }) {
            if !w.starts_with("sqlite3") {
                out.log("broken", &sqlite_only_message(&w));
            }
        }
    });
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn options_from_init() {
        let o = Options::from_init(&json!({"options": {}})).unwrap();
        assert_eq!(o, Options::default());
        let o = Options::from_init(
            &json!({"options": {OPT_COMPACT_BYTES: 0, OPT_DURABILITY: "flush"}}),
        )
        .unwrap();
        assert_eq!(
            (o.compact_journal_bytes, o.durability),
            (0, Durability::Flush)
        );
        let o = Options::from_init(&json!({"options": {OPT_COMPACT_BYTES: "1000"}})).unwrap();
        assert_eq!(o.compact_journal_bytes, 1000);
        assert!(Options::from_init(&json!({"options": {OPT_DURABILITY: "maybe"}})).is_err());
        assert!(Options::from_init(&json!({"options": {OPT_COMPACT_BYTES: -1}})).is_err());
    }

    /// lightningd passes every option back in `init`, unset ones at the default the manifest
    /// declared: those defaults must be the plugin's own.
    #[test]
    fn manifest_defaults_are_the_defaults() {
        let mut given = serde_json::Map::new();
        for o in manifest()["options"].as_array().into_iter().flatten() {
            if let (Some(name), Some(default)) = (o["name"].as_str(), o.get("default")) {
                given.insert(name.to_string(), default.clone());
            }
        }
        let o = Options::from_init(&json!({ "options": given })).unwrap();
        assert_eq!(o, Options::default());
    }

    #[test]
    fn retention_within() {
        let r = parse_retention("last=3,within=30d").unwrap().unwrap();
        assert_eq!((r.keep_last, r.keep_within), (3, 30 * 86_400));
        let r = parse_retention("within=12h").unwrap().unwrap();
        assert_eq!((r.keep_last, r.keep_within), (0, 12 * 3600));
        for bad in [
            "within=30",
            "within=0d",
            "within=d",
            "within=30x",
            "within=-1d",
        ] {
            let e = parse_retention(bad).unwrap_err();
            assert!(e.contains("within"), "{bad}: {e}");
        }
    }

    #[test]
    fn postgres_wallet_is_named() {
        let p = json!({"options": {"wallet": "postgres://u@h/db"}});
        assert_eq!(non_sqlite_wallet(&p).as_deref(), Some("postgres://u@h/db"));
        assert_eq!(
            non_sqlite_wallet(&json!({"options": {"wallet": "sqlite3:///x"}})),
            None
        );
    }
}
