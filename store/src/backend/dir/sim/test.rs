//! The simulation itself: what survives a cut is what a disk keeps, no more, no less.

use super::*;

fn setup() -> (tempfile::TempDir, SimIo, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("d");
    std::fs::create_dir(&d).unwrap();
    (tmp, SimIo::new(), d)
}

#[test]
fn only_synced_data_and_entries_survive() {
    let (_tmp, sim, d) = setup();
    let a = d.join("a");
    let f = sim.open(&a, Open::CreateNew).unwrap();
    f.write_all_at(b"hello", 0).unwrap();
    f.sync_data().unwrap();
    // Written and synced, but its directory entry was never synced: gone.
    sim.restore_power(Survival::Synced).unwrap();
    assert!(!a.exists());

    let f = sim.open(&a, Open::CreateNew).unwrap();
    f.write_all_at(b"hello", 0).unwrap();
    f.sync_data().unwrap();
    sim.sync_dir(&d).unwrap();
    f.write_all_at(b" world", 5).unwrap();
    let loss = sim.restore_power(Survival::Synced).unwrap();
    assert_eq!(std::fs::read(&a).unwrap(), b"hello");
    assert_eq!(loss.changes_lost, 1);
    // The old boot's handle writes nothing any more.
    assert!(f.write_all_at(b"!", 0).is_err());
    assert_eq!(std::fs::read(&a).unwrap(), b"hello");
}

#[test]
fn a_rename_without_a_directory_sync_is_undone() {
    let (_tmp, sim, d) = setup();
    std::fs::write(d.join("old"), b"old content").unwrap();
    let t = d.join("t");
    let f = sim.open(&t, Open::CreateNew).unwrap();
    f.write_all_at(b"new content", 0).unwrap();
    f.sync_all().unwrap();
    sim.rename(&t, &d.join("old")).unwrap();
    assert_eq!(std::fs::read(d.join("old")).unwrap(), b"new content");
    sim.restore_power(Survival::Synced).unwrap();
    assert_eq!(std::fs::read(d.join("old")).unwrap(), b"old content");
    assert!(!t.exists());
}

#[test]
fn a_cut_stops_every_later_call_and_a_failed_sync_loses_its_data() {
    let (_tmp, sim, d) = setup();
    let a = d.join("a");
    std::fs::write(&a, b"").unwrap();
    let f = sim.open(&a, Open::ReadWrite).unwrap();
    f.write_all_at(b"one ", 0).unwrap();
    f.sync_data().unwrap();
    f.write_all_at(b"two ", 4).unwrap();
    sim.fail_sync_at(sim.events() + 1);
    assert_eq!(f.sync_data().unwrap_err().raw_os_error(), Some(libc::EIO));
    // The process still reads it; a later sync reports success but cannot bring it back.
    assert_eq!(std::fs::read(&a).unwrap(), b"one two ");
    f.write_all_at(b"three", 8).unwrap();
    f.sync_data().unwrap();
    sim.cut_at(sim.events() + 2);
    f.write_all_at(b"four", 13).unwrap();
    assert!(f.sync_data().is_err(), "the power went off at the sync");
    assert!(sim.is_off());
    assert!(sim.remove_file(&a).is_err());
    let loss = sim.restore_power(Survival::Synced).unwrap();
    assert_eq!(std::fs::read(&a).unwrap(), b"one \0\0\0\0three");
    assert_eq!(loss.lost_to_failed_syncs, 1);
    assert_eq!(loss.changes_lost, 1);
}

#[test]
fn random_survival_tears_writes_at_sectors_and_keeps_prefixes() {
    let mut torn = 0;
    let mut kept_all = 0;
    for seed in 0..60 {
        let (_tmp, sim, d) = setup();
        let a = d.join("a");
        std::fs::write(&a, vec![0u8; 4096]).unwrap();
        let f = sim.open(&a, Open::ReadWrite).unwrap();
        f.write_all_at(&[1u8; 2048], 0).unwrap();
        f.write_all_at(&[2u8; 2048], 2048).unwrap();
        let loss = sim.restore_power(Survival::Random(seed)).unwrap();
        let got = std::fs::read(&a).unwrap();
        assert_eq!(got.len(), 4096);
        // Every sector holds either its old or its new bytes, and the second write survives
        // only where the first one did in full.
        for (i, sector) in got.chunks(512).enumerate() {
            let new = if i < 4 { 1 } else { 2 };
            assert!(
                sector.iter().all(|&b| b == 0) || sector.iter().all(|&b| b == new),
                "seed {seed}: sector {i}"
            );
        }
        if got[2048..].iter().any(|&b| b != 0) {
            assert!(got[..2048].iter().all(|&b| b == 1), "seed {seed}: {loss:?}");
        }
        torn += loss.writes_torn;
        kept_all += u64::from(got.iter().all(|&b| b != 0));
    }
    assert!(torn > 5 && kept_all > 5, "torn {torn}, kept all {kept_all}");
}
