#!/usr/bin/env bash
# Bounded fuzz smoke run: build every cargo-fuzz target, run each for SECONDS (default 10, at most
# 600), and fail if any target crashes, panics, times out on one input, or runs out of memory.
#
# Usage: fuzz/smoke.sh [SECONDS]
# Environment:
#   FUZZ_TOOLCHAIN  rustup toolchain for the build, e.g. "nightly" (default: the active one).
#   FUZZ_SANITIZER  none (default; works on stable Rust) or address (needs nightly).
# Works on stable Rust: `--sanitizer none` needs no -Z flag. Installs cargo-fuzz if it is missing.
# A crash is saved in fuzz/artifacts/TARGET/ and reproduced with the command printed below.
set -euo pipefail
cd "$(dirname "$0")"

secs=${1:-10}
if ! [[ $secs =~ ^[0-9]+$ ]] || [ "$secs" -lt 1 ]; then
  echo "smoke.sh: SECONDS must be a positive integer, got '$secs'" >&2
  exit 2
fi
if [ "$secs" -gt 600 ]; then secs=600; fi

sanitizer=${FUZZ_SANITIZER:-none}
toolchain=()
if [ -n "${FUZZ_TOOLCHAIN:-}" ]; then toolchain=("+${FUZZ_TOOLCHAIN}"); fi
cargo_fuzz=(cargo "${toolchain[@]}" fuzz)

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "=== installing cargo-fuzz"
  cargo install cargo-fuzz --version 0.13.2 --locked
fi

echo "=== building fuzz targets (sanitizer: $sanitizer)"
"${cargo_fuzz[@]}" build --sanitizer "$sanitizer"

mapfile -t targets < <("${cargo_fuzz[@]}" list)
if [ "${#targets[@]}" -eq 0 ]; then
  echo "smoke.sh: no fuzz targets found" >&2
  exit 1
fi

mkdir -p target/smoke
failed=()
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t"
  dirs=("corpus/$t")
  if [ -d "seeds/$t" ]; then dirs+=("seeds/$t"); fi
  log="target/smoke/$t.log"
  echo "=== $t: ${secs}s"
  # The outer timeout bounds a hang in libFuzzer itself; -timeout bounds each input.
  if timeout --kill-after=10 $((secs + 120)) \
    "${cargo_fuzz[@]}" run --sanitizer "$sanitizer" "$t" "${dirs[@]}" -- \
    -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1; then
    grep -E '^Done [0-9]+ runs' "$log" || true
  else
    failed+=("$t")
    tail -n 40 "$log"
    sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | while read -r a; do
      echo "reproduce: (cd fuzz && cargo ${toolchain[*]} fuzz run --sanitizer $sanitizer $t $a)"
    done
  fi
done

if [ "${#failed[@]}" -gt 0 ]; then
  echo "=== fuzz smoke FAILED: ${failed[*]} (logs in fuzz/target/smoke/)" >&2
  exit 1
fi
echo "=== fuzz smoke passed: ${targets[*]}"
