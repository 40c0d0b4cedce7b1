#!/usr/bin/env bash
# Router throughput benchmark: pgbench select-only (-S) against the same primary
# three ways in one run: direct to its port, through pgcell's router port, and
# through Debian's haproxy (TCP mode). Prints a table with ratios against direct
# and pass/fail against the targets: router >= 0.90x direct TPS at 1 and 32
# clients, router >= haproxy TPS.
#
# Exit status: 0 all targets met, 1 a target missed, 2 the benchmark could not run.
#
# Starts its own etcd, one cell agent, one router and haproxy (release binary,
# loopback only) and removes all of it on exit, even on failure.
#
# Two CPU layouts, each measured in full (BENCH_LAYOUTS, default both):
#   shared  every process may run on every core: on this 2-core machine the
#           proxy takes its CPU from pgbench and PostgreSQL.
#   split   PostgreSQL's container and pgbench on core 0, the proxy (router or
#           haproxy) on core 1: the proxy on a host of its own, as deployed.
#           Direct gets core 0 only, so every ratio compares like with like.
# The verdict is on the split layout; the shared one is reported beside it.
#
#   bench/router-pgbench.sh                 # 15 s per target and client count
#   BENCH_SECONDS=30 bench/router-pgbench.sh
#
# Env: BENCH_SECONDS (15: per target and client count, split into BENCH_ROUNDS
# interleaved rounds, default 3), BENCH_CLIENTS ("1 32"), BENCH_LAYOUTS ("shared split"),
# BENCH_SCALE (10), CARGO_TARGET_DIR
# (/var/tmp/pgcell-target), PGCELL_BIN (skip the build and use this binary).
# The router inherits the environment, so e.g. PGCELL_DATA_THREADS=1 applies to it.
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_PER_RUN="${BENCH_SECONDS:-15}"
ROUNDS="${BENCH_ROUNDS:-3}"
ROUND_SECONDS=$(((SECONDS_PER_RUN + ROUNDS - 1) / ROUNDS))
SCALE="${BENCH_SCALE:-10}"
CLIENTS="${BENCH_CLIENTS:-1 32}"
LAYOUTS="${BENCH_LAYOUTS:-shared split}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/pgcell-target}"

source bench/lib.sh
bench_init router-pgbench bench 2
require_tools etcd etcdctl psql pgbench haproxy docker curl ss taskset
pgcell_bin
START="$(date -u +%Y-%m-%dT%H:%M:%SZ)"

start_etcd

# Cell agent
MEMBER_BASE="$(free_block 20)"
ROUTER_BASE="$(free_block 20)"
API_PORT="$(free_port)"
log "starting cell agent (members $MEMBER_BASE-$((MEMBER_BASE + 19)), router ports $ROUTER_BASE-$((ROUTER_BASE + 19)))"
PGCELL_CELL_NAME="${DEPLOYMENT}-c0" PGCELL_DEPLOYMENT="$DEPLOYMENT" \
  PGCELL_API_LISTEN="127.0.0.1:$API_PORT" PGCELL_PORT_RANGE="$MEMBER_BASE-$((MEMBER_BASE + 19))" \
  PGCELL_DATA_ROOT="$TMP/cell" PGCELL_ETCD_ENDPOINTS="$ETCD" \
  PGCELL_ROUTER_PORT_RANGE="$ROUTER_BASE-$((ROUTER_BASE + 19))" PGCELL_LOG=info \
  "$PGCELL_BIN" cell </dev/null >"$TMP/cell.log" 2>&1 &
PIDS+=($!)
wait_until "cell agent health" 20 curl -fsS "http://127.0.0.1:$API_PORT/healthz"

# Router
ROUTER_HTTP="$(free_port)"
ROUTER_PASSWORD="bench-$RANDOM$RANDOM"
log "starting router (http 127.0.0.1:$ROUTER_HTTP)"
PGCELL_ROUTER_NAME="bench-router" PGCELL_HTTP_LISTEN="127.0.0.1:$ROUTER_HTTP" \
  PGCELL_PASSWORD="$ROUTER_PASSWORD" PGCELL_LISTEN_HOST=127.0.0.1 PGCELL_ADVERTISE_HOST=127.0.0.1 \
  PGCELL_ETCD_ENDPOINTS="$ETCD" PGCELL_LOG=info \
  "$PGCELL_BIN" router </dev/null >"$TMP/router.log" 2>&1 &
ROUTER_PID=$!
PIDS+=("$ROUTER_PID")
wait_until "router health" 20 curl -fsS "http://127.0.0.1:$ROUTER_HTTP/healthz"

# One instance
ID=1
BODY='{"service_id":"0f5c1670-6dc3-11e5-bc08-6c4008a663f0","plan_id":"1545e30e-6dc3-11e5-826a-6c4008a663f0","organization_guid":"bench","space_guid":"bench"}'
log "creating instance $ID"
code="$(curl -sS -o "$TMP/put.out" -w '%{http_code}' -X PUT -u containers:containers \
  "http://127.0.0.1:$API_PORT/v2/service_instances/$ID" -d "$BODY")"
[ "$code" = 201 ] || die "PUT instance: HTTP $code: $(cat "$TMP/put.out")"

ROUTER_PORT="$(etcdget "/pgcell/instances/$ID/router_port")"
PASSWORD="$(etcdget "/pgcell/instances/$ID/secrets" | grep -o '"superuser":"[^"]*"' | cut -d'"' -f4)"
[ -n "$ROUTER_PORT" ] && [ -n "$PASSWORD" ] || die "no router port or superuser secret in etcd"
export PGPASSWORD="$PASSWORD" PGCONNECT_TIMEOUT=3 PGUSER=postgres PGDATABASE=postgres

leader_port() {
  local leader member
  leader="$(etcdget "/service/cf-$ID/leader")"
  [ -n "$leader" ] || return 1
  member="$(etcdget "/service/cf-$ID/members/$leader")"
  grep -q '"role":"\(master\|primary\)"' <<<"$member" && grep -q '"state":"running"' <<<"$member" || return 1
  grep -o '"conn_url":"[^"]*"' <<<"$member" | sed -E 's#.*://[^/:]*:([0-9]+).*#\1#'
}
writable() { [ "$(psql -h 127.0.0.1 -p "$1" -X -tA -c 'select pg_is_in_recovery()')" = f ]; }
log "waiting for a writable leader"
wait_until "a leader in etcd" 120 leader_port
PG_PORT="$(leader_port)"
wait_until "the leader accepting writes on $PG_PORT" 120 writable "$PG_PORT"
wait_until "the router reaching the leader on $ROUTER_PORT" 30 writable "$ROUTER_PORT"

# haproxy in TCP mode to the same primary
HAPROXY_PORT="$(free_port)"
cat >"$TMP/haproxy.cfg" <<EOF
global
    maxconn 4096
defaults
    mode tcp
    timeout connect 3s
    timeout client 1h
    timeout server 1h
listen pg
    bind 127.0.0.1:$HAPROXY_PORT
    server primary 127.0.0.1:$PG_PORT
EOF
log "starting haproxy on 127.0.0.1:$HAPROXY_PORT"
haproxy -f "$TMP/haproxy.cfg" -db >"$TMP/haproxy.log" 2>&1 &
HAPROXY_PID=$!
PIDS+=("$HAPROXY_PID")
wait_until "haproxy" 10 writable "$HAPROXY_PORT"

log "pgbench -i -s $SCALE"
pgbench -h 127.0.0.1 -p "$PG_PORT" -i -s "$SCALE" -q >"$TMP/init.log" 2>&1 || die "pgbench -i: $(tail -5 "$TMP/init.log")"
# Warm the cache so the first measured target is not penalised.
pgbench -h 127.0.0.1 -p "$PG_PORT" -S -n -c 2 -j 2 -T 3 >/dev/null 2>&1 || true

# CPU time (user + system) of a process, in clock ticks.
cpu_ticks() { awk '{sub(/.*\) /, ""); print $12 + $13}' "/proc/$1/stat"; }
TICK_US=$((1000000 / $(getconf CLK_TCK)))

# Each target gets BENCH_SECONDS per client count, in BENCH_ROUNDS interleaved
# rounds (target order rotated each round), so load from anything else on the
# machine falls on the three targets alike.
declare -A TPSSUM LATSUM NTX TICKS
PGBENCH=(pgbench)
run() { # layout target port clients threads proxy-pid
  local l="$1" target="$2" port="$3" c="$4" j="$5" pid="${6:-}" out t0=0 t1=0 n tps lat
  if [ -n "$pid" ]; then t0="$(cpu_ticks "$pid")"; fi
  out="$("${PGBENCH[@]}" -h 127.0.0.1 -p "$port" -S -n -c "$c" -j "$j" -T "$ROUND_SECONDS" 2>&1)" \
    || die "pgbench via $target: $out"
  if [ -n "$pid" ]; then t1="$(cpu_ticks "$pid")"; fi
  tps="$(awk '/^tps = /{print $3; exit}' <<<"$out")"
  lat="$(awk '/^latency average = /{print $4; exit}' <<<"$out")"
  n="$(awk '/^number of transactions actually processed: /{print $6; exit}' <<<"$out")"
  log "  $l: $target, $c client(s): $tps tps, $lat ms"
  local k="$l,$target,$c"
  TPSSUM[$k]="$(awk -v a="${TPSSUM[$k]:-0}" -v b="$tps" 'BEGIN{print a + b}')"
  LATSUM[$k]="$(awk -v a="${LATSUM[$k]:-0}" -v b="$lat" -v n="$n" 'BEGIN{print a + b * n}')"
  NTX[$k]=$((${NTX[$k]:-0} + n))
  TICKS[$k]=$((${TICKS[$k]:-0} + t1 - t0))
}
# etcd's revision counts writes: Patroni's (its keys are the only ones changing
# during the runs), each one an event the router handles.
etcd_revision() {
  ETCDCTL_API=3 etcdctl --endpoints "$ETCD" endpoint status -w json | grep -o '"revision":[0-9]*' | cut -d: -f2
}
CONTAINER="pgcell-cf-$ID-${DEPLOYMENT}-c0"
# Puts PostgreSQL's container and pgbench on `db` cores and the proxies on `proxy` cores.
place() { # db-cores proxy-cores
  docker update --cpuset-cpus "$1" "$CONTAINER" >/dev/null || die "docker update --cpuset-cpus $1 $CONTAINER"
  for pid in "$ROUTER_PID" "$HAPROXY_PID"; do
    taskset -a -cp "$2" "$pid" >/dev/null || die "taskset $2 $pid"
  done
  PGBENCH=(taskset -c "$1" pgbench)
}
REV0="$(etcd_revision)"; REV_T0=$SECONDS
declare -A TPS LAT CPU
TARGETS=(direct router haproxy)
ALL_CORES="0-$(($(nproc) - 1))"
for l in $LAYOUTS; do
  case "$l" in
    shared) place "$ALL_CORES" "$ALL_CORES" ;;
    split) [ "$(nproc)" -ge 2 ] || die "the split layout needs 2 cores"; place 0 1 ;;
    *) die "unknown layout $l (shared or split)" ;;
  esac
  for c in $CLIENTS; do
    if [ "$c" -gt 1 ]; then j=2; else j=1; fi
    for ((round = 0; round < ROUNDS; round++)); do
      log "$l: pgbench -S -c $c -j $j -T $ROUND_SECONDS, round $((round + 1))/$ROUNDS"
      for ((k = 0; k < 3; k++)); do
        target="${TARGETS[$(((round + k) % 3))]}"
        case "$target" in
          direct) port="$PG_PORT"; pid="" ;;
          router) port="$ROUTER_PORT"; pid="$ROUTER_PID" ;;
          haproxy) port="$HAPROXY_PORT"; pid="$HAPROXY_PID" ;;
        esac
        run "$l" "$target" "$port" "$c" "$j" "$pid"
      done
    done
    for target in "${TARGETS[@]}"; do
      k="$l,$target,$c"
      TPS[$k]="$(awk -v a="${TPSSUM[$k]}" -v r="$ROUNDS" 'BEGIN{print a / r}')"
      LAT[$k]="$(awk -v a="${LATSUM[$k]}" -v n="${NTX[$k]}" 'BEGIN{print a / n}')"
      CPU[$k]="-"
      if [ "$target" != direct ]; then
        CPU[$k]="$(awk -v d="${TICKS[$k]}" -v us="$TICK_US" -v n="${NTX[$k]}" 'BEGIN{printf "%.1f", d * us / n}')"
      fi
    done
  done
done
place "$ALL_CORES" "$ALL_CORES"

REV1="$(etcd_revision)"; REV_T1=$SECONDS
ROUTER_RSS="$(awk '/^VmRSS/{print $2, $3}' "/proc/$ROUTER_PID/status" 2>/dev/null || echo '?')"

echo "router-pgbench: started $START, $(nproc) cores, load average at the end $(cut -d' ' -f1-3 /proc/loadavg)," \
  "pgbench -S, scale $SCALE, $ROUNDS interleaved rounds of ${ROUND_SECONDS}s per target"
printf '%-7s %-8s %7s %10s %14s %10s %16s\n' layout target clients TPS "mean lat (ms)" "vs direct" "proxy CPU us/tx"
for l in $LAYOUTS; do
  for c in $CLIENTS; do
    for target in direct router haproxy; do
      k="$l,$target,$c"
      printf '%-7s %-8s %7s %10.0f %14.3f %9.3fx %16s\n' "$l" "$target" "$c" "${TPS[$k]}" "${LAT[$k]}" \
        "$(awk -v a="${TPS[$k]}" -v b="${TPS[$l,direct,$c]}" 'BEGIN{print a/b}')" "${CPU[$k]}"
    done
  done
done
echo "router RSS after the runs: $ROUTER_RSS; etcd writes during the runs (Patroni, one 1-member cluster):" \
  "$(awk -v r=$((REV1 - REV0)) -v t=$((REV_T1 - REV_T0)) 'BEGIN{printf "%d in %d s = %.2f/s", r, t, r / t}')"

verdict=0
check() { # description condition(awk expr)
  if awk "BEGIN{exit !($2)}"; then echo "PASS  $1"; else echo "FAIL  $1"; verdict=1; fi
}
for l in $LAYOUTS; do
  for c in $CLIENTS; do
    r="${TPS[$l,router,$c]}"; d="${TPS[$l,direct,$c]}"; h="${TPS[$l,haproxy,$c]}"
    ratio="$(awk -v a="$r" -v b="$d" 'BEGIN{printf "%.3f", a/b}')"
    vs_h="$(awk -v a="$r" -v b="$h" 'BEGIN{printf "%.3f", a/b}')"
    if [ "$l" = split ]; then
      check "$l: router >= 0.90x direct TPS at $c client(s) (${ratio}x)" "$r >= 0.90 * $d"
      check "$l: router >= haproxy TPS at $c client(s) (${vs_h}x haproxy)" "$r >= $h"
    else
      echo "INFO  $l: router ${ratio}x direct, ${vs_h}x haproxy at $c client(s)"
    fi
  done
done
exit "$verdict"
