//! Decoders behind a valid seal: manifests, indexes, sealed journal segments and the config body,
//! each given the input (raw and zstd-compressed) as its sealed body. No panic, and what decodes
//! re-encodes to something that decodes equal.
#![no_main]

use libfuzzer_sys::fuzz_target;
use store::config::Config;
use store::crypto::Crypto;
use store::envelope::{object_aad, seal_object, Header, Kind};
use store::ids::RepoId;
use store::journal::segment::{decode_sealed, encode_sealed};
use store::manifest::Manifest;
use store::pack::{decode_index, encode_index};

fuzz_target!(|data: &[u8]| {
    let crypto = Crypto::plaintext();
    let z = zstd::bulk::compress(data, 1).unwrap_or_default();
    for body in [data, &z[..]] {
        let name = "snapshots/0102030405060708";
        if let Ok(m) = Manifest::decode(&crypto, name, &seal_object(Kind::Manifest, &crypto, name, body)) {
            let again = Manifest::decode(&crypto, name, &m.encode(&crypto).unwrap()).unwrap();
            assert_eq!(again.list, m.list);
        }
        let name = "index/00";
        if let Ok(e) = decode_index(&crypto, name, &seal_object(Kind::Index, &crypto, name, body)) {
            let again = decode_index(&crypto, name, &encode_index(&crypto, name, &e).unwrap()).unwrap();
            assert_eq!(again, e);
        }
        let name = "journal/0000000000000001.seg";
        if let Ok(s) = decode_sealed(&crypto, name, 1, 1, &seal_object(Kind::SealedSegment, &crypto, name, body)) {
            let again = encode_sealed(&crypto, name, &s, 1).unwrap();
            assert_eq!(decode_sealed(&crypto, name, 1, 1, &again).unwrap(), s);
        }
        let repo = RepoId([9; 16]);
        let mut cfg = Header::new(Kind::Config, &crypto).encode().to_vec();
        cfg.extend_from_slice(&repo.0);
        let aad = object_aad(&cfg, repo, "config");
        let sealed = crypto.seal(&aad, body);
        cfg.extend_from_slice(&(sealed.len() as u32).to_le_bytes());
        cfg.extend(sealed);
        cfg.push(0);
        let _ = Config::decode(&cfg, &crypto.clone().for_repository(repo, false));
    }
});
