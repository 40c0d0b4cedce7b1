#!/usr/bin/env bash
# The test command: sets the machine up, checks formatting and lints, then runs
# the unit tests and the integration tests (real etcd, Docker, Patroni, psql).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo fmt --all -- --check
cargo clippy --all-targets -- -D warnings
# Integration tests start real clusters; one at a time keeps them within 2 cores.
cargo test --all-targets --no-fail-fast -- --test-threads=1
