#!/usr/bin/env bash
# Backup figures (issue #12): time to the first backup after provisioning, RPO
# under steady writes, full backup and restore MB/s for ~1 GB (pgbench scale
# 70), restore split into copy and WAL replay; for a posix repository (a temp
# dir on the local disk) and an S3 one (moto behind haproxy TLS on loopback, as
# in tests/backup_s3.rs). Each repository gets its own etcd, one cell, a router
# and a broker (release binary) on loopback, removed before the next; all of it
# is removed on exit. Output also in docs/bench-backup-latest.txt.
#   REPO (default both): posix, s3, or both (one after the other, then side by
#     side with the ratios s3/posix); RPO_SECS (default 180): how long the RPO
#     is sampled; SCALE (default 70); ENCRYPT=1: aes-256-cbc repositories.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/pgcell-target}"
source bench/lib.sh
REPO="${REPO:-both}"; RPO_SECS="${RPO_SECS:-180}"; SCALE="${SCALE:-70}"; ENCRYPT="${ENCRYPT:-0}"
case "$REPO" in posix) REPOS=(posix) ;; s3) REPOS=(s3) ;; both) REPOS=(posix s3) ;; *) echo "REPO=posix|s3|both" >&2; exit 2 ;; esac
bench_init backup.sh bkbench 1
require_tools etcd etcdctl docker curl python3 psql pgbench
[ "$REPO" = posix ] || require_tools moto_server haproxy openssl
pgcell_bin
BIN="$PGCELL_BIN"; ID="$DEPLOYMENT"; DIR="$TMP"
IMAGE="$(deploy/image/build.sh 2>/dev/null | tail -n1)"

rpo_sampled() { # repo secs label: a writer (about 10 commits/s) records each
  # commit's time and WAL position; every second the archiver's last segment is
  # read. The RPO at that moment is now minus the newest commit inside an
  # archived segment: what a restore from the repository would have if the
  # primary were lost then.
  local repo="$1" n="$2" label="$3"
  ( while :; do
      psql -At "$U" -c 'insert into w default values returning extract(epoch from at), pg_current_wal_lsn()' 2>/dev/null
      sleep 0.1
    done >"$DIR/$repo-$label-writes.txt" ) &
  local writer=$!; PIDS+=($writer)
  sleep 5
  for _ in $(seq "$n"); do
    echo "$(date +%s.%N)|$(psql -At "$U" -c 'select last_archived_wal from pg_stat_archiver' 2>/dev/null)" >>"$DIR/$repo-$label-archived.txt"
    sleep 1
  done
  kill "$writer" 2>/dev/null || true
  python3 bench/backup_figures.py rpo "$DIR/$repo-$label-writes.txt" "$DIR/$repo-$label-archived.txt" "$FIG" "$label"
}

deploy() { # repo: etcd, the repository, one cell, a router, a broker
  local repo="$1" env=()
  start_etcd
  export PGCELL_ETCD_ENDPOINTS="$ETCD"
  if [ "$repo" = s3 ]; then
    start_s3 pgcell-bench
    env=(PGCELL_BACKUP_REPO_TYPE=s3 PGCELL_S3_ENDPOINT=localhost PGCELL_S3_PORT="$S3_PORT"
      PGCELL_S3_BUCKET=pgcell-bench PGCELL_S3_CA_FILE="$S3_CA" PGCELL_S3_KEY=bench-key PGCELL_S3_KEY_SECRET=bench-secret)
  else
    env=(PGCELL_BACKUP_REPO_PATH="$DIR/$repo/backups")
  fi
  [ "$ENCRYPT" != 1 ] || env+=(PGCELL_BACKUP_CIPHER_PASS=bench-cipher-pass)
  local rb api mb rh bp
  rb=$(free_block 20); api=$(free_port); mb=$(free_block 20)
  env "${env[@]}" PGCELL_CELL_NAME="$ID-c0" PGCELL_DEPLOYMENT="$ID" PGCELL_API_LISTEN="127.0.0.1:$api" \
    PGCELL_IMAGE="$IMAGE" PGCELL_PORT_RANGE="$mb-$((mb + 19))" PGCELL_DATA_ROOT="$DIR/$repo/c0" \
    PGCELL_ROUTER_PORT_RANGE="$rb-$((rb + 19))" PGCELL_MEMORY_MB=1024 "$BIN" cell >"$DIR/$repo-c0.log" 2>&1 &
  PIDS+=($!)
  rh=$(free_port)
  PGCELL_HTTP_LISTEN="127.0.0.1:$rh" PGCELL_PASSWORD=bench "$BIN" router >"$DIR/$repo-router.log" 2>&1 &
  PIDS+=($!)
  bp=$(free_port); PASS=$(python3 -c 'import secrets; print(secrets.token_hex(12))')
  PGCELL_BROKER_LISTEN="127.0.0.1:$bp" PGCELL_PASSWORD="$PASS" PGCELL_ROUTER_PORT_RANGE="$rb-$((rb + 19))" \
    "$BIN" broker >"$DIR/$repo-broker.log" 2>&1 &
  PIDS+=($!)
  URL="http://127.0.0.1:$bp"
  wait_until "the broker" 20 curl -sf "$URL/healthz"
  sleep 2
  SERVICE=$(osb "$URL/v2/catalog" | python3 -c 'import json,sys; print(json.load(sys.stdin)["services"][0]["id"])')
  PLAN=$(osb "$URL/v2/catalog" | python3 -c "import json,sys; print([p['id'] for p in json.load(sys.stdin)['services'][0]['plans'] if p['name']=='single'][0])")
}
teardown() { stop_pids; stop_etcd; remove_containers; }

osb() { curl -s -u "broker:$PASS" -H 'X-Broker-API-Version: 2.17' -H 'Content-Type: application/json' "$@"; }
now() { date +%s.%N; }
secs() { python3 -c "print(f'{$2 - $1:.1f}')"; }
provision() { # id params-json; waits for succeeded
  osb -X PUT "$URL/v2/service_instances/$1?accepts_incomplete=true" \
    -d "{\"service_id\":\"$SERVICE\",\"plan_id\":\"$PLAN\",\"organization_guid\":\"o\",\"space_guid\":\"s\",\"parameters\":$2}" >/dev/null
  local st
  while :; do
    st=$(osb "$URL/v2/service_instances/$1/last_operation" | python3 -c 'import json,sys; print(json.load(sys.stdin)["state"])')
    [ "$st" = "in progress" ] || break
    sleep 0.25
  done
  [ "$st" = succeeded ] || die "provision $1: $st"
}
state() { etcdctl --endpoints="$ETCD" get --print-value-only "/pgcell/backups/$1"; }
nbackups() { state "$1" | python3 -c 'import json,sys; t=sys.stdin.read().strip(); print(len(json.loads(t)["info"]["backups"]) if t else 0)'; }
url() { # instance -> superuser URL of its app database through the router
  local port pw
  port=$(etcdctl --endpoints="$ETCD" get --print-value-only "/pgcell/instances/$1/router_port")
  pw=$(etcdctl --endpoints="$ETCD" get --print-value-only "/pgcell/instances/$1/secrets" | python3 -c 'import json,sys; print(json.load(sys.stdin)["superuser"])')
  echo "postgres://postgres:$pw@127.0.0.1:$port/app"
}
fig() { echo "$1=$2" >>"$FIG"; } # a figure for the side-by-side table

measure() { # repo: the figures for one repository, printed; the key ones also in $DIR/<repo>.fig
  local repo="$1" t0 t1 t2 U SIZE WRITER C
  FIG="$DIR/$repo.fig"; : >"$FIG"
  local where="posix repo on local disk"
  [ "$repo" = posix ] || where="s3 repo: moto $(python3 -c 'import moto; print(moto.__version__)') (in memory) behind haproxy TLS, loopback"
  echo "## $repo: load $(cut -d' ' -f1-3 /proc/loadavg) at the start; $where$([ "$ENCRYPT" != 1 ] || echo ", aes-256-cbc")"
  t0=$(now); provision src '{}'; t1=$(now)
  while [ "$(nbackups src)" -lt 1 ]; do sleep 0.5; done; t2=$(now)
  echo "provision: $(secs "$t0" "$t1") s; first full backup done $(secs "$t1" "$t2") s after provisioning succeeded ($(secs "$t0" "$t2") s after the request)"
  fig first_backup "$(secs "$t1" "$t2")"
  U=$(url src)

  # RPO with the light writer alone (how it is measured: rpo_sampled).
  psql -q "$U" -c 'create table w(id bigserial, at timestamptz default clock_timestamp())'
  rpo_sampled "$repo" "$RPO_SECS" steady

  # ~1 GB: pgbench scale $SCALE, then a full backup on demand.
  t0=$(now); pgbench -q -i -s "$SCALE" "$U" >"$DIR/$repo-pgbench-init.log" 2>&1; t1=$(now)
  SIZE=$(psql -At "$U" -c "select pg_database_size('app')")
  echo "pgbench -i -s $SCALE: $(secs "$t0" "$t1") s, database $((SIZE / 1000000)) MB"
  t0=$(now); "$BIN" backup src --type full; t1=$(now)
  state src | FIG="$FIG" python3 -c '
import json, os, sys
b = json.load(sys.stdin)["info"]["backups"][-1]; d = max(b["stop"] - b["start"], 1)
mb, repo = b["size"] / 1e6, b["repo_size"] / 1e6
print(f"full backup: {mb:.0f} MB in {d} s = {mb/d:.0f} MB/s (repository {repo:.0f} MB, zstd)")
open(os.environ["FIG"], "a").write(f"backup_s={d}\nbackup_mbs={mb/d:.0f}\n")'
  echo "  pgcell backup (request to done): $(secs "$t0" "$t1") s"
  fig backup_request "$(secs "$t0" "$t1")"
  # WAL to replay after that backup: a minute of pgbench, the RPO sampled
  # under it (segments fill by size: the archiver must keep up).
  pgbench -q -T 65 -c 2 "$U" >"$DIR/$repo-pgbench-run.log" 2>&1 &
  local pgb=$!
  rpo_sampled "$repo" 55 heavy
  wait "$pgb" || true
  psql -At "$U" -c 'select pg_switch_wal()' >/dev/null
  sleep 15
  t0=$(now); provision copy '{"restore":{"from":"src"}}'; t1=$(now)
  echo "restore (clone of the latest): $(secs "$t0" "$t1") s from the request to succeeded"
  fig restore "$(secs "$t0" "$t1")"
  C=$(docker ps -aq --filter "label=org.pgcell.deployment=$ID" --filter "label=org.pgcell.instance=copy" | head -n1)
  docker logs -t "$C" 2>&1 | FIG="$FIG" python3 -c '
import sys, os, datetime
def ts(l): return datetime.datetime.fromisoformat(l.split()[0][:26])
t = {}
for l in sys.stdin:
    for k, m in (("copy", "Running custom bootstrap script"), ("pg", "postmaster pid="), ("done", "running post_bootstrap")):
        if m in l and k not in t: t[k] = ts(l)
copy, replay = (t["pg"] - t["copy"]).total_seconds(), (t["done"] - t["pg"]).total_seconds()
print(f"  copy (pgbackrest restore) {copy:.1f} s, WAL replay to promotion {replay:.1f} s")
open(os.environ["FIG"], "a").write(f"copy={copy:.1f}\nreplay={replay:.1f}\n")' \
    || echo "  (could not split the restore from the container log)"
  echo "  restored rows: $(psql -At "$(url copy)" -c 'select count(*) from pgbench_accounts')"
  # (Not piped into head: the CLI panics on a closed pipe.)
  "$BIN" backups src >"$DIR/$repo-backups.txt"
  head -n 1 "$DIR/$repo-backups.txt"
}

# Everything below also goes to the file (the deployments stay in this shell:
# the clean-up on exit sees their PIDs).
exec > >(tee docs/bench-backup-latest.txt)
echo "# backup bench $(date -u '+%F %T') UTC, $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg); REPO=$REPO SCALE=$SCALE RPO_SECS=$RPO_SECS; archive_timeout 60 s (the RPO bound; PostgreSQL switches at 55 s), zstd"
for r in "${REPOS[@]}"; do
  deploy "$r"
  measure "$r"
  teardown
done
[ "$REPO" != both ] || python3 bench/backup_figures.py compare "$DIR/posix.fig" "$DIR/s3.fig"
