#!/usr/bin/env python3
"""The smallest durable db_write plugin: append each batch to a file, fsync, answer continue.
The reference the issue sets for cln-backup's hook latency (benches/REPORT.md)."""
import json, os, sys

def reply(rid, result=None, error=None):
    msg = {"jsonrpc": "2.0", "id": rid}
    msg.update({"error": error} if error else {"result": result})
    sys.stdout.write(json.dumps(msg) + "\n\n")
    sys.stdout.flush()

log, buf = None, ""
for line in sys.stdin:
    buf += line
    if line.strip() or not buf.strip():
        continue
    msg, buf = json.loads(buf), ""
    method, rid = msg.get("method"), msg.get("id")
    if method == "getmanifest":
        reply(rid, {"options": [], "rpcmethods": [], "hooks": ["db_write"], "dynamic": False, "nonnumericids": True})
    elif method == "init":
        reply(rid, {})
    elif method == "db_write":
        log = log or open("backup.log", "ab")
        log.write(json.dumps(msg["params"]).encode() + b"\n")
        log.flush()
        os.fsync(log.fileno())
        reply(rid, {"result": "continue"})
    elif rid is not None:
        reply(rid, error={"code": -32601, "message": "unknown method"})
