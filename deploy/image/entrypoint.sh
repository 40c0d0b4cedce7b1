#!/bin/sh
# Runs as root only long enough to hand the member's host directory (and the
# backup repository mounted beside it) to postgres: the uid of postgres inside
# the image is whatever debootstrap gave it, so the agent cannot chown from outside.
set -e
dir=/var/lib/pgcell
repo=/var/lib/pgbackrest
mkdir -p "$dir/pgdata" "$dir/spool" "$dir/pgbackrest-log"
chown postgres:postgres "$dir" "$dir/pgdata" "$dir/spool" "$dir/pgbackrest-log" "$dir/patroni.yml"
# etcd's CA, client certificate and key (docs/security.md), when etcd is locked down.
[ -d "$dir/etcd" ] && chown -R postgres:postgres "$dir/etcd"
[ -f "$dir/pgbackrest.conf" ] && chown postgres:postgres "$dir/pgbackrest.conf" && chmod 0600 "$dir/pgbackrest.conf"
# Only the repository's top directory: what is below it was written by postgres already.
[ -d "$repo" ] && chown postgres:postgres "$repo"
chmod 0700 "$dir/pgdata"
chmod 0600 "$dir/patroni.yml"
exec runuser -u postgres -- /usr/bin/patroni "$dir/patroni.yml"
