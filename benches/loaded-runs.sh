#!/usr/bin/env bash
# The README's test command N times in a row (default 20) while busy loops load the machine
# (issue 19: "the full test command passes 20 times in a row while two busy loops load the
# machine"). Stops at the first failure and keeps its output.
#
#   benches/loaded-runs.sh [N]        # LOOPS=2 busy loops by default
#
# One line per run in target/loaded-runs/log (start, seconds, result, load average); each run's
# output in target/loaded-runs/run-K.out. The tests are built once first, so the runs time the
# tests, not the build. About 10 minutes a run on 2 loaded cores: 20 runs are an afternoon.
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-20}
loops=${LOOPS:-2}
out=target/loaded-runs
mkdir -p "$out"
unset CLN_BACKUP_NO_S3_TESTS CLN_BACKUP_S3_URL
cargo test --workspace --no-run -q
pids=()
for _ in $(seq "$loops"); do
  (while :; do :; done) &
  pids+=($!)
done
trap 'kill "${pids[@]}" 2>/dev/null || true' EXIT
for i in $(seq "$n"); do
  start=$(date +%s)
  if cargo test --workspace >"$out/run-$i.out" 2>&1; then r=pass; else r=FAIL; fi
  line="$(date -u -d "@$start" +%FT%TZ) run $i/$n: $r in $(($(date +%s) - start)) s, load $(cut -d' ' -f1-3 /proc/loadavg), $(grep -c '^test result: ok' "$out/run-$i.out") suites ok"
  echo "$line" | tee -a "$out/log"
  if [ "$r" != pass ]; then
    grep -E '^(test .* FAILED|failures:|---- )' "$out/run-$i.out" | head -20
    exit 1
  fi
done
echo "$n runs in a row passed with $loops busy loops"
