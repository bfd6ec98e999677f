//! A year of a busy node, in minutes (issue 18): the real plugin through the node-D-shaped
//! workload of `support/year.rs` (the node's three sessions, then about three cycles of its
//! steady traffic) over a simulated year, compacting every 2 MiB of journal with the default
//! retention, restarted four times. What it guards: the repository stays within 1.5x a fresh
//! backup of the same state plus the journal the retention keeps, at every point, however many
//! compactions and prunes it went through (prune used to leave dead chunks in kept packs, 2.4x
//! after 125 compactions); packs stay within one per half pack target stored plus a constant,
//! index objects within a constant; every generated batch is stored and the newest state
//! restores. The full year (3 million batches) is `cargo run --release -p cln-backup-benches
//! --bin year` (benches/REPORT.md).

#[path = "support/year.rs"]
mod year;

use std::path::PathBuf;

use serde_json::json;

fn testdata(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../testdata")
        .join(name)
}

#[test]
fn a_year_in_minutes_stays_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let traces = [1, 2, 3].map(|s| testdata(&format!("node-d-trace-s{s}.jsonl.zst")));
    let work = year::Workload::load(&traces).unwrap();
    let base = work.base_len();
    assert!(work.template_len() > 13_000, "{}", work.template_len());
    let opts = year::YearOptions {
        plugin: PathBuf::from(env!("CARGO_BIN_EXE_cln-backup")),
        cli: None,
        traces,
        dir: dir.path().to_path_buf(),
        url: None,
        batches: base + 40_000,
        days: 365.0,
        sessions: 4,
        // The compaction at normal priority: on a busy test machine an idle-class one can
        // wait long enough to skip many thresholds.
        init_options: vec![
            ("backup-compact-journal-bytes".into(), json!(2 << 20)),
            ("backup-compaction-nice".into(), json!(0)),
        ],
        encrypted: true,
        verbose: false,
    };
    let points = year::run(&opts, |p| eprintln!("{}", p.json())).unwrap();
    eprintln!("{}", year::table(&points));
    assert_eq!(points.len(), 5);
    let small = store::ConfigBody::default().pack_target / 2;
    for p in &points {
        assert!(
            p.ratio <= 1.5,
            "day {:.0}: the repository holds {} bytes, {:.2}x a fresh backup ({}) plus the journal kept ({})",
            p.day,
            p.repo_bytes,
            p.ratio,
            p.fresh_bytes,
            p.journal_bytes
        );
        assert!(
            p.packs <= p.pack_bytes / small + store::ops::prune::SMALL_PACKS_MAX as u64 + 1,
            "day {:.0}: {} packs for {} bytes",
            p.day,
            p.packs,
            p.pack_bytes
        );
        assert!(
            p.index_objects <= store::ops::prune::INDEX_OBJECTS_MAX as u64 + 1,
            "day {:.0}: {} index objects",
            p.day,
            p.index_objects
        );
    }
    let last = points.last().unwrap();
    let total: u64 = points.iter().map(|p| p.compactions).sum();
    assert!(total >= 20, "only {total} compactions");
    assert_eq!(
        last.data_version,
        work.generated(39_999).data_version,
        "the newest state restored is the last batch sent"
    );
    // The default retention keeps six months: the oldest restorable state is about that old.
    let from = last.oldest_restorable_day.unwrap();
    assert!(
        (120.0..=250.0).contains(&from),
        "restorable from day {from}"
    );
}
