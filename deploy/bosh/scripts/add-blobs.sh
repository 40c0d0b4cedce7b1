#!/usr/bin/env bash
# Adds the release's blobs from this machine, before `bosh create-release`:
#   pgcell/pgcell-linux-amd64            the pgcell binary (cargo build --release)
#   pgcell-image/pgcell-postgres.tar.gz  docker save of deploy/image/build.sh's image
#   etcd/etcd-linux-amd64, etcd/etcdctl-linux-amd64   Debian's etcd 3.4
# Needs the bosh CLI, Docker and what scripts/setup.sh installs.
set -euo pipefail
release="$(cd "$(dirname "$0")/.." && pwd)"
repo="$(cd "$release/../.." && pwd)"
binary="${PGCELL_BINARY:-${CARGO_TARGET_DIR:-$repo/target}/release/pgcell}"

die() { echo "add-blobs: $*" >&2; exit 1; }
command -v bosh >/dev/null || die "the bosh CLI is not installed"
[ -x "$binary" ] || die "no pgcell binary at $binary: run cargo build --release (or set PGCELL_BINARY)"
# Stemcells are Ubuntu jammy (glibc 2.35) or newer: the binary must not need more.
need="$(objdump -T "$binary" 2>/dev/null | grep -o 'GLIBC_[0-9.]*' | sort -uV | tail -n1 || true)"
[ -z "$need" ] || [ "$(printf '%s\nGLIBC_2.35\n' "$need" | sort -V | tail -n1)" = GLIBC_2.35 ] ||
  die "$binary needs $need; the jammy stemcell has 2.35 (build on an older distribution or for musl)"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
tag="$("$repo/deploy/image/build.sh" | tail -n1)"
docker save "$tag" pgcell/postgres:latest | gzip -1 >"$work/pgcell-postgres.tar.gz"

cd "$release"
bosh add-blob "$binary" pgcell/pgcell-linux-amd64
bosh add-blob "$work/pgcell-postgres.tar.gz" pgcell-image/pgcell-postgres.tar.gz
bosh add-blob "$(command -v etcd)" etcd/etcd-linux-amd64
bosh add-blob "$(command -v etcdctl)" etcd/etcdctl-linux-amd64
echo "add-blobs: done; now: bosh create-release --force (dev) and bosh upload-release" >&2
