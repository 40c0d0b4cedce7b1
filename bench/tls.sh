#!/usr/bin/env bash
# TLS cost benchmark: pgbench through pgcell's router to one member, with
# `sslmode=disable` and with `sslmode=verify-full` (the fleet CA from etcd), in
# one run, interleaved:
#   -C -S  a new connection per transaction (the handshake's cost shows)
#   -S     select-only on open connections (the steady-state cost of TLS)
# Prints tps per mode, the ratio verify-full / disable, and pgbench's average
# connection time per mode (the difference is the TLS handshake's cost).
#
# Starts its own etcd, one cell agent and one router (release binary, loopback
# only) and removes all of it on exit, even on failure. The machine may be
# shared: rounds interleave the modes so other load falls on both alike.
#
#   bench/tls.sh                     # 10 s per mode, kind and round, 3 rounds
#   BENCH_SECONDS=20 bench/tls.sh
#
# Env: BENCH_SECONDS (10), BENCH_ROUNDS (3), BENCH_CONNECT_CLIENTS (1: -C),
# BENCH_CLIENTS (8: -S), BENCH_SCALE (10), CARGO_TARGET_DIR, PGCELL_BIN.
set -euo pipefail
cd "$(dirname "$0")/.."

T="${BENCH_SECONDS:-10}"
ROUNDS="${BENCH_ROUNDS:-3}"
CC="${BENCH_CONNECT_CLIENTS:-1}"
SC="${BENCH_CLIENTS:-8}"
SCALE="${BENCH_SCALE:-10}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/pgcell-target}"

source bench/lib.sh
bench_init tls tlsbench 2
require_tools etcd etcdctl psql pgbench docker curl ss python3
pgcell_bin
IMAGE="$(deploy/image/build.sh 2>/dev/null | tail -n1)"
[ -n "$IMAGE" ] || die "deploy/image/build.sh printed no image tag"
START="$(date -u +%Y-%m-%dT%H:%M:%SZ)"

start_etcd

MEMBER_BASE="$(free_block 20)"
ROUTER_BASE="$(free_block 20)"
API_PORT="$(free_port)"
log "starting cell agent (image $IMAGE)"
PGCELL_CELL_NAME="${DEPLOYMENT}-c0" PGCELL_DEPLOYMENT="$DEPLOYMENT" PGCELL_IMAGE="$IMAGE" \
  PGCELL_API_LISTEN="127.0.0.1:$API_PORT" PGCELL_PORT_RANGE="$MEMBER_BASE-$((MEMBER_BASE + 19))" \
  PGCELL_DATA_ROOT="$TMP/cell" PGCELL_ETCD_ENDPOINTS="$ETCD" PGCELL_BACKUP_ENABLED=false \
  PGCELL_ROUTER_PORT_RANGE="$ROUTER_BASE-$((ROUTER_BASE + 19))" PGCELL_LOG=info \
  "$PGCELL_BIN" cell </dev/null >"$TMP/cell.log" 2>&1 &
PIDS+=($!)
wait_until "cell agent health" 20 curl -fsS "http://127.0.0.1:$API_PORT/healthz"

ROUTER_HTTP="$(free_port)"
log "starting router"
PGCELL_ROUTER_NAME="tls-bench-router" PGCELL_HTTP_LISTEN="127.0.0.1:$ROUTER_HTTP" \
  PGCELL_PASSWORD="bench-$RANDOM$RANDOM" PGCELL_LISTEN_HOST=127.0.0.1 PGCELL_ADVERTISE_HOST=127.0.0.1 \
  PGCELL_ETCD_ENDPOINTS="$ETCD" PGCELL_LOG=info \
  "$PGCELL_BIN" router </dev/null >"$TMP/router.log" 2>&1 &
PIDS+=($!)
wait_until "router health" 20 curl -fsS "http://127.0.0.1:$ROUTER_HTTP/healthz"

ID=1
BODY='{"service_id":"0f5c1670-6dc3-11e5-bc08-6c4008a663f0","plan_id":"1545e30e-6dc3-11e5-826a-6c4008a663f0","organization_guid":"bench","space_guid":"bench"}'
log "creating instance $ID"
code="$(curl -sS -o "$TMP/put.out" -w '%{http_code}' -X PUT -u containers:containers \
  "http://127.0.0.1:$API_PORT/v2/service_instances/$ID" -d "$BODY")"
[ "$code" = 201 ] || die "PUT instance: HTTP $code: $(cat "$TMP/put.out")"

ROUTER_PORT="$(etcdget "/pgcell/instances/$ID/router_port")"
PASSWORD="$(etcdget "/pgcell/instances/$ID/secrets" | python3 -c 'import json,sys; print(json.load(sys.stdin)["superuser"])')"
etcdget /pgcell/tls/ca | python3 -c 'import json,sys; print(json.load(sys.stdin)["cert_pem"], end="")' >"$TMP/ca.crt"
[ -n "$ROUTER_PORT" ] && [ -n "$PASSWORD" ] && [ -s "$TMP/ca.crt" ] || die "no router port, secret or fleet CA in etcd"
export PGPASSWORD="$PASSWORD" PGCONNECT_TIMEOUT=3 PGUSER=postgres PGDATABASE=postgres PGHOST=127.0.0.1 PGPORT="$ROUTER_PORT"
TLS_ENV=(env PGSSLMODE=verify-full PGSSLROOTCERT="$TMP/ca.crt")
PLAIN_ENV=(env PGSSLMODE=disable)
writable() { [ "$("$@" psql -X -tA -c 'select pg_is_in_recovery()')" = f ]; }
wait_until "the primary writable through the router" 180 writable "${PLAIN_ENV[@]}"
wait_until "verify-full through the router" 30 writable "${TLS_ENV[@]}"
[ "$("${TLS_ENV[@]}" psql -X -tA -c 'select ssl from pg_stat_ssl where pid = pg_backend_pid()')" = t ] || die "verify-full session not on TLS"
[ "$("${PLAIN_ENV[@]}" psql -X -tA -c 'select ssl from pg_stat_ssl where pid = pg_backend_pid()')" = f ] || die "disable session on TLS"
CIPHER="$("${TLS_ENV[@]}" psql -X -tA -c 'select version || $$ $$ || cipher from pg_stat_ssl where pid = pg_backend_pid()')"

log "pgbench -i -s $SCALE"
"${PLAIN_ENV[@]}" pgbench -i -s "$SCALE" -q >"$TMP/init.log" 2>&1 || die "pgbench -i: $(tail -5 "$TMP/init.log")"
"${PLAIN_ENV[@]}" pgbench -S -n -c 2 -j 2 -T 3 >/dev/null 2>&1 || true

declare -A TPSSUM CONNSUM
run() { # mode kind
  local mode="$1" kind="$2" out tps conn envv args
  if [ "$mode" = verify-full ]; then envv=("${TLS_ENV[@]}"); else envv=("${PLAIN_ENV[@]}"); fi
  if [ "$kind" = connect ]; then args=(-C -S -c "$CC" -j 1); else args=(-S -c "$SC" -j 2); fi
  out="$("${envv[@]}" pgbench -n "${args[@]}" -T "$T" 2>&1)" || die "pgbench $mode $kind: $out"
  tps="$(awk '/^tps = /{print $3; exit}' <<<"$out")"
  conn="$(awk '/^average connection time = /{print $5; exit}' <<<"$out")"
  log "  $mode $kind: $tps tps, connection ${conn:-?} ms"
  TPSSUM[$mode,$kind]="$(awk -v a="${TPSSUM[$mode,$kind]:-0}" -v b="$tps" 'BEGIN{print a + b}')"
  CONNSUM[$mode,$kind]="$(awk -v a="${CONNSUM[$mode,$kind]:-0}" -v b="${conn:-0}" 'BEGIN{print a + b}')"
}
MODES=(disable verify-full)
for ((r = 0; r < ROUNDS; r++)); do
  log "round $((r + 1))/$ROUNDS"
  for kind in connect select; do
    for ((k = 0; k < 2; k++)); do
      run "${MODES[$(((r + k) % 2))]}" "$kind"
    done
  done
done

avg() { awk -v a="$1" -v r="$ROUNDS" 'BEGIN{printf "%.1f", a / r}'; }
echo "# pgcell TLS bench ($START, $(nproc) cores shared with other work, host $(hostname))"
echo "# through the router to one PostgreSQL 15 member; $ROUNDS interleaved rounds of ${T}s; TLS: $CIPHER"
printf '%-28s %14s %14s %8s\n' "pgbench" "disable tps" "verify-full" "ratio"
for kind in connect select; do
  if [ "$kind" = connect ]; then label="-C -S -c $CC (new conn/tx)"; else label="-S -c $SC (open conns)"; fi
  a="$(avg "${TPSSUM[disable,$kind]}")"; b="$(avg "${TPSSUM[verify-full,$kind]}")"
  printf '%-28s %14s %14s %8s\n' "$label" "$a" "$b" "$(awk -v a="$a" -v b="$b" 'BEGIN{printf "%.2f", b / a}')"
done
ca="$(avg "${CONNSUM[disable,connect]}")"; cb="$(avg "${CONNSUM[verify-full,connect]}")"
echo "average connection time (-C): disable ${ca} ms, verify-full ${cb} ms: TLS handshake + verification costs $(awk -v a="$ca" -v b="$cb" 'BEGIN{printf "%.2f", b - a}') ms per connection"
