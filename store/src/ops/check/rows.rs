//! Reading tables in rowid order, a range at a time, and naming the first difference.
//!
//! Values are shown only where they cannot be secrets: integers and reals as they are, text and
//! blobs by length and a hash (a difference report goes to lightningd's log).

use rusqlite::types::Value;
use rusqlite::Connection;

use crate::error::{Error, Result};

/// One row: its rowid (None in a WITHOUT ROWID table) and its columns.
pub type Row = (Option<i64>, Vec<Value>);

/// A schema object as `sqlite_master` lists it: type, name, SQL.
pub type SchemaObject = (String, String, String);

pub fn schema(conn: &Connection, object: &str) -> Result<Vec<SchemaObject>> {
    let e = |err| Error::sqlite(object, err);
    let mut st = conn
        .prepare(
            "SELECT type, name, coalesce(sql, '') FROM sqlite_master \
             WHERE name NOT LIKE 'sqlite_stat%' ORDER BY type, name",
        )
        .map_err(e)?;
    let rows = st
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .map_err(e)?
        .collect::<std::result::Result<Vec<SchemaObject>, _>>()
        .map_err(e)?;
    Ok(rows)
}

/// The tables to compare: every table, `sqlite_sequence` included (it decides the next
/// AUTOINCREMENT id).
pub fn tables(schema: &[SchemaObject]) -> Vec<(String, bool)> {
    schema
        .iter()
        .filter(|(ty, _, _)| ty == "table")
        .map(|(_, name, sql)| {
            let without_rowid = sql
                .to_ascii_uppercase()
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
                .contains("WITHOUT ROWID");
            (name.clone(), !without_rowid)
        })
        .collect()
}

fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Column names of `table`.
pub fn columns(conn: &Connection, table: &str, object: &str) -> Result<Vec<String>> {
    let st = conn
        .prepare(&format!("SELECT * FROM {} LIMIT 0", quote(table)))
        .map_err(|e| Error::sqlite(object, e))?;
    Ok(st.column_names().iter().map(|s| s.to_string()).collect())
}

/// Rows of a rowid table with `after < rowid <= upto`, at most `limit` (None: no bound).
pub fn rows(
    conn: &Connection,
    table: &str,
    after: Option<i64>,
    upto: Option<i64>,
    limit: Option<usize>,
    object: &str,
) -> Result<Vec<Row>> {
    let e = |err| Error::sqlite(object, err);
    // From the start: `>=` the smallest rowid, so a row with rowid i64::MIN is read too.
    let sql = format!(
        "SELECT rowid, * FROM {} WHERE rowid {} ?1 AND rowid <= ?2 ORDER BY rowid LIMIT ?3",
        quote(table),
        if after.is_some() { ">" } else { ">=" }
    );
    let mut st = conn.prepare_cached(&sql).map_err(e)?;
    let n = st.column_count();
    let lim = limit.map(|l| l as i64).unwrap_or(-1);
    let mut q = st
        .query(rusqlite::params![
            after.unwrap_or(i64::MIN),
            upto.unwrap_or(i64::MAX),
            lim
        ])
        .map_err(e)?;
    let mut out = Vec::new();
    while let Some(r) = q.next().map_err(e)? {
        let rowid: i64 = r.get(0).map_err(e)?;
        let mut vals = Vec::with_capacity(n.saturating_sub(1));
        for i in 1..n {
            vals.push(r.get::<_, Value>(i).map_err(e)?);
        }
        out.push((Some(rowid), vals));
    }
    Ok(out)
}

/// Every row of a WITHOUT ROWID table, in the order of all its columns.
pub fn all_rows(conn: &Connection, table: &str, object: &str) -> Result<Vec<Row>> {
    let e = |err| Error::sqlite(object, err);
    let cols = columns(conn, table, object)?;
    let order: Vec<String> = (1..=cols.len()).map(|i| i.to_string()).collect();
    let sql = format!(
        "SELECT * FROM {} ORDER BY {}",
        quote(table),
        order.join(", ")
    );
    let mut st = conn.prepare(&sql).map_err(e)?;
    let n = st.column_count();
    let mut q = st.query([]).map_err(e)?;
    let mut out = Vec::new();
    while let Some(r) = q.next().map_err(e)? {
        let mut vals = Vec::with_capacity(n);
        for i in 0..n {
            vals.push(r.get::<_, Value>(i).map_err(e)?);
        }
        out.push((None, vals));
    }
    Ok(out)
}

/// A value as a report may show it.
pub fn show(v: &Value) -> String {
    let digest = |b: &[u8]| hex::encode(blake3::hash(b).as_bytes().get(..4).unwrap_or_default());
    match v {
        Value::Null => "NULL".into(),
        Value::Integer(i) => i.to_string(),
        Value::Real(f) => format!("{f:?}"),
        Value::Text(t) => format!(
            "text of {} bytes (blake3 {}…)",
            t.len(),
            digest(t.as_bytes())
        ),
        Value::Blob(b) => format!("blob of {} bytes (blake3 {}…)", b.len(), digest(b)),
    }
}

/// The first difference between lightningd's rows and the backup's, in words, with its rowid.
pub fn first_difference(
    live: &[Row],
    backup: &[Row],
    columns: &[String],
) -> Option<(Option<i64>, String)> {
    let mut b = backup.iter().peekable();
    for l in live {
        let Some(k) = b.next() else {
            return Some((l.0, "only in lightningd's database".into()));
        };
        if l.0 != k.0 {
            // Rowids in order: the smaller one is missing on the other side.
            return Some(match (l.0, k.0) {
                (Some(a), Some(c)) if c < a => (k.0, "only in the backup".into()),
                _ => (l.0, "only in lightningd's database".into()),
            });
        }
        if l.1 != k.1 {
            let col = l.1.iter().zip(&k.1).position(|(x, y)| x != y);
            let what = match col {
                Some(i) => format!(
                    "column {}: lightningd has {}, the backup {}",
                    columns.get(i).map(String::as_str).unwrap_or("?"),
                    l.1.get(i).map(show).unwrap_or_default(),
                    k.1.get(i).map(show).unwrap_or_default()
                ),
                None => format!(
                    "{} columns in lightningd's database, {} in the backup",
                    l.1.len(),
                    k.1.len()
                ),
            };
            return Some((l.0, what));
        }
    }
    b.next().map(|k| (k.0, "only in the backup".into()))
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn names_the_first_difference() {
        let cols = vec!["a".to_string(), "b".to_string()];
        let r =
            |id: i64, a: i64, b: &str| (Some(id), vec![Value::Integer(a), Value::Text(b.into())]);
        let live = vec![r(1, 1, "x"), r(2, 2, "y"), r(4, 4, "z")];
        assert_eq!(first_difference(&live, &live, &cols), None);
        let mut other = live.clone();
        other[1].1[0] = Value::Integer(3);
        assert_eq!(
            first_difference(&live, &other, &cols),
            Some((Some(2), "column a: lightningd has 2, the backup 3".into()))
        );
        other = live.clone();
        other[1].1[1] = Value::Text("secret".into());
        let (_, what) = first_difference(&live, &other, &cols).unwrap();
        assert!(
            what.starts_with("column b: lightningd has text of 1 bytes"),
            "{what}"
        );
        assert!(!what.contains("secret"));
        assert_eq!(
            first_difference(&live, &live[..2], &cols),
            Some((Some(4), "only in lightningd's database".into()))
        );
        let more = vec![r(1, 1, "x"), r(2, 2, "y"), r(3, 3, "q"), r(4, 4, "z")];
        assert_eq!(
            first_difference(&live, &more, &cols),
            Some((Some(3), "only in the backup".into()))
        );
        assert_eq!(
            first_difference(&more, &live, &cols),
            Some((Some(3), "only in lightningd's database".into()))
        );
    }
}
