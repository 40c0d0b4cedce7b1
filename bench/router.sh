#!/usr/bin/env bash
# All router benchmarks in one go: pgbench through the router against direct and
# haproxy (bench/router-pgbench.sh), then the router micro-benchmarks (switch
# latency, RSS with 1000 instances, memory per idle connection:
# examples/router_bench.rs). The results go to stdout and to
# docs/bench-router-latest.txt; progress to stderr. Exit status 1 when a
# target is missed, 2 when a benchmark could not run. See docs/bench-router.md.
#
# Env: as bench/router-pgbench.sh (BENCH_SECONDS, BENCH_ROUNDS, BENCH_SCALE,
# CARGO_TARGET_DIR, default /var/tmp/pgcell-target); BENCH_COMMIT names the commit
# in the results when this is not run from a git checkout.
set -uo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/pgcell-target}"
OUT=docs/bench-router-latest.txt

echo "bench/router.sh: building the release binary and the example" >&2
cargo build --release --quiet --bins --example router_bench >&2 || exit 2
export PGCELL_BIN="${PGCELL_BIN:-$CARGO_TARGET_DIR/release/pgcell}"

commit="${BENCH_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}"
if git rev-parse --git-dir >/dev/null 2>&1 && ! git diff --quiet HEAD -- src; then commit="$commit (src modified)"; fi
cpu="$(awk -F': ' '/^model name/{print $2; exit}' /proc/cpuinfo)"

{
  echo "# pgcell router benchmarks, $(date -u +%Y-%m-%dT%H:%M:%SZ), commit $commit"
  echo "# machine: $(nproc) cores ($cpu), $(awk '/MemTotal/{printf "%.0f GiB", $2 / 1048576}' /proc/meminfo) RAM," \
    "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo
  bench/router-pgbench.sh
  pgbench_rc=$?
  echo
  cargo run --release --quiet --example router_bench -- all
  example_rc=$?
  echo
  echo "# router-pgbench exit $pgbench_rc, router_bench exit $example_rc"
  # The worse of the two: 2 (could not run) over 1 (target missed) over 0.
  exit $((pgbench_rc > example_rc ? pgbench_rc : example_rc))
} | tee "$OUT"
rc=${PIPESTATUS[0]}
echo "bench/router.sh: results in $OUT" >&2
exit "$rc"
