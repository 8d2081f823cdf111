# shellcheck shell=bash
# Sourced by scripts/: build `mithril`, seed a temporary SQLite database through
# `mithril seed FILE`, and start an embedded instance on a free loopback port.
#
# After `embedded_start`: BASE (http://127.0.0.1:PORT), TOKEN (an NHS bearer token with
# every connection scope), SECRET (the seeded connection's secret), CLINIC, MIS, NHS
# (client ids), CONNECTION (the clinic's connection to the MIS), WORK (a temporary
# directory, removed on exit with the server stopped), SERVER_LOG.

# shellcheck source=scripts/lib/services.bash
source "$(dirname "${BASH_SOURCE[0]}")/services.bash"

embedded_cleanup() {
  if [[ -n "${SERVER_PID:-}" ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
  fi
  [[ -n "${WORK:-}" ]] && rm -rf "$WORK"
}

embedded_start() {
  local target_dir="${CARGO_TARGET_DIR:-$PWD/target}"
  echo "embedded: building mithril"
  cargo build --quiet --bin mithril
  BIN="$target_dir/debug/mithril"

  WORK="$(mktemp -d)"
  SERVER_PID=""
  trap embedded_cleanup EXIT

  uuid() { python3 -c 'import uuid; print(uuid.uuid4())'; }
  local owner
  owner=$(uuid); NHS=$(uuid); CLINIC=$(uuid); MIS=$(uuid); CONNECTION=$(uuid)
  TOKEN="st-$(uuid)"
  SECRET="st-secret-$(uuid)"
  seed_json "$owner" owner@example.org "$CONNECTION" "$CLINIC" "$MIS" "$SECRET" \
    "$TOKEN" "$NHS" 2099-01-01T00:00:00Z \
    "$NHS|NHS|NHS" "$CLINIC|Clinic|MSP" "$MIS|MIS|MIS" >"$WORK/seed.json"

  # EMBEDDED_DATABASE_URL points the run at another (empty) database, e.g. PostgreSQL.
  export DATABASE_URL="${EMBEDDED_DATABASE_URL:-sqlite://$WORK/mithril.db?mode=rwc}"
  unset REDIS_URL SMTP_URL
  RUST_LOG=warn "$BIN" seed "$WORK/seed.json" >/dev/null

  SERVER_LOG="$WORK/server.log"
  # From $WORK: notices written as files land under its data/mail, not in the repository.
  (cd "$WORK" && MITHRIL_LOG_FORMAT=json RUST_LOG=info exec "$BIN" serve --bind 127.0.0.1:0 \
    >"$WORK/server.out" 2>"$SERVER_LOG") &
  SERVER_PID=$!
  local port=""
  for _ in $(seq 1 150); do
    port=$(grep -o '"message":"mithril listening","port":[0-9]*' "$SERVER_LOG" | grep -o '[0-9]*$' || true)
    [[ -n "$port" ]] && break
    kill -0 "$SERVER_PID" 2>/dev/null || break
    sleep 0.2
  done
  if [[ -z "$port" ]]; then
    echo "embedded: the server did not start" >&2
    tail -n 40 "$SERVER_LOG" >&2
    return 1
  fi
  BASE="http://127.0.0.1:$port"
  echo "embedded: mithril on $BASE"
}
