//! Key input (`MasterKey::from_file_text`, `MasterKey::from_phrase`): any text gives a key or an
//! error, and an accepted key prints back to text that reads as the same key.
#![no_main]

use libfuzzer_sys::fuzz_target;
use store::MasterKey;

fuzz_target!(|s: &str| {
    if let Ok(k) = MasterKey::from_file_text(s, "fuzz.key") {
        let again = MasterKey::from_file_text(&k.to_file_text(), "fuzz.key").expect("round trip");
        assert_eq!(again.as_bytes(), k.as_bytes());
    }
    if let Ok(k) = MasterKey::from_phrase(s) {
        let again = MasterKey::from_phrase(&k.to_phrase()).expect("round trip");
        assert_eq!(again.as_bytes(), k.as_bytes());
    }
});
