#!/usr/bin/env bash
# Self-healing figure: time from losing a cell for good to full redundancy
# (the replacement named synchronous standby), minus replace_after.
#
#   bench/heal.sh [SCALE]     # pgbench scale of the data first (0: empty; 70: about 1 GB)
#
# Starts its own etcd, three cells, a router and a broker (release binary,
# replace_after 5 s) on loopback, provisions an ha-2 instance, fills it with
# `pgbench -i -s SCALE` through the router, kills the leader's cell (agent
# SIGKILL + docker kill of its containers) and times: first write on the new
# primary, the replacement placed, running, named synchronous standby.
# Removes everything on exit. Output also in docs/bench-heal-latest.txt (appended).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/pgcell-target}"
SCALE="${1:-0}"
REPLACE_AFTER=5
source bench/lib.sh
bench_init heal.sh hbench 1
require_tools etcd etcdctl docker curl python3 psql pgbench
pgcell_bin
BIN="$PGCELL_BIN"
ID="$DEPLOYMENT"
start_etcd
export PGCELL_ETCD_ENDPOINTS="$ETCD"
RB=$(free_block 100)
ROUTER_PORTS="$RB-$((RB + 99))"
declare -A CELL_PID
start_cell() {
  local i="$1" api mb
  api=$(free_port); mb=$(free_block 100)
  PGCELL_CELL_NAME="$ID-c$i" PGCELL_DEPLOYMENT="$ID" PGCELL_API_LISTEN="127.0.0.1:$api" \
  PGCELL_PORT_RANGE="$mb-$((mb + 99))" PGCELL_DATA_ROOT="$TMP/c$i" \
  PGCELL_ROUTER_PORT_RANGE=$ROUTER_PORTS PGCELL_MEMORY_MB=1024 "$BIN" cell >"$TMP/c$i.log" 2>&1 &
  PIDS+=($!)
  CELL_PID[$i]=$!
}
for i in 0 1 2; do start_cell $i; done
RH=$(free_port)
PGCELL_HTTP_LISTEN="127.0.0.1:$RH" PGCELL_PASSWORD=bench "$BIN" router >"$TMP/router.log" 2>&1 &
PIDS+=($!)
BP=$(free_port); PASS=$(python3 -c 'import secrets; print(secrets.token_hex(12))')
PGCELL_BROKER_LISTEN="127.0.0.1:$BP" PGCELL_PASSWORD="$PASS" PGCELL_ROUTER_PORT_RANGE=$ROUTER_PORTS \
PGCELL_REPLACE_AFTER_SECS=$REPLACE_AFTER "$BIN" broker >"$TMP/broker.log" 2>&1 &
PIDS+=($!)
URL="http://127.0.0.1:$BP"
wait_until "broker" 30 curl -sf "$URL/healthz"
sleep 2   # cells register

osb() { curl -s -u "broker:$PASS" -H 'X-Broker-API-Version: 2.17' -H 'Content-Type: application/json' "$@"; }
SERVICE=$(osb "$URL/v2/catalog" | python3 -c 'import json,sys; print(json.load(sys.stdin)["services"][0]["id"])')
PLAN=$(osb "$URL/v2/catalog" | python3 -c "import json,sys; print([p['id'] for p in json.load(sys.stdin)['services'][0]['plans'] if p['name']=='ha-2'][0])")
osb -X PUT "$URL/v2/service_instances/h?accepts_incomplete=true" \
  -d "{\"service_id\":\"$SERVICE\",\"plan_id\":\"$PLAN\",\"organization_guid\":\"o\",\"space_guid\":\"s\"}" >/dev/null
state() { etcdget /pgcell/instances/h/operation | python3 -c 'import json,sys; print(json.load(sys.stdin)["state"])'; }
wait_until "ha-2 provisioned" 300 sh -c "[ \"\$(etcdctl --endpoints $ETCD get --print-value-only /pgcell/instances/h/operation | python3 -c 'import json,sys; print(json.load(sys.stdin)[\"state\"])')\" = succeeded ]"
PORT=$(etcdget /pgcell/instances/h/router_port)
SU=$(etcdget /pgcell/instances/h/secrets | python3 -c 'import json,sys; print(json.load(sys.stdin)["superuser"])')
export PGPASSWORD="$SU"
DB="host=127.0.0.1 port=$PORT user=postgres dbname=postgres connect_timeout=2"
if [ "$SCALE" -gt 0 ]; then
  log "pgbench -i -s $SCALE through the router"
  t0=$SECONDS
  pgbench -i -q -s "$SCALE" "$DB" >"$TMP/pgbench-init.log" 2>&1 || die "pgbench -i failed"
  log "filled in $((SECONDS - t0)) s"
fi
SIZE=$(psql "$DB" -Atc "select pg_size_pretty(pg_database_size('postgres'))")
LEADER=$(etcdget /service/cf-h/leader)
LOST=${LEADER##*-c}
log "database $SIZE; losing cell c$LOST (leader $LEADER)"
now() { date +%s.%N; }
T0=$(now)
kill -9 "${CELL_PID[$LOST]}"
# shellcheck disable=SC2046
docker kill $(docker ps -q --filter "label=org.pgcell.cell=$ID-c$LOST") >/dev/null
until psql "$DB" -Atc "create table if not exists w(x int); insert into w values (1)" >/dev/null 2>&1; do sleep 0.1; done
T_WRITE=$(now)
until etcdget /pgcell/replacements/cf-h-$ID-c$LOST | grep -q new_member; do sleep 0.2; done
T_PLACED=$(now)
NEW=$(etcdget /pgcell/replacements/cf-h-$ID-c$LOST | python3 -c 'import json,sys; print(json.load(sys.stdin)["new_member"])')
until etcdget "/service/cf-h/members/$NEW" | grep -q '"state": *"running"'; do sleep 0.2; done
T_RUNNING=$(now)
until etcdget /service/cf-h/sync | grep -q "\"sync_standby\": *\"$NEW\""; do sleep 0.2; done
T_SYNC=$(now)
f() { python3 -c "print(f'{$1 - $T0:.1f}')"; }
{
  echo "# heal bench $(date -u '+%F %T') UTC, $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg), scale $SCALE ($SIZE)"
  echo "cell lost -> first write on the new primary: $(f "$T_WRITE") s"
  echo "cell lost -> replacement placed: $(f "$T_PLACED") s (replace_after $REPLACE_AFTER s)"
  echo "cell lost -> replacement running: $(f "$T_RUNNING") s"
  echo "cell lost -> replacement named synchronous standby: $(f "$T_SYNC") s; minus replace_after: $(python3 -c "print(f'{$T_SYNC - $T0 - $REPLACE_AFTER:.1f}')") s"
} | tee -a docs/bench-heal-latest.txt
