//! Power loss below the directory backend (`backend::dir::sim`): every operation of
//! `DirBackend` is durable when it returns and atomic before, whatever event of it the power
//! fails at, and whether the disk then keeps only what was synced or a random part of the rest
//! (torn at sector granularity). A SIGKILL keeps the page cache, so only this finds a missing
//! fsync: each test here fails if any one sync of the backend's commit paths is removed (the
//! file's fsync before a publish, the directory's after it, the stream's fdatasync, the
//! directory's after a stream is created or deleted). The store's write paths as a whole are
//! cut the same way by the power-loss campaign (plugin/tests/support/power_campaign.rs).
//!
//! Also: a stream whose fdatasync failed refuses every later append, as the directory backend
//! itself acts it out (the kernel may have dropped the unsynced pages, so a later sync that
//! succeeds proves nothing).

use std::sync::Arc;

use store::backend::dir::sim::{SimIo, Survival};
use store::backend::dir::DirBackend;
use store::backend::{Backend, Durability};

/// Run `op` on a backend whose power fails at its 1st event, then its 2nd, ... until it
/// completes (then once more with the cut after it), each under both survival models, and
/// `check` what a plain backend finds after the power came back, knowing what `op` returned.
fn at_every_cut<R: std::fmt::Debug>(
    what: &str,
    setup: &dyn Fn(&DirBackend),
    op: &dyn Fn(&DirBackend) -> R,
    check: &dyn Fn(&DirBackend, &R) -> Result<(), String>,
) -> u64 {
    let mut cuts = 0;
    for k in 1.. {
        let mut finished = false;
        for survival in [Survival::Synced, Survival::Random(k * 7919)] {
            let tmp = tempfile::tempdir().unwrap();
            let root = tmp.path().join("repo");
            setup(&DirBackend::create(&root).unwrap());
            let sim = SimIo::new();
            let b = DirBackend::open_with_io(&root, Arc::new(sim.clone())).unwrap();
            sim.cut_at(k);
            let got = op(&b);
            finished = !sim.is_off();
            drop(b);
            let events = sim.recent();
            let loss = sim.restore_power(survival).unwrap();
            let plain = DirBackend::open(&root).unwrap();
            if let Err(e) = check(&plain, &got) {
                panic!(
                    "{what}: power cut at event {k}, {survival:?} (lost {loss:?}); the operation \
                     returned {got:?}: {e}\nevents:\n{}",
                    events.join("\n")
                );
            }
            cuts += 1;
        }
        if finished {
            break;
        }
        assert!(k < 500, "{what} never finished");
    }
    cuts
}

fn bytes(n: usize, salt: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(salt) | 1)
        .collect()
}

/// An object replaced by `put`: the old one or the whole new one, and the new one once `put`
/// returned. Objects of every size: small, past the write-back slice, and packs written with
/// direct I/O.
#[test]
fn put_is_atomic_and_durable_on_return() {
    for (name, len) in [
        ("snapshots/0001", 3000),
        ("index/big", 700 << 10),
        ("packs/direct", (2 << 20) + 12345),
    ] {
        let old = bytes(len / 2 + 1, 1);
        let new = bytes(len, 2);
        let cuts = at_every_cut(
            name,
            &|b| b.put(name, &old).unwrap(),
            &|b| b.put(name, &new).is_ok(),
            &|b, ok| {
                let got = b.get(name).map_err(|e| e.to_string())?;
                match (*ok, got == new, got == old) {
                    (true, true, _) | (false, true, _) | (false, _, true) => Ok(()),
                    (true, false, _) => Err(format!(
                        "put returned but {name} holds {} other bytes",
                        got.len()
                    )),
                    (false, false, false) => Err(format!(
                        "{name} holds neither version ({} bytes)",
                        got.len()
                    )),
                }
            },
        );
        assert!(cuts >= 8, "{name}: {cuts}");
    }
}

/// A new object published by `put` or `put_if_absent`: absent or whole, and whole once it
/// returned.
#[test]
fn a_new_object_is_absent_or_whole_and_there_once_published() {
    for if_absent in [false, true] {
        for (name, len) in [("config", 200), ("packs/p", (1 << 20) + 5)] {
            let data = bytes(len, 3);
            at_every_cut(
                name,
                &|_| {},
                &|b| match if_absent {
                    true => b.put_if_absent(name, &data).unwrap_or(false),
                    false => b.put(name, &data).is_ok(),
                },
                &|b, ok| match b.get(name) {
                    Ok(got) if got == data => Ok(()),
                    Ok(got) => Err(format!("{name} is {} bytes of something else", got.len())),
                    Err(store::Error::NotFound { .. }) if !ok => Ok(()),
                    Err(e) => Err(format!("{name}: {e}")),
                },
            );
        }
    }
}

#[test]
fn delete_is_durable_on_return() {
    let data = bytes(5000, 4);
    at_every_cut(
        "delete",
        &|b| b.put("index/old", &data).unwrap(),
        &|b| b.delete("index/old").is_ok(),
        &|b, ok| match b.get("index/old") {
            Err(store::Error::NotFound { .. }) => Ok(()),
            Ok(got) if !ok && got == data => Ok(()),
            Ok(_) if *ok => Err("deleted, yet back after the power loss".into()),
            other => Err(format!("{other:?}")),
        },
    );
}

/// A synced stream: created (and its directory entry made durable), appended to; every append
/// that returned is there after the cut, and past it lie only bytes of the append in flight (or
/// of none) and zeros.
#[test]
fn stream_appends_are_durable_on_return_and_only_the_last_may_be_torn() {
    let records: Vec<Vec<u8>> = (0..12)
        .map(|i| bytes(300 + i * 1500, 10 + i as u8))
        .collect();
    let all: Vec<u8> = records.concat();
    let cuts = at_every_cut(
        "appends",
        &|_| {},
        &|b| {
            let Ok(mut s) = b.stream_open("0000000000000000", Durability::Fsync) else {
                return (false, 0);
            };
            let mut acked = 0;
            for r in &records {
                if s.append(r).is_err() {
                    break;
                }
                acked += r.len();
            }
            (true, acked)
        },
        &|b, &(opened, acked)| {
            let listed = b.stream_list().map_err(|e| e.to_string())?;
            if listed.is_empty() {
                return match opened {
                    false => Ok(()),
                    true => Err("the stream was created, yet is gone".into()),
                };
            }
            let got = b
                .stream_read("0000000000000000")
                .map_err(|e| e.to_string())?;
            if got.len() < acked || got[..acked] != all[..acked] {
                return Err(format!(
                    "{acked} bytes were acknowledged; the stream holds {} and differs",
                    got.len()
                ));
            }
            match got[acked..]
                .iter()
                .zip(all[acked..].iter().chain(std::iter::repeat(&0)))
                .position(|(g, w)| *g != 0 && g != w)
            {
                None => Ok(()),
                Some(p) => Err(format!(
                    "byte {} is neither the append in flight nor zero",
                    acked + p
                )),
            }
        },
    );
    assert!(cuts >= 40, "{cuts}");
}

/// `truncate` (cutting a torn tail) is durable on return; `stream_delete` too.
#[test]
fn stream_truncate_and_delete_are_durable_on_return() {
    let data = bytes(9000, 5);
    at_every_cut(
        "truncate",
        &|b| {
            let mut s = b.stream_open("s", Durability::Fsync).unwrap();
            s.append(&data).unwrap();
        },
        &|b| {
            b.stream_open("s", Durability::Fsync)
                .and_then(|mut s| s.truncate(4000))
                .is_ok()
        },
        &|b, ok| {
            let got = b.stream_read("s").map_err(|e| e.to_string())?;
            let cut = got.len() >= 4000
                && got[..4000] == data[..4000]
                && got[4000..].iter().all(|&x| x == 0);
            match (*ok, cut, got == data) {
                (true, true, _) | (false, _, true) | (false, true, _) => Ok(()),
                _ => Err(format!("{} bytes after a truncate to 4000", got.len())),
            }
        },
    );
    at_every_cut(
        "stream_delete",
        &|b| {
            let mut s = b.stream_open("s", Durability::Fsync).unwrap();
            s.append(&data).unwrap();
        },
        &|b| b.stream_delete("s").is_ok(),
        &|b, ok| {
            let listed = b.stream_list().map_err(|e| e.to_string())?;
            match (*ok, listed.is_empty()) {
                (true, false) => Err("deleted, yet back after the power loss".into()),
                _ => Ok(()),
            }
        },
    );
}

/// Where a fresh repository is created through the simulation: each directory of the layout
/// exists after the cut once `create` returned.
#[test]
fn create_makes_the_layout_durable() {
    for k in 1..40 {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("repo");
        let sim = SimIo::new();
        sim.cut_at(k);
        let ok = DirBackend::create_with_io(&root, Arc::new(sim.clone())).is_ok();
        let finished = !sim.is_off();
        sim.restore_power(Survival::Synced).unwrap();
        if ok {
            for d in store::backend::dir::DIRS {
                assert!(root.join(d).is_dir(), "cut at {k}: {d} is missing");
            }
        }
        if finished {
            return;
        }
    }
    panic!("create never finished");
}

/// After a failed fdatasync the stream refuses every later append until it is reopened: the
/// kernel may have dropped the pages it could not write, and a later fdatasync that succeeds
/// would acknowledge a batch written after a hole. The failed record is cut from the file at
/// once. What was acknowledged before survives.
#[test]
fn a_stream_refuses_appends_after_a_failed_fdatasync() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("repo");
    DirBackend::create(&root).unwrap();
    let sim = SimIo::new();
    let b = DirBackend::open_with_io(&root, Arc::new(sim.clone())).unwrap();
    let mut s = b.stream_open("s", Durability::Fsync).unwrap();
    let first = bytes(700, 6);
    s.append(&first).unwrap();
    // The next append's write succeeds, its fdatasync fails.
    sim.fail_sync_at(sim.events() + 2);
    let err = s.append(&bytes(900, 7)).unwrap_err();
    assert!(err.to_string().contains("fdatasync"), "{err}");
    let err = s.append(&bytes(800, 8)).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("journal/s.log") && msg.contains("refuses appends after an earlier failure"),
        "{msg}"
    );
    assert_eq!(s.len(), first.len() as u64);
    // The failed record is gone from the file at once, not only when the stream closes: a
    // process started now (the plugin after a SIGKILL, in the same boot) must not read a record
    // whose pages the kernel may have dropped and build on it.
    let file = std::fs::read(root.join("journal/s.log")).unwrap();
    assert!(
        file == first,
        "the file holds {} bytes, the stream {}",
        file.len(),
        first.len()
    );
    drop(s);
    drop(b);
    sim.restore_power(Survival::Synced).unwrap();
    let got = DirBackend::open(&root).unwrap().stream_read("s").unwrap();
    assert_eq!(&got[..first.len()], &first[..]);
    assert!(got[first.len()..].iter().all(|&x| x == 0));
}
