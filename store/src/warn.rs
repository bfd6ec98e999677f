//! Warnings the store cannot return as errors: a name in a listing that is not an object of the
//! repository (`.DS_Store`, an rsync temp file) is skipped, never fatal, and said once.
//!
//! The binaries install a sink ([`set_sink`]): the plugin sends these to lightningd's log, the
//! CLI to stderr. Without one they go to stderr.

use std::collections::HashSet;
use std::sync::{Mutex, OnceLock};

type Sink = Box<dyn Fn(&str) + Send + Sync>;

static SINK: OnceLock<Sink> = OnceLock::new();
static SEEN: Mutex<Option<HashSet<String>>> = Mutex::new(None);

/// Where warnings go (first call wins).
pub fn set_sink(f: impl Fn(&str) + Send + Sync + 'static) {
    let _ = SINK.set(Box::new(f));
}

/// Say `message` once per process.
pub fn once(message: &str) {
    let first = match SEEN.lock() {
        Ok(mut g) => g
            .get_or_insert_with(HashSet::new)
            .insert(message.to_string()),
        Err(_) => true,
    };
    if !first {
        return;
    }
    match SINK.get() {
        Some(f) => f(message),
        None => eprintln!("cln-backup: {message}"),
    }
}

/// A name in a listing that is not one of the repository's objects: skipped.
pub fn stray(name: &str) {
    once(&format!(
        "skipping {name}: not an object of this repository (a stray file; remove it if you did not put it there)"
    ));
}

/// Whether `name` is `prefix` followed by an id `is_id` accepts; warns about it (once) if not.
pub fn is_object(name: &str, prefix: &str, is_id: impl Fn(&str) -> bool) -> bool {
    let ok = name.strip_prefix(prefix).is_some_and(is_id);
    if !ok {
        stray(name);
    }
    ok
}
