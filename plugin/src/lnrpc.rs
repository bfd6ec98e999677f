//! Calls to lightningd's own RPC socket (`<network dir>/<rpc-file>`), from background threads
//! only: lightningd serves nothing while it waits for a `db_write` answer, so a call from the
//! hook path would deadlock.

use std::io::{BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};

/// The socket's path from init's params (`configuration.rpc-file`, relative to the network dir).
pub fn socket_path(params: &Value, dir: &Path) -> PathBuf {
    let rpc_file = params
        .get("configuration")
        .and_then(|c| c.get("rpc-file"))
        .and_then(Value::as_str)
        .unwrap_or("lightning-rpc");
    dir.join(rpc_file)
}

/// One call; its `result`, or why not.
pub fn call(path: &Path, method: &str, params: Value) -> Result<Value, String> {
    let res = (|| -> std::io::Result<Option<Value>> {
        let mut s = UnixStream::connect(path)?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        let req = json!({"jsonrpc": "2.0", "id": format!("cln-backup:{method}#1"),
            "method": method, "params": params});
        s.write_all(req.to_string().as_bytes())?;
        let mut r = BufReader::new(s);
        let mut de = serde_json::Deserializer::from_reader(&mut r).into_iter::<Value>();
        Ok(de.next().and_then(Result::ok))
    })();
    match res {
        Ok(Some(v)) => match (v.get("result"), v.get("error")) {
            (Some(r), _) => Ok(r.clone()),
            (_, Some(e)) => Err(format!("{method} failed: {e}")),
            _ => Err(format!("{method}: no result in {v}")),
        },
        Ok(None) => Err(format!("{method}: no answer from {}", path.display())),
        Err(e) => Err(format!("{method} on {}: {e}", path.display())),
    }
}
