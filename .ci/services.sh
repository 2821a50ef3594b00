#!/usr/bin/env bash
# Make sure PostgreSQL and NATS (with JetStream) are installed and listening on 127.0.0.1, and that
# the test database exists. Idempotent: services that already listen are left alone; missing ones
# are installed from Debian's packages and started. Safe to run any number of times.
#
#   PG_PORT   (default 5432)  NATS_PORT (default 4222)  PG_DATABASE (default test)
#   NATS_STORE_DIR (default /var/lib/nats-server)       NATS_LOG (default /var/log/nats-server.log)
set -euo pipefail

PG_PORT="${PG_PORT:-5432}"
NATS_PORT="${NATS_PORT:-4222}"
PG_DATABASE="${PG_DATABASE:-test}"
NATS_STORE_DIR="${NATS_STORE_DIR:-/var/lib/nats-server}"
NATS_LOG="${NATS_LOG:-/var/log/nats-server.log}"
HOST=127.0.0.1

log() { printf '[services] %s\n' "$*" >&2; }
die() { printf '[services] error: %s\n' "$*" >&2; exit 1; }

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null 2>&1 && SUDO="sudo" || SUDO=""
fi

listening() { # host port
  (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null
}

wait_listening() { # name host port seconds
  local i
  for ((i = 0; i < $4 * 10; i++)); do
    listening "$2" "$3" && return 0
    sleep 0.1
  done
  die "$1 is not listening on $2:$3 after $4 s"
}

APT_UPDATED=""
apt_install() {
  command -v apt-get >/dev/null 2>&1 || die "apt-get not found: install $* by hand"
  if [ -z "$APT_UPDATED" ]; then
    log "apt-get update"
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    APT_UPDATED=1
  fi
  log "apt-get install $*"
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# ---------------------------------------------------------------- PostgreSQL
pg_bin_dir() {
  local d
  d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
  [ -n "$d" ] && echo "$d"
}

psql_admin() { # args...
  psql -h "$HOST" -p "$PG_PORT" -U postgres -v ON_ERROR_STOP=1 -qtA "$@"
}

ensure_postgres() {
  if listening "$HOST" "$PG_PORT"; then
    log "PostgreSQL already listening on $HOST:$PG_PORT"
  else
    local installed=""
    if [ -z "$(pg_bin_dir)" ] || ! command -v psql >/dev/null 2>&1; then
      apt_install postgresql postgresql-client
      installed=1
    fi
    command -v pg_lsclusters >/dev/null 2>&1 || apt_install postgresql-common
    local ver port
    ver=$(basename "$(dirname "$(pg_bin_dir)")")
    if ! pg_lsclusters -h 2>/dev/null | awk '{print $1" "$2}' | grep -qx "$ver main"; then
      log "creating PostgreSQL $ver cluster 'main' on port $PG_PORT"
      $SUDO pg_createcluster --port "$PG_PORT" "$ver" main >/dev/null
    fi
    port=$(pg_lsclusters -h | awk -v v="$ver" '$1 == v && $2 == "main" {print $3}')
    if [ "$port" != "$PG_PORT" ]; then
      # The package's own cluster picked another port (e.g. 5432 was taken). Ours to set only
      # when this script installed it; otherwise say what to do.
      [ -n "$installed" ] || die "PostgreSQL $ver/main is configured for port $port, not $PG_PORT: set PG_PORT=$port"
      log "setting PostgreSQL $ver/main to port $PG_PORT (was $port)"
      $SUDO pg_conftool "$ver" main set port "$PG_PORT"
    fi
    log "starting PostgreSQL $ver on $HOST:$PG_PORT"
    $SUDO pg_ctlcluster --skip-systemctl-redirect "$ver" main start || true
    wait_listening PostgreSQL "$HOST" "$PG_PORT" 60
  fi

  # The tests connect as `postgres` over TCP without a password (trust on loopback), as on the
  # project's machines. A fresh Debian cluster asks for a password: allow loopback trust there.
  if ! psql_admin -d postgres -c 'SELECT 1' >/dev/null 2>&1; then
    local hba
    hba=$(ls /etc/postgresql/*/main/pg_hba.conf 2>/dev/null | sort -V | tail -n 1)
    [ -n "$hba" ] || die "cannot connect to PostgreSQL as postgres@$HOST:$PG_PORT and no pg_hba.conf found"
    log "allowing trust authentication for loopback in $hba (test machine)"
    local tmp
    tmp=$(mktemp)
    {
      echo "host all all 127.0.0.1/32 trust # added by jetstream-bridge .ci/services.sh"
      echo "host all all ::1/128 trust # added by jetstream-bridge .ci/services.sh"
      cat "$hba"
    } >"$tmp"
    $SUDO cp "$tmp" "$hba"
    rm -f "$tmp"
    local ver
    ver=$(basename "$(dirname "$(dirname "$hba")")")
    $SUDO pg_ctlcluster --skip-systemctl-redirect "$ver" main reload
    local i
    for ((i = 0; i < 50; i++)); do
      psql_admin -d postgres -c 'SELECT 1' >/dev/null 2>&1 && break
      sleep 0.1
    done
    psql_admin -d postgres -c 'SELECT 1' >/dev/null || die "still cannot connect to PostgreSQL as postgres"
  fi

  if [ "$(psql_admin -d postgres -c "SELECT 1 FROM pg_database WHERE datname = '$PG_DATABASE'")" != 1 ]; then
    log "creating database $PG_DATABASE"
    psql_admin -d postgres -c "CREATE DATABASE \"$PG_DATABASE\"" >/dev/null
  fi
  log "PostgreSQL ready: postgres://postgres@$HOST:$PG_PORT/$PG_DATABASE"
}

# ---------------------------------------------------------------- NATS
ensure_nats() {
  if listening "$HOST" "$NATS_PORT"; then
    log "NATS already listening on $HOST:$NATS_PORT"
  else
    command -v nats-server >/dev/null 2>&1 || [ -x /usr/sbin/nats-server ] || apt_install nats-server
    local bin
    bin=$(command -v nats-server || echo /usr/sbin/nats-server)
    $SUDO mkdir -p "$NATS_STORE_DIR" "$(dirname "$NATS_LOG")"
    log "starting $("$bin" --version) with JetStream on $HOST:$NATS_PORT (store $NATS_STORE_DIR)"
    if command -v start-stop-daemon >/dev/null 2>&1; then
      # A pid file per port, so another nats-server on the machine does not count as "running".
      $SUDO start-stop-daemon --start --oknodo --background --make-pidfile \
        --pidfile "/tmp/jetstream-bridge-nats-$NATS_PORT.pid" --exec "$bin" -- \
        -a "$HOST" -p "$NATS_PORT" -js -sd "$NATS_STORE_DIR" -l "$NATS_LOG"
    else
      nohup $SUDO "$bin" -a "$HOST" -p "$NATS_PORT" -js -sd "$NATS_STORE_DIR" -l "$NATS_LOG" \
        >/dev/null 2>&1 &
    fi
    wait_listening NATS "$HOST" "$NATS_PORT" 30
  fi
  log "NATS ready: nats://$HOST:$NATS_PORT"
}

ensure_postgres
ensure_nats
