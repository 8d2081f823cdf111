# shellcheck shell=bash disable=SC2034 # (its variables are for the files that source it)
# Sourced by scripts/bench, scripts/cluster (through cluster-lib/cluster.bash, which
# drill.py also sources) and scripts/lib/embedded.bash: what they share to run mithril on
# loopback against a database, a Redis and a mail server of their own. Definitions only:
# sourcing it starts nothing and prints nothing.

SERVICES_LIB="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

# Where PostgreSQL (a server URL, without a database) and Redis are unless BENCH_PG,
# CLUSTER_PG, ... say otherwise.
LOCAL_PG=postgres://postgres@127.0.0.1:5432
LOCAL_REDIS=redis://127.0.0.1:6379

# The local SMTP sink: python3 "$SMTP_SINK" PORT [--times FILE] [--maildir DIR] [--delay-ms MS]
SMTP_SINK="$SERVICES_LIB/smtp_sink.py"

# The flags of a redis-server of a run's own (add --port PORT): loopback, no persistence.
EPHEMERAL_REDIS=(--bind 127.0.0.1 --save "" --appendonly no)

# --- binaries -----------------------------------------------------------------------------

# The cargo target directory, absolute (CARGO_TARGET_DIR is relative to ROOT, the
# repository, as cargo run there takes it).
release_target() {
  local target="${CARGO_TARGET_DIR:-$ROOT/target}"
  case $target in /*) ;; *) target="$ROOT/$target" ;; esac
  echo "$target"
}

# release_build [CARGO ARGS...]: `cargo build --release --workspace` in ROOT. The whole
# workspace at once, with its feature set, whichever binaries are asked for: building
# packages one by one would resolve dependency features differently and rebuild much of
# the tree, and scripts/bench and scripts/cluster share target/release.
release_build() { (cd "$ROOT" && cargo build --release --workspace "$@"); }

# apt_install PACKAGE...: Debian's packages, quietly (a tool a script needs and lacks).
apt_install() {
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@"; } >/dev/null
}

# ensure_tool COMMAND PACKAGE: COMMAND, from Debian's PACKAGE when missing (as root, or
# through sudo).
ensure_tool() {
  command -v "$1" >/dev/null && return 0
  echo "installing $1 (Debian's $2 package)" >&2
  local sudo=""
  [[ $(id -u) == 0 ]] || sudo=sudo
  { $sudo apt-get update -qq && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$2"; } >/dev/null
  command -v "$1" >/dev/null || { echo "$1 is still missing" >&2; return 1; }
}

# ensure_promtool: Prometheus's promtool (scripts/ops-check, scripts/metrics-check).
ensure_promtool() { ensure_tool promtool prometheus; }

# ensure_chromium: headless Chromium (scripts/mail-check, scripts/docs-check).
ensure_chromium() { ensure_tool chromium chromium; }

# --- PostgreSQL and Redis -----------------------------------------------------------------

# pg_create_database SERVER DB, pg_drop_database SERVER DB (SERVER without a database;
# the drop is quiet on stdout and forces out whoever is still connected).
pg_create_database() { psql -q "$1/postgres" -c "CREATE DATABASE \"$2\""; }
pg_drop_database() { psql -q "$1/postgres" -c "DROP DATABASE IF EXISTS \"$2\" WITH (FORCE)" >/dev/null; }

# redis_drop_namespace REDIS NS: deletes every key of the queue namespace NS (best effort).
redis_drop_namespace() {
  redis-cli -u "$1" --scan --pattern "${2}*" 2>/dev/null |
    xargs -r -n 500 redis-cli -u "$1" DEL >/dev/null 2>&1 || true
}

# redis_wait PORT SECONDS: until the Redis on 127.0.0.1:PORT answers PONG; 1 after SECONDS.
redis_wait() {
  local port=$1 deadline=$((SECONDS + $2))
  until [[ "$(redis-cli -p "$port" ping 2>/dev/null)" == PONG ]]; do
    ((SECONDS < deadline)) || return 1
    sleep 0.05
  done
}

# --- processes ----------------------------------------------------------------------------

# pid_alive PID: the process still runs (and this shell may signal it).
pid_alive() { kill -0 "$1" 2>/dev/null; }

# http_status CURL_ARGS...: the HTTP status curl gets within 2 s, or 000.
http_status() { curl -s -o /dev/null -m 2 -w '%{http_code}' "$@" || true; }

# wait_http STATUS SECONDS ALIVE ARG CURL_ARGS...: every 0.1 s, until curl CURL_ARGS gets
# STATUS (returns 0), as long as `ALIVE ARG` holds (returns 2 once it fails: the process
# that should answer is gone), for at most SECONDS (returns 1).
wait_http() {
  local want=$1 limit=$2 alive=$3 arg=$4
  shift 4
  local deadline=$((SECONDS + limit))
  while ((SECONDS < deadline)); do
    [[ "$(http_status "$@")" == "$want" ]] && return 0
    "$alive" "$arg" || return 2
    sleep 0.1
  done
  return 1
}

# --- seeding ------------------------------------------------------------------------------

# seed_json OWNER EMAIL CONNECTION CLINIC MIS SECRET TOKEN TOKEN_CLIENT EXPIRES CLIENT...:
# prints a `mithril seed` file: the user OWNER (EMAIL); the clients CLIENT..., in order,
# each "ID|NAME|TYPE" and owned by OWNER; the connection CONNECTION of client CLINIC to
# consumer MIS, with secret SECRET; OWNER's bearer token TOKEN for client TOKEN_CLIENT,
# with every connection scope, until EXPIRES.
seed_json() {
  local owner=$1 email=$2 connection=$3 clinic=$4 mis=$5 secret=$6 token=$7 token_client=$8 expires=$9
  shift 9
  local clients="" client id name type
  for client in "$@"; do
    IFS='|' read -r id name type <<<"$client"
    clients+="${clients:+,$'\n'}    {\"id\": \"$id\", \"name\": \"$name\", \"client_type\": \"$type\", \"user_id\": \"$owner\"}"
  done
  cat <<JSON
{
  "users": [{"id": "$owner", "email": "$email", "locale": "en"}],
  "clients": [
$clients
  ],
  "connections": [
    {"id": "$connection", "client_id": "$clinic", "consumer_id": "$mis",
     "redirect_uri": "https://mis.example.org/cb", "secret": "$secret"}
  ],
  "tokens": [
    {"value": "$token", "user_id": "$owner", "client_id": "$token_client",
     "scope": "connection:refresh_secret connection:read connection:write connection:delete",
     "expires_at": "$expires"}
  ]
}
JSON
}
