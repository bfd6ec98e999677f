//! lightningd's side of the plugin wire, byte for byte as v26.06.6 writes it.
//!
//! Each message is one compact JSON object with the keys in lightningd's order (`jsonrpc`, `id`,
//! `method`, `params`), followed by a blank line (`\n\n`). The tests compare these encodings with
//! the recorded transcripts in `testdata/`.

use serde_json::{json, Value};

/// The version lightningd announces in `LIGHTNINGD_VERSION`.
pub const LIGHTNINGD_VERSION: &str = "v26.06.6";

/// What follows every message on the wire.
pub const FRAME_END: &str = "\n\n";

/// The feature bits v26.06.6 sent in `init` (regtest, default configuration).
pub fn feature_set() -> Value {
    json!({
        "init": "800898880a8a59a1",
        "node": "808898880a8a59a1",
        "channel": "",
        "invoice": "02000002024100",
        "bolt12_offer": "",
        "bolt12_invreq": "",
        "bolt12_invoice": "020000",
        "channel_type": "08800000800000"
    })
}

fn s(v: &str) -> String {
    Value::String(v.to_string()).to_string()
}

/// A request (`id` given) or a notification (`id` None), params already encoded as JSON text.
pub fn encode(id: Option<&str>, method: &str, params_json: &str) -> String {
    match id {
        Some(id) => format!(
            r#"{{"jsonrpc":"2.0","id":{},"method":{},"params":{}}}"#,
            s(id),
            s(method),
            params_json
        ),
        None => format!(
            r#"{{"jsonrpc":"2.0","method":{},"params":{}}}"#,
            s(method),
            params_json
        ),
    }
}

/// `db_write` params: `{"data_version":V,"writes":[...]}`.
pub fn db_write_params(data_version: u32, writes: &[String]) -> String {
    format!(
        r#"{{"data_version":{},"writes":{}}}"#,
        data_version,
        Value::from(writes.to_vec())
    )
}

/// `init` params: the plugin's options in the order given, then lightningd's configuration.
pub fn init_params(options: &[(String, Value)], lightning_dir: &str, network: &str) -> String {
    let opts: Vec<String> = options
        .iter()
        .map(|(k, v)| format!("{}:{}", s(k), v))
        .collect();
    format!(
        r#"{{"options":{{{}}},"configuration":{{"lightning-dir":{},"rpc-file":"lightning-rpc","startup":true,"network":{},"feature_set":{}}}}}"#,
        opts.join(","),
        s(lightning_dir),
        s(network),
        encode_ordered_features()
    )
}

fn encode_ordered_features() -> String {
    // serde_json's map sorts keys; lightningd writes them in this order.
    let keys = [
        "init",
        "node",
        "channel",
        "invoice",
        "bolt12_offer",
        "bolt12_invreq",
        "bolt12_invoice",
        "channel_type",
    ];
    let f = feature_set();
    let parts: Vec<String> = keys
        .iter()
        .map(|k| format!("{}:{}", s(k), f.get(*k).cloned().unwrap_or(Value::Null)))
        .collect();
    format!("{{{}}}", parts.join(","))
}

/// The id lightningd gives its own calls: `cln:<method>#<n>`.
pub fn cln_id(method: &str, n: u64) -> String {
    format!("cln:{method}#{n}")
}

/// The id of an RPC call forwarded from a client: the client's id, then lightningd's.
pub fn forwarded_id(method: &str, client_n: u64, n: u64) -> String {
    format!("cli:{method}#{client_n}/cln:{method}#{n}")
}
