#!/bin/sh
# Runs as the image's postgres user with no capabilities (the container's User,
# CapDrop ALL): the cell agent created the member's directory and handed it to
# that uid before the start, so nothing here needs root.
set -e
exec /usr/bin/patroni /var/lib/pgcell/patroni.yml
