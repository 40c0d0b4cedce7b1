#!/usr/bin/env bash
# Builds the PostgreSQL 15 + Patroni + pgBackRest image from Debian packages: no registry is
# needed (debootstrap from the host's apt mirror, then `docker import`).
# The tag carries a hash of this folder, so changing the recipe changes the tag,
# and a build is skipped when the image for the current recipe already exists.
# Prints the tag on the last line of stdout.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
suite="${PGCELL_IMAGE_SUITE:-bookworm}"

die() { echo "pgcell image: $*" >&2; exit 1; }
step() { echo "pgcell image: $*" >&2; }

command -v docker >/dev/null || die "docker is not installed (run scripts/setup.sh)"
docker info >/dev/null 2>&1 || die "the Docker Engine is not reachable (is dockerd running? is /var/run/docker.sock readable?)"

version="$(cat "$here/build.sh" "$here/entrypoint.sh" "$here/patch-patroni.py" | sha256sum | cut -c1-12)"
tag="pgcell/postgres:15-${version}"
if docker image inspect "$tag" >/dev/null 2>&1; then
  step "image $tag is current; skipping build"
  echo "$tag"
  exit 0
fi

command -v debootstrap >/dev/null || die "debootstrap is not installed (run scripts/setup.sh, or apt-get install debootstrap)"
[ "$(id -u)" = 0 ] || die "debootstrap needs root"

mirror="${PGCELL_DEBIAN_MIRROR:-}"
if [ -z "$mirror" ]; then
  mirror="$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)"
  [ -n "$mirror" ] || mirror="$(awk '$1=="deb" {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)"
fi
[ -n "$mirror" ] || die "no Debian mirror found in the host's apt sources; set PGCELL_DEBIAN_MIRROR"

work="$(mktemp -d /tmp/pgcell-image.XXXXXX)"
trap 'rm -rf "$work"' EXIT
root="$work/rootfs"
start=$(date +%s)
step "debootstrap $suite from $mirror (about 2 minutes; log in $work/debootstrap.log)"
debootstrap --variant=minbase \
  --include=postgresql-15,patroni,python3-etcd,python3-psycopg2,pgbackrest,ca-certificates,procps \
  "$suite" "$root" "$mirror" > "$work/debootstrap.log" 2>&1 &
pid=$!
while kill -0 "$pid" 2>/dev/null; do
  sleep 10
  step "  ... $(( $(date +%s) - start ))s: $(tail -n1 "$work/debootstrap.log" | cut -c1-90)"
done
if ! wait "$pid"; then
  tail -n 30 "$work/debootstrap.log" >&2
  die "debootstrap failed (log above)"
fi

step "trimming the rootfs (default cluster, apt caches, docs)"
chroot "$root" pg_dropcluster --stop 15 main >/dev/null 2>&1 || true
rm -rf "$root/etc/postgresql/15/main" "$root/var/lib/postgresql/15/main"
rm -rf "$root"/var/cache/apt/* "$root"/var/lib/apt/lists/* "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/locale/*
python3 "$here/patch-patroni.py" "$root" || die "cannot patch Patroni (see above)"
install -m 0755 "$here/entrypoint.sh" "$root/usr/local/bin/pgcell-entrypoint"
mkdir -p "$root/var/lib/pgcell" "$root/var/lib/pgbackrest"
# Members run as postgres from their first process (no root, no capabilities):
# the cell agent must chown their host files to this uid:gid before a start,
# so the image says which it is (debootstrap picks the numbers).
uid="$(chroot "$root" id -u postgres)"
gid="$(chroot "$root" id -g postgres)"
[ "$uid" != 0 ] || die "postgres has uid 0 in the image"
# Scratch containers (restore checks) build their data directory here as postgres.
chown "$uid:$gid" "$root/var/lib/pgcell" "$root/var/lib/pgbackrest"
# The agent renders each member's pgbackrest.conf into its directory; the
# variable makes every pgbackrest call (archive_command, docker exec) use it.

step "docker import as $tag"
tar -C "$root" -c . | docker import \
  --change 'ENV PATH=/usr/lib/postgresql/15/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV LANG=C.UTF-8' \
  --change 'ENV PGBACKREST_CONFIG=/var/lib/pgcell/pgbackrest.conf' \
  --change 'ENTRYPOINT ["/usr/local/bin/pgcell-entrypoint"]' \
  --change "LABEL org.pgcell.image=postgres org.pgcell.recipe=$version org.pgcell.patroni-failsafe=1 org.pgcell.postgres-user=$uid:$gid" \
  - "$tag" >/dev/null
docker tag "$tag" pgcell/postgres:latest
step "built $tag in $(( $(date +%s) - start ))s ($(docker image inspect -f '{{.Size}}' "$tag" | awk '{printf "%d MB", $1/1000000}'))"
echo "$tag"
