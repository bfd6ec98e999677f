//! A lightningd stand-in that drives a real plugin binary exactly as lightningd v26.06.6 does.
//!
//! What it reproduces (../shared/NOTES.md section 1, the transcripts in `testdata/`):
//! - the plugin runs with the network directory as its working directory and
//!   `LIGHTNINGD_PLUGIN=1`, `LIGHTNINGD_VERSION=v26.06.6` in its environment;
//! - messages are compact JSON objects each followed by `\n\n`; ids are strings `cln:<m>#<n>`;
//! - `getmanifest`, then `db_write` calls BEFORE `init` (9 on a fresh node, 3 on a restart), then
//!   `init`, then the rest; one hook call in flight at a time, nothing else sent while it waits;
//! - only `{"result":"continue"}` lets lightningd go on: any other reply, or the plugin dying,
//!   is where lightningd stops without committing ([`HookReply`]);
//! - RPC calls pass through with ids `cli:<m>#<n>/cln:<m>#<k>` and may be answered later, while
//!   hooks keep flowing ([`Emulator::rpc_start`], [`Emulator::rpc_wait`]);
//! - shutdown closes the plugin's stdin.
//!
//! Unlike lightningd it gives up after a timeout (tests must be bounded) and records each hook's
//! round-trip time ([`Emulator::latencies`]).

mod emulator;
pub mod node;
pub mod session;
pub mod wire;

pub use emulator::{Emulator, HookReply, LogLine, DEFAULT_TIMEOUT};
pub use session::{load_trace, run_trace_session, DbWrite, SessionOptions, SessionReport, Stop};
