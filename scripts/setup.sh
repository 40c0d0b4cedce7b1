#!/usr/bin/env bash
# Installs what pgcell needs on a fresh Debian machine and builds the
# PostgreSQL image. Idempotent: a second run installs and builds nothing.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
for pair in protoc:protobuf-compiler etcd:etcd-server etcdctl:etcd-client debootstrap:debootstrap \
            psql:postgresql-client pgbench:postgresql-client haproxy:haproxy curl:curl ruby:ruby socat:socat; do
  command -v "${pair%%:*}" >/dev/null 2>&1 || need+=("${pair#*:}")
done
# etcd-client's build needs protoc's well-known types (only recommended by protobuf-compiler).
[ -f /usr/include/google/protobuf/descriptor.proto ] || need+=(libprotobuf-dev)
if [ ${#need[@]} -gt 0 ]; then
  [ "$(id -u)" = 0 ] || { echo "setup: need root to install: ${need[*]}" >&2; exit 1; }
  echo "setup: installing ${need[*]}" >&2
  apt-get update -q >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $(printf '%s\n' "${need[@]}" | sort -u) >&2
fi

# The S3 backup test serves S3 locally with moto (PyPI) behind haproxy's TLS.
if ! command -v moto_server >/dev/null 2>&1; then
  echo "setup: installing moto (local S3 for the backup tests)" >&2
  python3 -m pip install --quiet "moto[server]" >&2
fi
command -v openssl >/dev/null || { echo "setup: openssl is needed (apt-get install openssl)" >&2; exit 1; }

command -v docker >/dev/null || { echo "setup: Docker is not installed; pgcell's cells need a Docker Engine" >&2; exit 1; }
tag="$(deploy/image/build.sh | tail -n 1)"
# `latest` (the cells' default image, the local demo's) must be this recipe's
# image, whatever was tagged before (build.sh tags it only when it builds).
docker tag "$tag" pgcell/postgres:latest
echo "setup: ready (etcd $(etcd --version | awk 'NR==1{print $3}'), image $(docker image inspect -f '{{index .Config.Labels "org.pgcell.recipe"}}' pgcell/postgres:latest))" >&2
