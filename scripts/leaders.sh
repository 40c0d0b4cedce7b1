#!/usr/bin/env bash
# The seed's leaders script: one line per cluster, `cf-1 postgres:// <host> <port> postgres`.
exec "${PGCELL_BIN:-pgcell}" leaders "$@"
