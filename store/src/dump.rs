//! A canonical text dump of an SQLite database, to compare databases in tests and checks:
//! every schema object's SQL, then every table's rows in rowid order, rowids included (SQLite's
//! `.dump` loses implicit rowids; lightningd depends on them).

use std::fmt::Write;
use std::path::Path;

use rusqlite::types::ValueRef;
use rusqlite::{Connection, OpenFlags};

use crate::error::{Error, Result};

pub fn dump(path: &Path) -> Result<String> {
    let object = path.display().to_string();
    let e = |err| Error::sqlite(&object, err);
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(e)?;
    let mut out = String::new();
    let mut stmt = conn
        .prepare(
            "SELECT type, name, tbl_name, coalesce(sql, '') FROM sqlite_master ORDER BY type, name",
        )
        .map_err(e)?;
    let objs: Vec<(String, String, String, String)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .map_err(e)?
        .collect::<std::result::Result<_, _>>()
        .map_err(e)?;
    for (ty, name, _, sql) in &objs {
        let _ = writeln!(out, "{ty} {name}: {sql}");
    }
    for (ty, name, _, _) in &objs {
        if ty != "table" || name.starts_with("sqlite_") {
            continue;
        }
        let q = format!(
            "SELECT rowid, * FROM \"{}\" ORDER BY rowid",
            name.replace('"', "\"\"")
        );
        let mut st = match conn.prepare(&q) {
            Ok(s) => s,
            Err(_) => conn
                .prepare(&format!("SELECT * FROM \"{}\"", name.replace('"', "\"\"")))
                .map_err(e)?,
        };
        let n = st.column_count();
        let mut rows = st.query([]).map_err(e)?;
        while let Some(row) = rows.next().map_err(e)? {
            let _ = write!(out, "{name}|");
            for i in 0..n {
                match row.get_ref(i).map_err(e)? {
                    ValueRef::Null => out.push_str("NULL"),
                    ValueRef::Integer(v) => {
                        let _ = write!(out, "{v}");
                    }
                    ValueRef::Real(v) => {
                        let _ = write!(out, "{v:?}");
                    }
                    ValueRef::Text(t) => {
                        let _ = write!(out, "'{}'", String::from_utf8_lossy(t));
                    }
                    ValueRef::Blob(b) => {
                        let _ = write!(out, "x'{}'", hex::encode(b));
                    }
                }
                out.push('|');
            }
            out.push('\n');
        }
    }
    Ok(out)
}
