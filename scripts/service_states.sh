#!/usr/bin/env bash
# The seed's states script: one line per cluster, `cf-1 master/running/<host> replica/running/<host> `.
exec "${PGCELL_BIN:-pgcell}" states "$@"
