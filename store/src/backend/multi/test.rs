//! Destinations down at start, opened later and caught up; synchronous ones that cannot open.

use super::catch_up::COMPARED_DIRS;
use super::*;
use crate::backend::dir::DirBackend;
use std::sync::atomic::AtomicU32;

/// An asynchronous destination that cannot be opened at start: the writes go on, it shows as
/// down with the opener's error and its lag, and once it opens it catches up.
#[test]
fn deferred_destination_down_at_start_catches_up() {
    deferred_destination_catches_up(Durability::Flush);
}

/// The same with synced streams, which a local directory writes ahead with zeros: the
/// catch-up copies the stream, not the zeros.
#[test]
fn deferred_destination_catches_up_a_stream_written_ahead() {
    deferred_destination_catches_up(Durability::Fsync);
}

fn deferred_destination_catches_up(durability: Durability) {
    let tmp = tempfile::tempdir().unwrap();
    let primary: Arc<dyn Backend> =
        Arc::new(DirBackend::create(&tmp.path().join("primary")).unwrap());
    let second_dir = tmp.path().join("second");
    let up = Arc::new(AtomicBool::new(false));
    let tries = Arc::new(AtomicU32::new(0));
    let (up2, tries2, dir2) = (up.clone(), tries.clone(), second_dir.clone());
    let open: Opener = Box::new(move || {
        tries2.fetch_add(1, Ordering::SeqCst);
        if !up2.load(Ordering::SeqCst) {
            return Err(Error::Invalid("server down (test)".into()));
        }
        Ok(Arc::new(DirBackend::create(&dir2)?) as Arc<dyn Backend>)
    });
    let m = MultiBackend::with_deferred(
        vec![Destination {
            backend: primary.clone(),
            mode: Mode::Sync,
        }],
        vec![("file:///second".into(), open)],
    )
    .unwrap();
    m.put("config", b"cfg").unwrap();
    let mut s = m.stream_open("0000000000000001", durability).unwrap();
    for i in 0..20u8 {
        s.append(&[i; 32]).unwrap();
    }
    m.put("snapshots/a", b"manifest").unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let down = loop {
        let st = m.status().remove(1);
        if st.state == "down" {
            break st;
        }
        assert!(Instant::now() < deadline, "never reported down: {st:?}");
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(down.url, "file:///second");
    assert!(
        down.last_error
            .as_deref()
            .is_some_and(|e| e.contains("server down (test)")),
        "{down:?}"
    );
    assert_eq!((down.lag_batches, down.lag_writes), (20, 22), "{down:?}");
    assert!(!m.wait_caught_up(Duration::from_millis(300)));
    // Drain does not wait for a destination that is down; it reports it.
    let behind = m.drain(Duration::from_secs(5));
    assert_eq!(behind.len(), 1);
    assert_eq!(behind[0].state, "down");

    up.store(true, Ordering::SeqCst);
    assert!(
        m.wait_caught_up(Duration::from_secs(30)),
        "{:?}",
        m.status()
    );
    for i in 20..30u8 {
        s.append(&[i; 32]).unwrap();
    }
    assert!(
        m.wait_caught_up(Duration::from_secs(30)),
        "{:?}",
        m.status()
    );
    let second = DirBackend::open(&second_dir).unwrap();
    for dir in COMPARED_DIRS {
        assert_eq!(
            primary.list(dir).unwrap(),
            second.list(dir).unwrap(),
            "{dir}"
        );
    }
    assert_eq!(second.get("snapshots/a").unwrap(), b"manifest");
    let stream: Vec<u8> = (0..30u8).flat_map(|i| [i; 32]).collect();
    assert_eq!(primary.stream_read("0000000000000001").unwrap(), stream);
    assert_eq!(second.stream_read("0000000000000001").unwrap(), stream);
    assert!(tries.load(Ordering::SeqCst) >= 2);
    let st = m.status().remove(1);
    assert_eq!((st.state, st.lag_writes), ("live", 0));
}

/// A synchronous destination that cannot be opened is an error (the node must not run
/// without it); an asynchronous one is not.
#[test]
fn open_fails_only_for_a_synchronous_destination() {
    let tmp = tempfile::tempdir().unwrap();
    let primary = crate::url::BackupUrl::File(tmp.path().join("p"));
    DirBackend::create(&tmp.path().join("p")).unwrap();
    let missing = crate::url::BackupUrl::File(tmp.path().join("missing"));
    let err = open(&primary, &[(missing.clone(), Mode::Sync)], None, false)
        .err()
        .unwrap();
    assert!(
        err.to_string()
            .contains("cannot open synchronous destination"),
        "{err}"
    );
    let m = open(&primary, &[(missing, Mode::Async)], None, false).unwrap();
    m.put("config", b"x").unwrap();
    let st = m.status().remove(1);
    assert!(matches!(st.state, "opening" | "down"), "{st:?}");
}
