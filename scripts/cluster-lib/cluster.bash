# shellcheck shell=bash
# Sourced by scripts/cluster: start, watch, restart and stop a local cluster (N API
# instances, M mithril-workers, HAProxy, an SMTP sink) on loopback, against a database
# and a Redis queue namespace of its own.
#
# Everything a later command needs is in the run directory, so another shell (or a
# later `scripts/cluster drill`) can act on a running cluster:
#
#   RUN/cluster.env        settings and demo data (source it: BASE, TOKEN, CLIENT, ...)
#   RUN/haproxy.cfg        the balancer's configuration
#   RUN/seed.json          what `mithril seed` loaded
#   RUN/proc/NAME.pid      process id of NAME (api-1.., workers-1.., haproxy, smtp, supervisor)
#   RUN/proc/NAME.start    its start time (/proc/PID/stat field 22), against pid reuse
#   RUN/proc/api-I.port    the port of API instance I (kept across restarts)
#   RUN/proc/workers-J.port  the probe and /metrics port of workers process J (kept too)
#   RUN/proc/NAME.restarting  present while NAME is being restarted on purpose
#   RUN/logs/NAME.log      stdout and stderr of NAME (appended across restarts)
#   RUN/mail/              the notices the sink received (NNNNNN.eml, index.log)
#
# Processes are started with setsid, so a Ctrl-C in the terminal reaches the supervisor
# only, which then stops them in order.
#
# For drills: cl_up starts a cluster and returns, cl_restart_api I restarts one instance,
# cl_lb_state NAME tells what HAProxy sees, cl_alive/cl_pid/cl_signal act on a recorded
# process, cl_down stops it all. Everything reads the run directory, not shell state.

# shellcheck source=scripts/lib/services.bash
source "$(dirname "${BASH_SOURCE[0]}")/../lib/services.bash"

cl_log() { printf 'cluster: %s %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
cl_die() { cl_log "error: $*"; exit 1; }

# Seconds, with a fraction, since the epoch.
cl_now() { date +%s.%N; }
cl_since() { awk -v a="$1" -v b="$(cl_now)" 'BEGIN { printf "%.1f", b - a }'; }

# "3s", "500ms", "2m" or a bare number of seconds -> whole seconds, rounded up.
cl_seconds() {
  local v=$1
  case $v in
    *ms) echo $(((${v%ms} + 999) / 1000)) ;;
    *s) echo "${v%s}" ;;
    *m) echo $((${v%m} * 60)) ;;
    *) echo "$v" ;;
  esac
}

# A free loopback TCP port (the kernel's choice; free when asked).
cl_free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# --- process bookkeeping ----------------------------------------------------------------

cl_starttime() { sed 's/^.*) //' "/proc/$1/stat" 2>/dev/null | awk '{ print $20 }'; }

# Writes NAME.pid and NAME.start atomically (a reader in another shell never sees half).
cl_record() {
  local name=$1 pid=$2
  local start
  start=$(cl_starttime "$pid")
  printf '%s\n' "$start" >"$RUN/proc/$name.start.tmp" && mv "$RUN/proc/$name.start.tmp" "$RUN/proc/$name.start"
  printf '%s\n' "$pid" >"$RUN/proc/$name.pid.tmp" && mv "$RUN/proc/$name.pid.tmp" "$RUN/proc/$name.pid"
}

cl_pid() { cat "$RUN/proc/$1.pid" 2>/dev/null || true; }

# True while the process recorded as NAME runs (same pid and start time; zombies count
# as gone).
cl_alive() {
  local pid state
  pid=$(cl_pid "$1")
  [[ -n $pid ]] || return 1
  [[ -r /proc/$pid/stat ]] || return 1
  state=$(sed 's/^.*) //' "/proc/$pid/stat" 2>/dev/null | awk '{ print $1 }')
  [[ -n $state && $state != Z ]] || return 1
  [[ "$(cl_starttime "$pid")" == "$(cat "$RUN/proc/$1.start" 2>/dev/null)" ]]
}

cl_signal() {
  local name=$1 sig=$2
  cl_alive "$name" && kill "-$sig" "$(cl_pid "$name")" 2>/dev/null
  return 0
}

# cl_spawn NAME COMMAND...: starts COMMAND in the run directory, in a session of its own,
# output appended to logs/NAME.log, and records it. Sets CL_SPAWNED to its pid.
cl_spawn() {
  local name=$1
  shift
  printf '\n===== %s: starting %s\n' "$(date '+%F %T')" "$name" >>"$RUN/logs/$name.log"
  (cd "$RUN" && exec setsid "$@" >>"$RUN/logs/$name.log" 2>&1 </dev/null) &
  CL_SPAWNED=$!
  # setsid and env exec (setsid forks only for a process group leader, and a background
  # child of a script is none), so $! is the process itself; exec keeps its start time.
  cl_record "$name" "$CL_SPAWNED"
}

# cl_wait_gone NAME SECONDS: waits for NAME to exit; SIGKILL after SECONDS (or at once
# when CL_HURRY is set by a second Ctrl-C). Returns 1 if it had to kill.
cl_wait_gone() {
  local name=$1 limit=$2
  local deadline=$((SECONDS + limit))
  while cl_alive "$name"; do
    if ((SECONDS >= deadline)) || [[ -n ${CL_HURRY:-} ]]; then
      cl_log "$name did not stop in time: SIGKILL"
      cl_signal "$name" KILL
      sleep 0.2
      return 1
    fi
    sleep 0.1
  done
  return 0
}

# --- configuration ----------------------------------------------------------------------

cl_load_env() {
  [[ -f $RUN/cluster.env ]] || cl_die "$RUN is not a cluster run directory (no cluster.env)"
  # shellcheck source=/dev/null
  source "$RUN/cluster.env"
}

cl_write_env() {
  local tmp="$RUN/cluster.env.tmp"
  {
    echo "# scripts/cluster run $STAMP; source this file to talk to the cluster."
    local v
    for v in RUN STAMP BIN WORKERS_BIN PG DB DBURL REDIS NS API_COUNT WORKER_COUNT \
      LB_PORT STATS_PORT SMTP_PORT BASE STATS_URL HAPROXY_CFG MAILDIR \
      CL_DRAIN_DELAY CL_SHUTDOWN_TIMEOUT CL_LOG_FORMAT CL_RUST_LOG \
      OWNER CLIENT MIS CONNECTION TOKEN SECRET; do
      printf '%s=%q\n' "$v" "${!v}"
    done
  } >"$tmp"
  chmod 600 "$tmp"
  mv "$tmp" "$RUN/cluster.env"
}

cl_write_seed() {
  local ids
  ids=$(python3 -c '
import secrets, uuid
print(*[uuid.uuid4() for _ in range(4)], secrets.token_urlsafe(32), secrets.token_urlsafe(32))')
  read -r OWNER CLIENT MIS CONNECTION TOKEN SECRET <<<"$ids"
  local expires
  expires=$(date -u -d '+30 days' +%Y-%m-%dT%H:%M:%SZ)
  seed_json "$OWNER" owner@clinic.example.org "$CONNECTION" "$CLIENT" "$MIS" "$SECRET" \
    "$TOKEN" "$CLIENT" "$expires" \
    "$CLIENT|Cluster demo clinic $STAMP|MSP" "$MIS|Cluster demo MIS $STAMP|MIS" >"$RUN/seed.json"
  chmod 600 "$RUN/seed.json"
}

cl_write_haproxy_cfg() {
  local i
  {
    cat <<CFG
# HAProxy in front of the API instances of scripts/cluster run $STAMP.
global
    log stdout format raw local0 info
    # Admin socket for drills: echo "show servers state" | socat stdio $RUN/haproxy.sock
    stats socket $RUN/haproxy.sock mode 600 level admin

defaults
    mode http
    log global
    option httplog
    timeout connect 1s
    timeout client 60s
    # Longer than the API's shutdown timeout (30 s), so a request finishing during a
    # drain is not cut by the balancer.
    timeout server 60s
    timeout http-keep-alive 10s
    timeout check 1s
    # A connection refused (an instance that stopped accepting before the checks saw it)
    # is retried on another server; the request was never sent, so this is safe for PATCH.
    retries 3
    option redispatch 1

frontend mithril
    bind 127.0.0.1:$LB_PORT
    default_backend api

backend api
    balance roundrobin
    option forwardfor
    option httpchk
    http-check send meth GET uri /health/ready
    http-check expect status 200
    # Every second; two failures take a server out, one success puts it back.
    default-server inter 1s fall 2 rise 1
    # Which instance answered (for drills and curious people).
    http-response set-header x-cluster-backend %s
CFG
    for i in $(seq 1 "$API_COUNT"); do
      echo "    server api-$i 127.0.0.1:$(cat "$RUN/proc/api-$i.port") check"
    done
    cat <<CFG

listen stats
    bind 127.0.0.1:$STATS_PORT
    no log
    stats enable
    stats uri /
    stats refresh 2s
CFG
  } >"$HAPROXY_CFG"
}

# --- the processes ----------------------------------------------------------------------

cl_start_api() {
  local i=$1
  local port
  port=$(cat "$RUN/proc/api-$i.port")
  cl_spawn "api-$i" env DATABASE_URL="$DBURL" REDIS_URL="$REDIS" \
    SMTP_URL="smtp://127.0.0.1:$SMTP_PORT" MITHRIL_QUEUE_NAMESPACE="$NS" \
    MITHRIL_LOG_FORMAT="$CL_LOG_FORMAT" RUST_LOG="$CL_RUST_LOG" \
    MITHRIL_DRAIN_DELAY="$CL_DRAIN_DELAY" MITHRIL_SHUTDOWN_TIMEOUT="$CL_SHUTDOWN_TIMEOUT" \
    MITHRIL_TRUSTED_PROXIES=127.0.0.1/32 \
    "$BIN" serve --no-workers --bind "127.0.0.1:$port"
}

# The probe port of workers process J (its /health and /metrics), chosen once and kept
# across restarts, as an API instance's port is.
cl_workers_port() {
  local file="$RUN/proc/workers-$1.port"
  [[ -s $file ]] || cl_free_port >"$file"
  cat "$file"
}

cl_start_workers() {
  local j=$1
  cl_spawn "workers-$j" env DATABASE_URL="$DBURL" REDIS_URL="$REDIS" \
    MITHRIL_WORKERS_BIND="127.0.0.1:$(cl_workers_port "$j")" \
    SMTP_URL="smtp://127.0.0.1:$SMTP_PORT" MITHRIL_QUEUE_NAMESPACE="$NS" \
    MITHRIL_LOG_FORMAT="$CL_LOG_FORMAT" RUST_LOG="$CL_RUST_LOG" \
    MITHRIL_SHUTDOWN_TIMEOUT="$CL_SHUTDOWN_TIMEOUT" \
    "$WORKERS_BIN"
}

# The SMTP sink keeps every message in MAILDIR. CL_SMTP_OPTIONS: more of its options (a
# drill's --delay-ms: a mail server that takes its time before it answers MAIL).
CL_SMTP_OPTIONS=()
cl_start_smtp() {
  cl_spawn smtp python3 "$SMTP_SINK" "$SMTP_PORT" --maildir "$MAILDIR" "${CL_SMTP_OPTIONS[@]}"
}

cl_start_haproxy() {
  haproxy -c -q -f "$HAPROXY_CFG" || cl_die "HAProxy refuses $HAPROXY_CFG"
  # -db: foreground, no daemon; its log goes to stdout, that is logs/haproxy.log.
  cl_spawn haproxy haproxy -db -f "$HAPROXY_CFG"
}

# cl_wait_http NAME URL STATUS SECONDS: until URL answers STATUS, while NAME runs.
cl_wait_http() {
  local name=$1 url=$2 want=$3 limit=$4 rc=0
  wait_http "$want" "$limit" cl_alive "$name" "$url" || rc=$?
  case $rc in
    0) return 0 ;;
    2) cl_log "$name exited; the end of $RUN/logs/$name.log:"; tail -n 20 "$RUN/logs/$name.log" >&2 ;;
    *) cl_log "$name: $url did not answer $want within ${limit}s; see $RUN/logs/$name.log" ;;
  esac
  return 1
}

# HAProxy's view of server NAME in backend api: UP, DOWN, MAINT, "UP 1/2", ... or "".
cl_lb_state() {
  curl -s -m 2 "$STATS_URL;csv" 2>/dev/null | awk -F, -v s="$1" '$1 == "api" && $2 == s { print $18 }'
}

cl_wait_lb_state() {
  local name=$1 want=$2 limit=$3
  local deadline=$((SECONDS + limit))
  while ((SECONDS < deadline)); do
    [[ "$(cl_lb_state "$name")" == "$want" ]] && return 0
    sleep 0.1
  done
  cl_log "HAProxy did not see $name $want within ${limit}s (it says: $(cl_lb_state "$name"))"
  return 1
}

# The longest a graceful API stop may take: drain delay, then requests in flight.
cl_stop_limit() { echo $(($(cl_seconds "$CL_DRAIN_DELAY") + CL_SHUTDOWN_TIMEOUT + 10)); }

# cl_restart_api I: graceful restart of API instance I on its own port. SIGTERM; the
# instance answers 503 on /health/ready at once and keeps serving for the drain delay,
# HAProxy takes it out after two failed checks; it exits, starts again, is ready, and
# HAProxy puts it back. Prints what it saw and when.
cl_restart_api() {
  local i=$1
  local name="api-$i"
  [[ -f $RUN/proc/$name.port ]] || cl_die "no API instance $i (this cluster has $API_COUNT)"
  cl_alive "$name" || cl_die "$name is not running"
  local port old t0 down="" gone=""
  port=$(cat "$RUN/proc/$name.port")
  old=$(cl_pid "$name")
  touch "$RUN/proc/$name.restarting"
  t0=$(cl_now)
  cl_log "$name (pid $old, port $port): SIGTERM"
  cl_signal "$name" TERM
  local deadline=$((SECONDS + $(cl_stop_limit)))
  while cl_alive "$name"; do
    if [[ -z $down && "$(cl_lb_state "$name")" == DOWN* ]]; then
      down=$(cl_since "$t0")
      cl_log "$name: HAProxy took it out after ${down}s"
    fi
    if ((SECONDS >= deadline)); then
      cl_log "$name did not stop within $(cl_stop_limit)s: SIGKILL"
      cl_signal "$name" KILL
      sleep 0.2
    fi
    sleep 0.1
  done
  gone=$(cl_since "$t0")
  cl_log "$name: exited after ${gone}s${down:+ (out of the balancer at ${down}s)}"
  cl_start_api "$i"
  cl_wait_http "$name" "http://127.0.0.1:$port/health/ready" 200 60 || {
    rm -f "$RUN/proc/$name.restarting"
    return 1
  }
  cl_log "$name (pid $(cl_pid "$name")): ready after $(cl_since "$t0")s"
  cl_wait_lb_state "$name" UP 10 || true
  rm -f "$RUN/proc/$name.restarting"
  cl_log "$name: back in the balancer after $(cl_since "$t0")s"
}

# --- the whole cluster ------------------------------------------------------------------

cl_names() {
  local i
  for i in $(seq 1 "$API_COUNT"); do echo "api-$i"; done
  for i in $(seq 1 "$WORKER_COUNT"); do echo "workers-$i"; done
  echo haproxy
  echo smtp
}

# cl_up: everything but the build; the variables it needs are set by scripts/cluster.
cl_up() {
  local t0 i
  t0=$(cl_now)
  mkdir -p "$RUN/proc" "$RUN/logs" "$MAILDIR"
  echo $$ >"$RUN/proc/supervisor.pid"
  cl_starttime $$ >"$RUN/proc/supervisor.start"

  LB_PORT=$(cl_free_port)
  STATS_PORT=$(cl_free_port)
  SMTP_PORT=$(cl_free_port)
  for i in $(seq 1 "$API_COUNT"); do cl_free_port >"$RUN/proc/api-$i.port"; done
  BASE="http://127.0.0.1:$LB_PORT"
  STATS_URL="http://127.0.0.1:$STATS_PORT/"
  cl_write_seed
  cl_write_env

  cl_log "creating database $DB"
  pg_create_database "$PG" "$DB" || cl_die "cannot create database $DB on $(cl_redacted "$PG")"
  echo "$DB" >"$RUN/proc/database"
  cl_log "seeding it (migrations first) from $RUN/seed.json"
  env DATABASE_URL="$DBURL" RUST_LOG=warn "$BIN" seed "$RUN/seed.json" >"$RUN/logs/seed.log" 2>&1 ||
    { tail -n 20 "$RUN/logs/seed.log" >&2; cl_die "seeding failed"; }

  cl_start_smtp
  for i in $(seq 1 "$API_COUNT"); do cl_start_api "$i"; done
  for i in $(seq 1 "$WORKER_COUNT"); do cl_start_workers "$i"; done
  for i in $(seq 1 "$API_COUNT"); do
    cl_wait_http "api-$i" "http://127.0.0.1:$(cat "$RUN/proc/api-$i.port")/health/ready" 200 60 ||
      cl_die "API instance $i did not become ready"
  done
  cl_write_haproxy_cfg
  cl_start_haproxy
  for i in $(seq 1 "$API_COUNT"); do cl_wait_lb_state "api-$i" UP 15 || cl_die "HAProxy does not see api-$i"; done
  for i in $(seq 1 "$WORKER_COUNT"); do
    cl_wait_http "workers-$i" "http://127.0.0.1:$(cl_workers_port "$i")/health/ready" 200 60 ||
      cl_die "workers-$i did not become ready"
  done
  cl_wait_http haproxy "$BASE/health/ready" 200 10 || cl_die "the balancer does not answer"
  CL_UP_SECONDS=$(cl_since "$t0")
}

# A URL with its password, if any, masked: the banner and errors reach terminals and logs.
cl_redacted() { sed -E 's#(://[^:/@]*):[^@]*@#\1:***@#' <<<"$1"; }

cl_print_banner() {
  cat <<TEXT

mithril cluster up in ${CL_UP_SECONDS}s: $API_COUNT API instances, $WORKER_COUNT mithril-workers processes
  balancer          $BASE   (round-robin over 127.0.0.1:$(cat "$RUN"/proc/api-*.port | paste -sd, -))
  HAProxy stats     $STATS_URL
  workers probes    $(for f in "$RUN"/proc/workers-*.port; do printf 'http://127.0.0.1:%s/metrics ' "$(cat "$f")"; done)
  HAProxy config    $HAPROXY_CFG
  database          $(cl_redacted "$DBURL")
  queue namespace   $NS  (Redis $(cl_redacted "$REDIS"))
  SMTP sink         smtp://127.0.0.1:$SMTP_PORT -> $MAILDIR/  (index.log: one line a notice)
  run directory     $RUN  (logs/, proc/; cluster.env has every value below)
  bearer token      $TOKEN

Rotate the demo connection's secret through the balancer:

curl -sS -X PATCH $BASE/api/clients/$CLIENT/connections/$CONNECTION/actions/refresh_secret \\
  -H 'Authorization: Bearer $TOKEN'

Check a secret:      curl -sS -X POST $BASE/api/connections/actions/verify -H 'api-key: <secret>'
Restart instance $((API_COUNT > 1 ? 2 : 1)):  scripts/cluster restart-api $((API_COUNT > 1 ? 2 : 1))      (graceful; or 'all', one after another)
State:               scripts/cluster status
Ctrl-C here, or 'scripts/cluster stop', stops everything and drops the database.

TEXT
}

# Watches until a signal: reports a process that exits without being restarted on purpose.
cl_supervise() {
  local -A reported=()
  local name
  while :; do
    for name in $(cl_names); do
      if cl_alive "$name" || [[ -e $RUN/proc/$name.restarting ]]; then
        unset "reported[$name]"
      elif [[ -z ${reported[$name]:-} ]]; then
        reported[$name]=1
        cl_log "$name (pid $(cl_pid "$name")) exited unexpectedly; the end of $RUN/logs/$name.log:"
        tail -n 10 "$RUN/logs/$name.log" >&2
      fi
    done
    sleep 1 &
    wait $! || true
  done
}

# cl_down: stops every recorded process (API instances and workers first, gracefully and
# in parallel; then HAProxy and the sink), drops the database and the queue namespace's
# Redis keys. Safe to call twice, and from another shell after the supervisor died.
cl_down() {
  [[ -n ${CL_DOWN_DONE:-} ]] && return 0
  CL_DOWN_DONE=1
  trap 'CL_HURRY=1; cl_log "second signal: killing what is left"' INT TERM
  cl_log "stopping (Ctrl-C again to kill at once)"
  local name limit
  limit=$(cl_stop_limit 2>/dev/null || echo 45)
  for name in $(cl_names); do
    case $name in api-* | workers-*) cl_signal "$name" TERM ;; esac
  done
  for name in $(cl_names); do
    case $name in api-* | workers-*) cl_wait_gone "$name" "$limit" || true ;; esac
  done
  for name in haproxy smtp; do
    cl_signal "$name" TERM
    cl_wait_gone "$name" 5 || true
  done
  if [[ -f $RUN/proc/database ]]; then
    if pg_drop_database "$PG" "$DB"; then
      rm -f "$RUN/proc/database"
      cl_log "dropped database $DB"
    else
      cl_log "could not drop database $DB"
    fi
  fi
  if command -v redis-cli >/dev/null; then
    redis_drop_namespace "$REDIS" "$NS"
  fi
  local root
  root=$(dirname "$RUN")
  [[ "$(readlink "$root/current" 2>/dev/null)" == "$RUN" ]] && rm -f "$root/current"
  touch "$RUN/stopped"
  cl_log "stopped; logs and mail stay in $RUN"
}

# HTTP status of http://127.0.0.1:PORT/health/ready, or "-" when nothing answers.
cl_ready() {
  local code
  code=$(curl -s -o /dev/null -m 2 -w '%{http_code}' "http://127.0.0.1:$1/health/ready" 2>/dev/null) || true
  [[ $code =~ ^[1-5][0-9][0-9]$ ]] && echo "$code" || echo -
}

cl_status() {
  local name pid port lb state ready
  printf '%-11s %-8s %-7s %-6s %-6s %s\n' process pid port state ready balancer
  for name in $(cl_names); do
    pid=$(cl_pid "$name")
    port=$(cat "$RUN/proc/$name.port" 2>/dev/null || true)
    case $name in
      haproxy) port=$LB_PORT ;;
      smtp) port=$SMTP_PORT ;;
    esac
    lb=""
    [[ $name == api-* ]] && lb=$(cl_lb_state "$name")
    if cl_alive "$name"; then state=up; else state=down; fi
    ready=""
    [[ $name == api-* || $name == workers-* ]] && [[ -n $port ]] && ready=$(cl_ready "$port")
    printf '%-11s %-8s %-7s %-6s %-6s %s\n' "$name" "${pid:--}" "${port:--}" "$state" "${ready:--}" "$lb"
  done
  echo "balancer $BASE, run directory $RUN, notices received: $(find "$MAILDIR" -name '*.eml' | wc -l)"
}
