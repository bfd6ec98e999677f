//! `BackupUrl::parse`: any string gives a URL or an error, and a parsed URL prints as text that
//! parses back to the same URL (the CLI and `backup.lock` store the printed form).
#![no_main]

use libfuzzer_sys::fuzz_target;
use store::BackupUrl;

fuzz_target!(|s: &str| {
    if let Ok(u) = BackupUrl::parse(s) {
        let printed = u.to_string();
        match BackupUrl::parse(&printed) {
            Ok(again) => assert_eq!(again, u, "{s:?} printed as {printed:?}"),
            Err(e) => panic!("{s:?} printed as {printed:?}, which does not parse: {e}"),
        }
    }
});
