//! Survivors of the mutation run in the journal framing (docs/mutants.md): a frame's seal binds
//! its place (the segment's header, its offset, the frame before it), so a frame whose keyless
//! check was rewritten to fit another place still fails, and the damage is reported.

use super::test::{cryptos, parse, rec, repo, stream, SEQ};
use super::*;

/// Rewrite the keyless check of the frame at `at` for that offset (what anyone can do).
fn recheck(data: &mut [u8], at: usize, seq: u64) {
    let len = u32::from_le_bytes(data[at..at + 4].try_into().unwrap());
    data[at + 4..at + 8].copy_from_slice(&frame_check(seq, at as u64, len).to_le_bytes());
}

#[test]
fn a_frame_moved_with_its_check_rewritten_still_fails() {
    for c in cryptos() {
        let (data, frames) = stream(&c, 4);
        let (a, _) = frames[2];
        let (b, _) = frames[3];
        // Frame 2 removed, frame 3 moved into its place with a check that fits there.
        let mut removed = data[..a].to_vec();
        removed.extend_from_slice(&data[b..]);
        recheck(&mut removed, a, SEQ);
        let e = parse(&c, &removed, Recovery::TruncateTornTail)
            .err()
            .expect("a frame moved into another's place must not be read");
        assert!(e.is_corruption(), "{e}");
        let p = parse(&c, &removed, Recovery::AcceptDamagedTail).unwrap();
        assert_eq!(p.records, vec![rec(1)], "nothing after the gap is read");
        assert!(matches!(p.tail, Some(Tail::Damaged(_))), "{:?}", p.tail);
    }
}

#[test]
fn a_frame_of_another_segment_at_the_same_offset_fails() {
    for c in cryptos() {
        let (data, frames) = stream(&c, 3);
        let (at, len) = frames[3];
        // The same record at the same offset after the same frames, but sealed for segment
        // SEQ + 1, its check rewritten for this one.
        let other = stream_header(&c, repo(), SEQ + 1);
        let prev = frame_chain(&data[..at]);
        let mut f = encode_frame(&c, &other, SEQ + 1, at as u64, &prev, &rec(3).encode());
        assert_eq!(f.len(), len);
        let mut spliced = data[..at].to_vec();
        spliced.append(&mut f);
        recheck(&mut spliced, at, SEQ);
        assert!(parse(&c, &spliced, Recovery::Strict).is_err());
        let p = parse(&c, &spliced, Recovery::AcceptDamagedTail).unwrap();
        assert_eq!(p.records, vec![rec(1), rec(2)]);
        assert!(p.tail.is_some());
    }
}
