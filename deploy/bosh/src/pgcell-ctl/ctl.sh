# Sourced by the jobs' bin/ctl: monit's start and stop programs.
# Monit only watches a pidfile, so start forks and returns at once; whatever
# the job must wait for (Docker, an image load) happens in the forked process,
# which then execs the daemon and keeps the pid monit knows.

pgcell_running() {
  [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null
}

# pgcell_start PIDFILE LOGPREFIX COMMAND...: COMMAND (a shell function that ends
# in exec) runs in the background with its output in LOGPREFIX.std{out,err}.log.
pgcell_start() {
  local pidfile=$1 log=$2
  shift 2
  mkdir -p "$(dirname "$pidfile")" "$(dirname "$log")"
  if pgcell_running "$pidfile"; then
    echo "already running (pid $(cat "$pidfile"))"
    return 0
  fi
  ("$@") >>"$log.stdout.log" 2>>"$log.stderr.log" </dev/null &
  echo $! >"$pidfile"
}

# pgcell_stop PIDFILE SECONDS: SIGTERM, then SIGKILL after SECONDS.
pgcell_stop() {
  local pidfile=$1 timeout=$2 pid
  if ! pgcell_running "$pidfile"; then
    rm -f "$pidfile"
    return 0
  fi
  pid=$(cat "$pidfile")
  kill -TERM "$pid"
  for _ in $(seq "$timeout"); do
    if ! kill -0 "$pid" 2>/dev/null; then
      rm -f "$pidfile"
      return 0
    fi
    sleep 1
  done
  echo "pid $pid still running ${timeout}s after SIGTERM; killing it" >&2
  kill -KILL "$pid" 2>/dev/null || true
  rm -f "$pidfile"
}

pgcell_ctl_usage() {
  echo "usage: $0 start|stop" >&2
  exit 1
}
