//! Journal record bodies (`store::journal::Record::decode`): no panic on any bytes, and a decoded
//! record encodes back to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use store::journal::Record;

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = Record::decode(data, "fuzz") {
        assert_eq!(r.encode(), data);
    }
});
