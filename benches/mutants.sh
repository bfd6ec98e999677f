#!/usr/bin/env bash
# Mutation testing, for a developer after a change (docs/mutants.md has the last run's results).
#
#   benches/mutants.sh FILE [cargo-mutants args...]
#       cargo-mutants over one source file, with the tests that matter for it: the file's package
#       only, and of it the unit tests plus the integration tests that exercise that part (see
#       tests_for below). Extra arguments go to cargo-mutants, e.g.
#         benches/mutants.sh store/src/journal/segment.rs -F parse_stream     (one function)
#         benches/mutants.sh store/src/backend/dir.rs -j 2 --list              (what it would try)
#       Runs in copies of the tree (cargo-mutants' default, never in place) and keeps the
#       results in target/mutants/<file>/mutants.out (caught.txt, missed.txt, timeout.txt,
#       unviable.txt, outcomes.json); the copies are deleted when it ends. Exit status: 0 when
#       every viable mutant was caught, 2 when some were missed, 3 when some timed out.
#       A missed mutant is a change of the code no test notices: kill it with a test that
#       asserts what a user sees, or add it to docs/mutants.md with why it is fine.
#
#   benches/mutants.sh --hand [NAME...]
#       The hand-made mutants of the power-loss work (wt-power: a sync of a commit path, restore's
#       own checks, sealing, fail-stop, the server's "already stored"), which cargo-mutants does
#       not generate (it replaces bodies and operators; it never deletes a call such as an
#       fsync). Each must be caught by the tests named with it. They name tests and lines of
#       that branch: run this mode on a tree where it is merged. It edits the source in place,
#       one line at a time, and restores it after each mutant and on exit: commit first.
#
# Needs cargo-mutants (`cargo install cargo-mutants`; run with 27.1.0). The S3 tests start a
# SeaweedFS and take long: they are compiled out (CLN_BACKUP_NO_S3_TESTS=1) unless FILE is S3's.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never

usage() {
  sed -n '2,/^$/p' "$0" | sed 's/^# \{0,1\}//'
  exit 64
}

# The package of a file, and the cargo test arguments that pick its tests.
package_of() {
  case "$1" in
    store/*) echo cln-backup-store ;;
    plugin/*) echo cln-backup ;;
    cli/*) echo backup-cli ;;
    emulator/*) echo ld-emulator ;;
    testsvc/*) echo cln-backup-testsvc ;;
    benches/*) echo cln-backup-benches ;;
    *) echo "no package for $1" >&2; exit 64 ;;
  esac
}

tests_for() {
  case "$1" in
    # The server, the client and the channel: their unit tests and store/tests/remote.rs.
    store/src/backend/remote*) echo "--lib --test remote" ;;
    store/src/backend/s3*) echo "--lib --test s3" ;;
    # The rest of the store: unit tests and store/tests/it (traces, faults, flips, the model).
    store/*) echo "--lib --test it" ;;
    # The plugin's unit tests (in the binary), its emulator tests and fail-stop; the crash and
    # destination campaigns take longer: add them with `--cargo-test-arg=--test=crash`.
    plugin/*) echo "--bins --test it --test failstop" ;;
    cli/*) echo "--bins --test it" ;;
    *) echo "" ;;
  esac
}

cargo_mutants_file() {
  local file=$1
  shift
  [ -f "$file" ] || { echo "no such file: $file" >&2; exit 64; }
  command -v cargo-mutants >/dev/null || {
    echo "cargo-mutants is not installed: cargo install cargo-mutants" >&2
    exit 69
  }
  local pkg args out
  pkg=$(package_of "$file")
  args=()
  # MUTANTS_TESTS="--test it" replaces the test selection (e.g. to build the store once a
  # mutant instead of twice: the unit tests are a second build of the crate).
  # They go to every cargo invocation (--cargo-arg), so the build makes only those targets.
  for a in ${MUTANTS_TESTS:-$(tests_for "$file")}; do args+=("--cargo-arg=$a"); done
  case "$file" in
    store/src/backend/s3*) unset CLN_BACKUP_NO_S3_TESTS ;;
    *) export CLN_BACKUP_NO_S3_TESTS=1 ;;
  esac
  out=target/mutants/$(echo "$file" | tr '/' '_')
  mkdir -p "$out"
  # The baseline (an unmutated run first) proves the tests pass and sets the timeout (a mutant
  # that loops is stopped and counted as timeout); with `--baseline skip`, set MUTANTS_TIMEOUT
  # (seconds).
  [ -n "${MUTANTS_TIMEOUT:-}" ] && args+=("--timeout=$MUTANTS_TIMEOUT")
  set +e
  cargo mutants \
    --package "$pkg" \
    --file "$file" \
    --build-timeout "${MUTANTS_BUILD_TIMEOUT:-900}" \
    --output "$out" \
    "${args[@]}" \
    "$@"
  local rc=$?
  set -e
  echo
  echo "results: $out/mutants.out (missed.txt: mutants no test noticed)"
  return $rc
}

# --- the hand-made mutants (from wt-power's benches/mutants.sh) -----------------------------

hand_out=target/mutants/hand

# name ~ file ~ the line (unique in the file) ~ what replaces it ~ tests (separated by ;)
# Not here since format 2: restore-gap-check and restore-data-version-check (store/src/ops/restore.rs).
# A journal missing a segment, the case those checks caught in format 1, is refused first by
# the segments' links (restore_checks.rs asserts that error); the checks stay for format-1
# repositories read before their upgrade, which no test can make from new batches.
# Not here since 2026-12-06: record-not-bound-to-offset (segment.rs entry_aad without the offset).
# In format 2 a frame's seal also covers the tag of the frame before it (the chain), which no
# other place in any stream shares, so the offset adds nothing the tests can see: a moved frame
# fails by its chain (segment/mutants_test.rs). It matters only for format-1 streams (no chain),
# which are history read before an upgrade and never written.
hand_mutants() {
  local dir=store/src/backend/dir.rs
  local power='cargo test -q -p cln-backup-store --test it -- power::;cargo test -q -p cln-backup --test crash -- power_loss_campaign'
  cat <<EOF2
journal-fdatasync~$dir~            if let Err(e) = self.file.sync_data() {~            if let Err(e) = Ok::<(), std::io::Error>(()) {~$power
publish-file-fsync~$dir~            f.sync_all()~            Ok(())~$power
direct-pack-fsync~$dir~    f.sync_all()~    Ok(())~$power
put-dir-fsync~$dir~        self.sync_dir(parent_of(&dest))~        Ok(())~$power
put-if-absent-dir-fsync~$dir~                self.sync_dir(parent_of(&dest))?;~~$power
delete-dir-fsync~$dir~            Ok(()) => self.sync_dir(parent_of(&p)),@1~            Ok(()) => Ok(()),~$power
stream-create-dir-fsync~$dir~            self.sync_dir(parent_of(&p))?;~~$power
stream-delete-dir-fsync~$dir~            Ok(()) => self.sync_dir(parent_of(&p)),@2~            Ok(()) => Ok(()),~$power
truncate-fsync~$dir~            .and_then(|_| self.file.sync_all())~            .and_then(|_| Ok(()))~$power
create-dir-fsync~$dir~        b.sync_dir(root)?;~~$power
failed-fdatasync-keeps-record~$dir~                let _ = self.file.set_len(t.len);@1~                let _ = ();~cargo test -q -p cln-backup-store --test it -- power::a_stream_refuses
restore-integrity-check~store/src/ops/restore.rs~    if ic != "ok" {~    if false && ic != "ok" {~cargo test -q -p cln-backup-store --test it -- restore_checks::
zero-nonce~store/src/crypto.rs~                fill_random(nonce);@1~                nonce.fill(0);~cargo test -q -p cln-backup-store --test it -- sealing::;cargo test -q -p cln-backup-store --test it -- mutants_sealing::
zero-nonce-in-place~store/src/crypto.rs~                fill_random(nonce);@2~                nonce.fill(0);~cargo test -q -p cln-backup-store --test it -- sealing::;cargo test -q -p cln-backup-store --test it -- mutants_sealing::
unkeyed-chunk-ids~store/src/crypto.rs~            Some(k) => ChunkId(*blake3::keyed_hash(k, data).as_bytes()),~            Some(_) => ChunkId(*blake3::hash(data).as_bytes()),~cargo test -q -p cln-backup-store --test it -- sealing::
damage-read-as-torn-tail~store/src/journal/segment.rs~                if let Some(later) = find_valid_frame_after(data, pos, crypto, header, seq, object)~                if let Some(later) = None::<usize>.or_else(|| find_valid_frame_after(data, pos, crypto, header, seq, object).filter(|_| false))~cargo test -q -p cln-backup-store --test it -- faults::damaged_record_followed;cargo test -q -p cln-backup-store --test it -- corruption::
already-stored-for-any-bytes~store/src/backend/remote/server/node.rs~        if tail == data {~        if tail.len() == data.len() {~cargo test -q -p cln-backup-store --test remote -- already_stored
s3-own-bytes-refused~store/src/backend/s3/stream.rs~                if inner.get_bytes(&name).ok().as_deref() != Some(data) {~                if true {~s3:cargo test -q -p cln-backup-store --test s3 -- answer_was_lost
s3-any-bytes-taken-for-ours~store/src/backend/s3/stream.rs~                if inner.get_bytes(&name).ok().as_deref() != Some(data) {~                if false {~s3:cargo test -q -p cln-backup-store --test s3 -- answer_was_lost
s3-truncate-keeps-parts~store/src/backend/s3/stream.rs~        inner.delete_many(&self.object(), above)?;~        let _kept = above;~s3:cargo test -q -p cln-backup-store --test s3 -- truncate_cut
plugin-fail-stop~plugin/src/main.rs~        if let Some(f) = &self.failed {~        if let Some(f) = None::<&String> {~cargo test -q -p cln-backup --test it -- refus;cargo test -q -p cln-backup --test failstop
writer-fail-stop~store/src/journal/writer.rs~        if let Some(why) = &self.poisoned {~        if let Some(why) = None::<&String> {~cargo test -q -p cln-backup --test crash -- fault_eio
EOF2
}

hand_apply() {
  python3 - "$1" "$2" "$3" <<'PY'
import sys
path, line, new = sys.argv[1], sys.argv[2], sys.argv[3]
nth, numbered = 1, False
if "@" in line:
    line, n = line.rsplit("@", 1)
    nth, numbered = int(n), True
lines = open(path).read().split("\n")
hits = [i for i, l in enumerate(lines) if l == line]
if len(hits) < nth or (not numbered and len(hits) != 1):
    sys.exit(f"{path}: {len(hits)} matches for {line!r}")
lines[hits[nth - 1]] = new
open(path, "w").write("\n".join(lines))
PY
}

hand_restore_all() {
  for f in "$hand_out"/orig/*; do
    case "$f" in *.path) continue ;; esac
    [ -e "$f" ] || continue
    cp "$f" "$(cat "$f.path")" 2>/dev/null || true
  done
}

hand_mode() {
  mkdir -p "$hand_out/orig"
  rm -f "$hand_out"/orig/*
  trap hand_restore_all EXIT
  local want=("$@") caught_all=true
  while IFS='~' read -r name file line new tests; do
    if [ ${#want[@]} -gt 0 ] && [[ ! " ${want[*]} " =~ " ${name} " ]]; then continue; fi
    local key
    key=$(echo "$file" | tr '/' '_')
    if [ ! -e "$hand_out/orig/$key" ]; then
      cp "$file" "$hand_out/orig/$key"
      echo "$file" >"$hand_out/orig/$key.path"
    fi
    cp "$hand_out/orig/$key" "$file"
    if ! hand_apply "$file" "$line" "$new"; then
      echo "$name: the line is not in this tree (merge wt-power first?)"
      caught_all=false
      continue
    fi
    local caught=() n=0 cmds c
    IFS=';' read -r -a cmds <<<"$tests"
    for c in "${cmds[@]}"; do
      n=$((n + 1))
      case "$c" in
        s3:*)
          # The S3 tests start their own SeaweedFS (testsvc); never compiled out here.
          c="env -u CLN_BACKUP_NO_S3_TESTS ${c#s3:}"
          ;;
      esac
      if ! bash -c "$c" >"$hand_out/$name.$n.log" 2>&1; then
        caught+=("$c")
      fi
    done
    cp "$hand_out/orig/$key" "$file"
    if [ ${#caught[@]} -eq 0 ]; then
      echo "$name: NOT CAUGHT by ${tests}"
      caught_all=false
    else
      echo "$name: caught by $(printf '[%s] ' "${caught[@]}")"
    fi
  done < <(hand_mutants)
  $caught_all
}

case "${1:-}" in
  "" | -h | --help) usage ;;
  --hand)
    shift
    hand_mode "$@"
    ;;
  *) cargo_mutants_file "$@" ;;
esac
