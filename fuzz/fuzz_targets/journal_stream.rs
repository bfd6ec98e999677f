//! Open journal segment streams (`store::journal::segment::parse_stream`): a stream of valid
//! frames built from the input, then damaged (a cut and a flipped byte chosen by the input).
//! Whatever the damage, parsing never panics, never returns a record that was not written, and
//! returns records only as a prefix of those written, in order.
#![no_main]

use libfuzzer_sys::fuzz_target;
use store::crypto::Crypto;
use store::ids::RepoId;
use store::journal::segment::{encode_frame, frame_chain, parse_stream, stream_header, Recovery};
use store::journal::{Batch, Link, Record};

fuzz_target!(|data: &[u8]| {
    let crypto = Crypto::plaintext();
    let repo = RepoId([3; 16]);
    let header = stream_header(&crypto, repo, 5);
    let mut stream = header.clone();
    let mut written = Vec::new();
    let link = Link::default().encode();
    stream.extend(encode_frame(&crypto, &header, 5, stream.len() as u64, &frame_chain(&stream), &link));
    let (ctl, body) = data.split_at(data.len().min(8));
    for (i, chunk) in body.chunks(23).enumerate() {
        let rec = Record {
            batch: Batch {
                data_version: i as u32 + 1,
                writes: vec![String::from_utf8_lossy(chunk).into_owned()],
            },
            supersedes: false,
            time_ms: 0,
        };
        let prev = frame_chain(&stream);
        stream.extend(encode_frame(&crypto, &header, 5, stream.len() as u64, &prev, &rec.encode()));
        written.push(rec);
    }
    let c = |i: usize| ctl.get(i).copied().unwrap_or(0) as usize;
    if c(0) % 3 == 1 && !stream.is_empty() {
        let cut = (c(1) << 8 | c(2)) % stream.len();
        stream.truncate(cut.max(1));
    }
    if c(3) % 3 == 1 && !stream.is_empty() {
        let at = (c(4) << 8 | c(5)) % stream.len();
        stream[at] ^= 1 << (c(6) % 8);
    }
    for recovery in [Recovery::TruncateTornTail, Recovery::Strict, Recovery::AcceptDamagedTail] {
        if let Ok(p) = parse_stream(&stream, &crypto, repo, 5, "fuzz", recovery) {
            assert!(p.records.len() <= written.len());
            assert_eq!(p.records[..], written[..p.records.len()]);
        }
    }
});
