#!/usr/bin/env bash
# Run every measurement in benches/ and write benches/REPORT.md: the machine, the date, the load,
# each number beside its physical limit or reference, and which targets of issue 6 are met.
#
#   benches/run-report.sh            full run (1 GiB generated database; ~10 minutes)
#   benches/run-report.sh --quick    smoke run (64 MiB database), writes target/bench-data/REPORT.quick.md
#
# Needs: restic and sqlite3 (Debian: apt-get install -y restic sqlite3), python3.
# Run it on an otherwise idle machine: the script records the load average before and after.
# Generated inputs are cached in target/bench-data/ (the 1 GiB database takes ~1 minute once).
set -euo pipefail
cd "$(dirname "$0")/.."

SIZE=1024
OUT=benches/REPORT.md
TAIL=2000
if [[ "${1:-}" == "--quick" ]]; then
    SIZE=64
    OUT=target/bench-data/REPORT.quick.md
    TAIL=300
fi
for t in restic sqlite3 python3; do
    command -v "$t" >/dev/null || { echo "$t is missing (apt-get install -y restic sqlite3 python3)" >&2; exit 1; }
done

cargo build --release -p cln-backup-benches --bins
PLUGIN_ARGS=()
if [[ -f plugin/Cargo.toml ]] && cargo build --release -p cln-backup --bin cln-backup; then
    PLUGIN_ARGS=(--plugin "$PWD/target/release/cln-backup")
fi
B=target/release
mkdir -p target/bench-data
T=$(mktemp -d "$PWD/target/bench-data/report.XXXXXX")
trap 'rm -rf "$T"' EXIT

load() { cut -d' ' -f1-3 /proc/loadavg; }
LOAD_BEFORE=$(load)
STARTED=$(date -u '+%Y-%m-%d %H:%M UTC')
run() {
    local name=$1
    shift
    echo "== $name: $*" >&2
    echo "<!-- $(date -u +%H:%M:%S) load $(load): $* -->" >"$T/$name.md"
    "$@" >>"$T/$name.md"
}

# Order: latency first (most sensitive to other activity), then throughput, then sizes.
run hook $B/hook --python --inprocess --scale-tail "$TAIL" "${PLUGIN_ARGS[@]}"
run snapshot $B/snapshot --size-mib "$SIZE" --raw --restic --variants pages:1,pages:1+enc,pages:4,cdc:16384
run replay $B/restore --replay
run replay-enc $B/restore --replay --encrypt
run restore $B/restore --restore --size-mib "$SIZE"
run restore-enc $B/restore --restore --size-mib "$SIZE" --encrypt
run series $B/series --header --restic --chunker pages:1,pages:4,cdc:16384
run series-enc $B/series --header --restic-bytes "$(sed -n 's/.*restic series total \([0-9]*\).*/\1/p' "$T/series.md")" --chunker pages:1 --encrypt
LOAD_AFTER=$(load)
# Criterion micro-benchmarks (short runs), summarised: name, median time, median throughput.
echo "== criterion" >&2
cargo bench -p cln-backup-benches --bench micro -- --quick 2>/dev/null |
    awk '/change:/ { chg = 1; next }
         /time:/ { off = ($1 != "time:"); if (off) { name = $1; chg = 0 } if (chg) next;
                   t = $(4+off) " " $(5+off); pending = 1; next }
         /thrpt:/ { if (chg) next; printf "| %s | %s | %s %s |\n", name, t, $4, $5; pending = 0; next }
         /^[A-Za-z0-9_]+\/[A-Za-z0-9_]+$/ { if (pending) printf "| %s | %s | - |\n", name, t; pending = 0; chg = 0; name = $1; next }
         END { if (pending) printf "| %s | %s | - |\n", name, t }' >"$T/criterion.md" || true

# A section's output: the tables, then its raw-number comments (a comment line inside a table
# would end the table).
body() {
    grep -v '^TARGET|' "$T/$1.md" | grep -v '^<!--' || true
    grep '^<!--' "$T/$1.md" || true
}
disk_dev=$(df --output=source /work | tail -1)
{
    echo "# cln-backup benchmarks"
    echo
    echo "Written by \`benches/run-report.sh\` on $STARTED. Every number below comes from this one run,"
    echo "on this machine; each is shown beside its physical limit or its reference tool."
    echo
    echo "## Machine"
    echo
    echo "| | |"
    echo "|---|---|"
    echo "| CPU | $(lscpu | sed -n 's/^Model name: *//p' | head -1) |"
    echo "| cores | $(nproc) (lscpu: $(lscpu | sed -n 's/^CPU(s): *//p' | head -1) CPUs, $(lscpu | sed -n 's/^Thread(s) per core: *//p') thread(s) per core) |"
    echo "| RAM | $(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo) |"
    echo "| disk | $disk_dev ($(lsblk -dno TYPE,SIZE "$disk_dev" 2>/dev/null | xargs), rotational=$(lsblk -dno ROTA "$disk_dev" 2>/dev/null | xargs)), $(df --output=fstype /work | tail -1 | xargs), measured in $PWD/target/bench-data |"
    echo "| kernel | $(uname -sr) |"
    echo "| tools | $(rustc --version), restic $(restic version | awk '{print $2}'), sqlite3 $(sqlite3 --version | awk '{print $1}'), $(python3 --version) |"
    echo "| load average (1, 5, 15 min) | before: $LOAD_BEFORE; after: $LOAD_AFTER |"
    echo
    echo "## Targets (issue 6)"
    echo
    echo "| target | measured | verdict |"
    echo "|---|---|---|"
    cat "$T"/*.md | grep '^TARGET|' | sed 's/^TARGET|/|/'
    echo
    echo "## 1. Hook latency: one db_write made durable"
    echo
    echo "Fixture traces s1, s2, s3 of a real lightningd v26.06.6 (3233 calls, median 1.1 KB), each as"
    echo "one session (s1 a fresh node: 9 db_write calls before init; s2, s3 restarts). Plugins run as"
    echo "processes driven over stdin/stdout as lightningd drives them (round trip = request written to"
    echo "the reply parsed). The bare rows write the same record bytes in-process into a file on the same"
    echo "filesystem: this is the physical limit of a durable append. \"Overlapping a compaction\" counts"
    echo "only hooks whose round trip overlapped a running compaction (called back to back). The Python"
    echo "reference is \`benches/python/append_plugin.py\`."
    echo
    body hook
    echo
    echo "## 2. Snapshot throughput: generated CLN-shaped database"
    echo
    echo "The database: the scale trace replayed, then invoice batches shaped like the trace's (random"
    echo "hashes, preimages, bolt11 strings), to at least $SIZE MiB; then random invoices paid until at least"
    echo "1% of the pages differ (pages changed in the comment below). Reads from a warm page cache."
    echo "Snapshot = \`store::snapshot::write_snapshot\` (chunk, address, compress new chunks, write and"
    echo "fsync packs, index, manifest) plus, for the incremental one, loading the index and the parent's"
    echo "chunk list, as compaction does. restic: \`restic backup\` of the same file path, twice."
    echo
    echo "Raw limits on the same bytes:"
    echo
    body snapshot
    echo
    echo "## 3. Restore and replay"
    echo
    echo "Journal replay, the scale trace (30,014 batches, 90,300 statements, 27 MB database):"
    echo
    body replay
    echo
    body replay-enc
    echo
    echo "Restore of the generated database (one snapshot), beside a plain copy:"
    echo
    body restore
    echo
    body restore-enc
    echo
    echo "## 4. Stored bytes: the 30-snapshot series"
    echo
    echo "The scale trace journaled, a compaction every 1000 batches (31 snapshots); totals include the"
    echo "sealed journal. restic backs up the database file at the same 31 points."
    echo
    body series
    echo
    body series-enc
    echo
    echo "## 5. Criterion micro-benchmarks"
    echo
    echo "\`cargo bench -p cln-backup-benches --bench micro -- --quick\` (median of a short run; the"
    echo "journal appends re-use one invoice batch of the scale trace; chunk_refs = chunk + address the"
    echo "1.7 MB fixture database db-s3)."
    echo
    echo "| benchmark | time | throughput |"
    echo "|---|---|---|"
    cat "$T/criterion.md"
    echo
    if [[ -f benches/report-notes.md ]]; then
        cat benches/report-notes.md
        echo
    fi
    echo "## Reproduce"
    echo
    echo '```'
    echo "apt-get install -y restic sqlite3"
    echo "benches/run-report.sh                       # this report"
    echo "cargo bench -p cln-backup-benches --bench micro   # criterion micro-benchmarks"
    echo '```'
} >"$OUT"

# 6. S3 destinations (benches/src/bin/s3.rs), only with an S3 server: CLN_BACKUP_S3_URL and its
# AWS_* keys from the environment, or BENCH_S3=start to start .ci/s3-server.sh (SeaweedFS on
# 127.0.0.1) for this section and stop it after. Without either the report has no section 6.
if [[ -z "${CLN_BACKUP_S3_URL:-}" && "${BENCH_S3:-}" == "start" ]]; then
    trap 'rm -rf "$T"; .ci/s3-server.sh stop >/dev/null 2>&1 || true' EXIT
    .ci/s3-server.sh start >&2
    . target/ci-s3.env
fi
if [[ -n "${CLN_BACKUP_S3_URL:-}" ]]; then
    S3_ARGS=(--scale)
    [[ "$SIZE" == 64 ]] && S3_ARGS=()
    if run s3 $B/s3 "${S3_ARGS[@]}" "${PLUGIN_ARGS[@]}"; then
        {
            echo
            echo "## 6. S3 destinations"
            echo
            echo "The S3 server of the run (SeaweedFS from .ci/s3-server.sh: on this machine, over loopback,"
            echo "so a PUT costs the server's own work, not a network). Hook rows as in section 1, through"
            echo "the benches driver, encrypted; the bare rows are paired per batch in one loop. Requests are"
            echo "counted where they leave the HTTP client (S3Backend::request_counts)."
            echo
            body s3
        } >>"$OUT"
    else
        echo "the S3 benchmark failed: no section 6" >&2
    fi
fi
# 7. Memory as an operator sees it (benches/src/bin/memory.rs): the built binaries under
# /usr/bin/time -v, at the report's size and (full run) at 4 GiB, beside restic.
if cargo build --release -p backup-cli -p cln-backup -p ld-emulator >&2; then
    run memory $B/memory --size-mib "$SIZE" --restic
    [[ "$SIZE" == 1024 ]] && run memory-4g $B/memory --size-mib 4096
    {
        echo
        echo "## 7. Memory"
        echo
        echo "Each operation run as an operator runs it, on the generated database of section 2:"
        echo "peak RSS from \`/usr/bin/time -v\` (file pages a process maps count), peak anonymous"
        echo "memory (heap, stacks) sampled from /proc every 2 ms. Target (issue 17): 128 MiB anonymous"
        echo "and 256 MiB peak RSS whatever the database's size."
        echo
        body memory
        [[ -f "$T/memory-4g.md" ]] && body memory-4g
    } >>"$OUT"
# 8. A year of a busy node (benches/src/bin/year.rs): hours, so only with BENCH_YEAR=1 (3 million
# batches; BENCH_YEAR=quick: 200,000). On S3 too when CLN_BACKUP_S3_URL is set (see section 6).
# The plot needs matplotlib: installed into target/plot (a venv) from PyPI on first use.
if [[ -n "${BENCH_YEAR:-}" ]]; then
    YEAR_ARGS=()
    [[ "$BENCH_YEAR" == quick ]] && YEAR_ARGS=(--batches 200000 --sessions 8)
    cargo build --release -p backup-cli -p cln-backup-benches --bin year --bin backup-cli
    YEAR_RUNS=()
    rm -f target/bench-data/year-{dir,s3}.{json,md}
    if run year $B/year "${YEAR_ARGS[@]}" --out target/bench-data; then
        YEAR_RUNS+=(target/bench-data/year-dir.json)
    fi
    if [[ -n "${CLN_BACKUP_S3_URL:-}" ]] && run year-s3 $B/year --s3 "${YEAR_ARGS[@]}" --out target/bench-data; then
        YEAR_RUNS+=(target/bench-data/year-s3.json)
    fi
    if [[ ${#YEAR_RUNS[@]} -gt 0 ]]; then
        if [[ ! -x target/plot/bin/python3 ]]; then
            python3 -m venv target/plot && target/plot/bin/pip install --quiet matplotlib
        fi
        target/plot/bin/python3 benches/python/year_plot.py "${YEAR_RUNS[@]}" -o benches/year.png || true
        {
            echo
            echo "## 8. A year of a busy node"
            echo
            echo "\`benches/src/bin/year.rs\`: the real plugin under the emulator, node D's three sessions, then its"
            echo "steady channel traffic cycle after cycle with fresh keys (plugin/tests/support/year.rs), time"
            echo "simulated over 365 days, compaction and retention at their defaults (S3: compaction every"
            echo "8 MiB, as README.md advises for an S3 primary), restarted after each session. After each:"
            echo "the repository beside a fresh backup of the newest state plus the journal the retention keeps"
            echo "(ratio; target <= 1.5x at every point), object counts, the plugin's open time (its first hook)"
            echo "and peak memory, \`backup-cli restore\` of the newest state (time, peak memory), the longest prune."
            echo "S3 requests: one compaction and one prune run in-process at each point. Plot: benches/year.png."
            echo
            for r in dir s3; do
                if [[ -f target/bench-data/year-$r.md ]]; then
                    echo "### $r"
                    echo
                    cat target/bench-data/year-$r.md
                    echo
                fi
            done
        } >>"$OUT"
    fi
fi
echo "wrote $OUT" >&2
