//! The old Python plugin's `.dbak` reader (`store::legacy`): any bytes give a backup or a typed
//! error, never a panic; a decoded backup is internally consistent; the pre-#4090 fix only ever
//! inserts spaces.
#![no_main]

use libfuzzer_sys::fuzz_target;
use store::legacy::{decode_dbak, fix_pre_4090, LegacyEntry};

fuzz_target!(|data: &[u8]| {
    let Ok(b) = decode_dbak(data, "fuzz.dbak") else {
        return;
    };
    // Replay order never goes back in data_version and ends where the header says.
    let versions: Vec<u32> = b.entries.iter().map(LegacyEntry::version).collect();
    assert!(versions.windows(2).all(|w| w[0] <= w[1]), "{versions:?}");
    if let Some(last) = versions.last() {
        assert_eq!(*last, b.version);
    }
    if let Some(t) = &b.tail {
        assert!(t.offset as usize >= store::legacy::HEADER_LEN);
        assert_eq!(t.offset + t.bytes, data.len() as u64);
    }
    for e in &b.entries {
        if let LegacyEntry::Statements { writes, .. } = e {
            for w in writes {
                let fixed = fix_pre_4090(w);
                let strip = |s: &str| s.replace(' ', "");
                assert_eq!(strip(&fixed), strip(w), "the fix changed more than spaces");
            }
        }
    }
});
