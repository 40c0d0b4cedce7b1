#!/usr/bin/env bash
# Broker figures: time to `succeeded` for each plan, then the p99 latency of
# catalog and last_operation under 50 concurrent clients. Starts its own etcd,
# three cells, a router and a broker (release binary) on loopback; removes all
# of it on exit. Output also in docs/bench-broker-latest.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/pgcell-target}"
source bench/lib.sh
bench_init broker.sh bbench 1
require_tools etcd etcdctl docker curl python3
pgcell_bin
BIN="$PGCELL_BIN"
ID="$DEPLOYMENT"
DIR="$TMP"
start_etcd
export PGCELL_ETCD_ENDPOINTS="$ETCD"
RB=$(free_block 100)
ROUTER_PORTS="$RB-$((RB + 99))"
for i in 0 1 2; do
  API=$(free_port)
  MB=$(free_block 100)
  PGCELL_CELL_NAME="$ID-c$i" PGCELL_DEPLOYMENT="$ID" PGCELL_API_LISTEN="127.0.0.1:$API" \
  PGCELL_PORT_RANGE="$MB-$((MB + 99))" PGCELL_DATA_ROOT="$DIR/c$i" \
  PGCELL_ROUTER_PORT_RANGE=$ROUTER_PORTS PGCELL_MEMORY_MB=512 "$BIN" cell >"$DIR/c$i.log" 2>&1 &
  PIDS+=($!)
done
RH=$(free_port)
PGCELL_HTTP_LISTEN="127.0.0.1:$RH" PGCELL_PASSWORD=bench "$BIN" router >"$DIR/router.log" 2>&1 &
PIDS+=($!)
BP=$(free_port); PASS=$(python3 -c 'import secrets; print(secrets.token_hex(12))')
PGCELL_BROKER_LISTEN="127.0.0.1:$BP" PGCELL_PASSWORD="$PASS" PGCELL_ROUTER_PORT_RANGE=$ROUTER_PORTS "$BIN" broker >"$DIR/broker.log" 2>&1 &
PIDS+=($!)
URL="http://127.0.0.1:$BP"
for _ in $(seq 100); do curl -sf "$URL/healthz" >/dev/null && break; sleep 0.2; done
sleep 2   # cells register

osb() { curl -s -u "broker:$PASS" -H 'X-Broker-API-Version: 2.17' -H 'Content-Type: application/json' "$@"; }
SERVICE=$(osb "$URL/v2/catalog" | python3 -c 'import json,sys; print(json.load(sys.stdin)["services"][0]["id"])')
plan_id() { osb "$URL/v2/catalog" | python3 -c "import json,sys; print([p['id'] for p in json.load(sys.stdin)['services'][0]['plans'] if p['name']=='$1'][0])"; }
{
echo "# broker bench $(date -u '+%F %T') UTC, $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
for plan in single ha-2 ha-3; do
  PID_=$(plan_id $plan)
  t0=$(date +%s.%N)
  osb -X PUT "$URL/v2/service_instances/b-$plan?accepts_incomplete=true" \
    -d "{\"service_id\":\"$SERVICE\",\"plan_id\":\"$PID_\",\"organization_guid\":\"o\",\"space_guid\":\"s\"}" >/dev/null
  while :; do
    st=$(osb "$URL/v2/service_instances/b-$plan/last_operation" | python3 -c 'import json,sys; print(json.load(sys.stdin)["state"])')
    [ "$st" = "in progress" ] || break
    sleep 0.25
  done
  printf 'provision %-6s -> %-9s in %5.1f s\n' "$plan" "$st" "$(echo "$(date +%s.%N) - $t0" | bc)"
done
python3 bench/broker_load.py "$URL" "$PASS" b-single 50 40
} | tee docs/bench-broker-latest.txt
