# Shared start-up and clean-up of the bench scripts; sourced, not run.
#
#   source bench/lib.sh
#   bench_init cell.sh cellbench 1   # name for messages, deployment prefix, exit status of die
#   require_tools etcd docker ...
#   pgcell_bin                       # sets PGCELL_BIN (builds the release binary unless set)
#   start_etcd                       # sets ETCD (host:port) and ETCD_PID; a fresh data dir each call
#   PIDS+=($!)                       # every process started; killed newest first on exit
#   start_s3 BUCKET                  # moto behind haproxy TLS: S3_PORT, S3_CA (adds to PIDS)
#   stop_pids; stop_etcd; remove_containers   # the same clean-up mid-run (one phase after another)
#
# On exit (also on failure or Ctrl-C) it kills what is in PIDS by PID, newest
# first, then etcd; removes the containers labelled with DEPLOYMENT and the
# temp dir TMP; after a failure (die) it prints the tail of each log in TMP.

bench_init() { # name deployment-prefix die-status
  BENCH_NAME="$1"
  DIE_STATUS="$3"
  DIED=0
  DEPLOYMENT="$2$$-$RANDOM"
  TMP="$(mktemp -d "/tmp/pgcell-$2.XXXXXX")"
  # The run's own backup repository (cells inherit it): an instance id used by
  # an earlier run must not find that run's stanza (its replicas would restore
  # another cluster's data). Removed with TMP.
  export PGCELL_BACKUP_REPO_PATH="$TMP/backups"
  PIDS=()
  ETCD_PID=""
  : >"$TMP/ports-taken"
  trap bench_cleanup EXIT
  trap 'exit 130' INT TERM
}

log() { echo "$BENCH_NAME: $*" >&2; }
die() { log "FAILED: $*"; DIED=1; exit "$DIE_STATUS"; }

require_tools() {
  local tool
  for tool in "$@"; do
    command -v "$tool" >/dev/null || die "$tool is not installed (scripts/setup.sh)"
  done
}

pgcell_bin() {
  if [ -z "${PGCELL_BIN:-}" ]; then
    log "building the release binary (CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target})"
    cargo build --release --quiet --bin pgcell >&2
    PGCELL_BIN="${CARGO_TARGET_DIR:-target}/release/pgcell"
  fi
  [ -x "$PGCELL_BIN" ] || die "no binary at $PGCELL_BIN"
}

bench_cleanup() {
  local rc=$? f
  trap - EXIT INT TERM
  log "cleaning up"
  stop_pids
  stop_etcd
  remove_containers
  if [ "$DIED" = 1 ] && [ -d "$TMP" ]; then
    for f in "$TMP"/*.log; do
      if [ -f "$f" ]; then echo "--- $f (tail) ---" >&2; tail -n 30 "$f" >&2; fi
    done
  fi
  rm -rf "$TMP"
  exit "$rc"
}

# Kills what is in PIDS by PID, newest first (routers, agents: so nothing
# restarts a container), waits for them, and empties PIDS.
stop_pids() {
  local i pid
  for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
    kill "${PIDS[$i]}" 2>/dev/null || true
  done
  for pid in "${PIDS[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
  PIDS=()
}
stop_etcd() {
  if [ -n "$ETCD_PID" ]; then
    kill "$ETCD_PID" 2>/dev/null || true
    wait "$ETCD_PID" 2>/dev/null || true
    ETCD_PID=""
  fi
}
# The containers labelled with this run's DEPLOYMENT.
remove_containers() {
  local ids
  ids="$(docker ps -aq --filter "label=org.pgcell.deployment=$DEPLOYMENT" 2>/dev/null || true)"
  if [ -n "$ids" ]; then
    # shellcheck disable=SC2086
    docker rm -f -v $ids >/dev/null 2>&1 || true
  fi
}

# A block of `n` ports nobody listens on or connects from, below the ephemeral
# range, and not handed out before in this run (kept in a file: callers run
# it in a subshell).
used_ports() { ss -Htan | awk '{n=split($4,a,":"); print a[n]}' | sort -u; }
free_block() {
  local n="$1" used base p ok
  used="$(used_ports; cat "$TMP/ports-taken")"
  for _ in $(seq 1 300); do
    base=$((20000 + RANDOM % 12000))
    ok=1
    for ((p = base; p < base + n; p++)); do
      if grep -qx "$p" <<<"$used"; then ok=0; break; fi
    done
    if [ "$ok" = 1 ]; then
      for ((p = base; p < base + n; p++)); do echo "$p" >>"$TMP/ports-taken"; done
      echo "$base"
      return
    fi
  done
  die "no free block of $n ports"
}
free_port() { free_block 1; }

wait_until() { # what timeout_s command...
  local what="$1" timeout="$2"; shift 2
  local deadline=$((SECONDS + timeout))
  until "$@" >/dev/null 2>&1; do
    [ "$SECONDS" -lt "$deadline" ] || die "timed out after ${timeout}s waiting for $what"
    sleep 0.2
  done
}

start_etcd() {
  local port peer
  port="$(free_port)"; peer="$(free_port)"
  ETCD="127.0.0.1:$port"
  log "starting etcd on $ETCD"
  etcd --data-dir "$TMP/etcd-$port" \
    --listen-client-urls "http://$ETCD" --advertise-client-urls "http://$ETCD" \
    --listen-peer-urls "http://127.0.0.1:$peer" --initial-advertise-peer-urls "http://127.0.0.1:$peer" \
    --initial-cluster "default=http://127.0.0.1:$peer" >"$TMP/etcd-$port.log" 2>&1 &
  ETCD_PID=$!
  wait_until "etcd" 15 env ETCDCTL_API=3 etcdctl --endpoints "$ETCD" endpoint health
}
etcdget() { ETCDCTL_API=3 etcdctl --endpoints "$ETCD" get --print-value-only "$1"; }

# A local S3 server for pgBackRest (which speaks only HTTPS to S3), as in
# tests/backup_s3.rs: moto (PyPI, in memory) behind haproxy terminating TLS
# with a generated certificate for "localhost", and BUCKET created (pgBackRest
# never creates it). Sets S3_PORT (the TLS port) and S3_CA (the certificate).
start_s3() {
  local bucket="$1" moto tls d="$TMP/s3"
  mkdir -p "$d"
  openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=localhost \
    -addext subjectAltName=DNS:localhost -keyout "$d/key.pem" -out "$d/cert.pem" 2>/dev/null
  cat "$d/cert.pem" "$d/key.pem" >"$d/both.pem"
  moto="$(free_port)"; tls="$(free_port)"
  log "starting moto on 127.0.0.1:$moto behind haproxy TLS on $tls"
  moto_server -H 127.0.0.1 -p "$moto" >"$TMP/moto.log" 2>&1 &
  PIDS+=($!)
  printf '%s\n' global '  maxconn 256' defaults '  mode http' '  timeout connect 5s' '  timeout client 120s' \
    '  timeout server 120s' frontend\ s3 "  bind 127.0.0.1:$tls ssl crt $d/both.pem" '  default_backend moto' \
    backend\ moto "  server m 127.0.0.1:$moto" >"$d/haproxy.cfg"
  haproxy -db -f "$d/haproxy.cfg" >"$TMP/haproxy.log" 2>&1 &
  PIDS+=($!)
  wait_until "moto" 30 curl -sf -X PUT "http://127.0.0.1:$moto/$bucket"
  wait_until "haproxy" 15 curl -sf --cacert "$d/cert.pem" "https://localhost:$tls/$bucket"
  S3_PORT="$tls"; S3_CA="$d/cert.pem"
}
