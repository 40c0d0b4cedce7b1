#!/usr/bin/env bash
# Backup figures (issue #12): time to the first backup after provisioning, RPO
# under steady writes, full backup and restore MB/s for ~1 GB (pgbench scale
# 70), restore split into copy and WAL replay. Starts its own etcd, one cell
# (posix repository in a temp dir), a router and a broker (release binary) on
# loopback; removes all of it on exit. Output also in docs/bench-backup-latest.txt.
#   RPO_SECS (default 180): how long the RPO is sampled; SCALE (default 70).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/pgcell-target}"
source bench/lib.sh
bench_init backup.sh bkbench 1
require_tools etcd etcdctl docker curl python3 psql pgbench
pgcell_bin
BIN="$PGCELL_BIN"; ID="$DEPLOYMENT"; DIR="$TMP"; RPO_SECS="${RPO_SECS:-180}"; SCALE="${SCALE:-70}"
IMAGE="$(deploy/image/build.sh 2>/dev/null | tail -n1)"
start_etcd
export PGCELL_ETCD_ENDPOINTS="$ETCD"
RB=$(free_block 20); ROUTER_PORTS="$RB-$((RB + 19))"
API=$(free_port); MB=$(free_block 20)
PGCELL_CELL_NAME="$ID-c0" PGCELL_DEPLOYMENT="$ID" PGCELL_API_LISTEN="127.0.0.1:$API" PGCELL_IMAGE="$IMAGE" \
PGCELL_PORT_RANGE="$MB-$((MB + 19))" PGCELL_DATA_ROOT="$DIR/c0" PGCELL_BACKUP_REPO_PATH="$DIR/backups" \
PGCELL_ROUTER_PORT_RANGE=$ROUTER_PORTS PGCELL_MEMORY_MB=1024 "$BIN" cell >"$DIR/c0.log" 2>&1 &
PIDS+=($!)
RH=$(free_port)
PGCELL_HTTP_LISTEN="127.0.0.1:$RH" PGCELL_PASSWORD=bench "$BIN" router >"$DIR/router.log" 2>&1 &
PIDS+=($!)
BP=$(free_port); PASS=$(python3 -c 'import secrets; print(secrets.token_hex(12))')
PGCELL_BROKER_LISTEN="127.0.0.1:$BP" PGCELL_PASSWORD="$PASS" PGCELL_ROUTER_PORT_RANGE=$ROUTER_PORTS "$BIN" broker >"$DIR/broker.log" 2>&1 &
PIDS+=($!)
URL="http://127.0.0.1:$BP"
for _ in $(seq 100); do curl -sf "$URL/healthz" >/dev/null && break; sleep 0.2; done
sleep 2

osb() { curl -s -u "broker:$PASS" -H 'X-Broker-API-Version: 2.17' -H 'Content-Type: application/json' "$@"; }
SERVICE=$(osb "$URL/v2/catalog" | python3 -c 'import json,sys; print(json.load(sys.stdin)["services"][0]["id"])')
PLAN=$(osb "$URL/v2/catalog" | python3 -c "import json,sys; print([p['id'] for p in json.load(sys.stdin)['services'][0]['plans'] if p['name']=='single'][0])")
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

{
echo "# backup bench $(date -u '+%F %T') UTC, $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg); archive_timeout 60 s, zstd, posix repo on local disk"
t0=$(now); provision src '{}'; t1=$(now)
while [ "$(nbackups src)" -lt 1 ]; do sleep 0.5; done; t2=$(now)
echo "provision: $(secs "$t0" "$t1") s; first full backup done $(secs "$t1" "$t2") s after provisioning succeeded ($(secs "$t0" "$t2") s after the request)"
U=$(url src)

# RPO: a steady writer (about 10 commits/s) records each commit's time and
# WAL position; every second the archiver's last segment is read. The RPO at
# that moment is now minus the newest commit inside an archived segment: what
# a restore from the repository would have if the primary were lost then.
psql -q "$U" -c 'create table w(id bigserial, at timestamptz default clock_timestamp())'
( while :; do
    psql -At "$U" -c 'insert into w default values returning extract(epoch from at), pg_current_wal_lsn()' 2>/dev/null
    sleep 0.1
  done >"$DIR/writes.txt" ) &
WRITER=$!; PIDS+=($WRITER)
sleep 5
for _ in $(seq "$RPO_SECS"); do
  echo "$(date +%s.%N)|$(psql -At "$U" -c 'select last_archived_wal from pg_stat_archiver' 2>/dev/null)" >>"$DIR/archived.txt"
  sleep 1
done
kill "$WRITER" 2>/dev/null || true
python3 - "$DIR/writes.txt" "$DIR/archived.txt" <<'PY'
import sys, statistics
def lsn(s):
    hi, lo = s.split("/"); return (int(hi, 16) << 32) | int(lo, 16)
writes = []
for l in open(sys.argv[1]):
    p = l.strip().split("|")
    if len(p) == 2: writes.append((float(p[0]), lsn(p[1])))
rpo, last = [], None
for l in open(sys.argv[2]):
    t, seg = l.strip().split("|", 1)
    base = seg.split(".")[0]
    if len(base) == 24 and (len(seg) == 24 or seg.endswith(".partial")):
        last = ((int(base[8:16], 16) << 32) + (int(base[16:24], 16) + 1) * 0x1000000)
    if last is None: continue
    done = [a for a, w in writes if w < last and a <= float(t)]
    if done: rpo.append(float(t) - max(done))
rpo.sort()
print(f"RPO under steady writes ({len(writes)} commits, {len(rpo)} samples 1/s, archive_timeout 60 s): "
      f"p50 {statistics.median(rpo):.1f} s, p95 {rpo[int(len(rpo)*0.95)-1]:.1f} s, max {rpo[-1]:.1f} s")
PY

# ~1 GB: pgbench scale $SCALE, then a full backup on demand.
t0=$(now); pgbench -q -i -s "$SCALE" "$U" >"$DIR/pgbench-init.log" 2>&1; t1=$(now)
SIZE=$(psql -At "$U" -c "select pg_database_size('app')")
echo "pgbench -i -s $SCALE: $(secs "$t0" "$t1") s, database $((SIZE / 1000000)) MB"
t0=$(now); "$BIN" backup src --type full; t1=$(now)
state src | python3 -c '
import json, sys
b = json.load(sys.stdin)["info"]["backups"][-1]; d = max(b["stop"] - b["start"], 1)
mb, repo = b["size"] / 1e6, b["repo_size"] / 1e6
print(f"full backup: {mb:.0f} MB in {d} s = {mb/d:.0f} MB/s (repository {repo:.0f} MB, zstd)")'
echo "  pgcell backup (request to done): $(secs "$t0" "$t1") s"
# WAL to replay after that backup: a minute of pgbench.
pgbench -q -T 60 -c 2 "$U" >"$DIR/pgbench-run.log" 2>&1 || true
psql -At "$U" -c 'select pg_switch_wal()' >/dev/null
sleep 15
t0=$(now); provision copy '{"restore":{"from":"src"}}'; t1=$(now)
echo "restore (clone of the latest): $(secs "$t0" "$t1") s from the request to succeeded"
C=$(docker ps -aq --filter "label=org.pgcell.deployment=$ID" --filter "label=org.pgcell.instance=copy" | head -n1)
docker logs -t "$C" 2>&1 | python3 -c '
import sys, datetime
def ts(l): return datetime.datetime.fromisoformat(l.split()[0][:26])
t = {}
for l in sys.stdin:
    for k, m in (("copy", "Running custom bootstrap script"), ("pg", "postmaster pid="), ("done", "running post_bootstrap")):
        if m in l and k not in t: t[k] = ts(l)
copy, replay = (t["pg"] - t["copy"]).total_seconds(), (t["done"] - t["pg"]).total_seconds()
print(f"  copy (pgbackrest restore) {copy:.1f} s, WAL replay to promotion {replay:.1f} s")' \
  || echo "  (could not split the restore from the container log)"
echo "  restored rows: $(psql -At "$(url copy)" -c 'select count(*) from pgbench_accounts')"
"$BIN" backups src | head -n 1
} | tee docs/bench-backup-latest.txt
