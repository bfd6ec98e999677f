#!/usr/bin/env bash
# Targeted mutants: break one check the tests are there for (a sync of a commit path, a check of
# restore, a property of sealing, the plugin's fail-stop, the server's "already stored"), run the
# tests meant to catch it, and say whether they did. Every mutant here must be caught: one that
# is not is a test that cannot fail.
#
#   benches/mutants.sh [NAME...]     (default: all; names in the table below)
#
# Edits the source in place, one line at a time, and restores it after each mutant (and on
# exit): run it on a tree whose changes are committed. Output of each test run is kept in
# target/mutants/<name>.<n>.log. The long campaigns are not run, only the tests named.
set -euo pipefail
cd "$(dirname "$0")/.."
out=target/mutants
mkdir -p "$out"
export CARGO_TERM_COLOR=never

# name ~ file ~ the line (unique in the file) ~ what replaces it ~ tests (separated by ;)
# Not here since format 2: restore-gap-check and restore-data-version-check (store/src/ops/restore.rs).
# A journal missing a segment, the case those checks caught in format 1, is refused first by
# the segments' links (restore_checks.rs asserts that error); the checks stay for format-1
# repositories read before their upgrade, which no test can make from new batches.
mutants() {
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
zero-nonce~store/src/crypto.rs~                fill_random(nonce);~                nonce.fill(0);~cargo test -q -p cln-backup-store --test it -- sealing::
unkeyed-chunk-ids~store/src/crypto.rs~            Some(k) => ChunkId(*blake3::keyed_hash(k, data).as_bytes()),~            Some(_) => ChunkId(*blake3::hash(data).as_bytes()),~cargo test -q -p cln-backup-store --test it -- sealing::
record-not-bound-to-offset~store/src/journal/segment.rs~    aad.extend_from_slice(&offset.to_le_bytes());~    let _ = offset;~cargo test -q -p cln-backup-store --test it -- sealing::
damage-read-as-torn-tail~store/src/journal/segment.rs~                if let Some(later) = find_valid_frame_after(data, pos, crypto, header, seq, object)~                if let Some(later) = None::<usize>.or_else(|| find_valid_frame_after(data, pos, crypto, header, seq, object).filter(|_| false))~cargo test -q -p cln-backup-store --test it -- corruption::
already-stored-for-any-bytes~store/src/backend/remote/server/node.rs~        if tail == data {~        if tail.len() == data.len() {~cargo test -q -p cln-backup-store --test remote -- already_stored
s3-own-bytes-refused~store/src/backend/s3/stream.rs~                if inner.get_bytes(&name).ok().as_deref() != Some(data) {~                if true {~s3:cargo test -q -p cln-backup-store --test s3 -- answer_was_lost
s3-any-bytes-taken-for-ours~store/src/backend/s3/stream.rs~                if inner.get_bytes(&name).ok().as_deref() != Some(data) {~                if false {~s3:cargo test -q -p cln-backup-store --test s3 -- answer_was_lost
s3-truncate-keeps-parts~store/src/backend/s3/stream.rs~        inner.delete_many(&self.object(), above)?;~        let _kept = above;~s3:cargo test -q -p cln-backup-store --test s3 -- truncate_cut
plugin-fail-stop~plugin/src/main.rs~        if let Some(f) = &self.failed {~        if let Some(f) = None::<&String> {~cargo test -q -p cln-backup --test it -- refus
writer-fail-stop~store/src/journal/writer.rs~        if let Some(why) = &self.poisoned {~        if let Some(why) = None::<&String> {~cargo test -q -p cln-backup --test crash -- fault_eio
EOF2
}

apply() {
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

restore_all() {
  for f in "$out"/orig/*; do
    case "$f" in *.path) continue ;; esac
    [ -e "$f" ] || continue
    cp "$f" "$(cat "$f.path")" 2>/dev/null || true
  done
}

mkdir -p "$out/orig"
rm -f "$out"/orig/*
trap restore_all EXIT

want=("$@")
caught_all=true
while IFS='~' read -r name file line new tests; do
  if [ ${#want[@]} -gt 0 ] && [[ ! " ${want[*]} " =~ " ${name} " ]]; then continue; fi
  key=$(echo "$file" | tr '/' '_')
  if [ ! -e "$out/orig/$key" ]; then
    cp "$file" "$out/orig/$key"
    echo "$file" >"$out/orig/$key.path"
  fi
  cp "$out/orig/$key" "$file"
  apply "$file" "$line" "$new"
  caught=()
  n=0
  IFS=';' read -r -a cmds <<<"$tests"
  for c in "${cmds[@]}"; do
    n=$((n + 1))
    case "$c" in
      s3:*)
        # Against the S3 server of the tests: .ci/s3-server.sh start first.
        c="${c#s3:}"
        if [ ! -f target/ci-s3.env ]; then
          echo "$name: needs the S3 server (.ci/s3-server.sh start)"
          continue
        fi
        c=". target/ci-s3.env && CI=1 $c"
        ;;
    esac
    if ! bash -c "$c" >"$out/$name.$n.log" 2>&1; then
      caught+=("$c")
    fi
  done
  cp "$out/orig/$key" "$file"
  if [ ${#caught[@]} -eq 0 ]; then
    echo "$name: NOT CAUGHT by ${tests}"
    caught_all=false
  else
    echo "$name: caught by $(printf '[%s] ' "${caught[@]}")"
  fi
done < <(mutants)
$caught_all
