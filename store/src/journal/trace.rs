//! Traces of `db_write` calls: one params object `{"data_version":V,"writes":[SQL…]}` per line
//! (the fixtures of lightningd v26.06.6, the demo, the tests and the benchmarks), optionally
//! zstd-compressed (`.zst`).

use std::path::Path;

use super::record::Batch;
use crate::error::{Error, Result};

/// Parse a trace's text; blank lines are skipped.
pub fn parse(text: &str, object: &str) -> Result<Vec<Batch>> {
    let mut out = Vec::new();
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let bad = |what: &str| Error::corrupt(object, format!("line {}: {what}", i + 1));
        let v: serde_json::Value =
            serde_json::from_str(line).map_err(|e| bad(&format!("not JSON: {e}")))?;
        let data_version = v
            .get("data_version")
            .and_then(serde_json::Value::as_u64)
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| bad("no data_version"))?;
        let writes = v
            .get("writes")
            .and_then(serde_json::Value::as_array)
            .ok_or_else(|| bad("no writes"))?
            .iter()
            .map(|w| w.as_str().map(str::to_string))
            .collect::<Option<Vec<String>>>()
            .ok_or_else(|| bad("a write is not a string"))?;
        out.push(Batch {
            data_version,
            writes,
        });
    }
    Ok(out)
}

/// Read and parse a trace file (`.zst` files are decompressed).
pub fn load(path: &Path) -> Result<Vec<Batch>> {
    let object = path.display().to_string();
    let raw = std::fs::read(path).map_err(|e| Error::io("read", &object, e))?;
    let raw = if path.extension().is_some_and(|e| e == "zst") {
        zstd::stream::decode_all(raw.as_slice())
            .map_err(|e| Error::corrupt(&object, format!("zstd: {e}")))?
    } else {
        raw
    };
    let text = String::from_utf8(raw).map_err(|_| Error::corrupt(&object, "not UTF-8"))?;
    parse(&text, &object)
}
