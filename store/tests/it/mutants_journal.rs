//! Survivors of the mutation run in the journal writer (docs/mutants.md), killed by what the
//! plugin would answer lightningd.

use store::journal::segment::MAX_RECORD;
use store::journal::Record;
use store::{Batch, Error};

use crate::common::Env;

/// A batch with one statement whose record encodes to `size` bytes (before the seal).
fn batch_of(version: u32, size: usize) -> Batch {
    let stmt = |n: usize| format!("INSERT INTO t VALUES ('{}')", "x".repeat(n));
    let enc = |b: &Batch| {
        Record {
            batch: b.clone(),
            supersedes: false,
            time_ms: 0,
        }
        .encode()
        .len()
    };
    let probe = Batch {
        data_version: version,
        writes: vec![stmt(0)],
    };
    let fixed = enc(&probe);
    // A longer statement may take a longer length prefix: adjust until it fits exactly.
    let mut n = size - fixed;
    loop {
        let b = Batch {
            data_version: version,
            writes: vec![stmt(n)],
        };
        match enc(&b) {
            s if s == size => return b,
            s if s > size => n -= s - size,
            s => n += size - s,
        }
    }
}

fn small(version: u32) -> Batch {
    Batch {
        data_version: version,
        writes: vec![format!(
            "UPDATE vars SET intval={version} WHERE name='data_version'"
        )],
    }
}

/// A batch whose record is over the limit a reader accepts is refused before anything is
/// stored, with the sizes (sealed) in the error; one of exactly the limit is stored and read
/// back by the next writer (the limit is inclusive).
#[test]
fn a_batch_over_the_record_limit_is_refused_one_at_the_limit_is_stored() {
    for encrypted in [false, true] {
        let env = Env::new(encrypted);
        let overhead = env.repo.crypto().overhead() as u64;
        let mut w = env.writer();
        w.append(&small(1)).unwrap();
        let over = batch_of(2, MAX_RECORD + 1);
        match w.append(&over) {
            Err(Error::BatchTooLarge { version, size, max }) => {
                assert_eq!(version, 2);
                assert_eq!(max, MAX_RECORD as u64 + overhead);
                assert_eq!(size, MAX_RECORD as u64 + 1 + overhead);
            }
            other => panic!("a record over the limit was answered {other:?}"),
        }
        assert_eq!(
            w.last_version(),
            Some(1),
            "nothing of the refused batch counts"
        );
        // Not a failure of the backup: the writer takes the next batch.
        let at = batch_of(2, MAX_RECORD);
        w.append(&at).unwrap();
        drop(w);
        let w = env
            .reopen()
            .writer("reader", store::Durability::Fsync)
            .unwrap();
        assert_eq!(
            w.last_version(),
            Some(2),
            "the batch at the limit is read back"
        );
    }
}

/// A compaction that cannot start the next journal segment, nor remove what it made of it,
/// stops the writer: a restart continues in the newest segment, so nothing may be appended to
/// the older one meanwhile. The next writer (lightningd restarted) goes on.
#[test]
fn a_half_made_segment_left_behind_stops_the_writer_until_a_restart() {
    use std::sync::{Arc, Mutex};

    use store::backend::fault::{Fault, FaultBackend, FaultPlan};
    use store::ops::compact::{compact, CompactOptions};
    use store::{Durability, Repository};

    let s1 = crate::common::load_trace("trace-s1.jsonl");
    let n = 12;
    // The same steps in a new repository each time; returns it, the writer, the fault plan,
    // the operations counted before the compaction, and the compaction's result.
    let run = |crash_at: Option<u64>| {
        let env = Env::new(false);
        let plan = FaultPlan::new();
        let faulty = FaultBackend::new(env.repo.backend().clone(), plan.clone());
        let repo = Repository::open_backend(Arc::new(faulty), None).unwrap();
        let mut w = repo.writer("w", Durability::Fsync).unwrap();
        crate::common::append_all(&mut w, &s1[..n]);
        let next = store::journal::stream_name(w.segment() + 1);
        let before = plan.ops();
        if let Some(k) = crash_at {
            plan.set(before + k, Fault::Crash);
        }
        let w = Mutex::new(w);
        let res = compact(
            &repo,
            &w,
            &CompactOptions {
                cache_dir: env.path("cache"),
                holder: "test compaction".into(),
            },
        );
        (env, repo, w, plan, before, next, res)
    };
    // Where the compaction starts the next segment: its header is the first append to it.
    let (_env, _, _, plan, before, next, res) = run(None);
    res.unwrap();
    let header_append = plan
        .log()
        .iter()
        .find_map(|l| {
            let (num, what) = l.split_once(' ')?;
            what.starts_with(&format!("append journal/{next}.log"))
                .then(|| num.parse::<u64>().unwrap())
        })
        .expect("the compaction starts the next segment");

    let (_env, repo, w, plan, _, _, res) = run(Some(header_append - before));
    assert!(
        res.is_err(),
        "the compaction fails with its segment half made"
    );
    // The storage works again, but the half-made segment is still there.
    plan.restart();
    let e = w
        .lock()
        .unwrap()
        .append(&s1[n])
        .expect_err("appending in the older segment after a half-made newer one");
    assert!(e.to_string().contains("earlier failure"), "{e}");
    drop(w);
    // A restart reads the journal and goes on.
    let mut w = repo.writer("w2", Durability::Fsync).unwrap();
    assert_eq!(w.last_version(), Some(s1[n - 1].data_version));
    w.append(&s1[n]).unwrap();
}
