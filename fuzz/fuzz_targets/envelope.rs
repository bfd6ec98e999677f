//! The object envelope (`store::envelope`): the 16-byte header decoder, and `open_object` with a
//! plaintext and an encrypted `Crypto` on any bytes; what seals must open to the same body.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use store::crypto::{Crypto, MasterKey};
use store::envelope::{open_object, seal_object, Header, Kind, HEADER_LEN};

const KINDS: [Kind; 7] = [
    Kind::Config,
    Kind::Manifest,
    Kind::Index,
    Kind::Pack,
    Kind::SealedSegment,
    Kind::JournalStream,
    Kind::Lock,
];

fn cryptos() -> &'static [Crypto; 2] {
    static C: OnceLock<[Crypto; 2]> = OnceLock::new();
    C.get_or_init(|| {
        [
            Crypto::plaintext(),
            Crypto::encrypted(&MasterKey::from_bytes([7; 32])),
        ]
    })
}

fuzz_target!(|data: &[u8]| {
    if let Ok(h) = Header::decode(data, "fuzz") {
        // Everything but the reserved byte (index 7) is read back as written.
        let enc = h.encode();
        assert_eq!(enc[..7], data[..7]);
        assert_eq!(enc[8..HEADER_LEN], data[8..HEADER_LEN]);
    }
    let kind = KINDS[data.first().copied().unwrap_or(0) as usize % KINDS.len()];
    for crypto in cryptos() {
        let _ = open_object(kind, crypto, "packs/fuzz", data);
        let sealed = seal_object(kind, crypto, "packs/fuzz", data);
        let opened = open_object(kind, crypto, "packs/fuzz", &sealed).expect("own seal opens");
        assert_eq!(opened, data);
        // Under another name the sealed object must not open when encrypted.
        let other = open_object(kind, crypto, "packs/other", &sealed);
        if crypto.encryption() != store::crypto::Encryption::None {
            assert!(other.is_err(), "sealed object opened under another name");
        }
    }
});
