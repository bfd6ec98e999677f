//! Tests of the old-format reader: the real fixture (a backup written by the Python plugin against
//! a pre-#4090 lightningd) replayed into SQLite, files written by an emulation of the plugin's
//! `add_change`/`rewind`/`write_metadata` (including its append-mode rewind bug), and damaged files.

use super::*;
use rusqlite::Connection;

const FIXTURE: &[u8] = include_bytes!("../../../testdata/pre-4090-backup.dbak");

/// Replay as lightningd ran the batches: foreign keys on, each batch in its own transaction,
/// PRAGMA-only batches outside one. Returns (data_version, integrity_check).
fn replay(backup: &LegacyBackup) -> Result<(i64, String), String> {
    let conn = Connection::open_in_memory().map_err(|e| e.to_string())?;
    conn.execute_batch("PRAGMA foreign_keys = ON;")
        .map_err(|e| e.to_string())?;
    for e in &backup.entries {
        let LegacyEntry::Statements { version, writes } = e else {
            return Err("snapshot entries are not replayed here".into());
        };
        let pragma = writes
            .iter()
            .all(|w| w.trim_start().to_ascii_lowercase().starts_with("pragma"));
        if !pragma {
            conn.execute_batch("BEGIN").map_err(|e| e.to_string())?;
        }
        for w in writes {
            conn.execute_batch(w)
                .map_err(|e| format!("data_version {version}: {e}: {w}"))?;
        }
        if !pragma {
            conn.execute_batch("COMMIT").map_err(|e| e.to_string())?;
        }
    }
    let v = conn
        .query_row(
            "SELECT intval FROM vars WHERE name = 'data_version'",
            [],
            |r| r.get(0),
        )
        .map_err(|e| e.to_string())?;
    let check: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .map_err(|e| e.to_string())?;
    Ok((v, check))
}

#[test]
fn fixture_decodes_to_46_changes() {
    let b = decode_dbak(FIXTURE, "pre-4090-backup.dbak").unwrap();
    assert_eq!(b.version, 46);
    assert_eq!(b.entries.len(), 46);
    let versions: Vec<u32> = b.entries.iter().map(LegacyEntry::version).collect();
    assert_eq!(versions, (1..=46).collect::<Vec<u32>>());
    assert!(b.rewound.is_empty());
    assert_eq!(b.tail, None);
    // Written by a release that never counted entries.
    assert_eq!(b.header.count, 0);
    let LegacyEntry::Statements { writes, .. } = &b.entries[0] else {
        panic!("first entry is a snapshot")
    };
    assert_eq!(writes[0], "CREATE TABLE version (version INTEGER)");
}

#[test]
fn fixture_replays_to_data_version_46_only_with_the_fix() {
    let raw = decode_dbak(FIXTURE, "pre-4090-backup.dbak").unwrap();
    let err = replay(&raw).unwrap_err();
    assert!(err.contains("174WHERE"), "{err}");

    let mut fixed = raw.clone();
    assert_eq!(
        fixed.fix_statements(),
        2,
        "the fixture has two broken UPDATEs"
    );
    assert_eq!(replay(&fixed).unwrap(), (46, "ok".to_string()));
}

#[test]
fn fix_pre_4090_cases() {
    let f = |s: &str| fix_pre_4090(s).into_owned();
    assert_eq!(
        f("UPDATE outputs SET status=1, reserved_til=174WHERE prev_out_tx=x'45' AND prev_out_index=0"),
        "UPDATE outputs SET status=1, reserved_til=174 WHERE prev_out_tx=x'45' AND prev_out_index=0"
    );
    // The real second case binds NULL; the Python plugin's digits-only fix missed it.
    assert_eq!(
        f("UPDATE channels SET state=7, peer_id=NULLWHERE channels.id=3"),
        "UPDATE channels SET state=7, peer_id=NULL WHERE channels.id=3"
    );
    assert_eq!(
        f("UPDATE channels SET state=7, peer_id=12WHERE channels.id=3"),
        "UPDATE channels SET state=7, peer_id=12 WHERE channels.id=3"
    );
    assert_eq!(
        f("UPDATE t SET a=-5WHERE b=1"),
        "UPDATE t SET a=-5 WHERE b=1"
    );
    assert_eq!(
        f("UPDATE t SET a=1.5where b=1"),
        "UPDATE t SET a=1.5 where b=1"
    );
    for same in [
        "UPDATE t SET a=1 WHERE b=2",
        "UPDATE t SET a='174WHERE x' WHERE b=2",
        "UPDATE t SET a='it''s 9WHERE' WHERE b=2",
        "UPDATE t SET col1WHERE=2",
        "UPDATE t SET a=2 WHERE b=\"x1WHERE\"",
        "UPDATE t SET a=3WHEREVER",
        "UPDATE t SET a=x'00'WHERE b=1",
        "UPDATE t SET a=ANULLWHERE",
        "SELECT 1 -- 2WHERE\n",
        "SELECT 1 /* 2WHERE */",
        "",
    ] {
        assert!(
            matches!(fix_pre_4090(same), Cow::Borrowed(s) if s == same),
            "{same}"
        );
    }
    // Every fix is a statement SQLite accepts, and the unfixed one it rejects.
    let conn = Connection::open_in_memory().unwrap();
    conn.execute_batch("CREATE TABLE channels (id INTEGER, state INTEGER, peer_id INTEGER)")
        .unwrap();
    let broken = "UPDATE channels SET state=7, peer_id=NULLWHERE channels.id=3";
    assert!(conn.execute_batch(broken).is_err());
    conn.execute_batch(&f(broken)).unwrap();
}

/// The Python plugin's FileBackend, byte for byte, including its append-mode file (writes land at
/// the end of the file whatever offset it seeks to).
struct OldPlugin {
    file: Vec<u8>,
    version: u32,
    prev: u32,
    next: u64,
    last: u64,
    count: u64,
    counts: bool,
}

impl OldPlugin {
    fn new(counts: bool) -> Self {
        let mut p = OldPlugin {
            file: Vec::new(),
            version: 0,
            prev: 0,
            next: 512,
            last: 0,
            count: 0,
            counts,
        };
        p.write_metadata();
        p
    }
    fn write_metadata(&mut self) {
        let mut h = Vec::new();
        h.extend_from_slice(&1u32.to_be_bytes());
        h.extend_from_slice(&self.version.to_be_bytes());
        h.extend_from_slice(&self.next.to_be_bytes());
        h.extend_from_slice(&self.prev.to_be_bytes());
        h.extend_from_slice(&self.last.to_be_bytes());
        h.extend_from_slice(&self.count.to_be_bytes());
        h.resize(512, 0);
        if self.file.len() < 512 {
            self.file.resize(512, 0);
        }
        self.file[..512].copy_from_slice(&h);
    }
    /// add_change without the header update (a crash between the two).
    fn write_entry(&mut self, version: u32, typ: u8, payload: &[u8]) {
        self.file
            .extend_from_slice(&(payload.len() as u32).to_be_bytes());
        self.file.extend_from_slice(&version.to_be_bytes());
        self.file.push(typ);
        self.file.extend_from_slice(payload);
        self.prev = self.version;
        self.last = self.next;
        self.version = version;
        self.next += 9 + payload.len() as u64;
        if self.counts {
            self.count += 1;
        }
    }
    fn add(&mut self, version: u32, writes: &[&str]) {
        self.write_entry(version, 1, writes.join("\0").as_bytes());
        self.write_metadata();
    }
    fn rewind(&mut self) {
        assert!(self.last != 0 && self.prev != 0);
        self.version = self.prev;
        self.next = self.last;
        self.prev = 0;
        self.last = 0;
    }
}

fn batch(v: u32) -> String {
    format!(
        "UPDATE vars SET intval = intval + 1 WHERE name = 'data_version' AND intval = {}",
        v - 1
    )
}

fn statements(b: &LegacyBackup) -> Vec<(u32, Vec<String>)> {
    b.entries
        .iter()
        .map(|e| match e {
            LegacyEntry::Statements { version, writes } => (*version, writes.clone()),
            LegacyEntry::Snapshot { version, .. } => (*version, vec!["<snapshot>".into()]),
        })
        .collect()
}

fn plugin_with(n: u32, counts: bool) -> OldPlugin {
    let mut p = OldPlugin::new(counts);
    for v in 1..=n {
        p.add(v, &[&batch(v)]);
    }
    p
}

#[test]
fn empty_backup_decodes_to_nothing() {
    for counts in [false, true] {
        let p = OldPlugin::new(counts);
        let b = decode_dbak(&p.file, "empty").unwrap();
        assert_eq!((b.version, b.entries.len(), b.tail), (0, 0, None));
    }
}

#[test]
fn rewind_keeps_the_replacement_not_both() {
    for counts in [false, true] {
        // lightningd died between the hook for 5 and COMMIT; on restart it sent 5 again, then 6.
        let mut p = plugin_with(5, counts);
        let rewound_at = p.last;
        p.rewind();
        p.add(
            5,
            &["INSERT INTO x VALUES ('the replacement, longer than the first')"],
        );
        // Header right after the replacement: 5 is the replacement.
        let b = decode_dbak(&p.file, "a").unwrap();
        assert_eq!(b.version, 5);
        assert_eq!(
            statements(&b).last().unwrap().1[0],
            "INSERT INTO x VALUES ('the replacement, longer than the first')"
        );
        assert_eq!(b.entries.len(), 5);
        assert_eq!(
            b.rewound,
            vec![Rewound {
                version: 5,
                offset: rewound_at
            }]
        );
        // And with later changes, whose header offsets are short by the rewound entry's size.
        p.add(6, &[&batch(6)]);
        p.add(7, &[&batch(7)]);
        assert!(p.next < p.file.len() as u64, "the plugin's offsets drift");
        let b = decode_dbak(&p.file, "a").unwrap();
        let versions: Vec<u32> = b.entries.iter().map(LegacyEntry::version).collect();
        assert_eq!(versions, vec![1, 2, 3, 4, 5, 6, 7]);
        assert_eq!(b.rewound.len(), 1);
        assert_eq!(b.tail, None);
        // The streaming reader gives the same entries.
        let plan = scan_dbak(&p.file, "a").unwrap();
        let streamed: Vec<LegacyEntry> = plan.entries(&p.file, "a").map(|e| e.unwrap()).collect();
        assert_eq!(streamed, b.entries);
        assert_eq!(plan.rewound, b.rewound);
    }
}

#[test]
fn entry_written_without_its_header_is_left_out() {
    let mut p = plugin_with(4, true);
    let end = p.file.len() as u64;
    p.write_entry(5, 1, batch(5).as_bytes());
    let b = decode_dbak(&p.file, "a").unwrap();
    assert_eq!((b.version, b.entries.len()), (4, 4));
    let tail = b.tail.unwrap();
    assert_eq!(
        (tail.offset, tail.versions, tail.unreadable),
        (end, vec![5], None)
    );

    // The same with the entry torn part way.
    let mut torn = plugin_with(4, false).file;
    torn.extend_from_slice(&[0, 0, 1, 0, 0, 0, 0, 5, 1, b'U']);
    let b = decode_dbak(&torn, "a").unwrap();
    assert_eq!(b.entries.len(), 4);
    assert!(b.tail.unwrap().unreadable.unwrap().contains("claims 256"));
}

#[test]
fn pragma_only_batches_repeat_the_version_and_are_kept() {
    let mut p = OldPlugin::new(false);
    p.add(1, &["CREATE TABLE vars (name TEXT, intval INTEGER)"]);
    p.add(1, &["PRAGMA foreign_keys = OFF;"]);
    p.add(2, &["CREATE TABLE t (a)"]);
    p.add(2, &["PRAGMA foreign_keys = ON;"]);
    p.add(3, &["INSERT INTO t VALUES (1)"]);
    let b = decode_dbak(&p.file, "a").unwrap();
    let versions: Vec<u32> = b.entries.iter().map(LegacyEntry::version).collect();
    assert_eq!(versions, vec![1, 1, 2, 2, 3]);
    assert!(b.rewound.is_empty());
}

#[test]
fn compacted_backup_starts_with_a_snapshot() {
    // What the plugin's compact() writes: header at (v-2, prev v-3), the snapshot of v-1, then v.
    let db = {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite3");
        let c = Connection::open(&path).unwrap();
        c.execute_batch("CREATE TABLE vars (name TEXT, intval INTEGER); INSERT INTO vars VALUES ('data_version', 9);").unwrap();
        drop(c);
        std::fs::read(&path).unwrap()
    };
    let mut p = OldPlugin::new(true);
    p.version = 8;
    p.prev = 7;
    p.write_metadata();
    p.write_entry(9, 2, &db);
    p.write_metadata();
    p.add(10, &[&batch(10)]);
    let b = decode_dbak(&p.file, "a").unwrap();
    assert_eq!(b.version, 10);
    assert!(matches!(&b.entries[0], LegacyEntry::Snapshot { version: 9, db: d } if *d == db));
    assert!(matches!(
        &b.entries[1],
        LegacyEntry::Statements { version: 10, .. }
    ));

    // A snapshot that is not an SQLite file is corruption, not a database to restore.
    let mut bad = p.file.clone();
    bad[512 + 9] ^= 0xff;
    assert!(matches!(decode_dbak(&bad, "a"), Err(Error::Corrupt { .. })));
}

fn corrupt_what(data: &[u8]) -> String {
    match decode_dbak(data, "old.dbak") {
        Err(Error::Corrupt { object, what }) => {
            assert_eq!(object, "old.dbak");
            what
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

#[test]
fn every_truncation_of_the_fixture_is_an_error() {
    for cut in (0..FIXTURE.len())
        .step_by(61)
        .chain([FIXTURE.len() - 1, 511, 512, 513])
    {
        let what = corrupt_what(&FIXTURE[..cut]);
        assert!(what.contains("offset"), "{cut}: {what}");
    }
}

#[test]
fn damaged_structure_is_an_error_naming_the_offset() {
    // Entry 11 (data_version 11) is at offset 17616 in the fixture.
    let at = 17616;
    let mut len = FIXTURE.to_vec();
    len[at + 2] ^= 0x10;
    assert!(corrupt_what(&len).contains("offset"));

    let mut ver = FIXTURE.to_vec();
    ver[at + 7] ^= 0x40;
    assert!(corrupt_what(&ver).contains(&format!("offset {at}")));

    let mut typ = FIXTURE.to_vec();
    typ[at + 8] = 3;
    assert!(corrupt_what(&typ).contains(&format!("unknown entry type 3 at offset {at}")));

    let mut utf = FIXTURE.to_vec();
    utf[at + 20] = 0xff;
    assert!(corrupt_what(&utf).contains("not UTF-8"));

    // A header from another moment: one entry fewer than it claims.
    let mut hdr = FIXTURE.to_vec();
    hdr[4..8].copy_from_slice(&47u32.to_be_bytes());
    assert!(corrupt_what(&hdr).contains("agrees with no prefix"));

    let mut count = plugin_with(3, true).file;
    count[28..36].copy_from_slice(&2u64.to_be_bytes());
    assert!(corrupt_what(&count).contains("agrees with no prefix"));
}

#[test]
fn version_gaps_and_impossible_repeats_are_errors() {
    let mut gap = plugin_with(3, false);
    gap.add(5, &[&batch(5)]);
    assert!(corrupt_what(&gap.file).contains("jumps from 3 to 5"));

    // A repeat the plugin could not have written: a rewind needs a previous version to go to.
    let mut twice = plugin_with(1, false);
    twice.add(1, &[&batch(1)]);
    assert!(corrupt_what(&twice.file).contains("repeats data_version 1"));
}

#[test]
fn other_format_versions_are_unsupported() {
    let mut f = FIXTURE.to_vec();
    f[3] = 2;
    assert!(matches!(
        decode_dbak(&f, "a"),
        Err(Error::Unsupported { found: 2, .. })
    ));
}
