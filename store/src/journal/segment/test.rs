//! Stream framing: zeros written ahead, honest tails (a crash leaves a prefix of a frame then
//! zeros or the end; anything else at the end is damage), and records chained by their MACs.

use super::*;
use crate::crypto::MasterKey;
use crate::journal::record::{Batch, Link, Predecessor};

pub(super) const SEQ: u64 = 5;

pub(super) fn repo() -> RepoId {
    RepoId([7; 16])
}

pub(super) fn rec(v: u32) -> Record {
    Record {
        batch: Batch {
            data_version: v,
            writes: vec![format!(
                "UPDATE vars SET intval={v} WHERE name='data_version'"
            )],
        },
        supersedes: false,
        time_ms: 1_700_000_000_000 + u64::from(v),
    }
}

/// A format-2 stream: header, link, then batches 1..=n. Returns the bytes and each frame's
/// (offset, length).
pub(super) fn stream(crypto: &Crypto, n: u32) -> (Vec<u8>, Vec<(usize, usize)>) {
    let header = stream_header(crypto, repo(), SEQ);
    let mut data = header.clone();
    let mut frames = Vec::new();
    let link = Link {
        predecessor: Some(Predecessor {
            seq: SEQ - 1,
            frames: 3,
            chain: Some([1; 16]),
            last_version: Some(0),
        }),
        time_ms: 1,
    };
    let mut entries = vec![link.encode()];
    entries.extend((1..=n).map(|v| rec(v).encode()));
    for e in entries {
        let off = data.len();
        let prev = frame_chain(&data);
        let f = encode_frame(crypto, &header, SEQ, off as u64, &prev, &e);
        frames.push((off, f.len()));
        data.extend_from_slice(&f);
    }
    (data, frames)
}

pub(super) fn parse(crypto: &Crypto, data: &[u8], recovery: Recovery) -> Result<Parsed> {
    parse_stream(data, crypto, repo(), SEQ, "s", recovery)
}

pub(super) fn cryptos() -> [Crypto; 2] {
    [
        Crypto::plaintext(),
        Crypto::encrypted(&MasterKey::from_bytes([3; 32])),
    ]
}

/// A local stream is written ahead with zeros; a crash can leave them after the header, or
/// before it was written, or after part of it (the u64 seq ends in zero bytes, so "the last
/// non-zero byte" alone cannot say whether a header is whole).
#[test]
fn zeros_after_the_header_or_instead_of_it_are_an_empty_stream() {
    let c = Crypto::plaintext();
    let header = stream_header(&c, repo(), SEQ);
    let zeros = vec![0u8; 4096];
    let whole = [header.as_slice(), &zeros].concat();
    for recovery in [Recovery::Strict, Recovery::TruncateTornTail] {
        let p = parse(&c, &whole, recovery).unwrap();
        assert_eq!((p.records.len(), p.valid_len, p.tail), (0, 40, None));
        let p = parse(&c, &zeros, recovery).unwrap();
        assert_eq!((p.records.len(), p.valid_len, p.tail), (0, 0, None));
    }
    let torn = [header.get(..20).unwrap_or_default(), &zeros].concat();
    assert!(parse(&c, &torn, Recovery::Strict)
        .err()
        .is_some_and(|e| e.is_corruption()));
    let p = parse(&c, &torn, Recovery::TruncateTornTail).unwrap();
    assert_eq!(p.valid_len, 0);
    assert!(
        matches!(&p.tail, Some(Tail::Torn(t)) if t == "20 bytes of a torn stream header"),
        "{:?}",
        p.tail
    );
    // Fewer zero bytes than a header: the file grew by the header's write but its bytes never
    // landed (a power cut), a torn header; zeros written ahead come in whole blocks.
    let short = vec![0u8; 20];
    assert!(parse(&c, &short, Recovery::Strict)
        .err()
        .is_some_and(|e| e.is_corruption()));
    let p = parse(&c, &short, Recovery::TruncateTornTail).unwrap();
    assert_eq!((p.records.len(), p.valid_len), (0, 0));
    assert!(
        matches!(&p.tail, Some(Tail::Torn(t)) if t == "20 bytes of a torn stream header"),
        "{:?}",
        p.tail
    );

    let (data, frames) = stream(&c, 1);
    let with_zeros = [data.as_slice(), &zeros].concat();
    let p = parse(&c, &with_zeros, Recovery::Strict).unwrap();
    assert_eq!(p.records, vec![rec(1)]);
    assert_eq!(p.frames, 2);
    assert!(p.link.is_some());
    assert_eq!(p.valid_len, data.len() as u64);
    assert_eq!(frames.len(), 2);
}

/// A whole header naming another segment (its last byte, the top of the segment number,
/// changed) is damage in every recovery mode, with or without zeros after it: its last byte
/// is not zero, so it was written whole, and it is not a torn header to cut.
#[test]
fn a_header_of_another_segment_is_corruption_not_a_torn_header() {
    for c in cryptos() {
        let mut header = stream_header(&c, repo(), SEQ);
        if let Some(b) = header.last_mut() {
            *b ^= 1;
        }
        let zeros = vec![0u8; 4096];
        for bytes in [header.clone(), [header.as_slice(), &zeros].concat()] {
            for recovery in [
                Recovery::Strict,
                Recovery::TruncateTornTail,
                Recovery::AcceptDamagedTail,
            ] {
                match parse(&c, &bytes, recovery) {
                    Err(e) => assert!(
                        e.to_string()
                            .contains("stream header names another repository or segment"),
                        "{recovery:?}: {e}"
                    ),
                    Ok(p) => panic!("{recovery:?}: read as a stream, tail {:?}", p.tail),
                }
            }
        }
    }
}

/// What a crash leaves: any prefix of the newest frame, then zeros (written ahead) or the end of
/// the file. Each is a torn tail, cut by the writer and left out by restore.
#[test]
fn every_prefix_of_the_newest_frame_is_a_torn_tail() {
    for c in cryptos() {
        let (data, frames) = stream(&c, 3);
        let &(off, len) = frames.last().unwrap();
        for cut in 1..len {
            let prefix = &data[..off + cut];
            let zeroed = [prefix, &vec![0u8; len - cut + 512]].concat();
            for bytes in [prefix.to_vec(), zeroed] {
                let p = parse(&c, &bytes, Recovery::TruncateTornTail).unwrap();
                assert_eq!(p.records, vec![rec(1), rec(2)], "cut at {cut}");
                assert_eq!(p.valid_len, off as u64);
                assert!(
                    matches!(p.tail, Some(Tail::Torn(_))),
                    "cut at {cut}: {:?}",
                    p.tail
                );
                assert!(parse(&c, &bytes, Recovery::Strict).is_err());
            }
        }
        // The whole length written but its last bytes never landed (zeros), at the end of the
        // file or before zeros written ahead: a torn write too.
        for k in [1, 16, len / 2] {
            let mut cut = data.clone();
            cut[off + len - k..].fill(0);
            for bytes in [cut.clone(), [cut.as_slice(), &[0u8; 512]].concat()] {
                let p = parse(&c, &bytes, Recovery::TruncateTornTail).unwrap();
                assert_eq!(p.records, vec![rec(1), rec(2)], "{k} zeros");
                assert!(
                    matches!(&p.tail, Some(Tail::Torn(t)) if t.contains("whose end was never written")),
                    "{k} zeros: {:?}",
                    p.tail
                );
            }
        }
    }
}

/// What a crash cannot leave: a whole last frame that fails authentication, the last two frames
/// swapped, bytes after the last frame. Restore must not call that "never acknowledged".
#[test]
fn damage_at_the_end_is_not_a_torn_tail() {
    for c in cryptos() {
        let (data, frames) = stream(&c, 3);
        let &(off, len) = frames.last().unwrap();

        // A flipped byte inside the newest frame (its last byte left as is).
        let mut flipped = data.clone();
        flipped[off + len / 2] ^= 0x40;
        if flipped[off + len - 1] == 0 {
            flipped[off + len - 1] = 1; // a zero last byte would read as a torn write
        }
        // The newest two frames swapped.
        let &(off2, len2) = frames.get(frames.len() - 2).unwrap();
        let mut swapped = data[..off2].to_vec();
        swapped.extend_from_slice(&data[off..off + len]);
        swapped.extend_from_slice(&data[off2..off2 + len2]);
        // Garbage after the newest frame.
        let mut trailing = data.clone();
        trailing.extend_from_slice(b"\x01\x02\x03\x04\x05\x06\x07\x08\x09\x0a");
        // The flipped newest frame with a zero last byte, and one byte after it: a torn write
        // ends in zeros, the byte after the frame makes it damage.
        let mut zero_end = flipped.clone();
        zero_end[off + len - 1] = 0;
        zero_end.push(1);

        for (what, bytes, good, says) in [
            ("flipped", flipped, 2, "is whole but fails authentication"),
            ("swapped", swapped, 1, ""),
            ("trailing", trailing, 3, ""),
            (
                "zero end",
                zero_end,
                2,
                "fails authentication and 1 bytes follow it",
            ),
        ] {
            // The operator is told where the good records end (the last whole batch).
            match parse(&c, &bytes, Recovery::TruncateTornTail) {
                Err(Error::DamagedTail { object, what: why }) => {
                    assert_eq!(object, "s", "{what}");
                    assert!(
                        why.ends_with(&format!("the last whole record is data_version {good}")),
                        "{what}: {why}"
                    );
                    assert!(why.contains(says), "{what}: {why}");
                }
                Err(e) => panic!("{what}: {e}"),
                Ok(_) => panic!("{what}: read as whole"),
            }
            let p = parse(&c, &bytes, Recovery::AcceptDamagedTail).unwrap();
            assert!(matches!(p.tail, Some(Tail::Damaged(_))), "{what}");
            assert_eq!(p.records.len(), good, "{what}");
        }
    }
}

/// Records are chained by their MACs and bound to their offsets: a frame removed from the middle,
/// or another frame put in place of one of the same length, fails, and the damage is reported
/// (as corruption, or as a damaged end when nothing valid follows), never skipped or read as a
/// torn write.
#[test]
fn a_frame_removed_or_moved_in_the_middle_is_corruption() {
    for c in cryptos() {
        let (data, frames) = stream(&c, 4);
        let (a, alen) = frames[2];
        let (b, blen) = frames[3];
        // Remove frame 2: frame 3 now sits at frame 2's offset after frame 1.
        let mut removed = data[..a].to_vec();
        removed.extend_from_slice(&data[b..]);
        assert!(parse(&c, &removed, Recovery::TruncateTornTail)
            .err()
            .is_some_and(|e| e.is_corruption()));
        let p = parse(&c, &removed, Recovery::AcceptDamagedTail).unwrap();
        assert_eq!(p.records, vec![rec(1)]);
        assert!(matches!(p.tail, Some(Tail::Damaged(_))));
        // Same length records: put frame 2's bytes where frame 3 was.
        assert_eq!(alen, blen);
        let mut moved = data.clone();
        moved.copy_within(a..a + alen, b);
        assert!(parse(&c, &moved, Recovery::TruncateTornTail)
            .err()
            .is_some_and(|e| e.is_corruption()));
        let p = parse(&c, &moved, Recovery::AcceptDamagedTail).unwrap();
        assert_eq!(
            p.records,
            vec![rec(1), rec(2)],
            "a moved frame is never read"
        );
    }
}

/// A format-2 segment begins with its link; a batch first, or a second link, is corruption.
#[test]
fn the_link_comes_first_and_only_once() {
    let c = Crypto::plaintext();
    let header = stream_header(&c, repo(), SEQ);
    let mut data = header.clone();
    let f = encode_frame(
        &c,
        &header,
        SEQ,
        40,
        &header_chain(&header),
        &rec(1).encode(),
    );
    data.extend_from_slice(&f);
    assert!(parse(&c, &data, Recovery::AcceptDamagedTail)
        .err()
        .is_some_and(|e| e.is_corruption()));

    let (mut data, _) = stream(&c, 1);
    let l = Link::default().encode();
    let off = data.len();
    let f = encode_frame(&c, &header, SEQ, off as u64, &frame_chain(&data), &l);
    data.extend_from_slice(&f);
    assert!(parse(&c, &data, Recovery::AcceptDamagedTail)
        .err()
        .is_some_and(|e| e.is_corruption()));
}

#[test]
fn sealed_segments_round_trip_and_name_their_range() {
    let c = Crypto::encrypted(&MasterKey::from_bytes([3; 32]));
    let s = Sealed {
        first: 4,
        last: 6,
        frames: 9,
        chain: Some([5; 16]),
        link: Some(Link::default()),
        records: vec![rec(1), rec(2)],
    };
    let name = crate::journal::sealed_run_name(4, 6);
    let bytes = encode_sealed(&c, &name, &s, 3).unwrap();
    assert_eq!(decode_sealed(&c, &name, 4, 6, &bytes).unwrap(), s);
    // The same bytes under another name fail their seal; a body naming other segments than the
    // name says is refused even where the seal would open.
    let other = crate::journal::sealed_run_name(4, 7);
    assert!(decode_sealed(&c, &other, 4, 7, &bytes).is_err());
}

/// A newest frame whose header is intact (its keyless check fits) but names a length no writer
/// writes (over [`MAX_FRAME`]) is damage, not a torn write, whatever follows; one of exactly
/// the bound, cut short, is the torn write of the largest record.
#[test]
fn a_frame_length_over_the_bound_is_damage_and_one_at_it_is_a_torn_write() {
    for c in cryptos() {
        let (data, _) = stream(&c, 2);
        let at = data.len();
        for (len, torn) in [(MAX_FRAME as u32, true), (MAX_FRAME as u32 + 1, false)] {
            let mut bytes = data.clone();
            bytes.extend_from_slice(&len.to_le_bytes());
            bytes.extend_from_slice(&frame_check(SEQ, at as u64, len).to_le_bytes());
            bytes.extend_from_slice(&[0x5a; 100]);
            let r = parse(&c, &bytes, Recovery::TruncateTornTail);
            match (r, torn) {
                (Ok(p), true) => {
                    assert_eq!(p.records, vec![rec(1), rec(2)]);
                    assert_eq!(p.valid_len, at as u64);
                    assert!(matches!(p.tail, Some(Tail::Torn(_))));
                }
                (Err(Error::DamagedTail { what, .. }), false) => {
                    assert!(
                        what.contains("neither a record's nor a torn write's"),
                        "{what}"
                    );
                }
                (Ok(_), false) => panic!("length {len}: read as a torn write"),
                (Err(e), _) => panic!("length {len}: {e}"),
            }
        }
    }
}
