# shellcheck shell=bash
# Sourced by scripts/cluster for `scripts/cluster drill [NAME...]`: each drill gets a
# fresh cluster of its own (database, queue namespace, processes, mail), started with
# the settings it needs, driven by drill.py, and stopped again; a summary at the end.
# Uses check_tools, build_binaries and new_run from scripts/cluster and cl_* from
# cluster.bash.

DRILL_ALL=(rolling kill9 same-connection redis-restart retired-stays-retired impatient-callers)

# The virtualenv with drill.py's pinned packages; its name follows the requirements.
drill_venv() {
  local req="$CL_LIB/drill-requirements.txt" sum
  sum=$(sha256sum "$req" | cut -c1-12)
  DRILL_VENV="${MITHRIL_DRILL_VENV:-${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/mithril/drill-$sum}"
  if ! "$DRILL_VENV/bin/python" -c 'import aiohttp' 2>/dev/null; then
    cl_log "installing the drill driver's packages into $DRILL_VENV"
    python3 -m venv "$DRILL_VENV"
    "$DRILL_VENV/bin/pip" install --quiet --disable-pip-version-check -r "$req" ||
      cl_die "could not install $req"
  fi
}

# drill_start_redis PORT: a Redis of the drill's own on PORT, without persistence, in the
# run directory's bookkeeping as "redis" (drill.py restarts it through this function too).
drill_start_redis() {
  local port=$1
  mkdir -p "$RUN/proc" "$RUN/logs" "$RUN/redis"
  cl_spawn redis redis-server --port "$port" "${EPHEMERAL_REDIS[@]}" --dir "$RUN/redis" --logfile ""
  redis_wait "$port" 10 || cl_die "redis-server on port $port did not start; see $RUN/logs/redis.log"
}

drill_down() {
  cl_down
  if [[ -n ${DRILL_REDIS_PORT:-} ]]; then
    cl_signal redis TERM
    cl_wait_gone redis 5 || true
  fi
}

# drill_one NAME API WORKERS PHASE [VAR=VALUE...]: one drill on a cluster of its own, in a
# subshell (its traps stop that cluster whatever happens). Exit status: the drill's.
drill_one() {
  local name=$1 api=$2 workers=$3 phase=$4
  shift 4
  (
    API_COUNT=$api
    WORKER_COUNT=$workers
    # Only what the drill sets: the caller's own values would change the figures.
    unset MITHRIL_REFRESH_LIMIT MITHRIL_RECONCILE_AFTER MITHRIL_NOTICE_LEASE DRILL_REDIS_PORT \
      DRILL_SMTP_DELAY_MS
    local kv
    for kv in "$@"; do export "${kv?}"; done
    if [[ -n ${DRILL_SMTP_DELAY_MS:-} ]]; then
      # A mail server that takes its time before it answers MAIL, in this drill's subshell only.
      # shellcheck disable=SC2034 # read by cl_start_smtp
      CL_SMTP_OPTIONS=(--delay-ms "$DRILL_SMTP_DELAY_MS")
    fi
    new_run
    echo "$name${phase:+ $phase}" >"$RUN/drill-name"
    trap 'drill_down' EXIT
    trap 'exit 130' INT TERM
    if [[ $name == redis-restart ]]; then
      DRILL_REDIS_PORT=$(cl_free_port)
      drill_start_redis "$DRILL_REDIS_PORT"
      REDIS="redis://127.0.0.1:$DRILL_REDIS_PORT"
      cl_log "the drill's own Redis on $REDIS (no persistence)"
    fi
    cl_up
    cl_write_env
    cl_log "cluster up in ${CL_UP_SECONDS}s: $API_COUNT API instances, $WORKER_COUNT workers, balancer $BASE"
    export RUN BIN DBURL REDIS NS BASE MAILDIR API_COUNT WORKER_COUNT STATS_URL ROOT CL_LIB DRILL_REDIS_PORT
    "$DRILL_VENV/bin/python" "$CL_LIB/drill.py" "$name" ${phase:+--phase "$phase"}
  )
}

drill_main() {
  local names=("$@") name
  ((${#names[@]})) || names=("${DRILL_ALL[@]}")
  for name in "${names[@]}"; do
    [[ " ${DRILL_ALL[*]} " == *" $name "* ]] || cl_die "unknown drill $name (drills: ${DRILL_ALL[*]})"
  done
  command -v redis-server >/dev/null && command -v redis-cli >/dev/null ||
    cl_die "the drills need redis-server and redis-cli"
  check_tools
  build_binaries
  drill_venv

  local t0 summary=() failed=0 t rc
  t0=$(cl_now)
  run() {
    local label=$1
    shift
    t=$(cl_now)
    cl_log "=== drill $label"
    if drill_one "$@"; then rc=0; else rc=$?; fi
    summary+=("$(printf '%-34s %-5s %6ss' "$label" "$([[ $rc == 0 ]] && echo PASS || echo FAIL)" "$(cl_since "$t")")")
    [[ $rc == 0 ]] || failed=$((failed + 1))
    [[ $rc != 130 ]] || exit 130
  }
  for name in "${names[@]}"; do
    case $name in
      rolling) run rolling rolling 3 3 "" ;;
      # Every drill runs on the product's defaults but this one setting of the mail
      # server (not of mithril): kill9 kills workers mid-send, and a sink that answers
      # MAIL within a millisecond leaves no send in flight to kill.
      kill9) run kill9 kill9 3 3 "" DRILL_SMTP_DELAY_MS=200 ;;
      same-connection) run same-connection same-connection 3 3 "" ;;
      redis-restart) run redis-restart redis-restart 3 3 "" ;;
      retired-stays-retired) run retired-stays-retired retired-stays-retired 2 2 "" ;;
      impatient-callers)
        run "impatient-callers (default budget)" impatient-callers 3 3 limited
        run "impatient-callers (budget off)" impatient-callers 3 3 off MITHRIL_REFRESH_LIMIT=off
        ;;
    esac
  done
  echo
  echo "drills (each on a fresh cluster; time includes its start and stop):"
  printf '  %s\n' "${summary[@]}"
  echo "  total $(cl_since "$t0")s; $failed failed"
  ((failed == 0))
}
