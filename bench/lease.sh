#!/usr/bin/env bash
# Lease reaper figure: seconds from a leader lease's expiry to its key's
# delete, with the cells' reaper against etcd's own 500 ms sweep (the
# baseline), in one run; the ratio is the reaper's share of the baseline.
#
#   bench/lease.sh [LEASES]    # leases per mode (default 40)
#
# Needs etcd (scripts/setup.sh). Report in docs/bench-lease-latest.md.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/pgcell-target}"
command -v etcd >/dev/null || { echo "lease.sh: etcd is not installed (scripts/setup.sh)" >&2; exit 1; }
cargo run --quiet --release --example lease_bench -- --leases "${1:-40}"
