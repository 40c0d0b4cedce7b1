#!/usr/bin/env bash
# The test command: sets the machine up, checks formatting and lints, then runs
# the unit tests and the integration tests (real etcd, Docker, Patroni, psql).
#
# Each integration test file runs on its own under a time limit
# (PGCELL_TEST_FILE_TIMEOUT, seconds): a test that hangs fails alone, its
# containers are removed, and the rest still run. A table of times ends the run.
# `scripts/test.sh router tls` runs only those files (after the checks).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo fmt --all -- --check
cargo clippy --all-targets -- -D warnings
cargo test --all-targets --no-run
# The demo's binary, where tests/local_cluster.rs looks for it: built inside
# that test, cargo rebuilt the library, and every later test file relinked.
cargo build --examples
# Unit tests (and a build of the examples and benches).
cargo test --lib --bins --examples -- --test-threads=1

limit="${PGCELL_TEST_FILE_TIMEOUT:-1200}"
files=("$@")
[ ${#files[@]} -gt 0 ] || files=($(ls tests/*.rs | xargs -n1 basename | sed 's/\.rs$//'))
containers() { docker ps -aq --filter label=org.pgcell.deployment | sort; }
failed=()
table=""
for t in "${files[@]}"; do
  before="$(containers)"
  start=$(date +%s)
  # Integration tests start real clusters; one at a time keeps them within 2 cores.
  set +e
  timeout -k 30 "$limit" cargo test --test "$t" -- --test-threads=1
  rc=$?
  set -e
  secs=$(( $(date +%s) - start ))
  verdict=ok
  if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
    verdict="TIMED OUT after ${limit}s"
    # The killed test could not clean up: remove the containers it left.
    left="$(comm -13 <(echo "$before") <(containers) | grep . || true)"
    [ -z "$left" ] || docker rm -f -v $left >/dev/null 2>&1 || true
  elif [ $rc -ne 0 ]; then
    verdict=FAILED
  fi
  [ "$verdict" = ok ] || failed+=("$t")
  table+="$(printf '%-16s %6ss  %s' "$t" "$secs" "$verdict")"$'\n'
done
printf '\nintegration test files (seconds each):\n%s' "$table"
if [ ${#failed[@]} -gt 0 ]; then
  echo "failed: ${failed[*]}" >&2
  exit 1
fi
