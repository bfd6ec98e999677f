#!/usr/bin/env bash
# The S3 backend against a real Garage 2.x, which silently ignores If-None-Match and If-Match on
# PutObject (so cln-backup must detect it and use its best-effort fallback). Not part of CI:
# Garage takes 16+ minutes to build. See docs/s3-garage.md.
#
#   GARAGE=/path/to/garage .ci/garage-check.sh
#
# Starts `garage server` (single node, sqlite metadata, everything on 127.0.0.1, data in a fresh
# temp directory), assigns the layout, creates a key and a bucket, then runs the store test
# `garage_ignores_conditional_writes_and_the_fallback_holds` (store/tests/s3.rs) and the plugin
# test `s3_destination_through_the_plugin` with Garage's URL and keys, and stops Garage and
# removes its data whatever happens. Without GARAGE it says
# "skipped" and exits 0. Ports: CLN_BACKUP_GARAGE_PORT (default 29900) for S3, the next three
# for RPC, web (unused) and admin.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
if [ -z "${GARAGE:-}" ]; then
  echo "skipped: set GARAGE to a garage 2.x binary (cargo install garage --version 2.5.0 --locked)"
  exit 0
fi
port="${CLN_BACKUP_GARAGE_PORT:-29900}"
rpc=$((port + 1)) admin=$((port + 3))
bucket="cln-backup-garage"
dir=$(mktemp -d /tmp/cln-backup-garage.XXXXXX)
pid=""
cleanup() {
  if [ -n "${pid}" ]; then
    kill -TERM "${pid}" 2>/dev/null || true
    for _ in $(seq 1 40); do kill -0 "${pid}" 2>/dev/null || break; sleep 0.25; done
    kill -KILL "${pid}" 2>/dev/null || true
    wait "${pid}" 2>/dev/null || true
  fi
  rm -rf "${dir}"
}
trap cleanup EXIT
hex() { head -c "$1" /dev/urandom | od -An -tx1 | tr -d ' \n'; }
cat >"${dir}/garage.toml" <<EOF
metadata_dir = "${dir}/meta"
data_dir = "${dir}/data"
db_engine = "sqlite"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:${rpc}"
rpc_public_addr = "127.0.0.1:${rpc}"
rpc_secret = "$(hex 32)"

[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:${port}"
root_domain = ".s3.garage.localhost"

[admin]
api_bind_addr = "127.0.0.1:${admin}"
admin_token = "$(hex 16)"
EOF
g() { "${GARAGE}" -c "${dir}/garage.toml" "$@"; }
echo "garage: $(g --version 2>/dev/null || true)"
# Started directly (not through `g`), so that $! is garage itself and cleanup stops it.
RUST_LOG=warn "${GARAGE}" -c "${dir}/garage.toml" server >"${dir}/server.log" 2>&1 &
pid=$!
up=""
for _ in $(seq 1 60); do
  if g status >/dev/null 2>&1; then up=1; break; fi
  kill -0 "${pid}" 2>/dev/null || break
  sleep 0.5
done
if [ -z "${up}" ]; then
  echo "garage did not start; its log:" >&2
  tail -n 30 "${dir}/server.log" >&2 || true
  exit 1
fi
node=$(g node id -q | cut -c1-64)
g layout assign -z dc1 -c 1G "${node}" >/dev/null
g layout apply --version 1 >/dev/null
key=$(g json-api CreateKey '{"name":"cln-backup-check"}')
AWS_ACCESS_KEY_ID=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["accessKeyId"])' <<<"${key}")
AWS_SECRET_ACCESS_KEY=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["secretAccessKey"])' <<<"${key}")
g bucket create "${bucket}" >/dev/null
g bucket allow --read --write --owner --key "${AWS_ACCESS_KEY_ID}" "${bucket}" >/dev/null
export AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY AWS_REGION=garage
export CLN_BACKUP_GARAGE_URL="s3://${bucket}/check?endpoint=http://127.0.0.1:${port}&allow_http=true&region=garage"
# Only the Garage test (ignored unless asked for: it needs this script's Garage).
unset CLN_BACKUP_S3_URL CLN_BACKUP_WEED CLN_BACKUP_NO_S3_TESTS CI
cd "${root}"
cargo test -p cln-backup-store --test s3 garage_ -- --ignored --nocapture
# The s1 trace through the real plugin into Garage: compaction, retention prune, verify clean,
# only referenced objects left, restore exact (plugin/tests/destinations.rs, pointed at Garage).
CLN_BACKUP_S3_URL="${CLN_BACKUP_GARAGE_URL}" \
  cargo test -p cln-backup --test destinations s3_destination_through_the_plugin -- --exact --nocapture
