#!/bin/sh
# Runs as root only long enough to hand the member's host directory to postgres:
# the uid of postgres inside the image is whatever debootstrap gave it, so the
# agent cannot chown from outside.
set -e
dir=/var/lib/pgcell
mkdir -p "$dir/pgdata"
chown postgres:postgres "$dir" "$dir/pgdata" "$dir/patroni.yml"
chmod 0700 "$dir/pgdata"
chmod 0600 "$dir/patroni.yml"
exec runuser -u postgres -- /usr/bin/patroni "$dir/patroni.yml"
