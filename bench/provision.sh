#!/usr/bin/env bash
# Provisioning under load: N instances of one plan provisioned at the same
# moment through one broker on three cells, then all deprovisioned at once.
#   - time until all succeeded, p50 / max per instance
#   - placement races the broker lost and chose again (its /metrics)
#   - member memory (docker stats --no-stream, all members up)
#   - RSS of the three cell agents, the router and the broker, idle and loaded
#   - time until all deprovisioned; then checks nothing is left (containers,
#     data, placements, port slots, router ports, Patroni keys)
#
#   bench/provision.sh single 24     # N=24 single instances
#   bench/provision.sh ha-3 8        # 8 ha-3 instances (24 members)
#
# Cells get the capacity the members need, plus one. Starts its own etcd,
# cells, router and broker (release binary, loopback, free port blocks);
# removes all of it on exit (processes by PID, containers by deployment label).
# Appends its figures to docs/bench-provision-latest.txt.
# Env: PGCELL_BIN (use this binary), CARGO_TARGET_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
PLAN="${1:-single}"
N="${2:-8}"
case "$PLAN" in single) PER=1 ;; ha-2) PER=2 ;; ha-3) PER=3 ;; *) echo "provision.sh: plan single|ha-2|ha-3" >&2; exit 2 ;; esac
MEMBERS=$((N * PER))
CAPACITY=$(((MEMBERS + 2) / 3 + 1))
[ "$PER" -le 1 ] || CAPACITY=$((N + 1))

source bench/lib.sh
bench_init provision.sh pbench 1
require_tools etcd etcdctl docker curl python3 ss awk
pgcell_bin
BIN="$PGCELL_BIN"
# The image of this checkout's recipe (as the tests use), else the shared :latest.
IMAGE="pgcell/postgres:15-$(cat deploy/image/build.sh deploy/image/entrypoint.sh deploy/image/patch-patroni.py | sha256sum | cut -c1-12)"
docker image inspect "$IMAGE" >/dev/null 2>&1 || IMAGE=pgcell/postgres:latest
start_etcd
export PGCELL_ETCD_ENDPOINTS="$ETCD"
RB=$(free_block 100)
ROUTER_PORTS="$RB-$((RB + 99))"
declare -A ROLE_PID
for i in 0 1 2; do
  API=$(free_port)
  MB=$(free_block 100)
  PGCELL_CELL_NAME="$DEPLOYMENT-c$i" PGCELL_DEPLOYMENT="$DEPLOYMENT" PGCELL_API_LISTEN="127.0.0.1:$API" \
  PGCELL_PORT_RANGE="$MB-$((MB + 99))" PGCELL_DATA_ROOT="$TMP/c$i" PGCELL_CAPACITY="$CAPACITY" \
  PGCELL_IMAGE="$IMAGE" PGCELL_ROUTER_PORT_RANGE=$ROUTER_PORTS "$BIN" cell >"$TMP/c$i.log" 2>&1 &
  PIDS+=($!); ROLE_PID[agent$i]=$!
done
RH=$(free_port)
PGCELL_HTTP_LISTEN="127.0.0.1:$RH" PGCELL_PASSWORD=bench "$BIN" router >"$TMP/router.log" 2>&1 &
PIDS+=($!); ROLE_PID[router]=$!
BP=$(free_port); PASS=$(python3 -c 'import secrets; print(secrets.token_hex(12))')
PGCELL_BROKER_LISTEN="127.0.0.1:$BP" PGCELL_PASSWORD="$PASS" PGCELL_ROUTER_PORT_RANGE=$ROUTER_PORTS \
  "$BIN" broker >"$TMP/broker.log" 2>&1 &
PIDS+=($!); ROLE_PID[broker]=$!
URL="http://127.0.0.1:$BP"
wait_until "the broker" 20 curl -sf "$URL/healthz"
cells_up() { [ "$(ETCDCTL_API=3 etcdctl --endpoints "$ETCD" get --prefix --keys-only /pgcell/cells/ | grep -c .)" = 3 ]; }
wait_until "three cells registered" 20 cells_up

osb() { curl -s -u "broker:$PASS" -H 'X-Broker-API-Version: 2.17' "$@"; }
SERVICE=$(osb "$URL/v2/catalog" | python3 -c 'import json,sys; print(json.load(sys.stdin)["services"][0]["id"])')
PLAN_ID=$(osb "$URL/v2/catalog" | python3 -c "import json,sys; print([p['id'] for p in json.load(sys.stdin)['services'][0]['plans'] if p['name']=='$PLAN'][0])")
rss() { awk '/VmRSS/ {printf "%.0f", $2/1024}' "/proc/$1/status"; }
rss_line() {
  printf 'RSS MB %-7s agents %s/%s/%s, router %s, broker %s\n' "$1" \
    "$(rss "${ROLE_PID[agent0]}")" "$(rss "${ROLE_PID[agent1]}")" "$(rss "${ROLE_PID[agent2]}")" \
    "$(rss "${ROLE_PID[router]}")" "$(rss "${ROLE_PID[broker]}")"
}
races() { osb "$URL/metrics" | awk '/^pgcell_placement_races_total/ {print $2}'; }
keys() { ETCDCTL_API=3 etcdctl --endpoints "$ETCD" get --prefix --keys-only "$1" | grep -c . || true; }

{
echo "# provision bench $(date -u '+%F %T') UTC: $N x $PLAN ($MEMBERS members) at once, 3 cells of capacity $CAPACITY, 1 broker; $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
rss_line idle
# Beside the provisions: when every member is placed (the placement itself, before any container starts).
(
  t0=$(date +%s.%N)
  for _ in $(seq 1200); do
    [ "$(keys /pgcell/placements/)" -ge "$MEMBERS" ] && break
    sleep 0.1
  done
  awk -v a="$t0" -v b="$(date +%s.%N)" -v m="$MEMBERS" 'BEGIN{printf "all %d members placed in %.1f s\n", m, b - a}'
) >"$TMP/placed.txt" &
PLACED_PID=$!
python3 bench/provision_load.py up "$URL" "$PASS" "$SERVICE" "$PLAN_ID" "$N" p- || die "provisioning failed"
wait "$PLACED_PID" || true
cat "$TMP/placed.txt"
echo "placement races lost and chosen again: $(races)"
docker stats --no-stream --format '{{.Name}} {{.MemUsage}}' \
  $(docker ps -q --filter "label=org.pgcell.deployment=$DEPLOYMENT") \
  | awk '{v=$2; u=v; gsub(/[0-9.]/,"",u); gsub(/[A-Za-z]/,"",v); v+=0; if (u=="GiB") v*=1024; if (u=="KiB") v/=1024;
          s+=v; n++; if (v>m) m=v} END {printf "member memory: %d members, mean %.0f MiB, max %.0f MiB, total %.0f MiB\n", n, s/n, m, s}'
echo "members per cell: $(ETCDCTL_API=3 etcdctl --endpoints "$ETCD" get --prefix --keys-only /pgcell/placements/ | grep . | awk -F/ '{print $4}' | sort | uniq -c | awk '{printf "%s ", $1}')"
rss_line loaded
python3 bench/provision_load.py down "$URL" "$PASS" "$SERVICE" "$PLAN_ID" "$N" p- || die "deprovisioning failed"
sleep 1
LEFT="containers $(docker ps -aq --filter "label=org.pgcell.deployment=$DEPLOYMENT" | grep -c . || true), data dirs $(find "$TMP"/c? -mindepth 1 -maxdepth 1 2>/dev/null | grep -c . || true), placements $(keys /pgcell/placements/), slots $(keys /pgcell/ports/), router ports $(keys /pgcell/router_ports/), patroni keys $(keys /service/)"
echo "left after deprovisioning: $LEFT"
rss_line after
} | tee -a docs/bench-provision-latest.txt
