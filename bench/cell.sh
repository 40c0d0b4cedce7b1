#!/usr/bin/env bash
# Cell measurements with the release binary, on this machine:
#   - image build time with the image present (deploy/image/build.sh must skip);
#     with --cold, the current image tag is removed first and the cold build is
#     timed too (about 2 minutes; it rebuilds the image every local user shares)
#   - per-cell PUT -> writable leader (first member of a cluster)
#   - second PUT (other cell) -> that replica streaming
#   - memory of idle member containers (docker stats --no-stream, after 30 s idle)
#   - the cell agents' RSS (VmRSS) with no member and with 2 members each
# Prints a table and writes docs/bench-cell-latest.md.
#
# Starts its own etcd and two cell agents (loopback only, free port blocks) and
# creates two clusters of two members: cf-1 led on cell A, cf-2 led on cell B.
# Removes all of it on exit, even on failure or Ctrl-C: processes by PID,
# containers by the label org.pgcell.deployment=<unique id>, the temp dir.
#
#   bench/cell.sh            # about 2 minutes
#   bench/cell.sh --cold     # also the cold image build (rebuilds pgcell/postgres)
#
# Env: PGCELL_BIN (skip the build and use this binary), CARGO_TARGET_DIR (where
# cargo builds; default ./target), BENCH_IDLE_SECONDS (30).
set -euo pipefail
cd "$(dirname "$0")/.."

COLD=0
for arg in "$@"; do
  case "$arg" in
    --cold) COLD=1 ;;
    -h | --help) sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "cell.sh: unknown argument $arg (see --help)" >&2; exit 2 ;;
  esac
done
IDLE="${BENCH_IDLE_SECONDS:-30}"

source bench/lib.sh
bench_init cell.sh cellbench 1
require_tools etcd etcdctl psql docker curl ss awk
pgcell_bin
START="$(date -u '+%Y-%m-%d %H:%M:%S UTC')"

now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN{printf "%.2f", b - a}'; }

# ---------------------------------------------------------------------------
# Image build times

IMAGE_VERSION="$(cat deploy/image/build.sh deploy/image/entrypoint.sh deploy/image/patch-patroni.py | sha256sum | cut -c1-12)"
IMAGE_TAG="pgcell/postgres:15-$IMAGE_VERSION"
COLD_BUILD="not run (use --cold)"
if [ "$COLD" = 1 ]; then
  log "--cold: removing the tag $IMAGE_TAG, then building the image from scratch"
  # Only the tag goes: the image stays under pgcell/postgres:latest for running containers.
  OLD_IMAGE="$(docker image inspect -f '{{.Id}}' "$IMAGE_TAG" 2>/dev/null || true)"
  docker image rm "$IMAGE_TAG" >/dev/null 2>&1 || true
  t0="$(now)"
  if ! deploy/image/build.sh >"$TMP/image-cold.out" 2>"$TMP/image-cold.log"; then
    cat "$TMP/image-cold.log" >&2
    # Put the tag back on the image it named, so nobody is left without it.
    [ -n "$OLD_IMAGE" ] && docker tag "$OLD_IMAGE" "$IMAGE_TAG" >/dev/null 2>&1 || true
    die "cold image build failed"
  fi
  COLD_BUILD="$(since "$t0") s"
  docker image inspect "$IMAGE_TAG" >/dev/null 2>&1 || die "the cold build did not produce $IMAGE_TAG"
  docker image inspect pgcell/postgres:latest >/dev/null 2>&1 || die "the cold build did not tag pgcell/postgres:latest"
fi
log "deploy/image/build.sh with the image present (must skip)"
t0="$(now)"
deploy/image/build.sh >"$TMP/image.out" 2>"$TMP/image.log" || { cat "$TMP/image.log" >&2; die "image build failed"; }
WARM_BUILD="$(since "$t0")"
if grep -q "skipping build" "$TMP/image.log"; then WARM_SKIPPED=yes; else WARM_SKIPPED=NO; fi
IMAGE_SIZE="$(docker image inspect -f '{{.Size}}' pgcell/postgres:latest | awk '{printf "%d MB", $1/1000000}')"

# ---------------------------------------------------------------------------
# etcd and two cells

start_etcd

ROUTER_BASE="$(free_block 10)"
declare -A API AGENT_PID
CELLS=(a b)
for c in "${CELLS[@]}"; do
  base="$(free_block 10)"
  API[$c]="$(free_block 1)"
  log "starting cell $DEPLOYMENT-$c (member ports $base-$((base + 9)))"
  PGCELL_CELL_NAME="$DEPLOYMENT-$c" PGCELL_DEPLOYMENT="$DEPLOYMENT" \
    PGCELL_API_LISTEN="127.0.0.1:${API[$c]}" PGCELL_ADVERTISE_HOST=127.0.0.1 \
    PGCELL_PORT_RANGE="$base-$((base + 9))" PGCELL_DATA_ROOT="$TMP/$c" PGCELL_ETCD_ENDPOINTS="$ETCD" \
    PGCELL_ROUTER_PORT_RANGE="$ROUTER_BASE-$((ROUTER_BASE + 9))" PGCELL_MEMORY_MB=512 PGCELL_LOG=info \
    "$PGCELL_BIN" cell </dev/null >"$TMP/cell-$c.log" 2>&1 &
  AGENT_PID[$c]=$!
  PIDS+=("${AGENT_PID[$c]}")
done
for c in "${CELLS[@]}"; do
  wait_until "cell $c health" 20 curl -fsS "http://127.0.0.1:${API[$c]}/healthz"
done
rss_kb() { awk '/^VmRSS/{print $2}' "/proc/$1/status"; }
sleep 2
declare -A RSS0
for c in "${CELLS[@]}"; do RSS0[$c]="$(rss_kb "${AGENT_PID[$c]}")"; done

# ---------------------------------------------------------------------------
# Two clusters: cf-1 (PUT on a, then b) and cf-2 (PUT on b, then a)

BODY='{"service_id":"0f5c1670-6dc3-11e5-bc08-6c4008a663f0","plan_id":"1545e30e-6dc3-11e5-826a-6c4008a663f0","organization_guid":"bench","space_guid":"bench"}'
put() { # cell id -> prints the HTTP request's own time
  local code
  code="$(curl -sS -o "$TMP/put.out" -w '%{http_code} %{time_total}' -X PUT -u containers:containers \
    -H 'content-type: application/json' "http://127.0.0.1:${API[$1]}/v2/service_instances/$2" -d "$BODY")"
  [ "${code%% *}" = 201 ] || die "PUT instance $2 on cell $1: HTTP $code: $(cat "$TMP/put.out")"
  awk -v t="${code#* }" 'BEGIN{printf "%.2f", t}'
}
leader_port() { # id
  local leader member
  leader="$(etcdget "/service/cf-$1/leader")"
  [ -n "$leader" ] || return 1
  member="$(etcdget "/service/cf-$1/members/$leader")"
  grep -q '"role":"\(master\|primary\)"' <<<"$member" || return 1
  grep -o '"conn_url":"[^"]*"' <<<"$member" | sed -E 's#.*://[^/:]*:([0-9]+).*#\1#'
}
writable() { # id
  local port
  port="$(leader_port "$1")" || return 1
  [ -n "$port" ] && [ "$(psql -h 127.0.0.1 -p "$port" -X -tA -c 'select pg_is_in_recovery()')" = f ]
}
streaming() { # id member
  local port
  port="$(leader_port "$1")" || return 1
  [ "$(psql -h 127.0.0.1 -p "$port" -X -tA -c "select state from pg_stat_replication where application_name = '$2'")" = streaming ]
}
password() { etcdget "/pgcell/instances/$1/secrets" | grep -o '"superuser":"[^"]*"' | cut -d'"' -f4; }
export PGUSER=postgres PGDATABASE=postgres PGCONNECT_TIMEOUT=2

declare -A T_LEADER T_REPLICA PUT_HTTP
for spec in "1 a b" "2 b a"; do
  read -r id first second <<<"$spec"
  log "cf-$id: PUT on cell $first, waiting for a writable leader"
  t0="$(now)"
  PUT_HTTP[$id,1]="$(put "$first" "$id")"
  PGPASSWORD="$(password "$id")"
  export PGPASSWORD
  wait_until "cf-$id writable" 120 writable "$id"
  T_LEADER[$id]="$(since "$t0")"
  log "cf-$id: PUT on cell $second, waiting for it to stream"
  t0="$(now)"
  PUT_HTTP[$id,2]="$(put "$second" "$id")"
  wait_until "cf-$id-$DEPLOYMENT-$second streaming" 180 streaming "$id" "cf-$id-$DEPLOYMENT-$second"
  T_REPLICA[$id]="$(since "$t0")"
  log "cf-$id: leader after ${T_LEADER[$id]} s, replica streaming after ${T_REPLICA[$id]} s"
done

log "idle for ${IDLE}s, then docker stats and agent RSS"
sleep "$IDLE"
STATS="$(docker stats --no-stream --format '{{.Name}}|{{.MemUsage}}|{{.CPUPerc}}' \
  $(docker ps -q --filter "label=org.pgcell.deployment=$DEPLOYMENT") | sort)"
declare -A RSS2
for c in "${CELLS[@]}"; do RSS2[$c]="$(rss_kb "${AGENT_PID[$c]}")"; done
role_of() { # container name -> role of its member
  local member="${1#pgcell-}" id
  id="$(sed -E 's/^cf-([^-]+)-.*/\1/' <<<"$member")"
  etcdget "/service/cf-$id/members/$member" | grep -o '"role":"[^"]*"' | cut -d'"' -f4
}

# ---------------------------------------------------------------------------
# Report

mb() { awk -v k="$1" 'BEGIN{printf "%.1f MiB", k/1024}'; }
MD="$TMP/report.md"
{
  echo "# Cell measurements: latest run"
  echo
  echo "Written by \`bench/cell.sh$([ "$COLD" = 1 ] && echo " --cold")\`; see \`docs/bench-failover.md\`."
  echo
  echo "- started $START"
  echo "- machine: $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')), $(free -m | awk '/^Mem:/{print $2}') MB RAM, kernel $(uname -r), Docker $(docker version --format '{{.Server.Version}}'); load average at the end $(cut -d' ' -f1-3 /proc/loadavg); other work may have run concurrently"
  echo "- two cell agents (release binary), member containers limited to 512 MB, Patroni ttl 10 / loop_wait 1"
  echo
  echo "| measurement | value |"
  echo "|---|---|"
  echo "| image build, image present (\`deploy/image/build.sh\`) | $WARM_BUILD s (skipped: $WARM_SKIPPED) |"
  echo "| image build, cold (\`--cold\`) | $COLD_BUILD |"
  echo "| image size | $IMAGE_SIZE |"
  for id in 1 2; do
    echo "| cf-$id: first PUT → writable leader | ${T_LEADER[$id]} s (the PUT itself answered in ${PUT_HTTP[$id,1]} s) |"
    echo "| cf-$id: second PUT (other cell) → replica streaming | ${T_REPLICA[$id]} s (the PUT itself answered in ${PUT_HTTP[$id,2]} s) |"
  done
  while IFS='|' read -r name mem cpu; do
    [ -n "$name" ] || continue
    echo "| idle member container \`$name\` ($(role_of "$name")), after ${IDLE} s idle | ${mem%% /*} (limit ${mem##*/ }), CPU $cpu |"
  done <<<"$STATS"
  for c in "${CELLS[@]}"; do
    echo "| cell agent $c RSS, no member | $(mb "${RSS0[$c]}") |"
    echo "| cell agent $c RSS, 2 members (a leader and a replica) | $(mb "${RSS2[$c]}") |"
  done
} >"$MD"

echo
sed -e '/^|---/d' "$MD" | awk -F' [|] ' '
  /^\|/ { sub(/^\| /, ""); sub(/ \|$/, ""); printf "  %-70s %s\n", $1, $2; next }
  { print }'
cp "$MD" docs/bench-cell-latest.md
log "wrote docs/bench-cell-latest.md"
