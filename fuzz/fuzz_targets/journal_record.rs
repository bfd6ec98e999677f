//! Journal record bodies (`store::journal::Record::decode`): no panic on any bytes, and a decoded
//! record encodes back to the same bytes. A format-1 record (type 1, no time) is written again
//! only as type 2 with time 0: that encoding decodes to the same record.
#![no_main]

use libfuzzer_sys::fuzz_target;
use store::journal::Record;

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = Record::decode(data, "fuzz") {
        let again = r.encode();
        if data[0] == 2 {
            assert_eq!(again, data);
        }
        assert_eq!(Record::decode(&again, "fuzz").unwrap(), r);
    }
});
