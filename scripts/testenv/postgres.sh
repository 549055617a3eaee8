#!/usr/bin/env bash
# A throwaway PostgreSQL cluster for rollback-db's tests (and its benchmark).
#
# - installs Debian's postgresql + postgresql-client (pg_dump, pg_restore, psql)
#   when no server binaries are found under /usr/lib/postgresql/*/bin;
# - initdb's a cluster under $ROLLBACK_TESTENV_DIR/postgres/data, owned by the
#   `postgres` system user when run as root (the server refuses to run as root);
# - listens on 127.0.0.1:54329 and on a socket in the data directory;
# - superuser `postgres` with a random password (kept in
#   $ROLLBACK_TESTENV_DIR/postgres/password), scram-sha-256 everywhere;
# - idempotent: a running cluster is reused, a stopped one is started again;
# - writes DATABASE_URL (superuser, `postgres` database) and PG_BIN_DIR to
#   $ROLLBACK_TESTENV_DIR/postgres.env.
#
# Stop it with: $PG_BIN_DIR/pg_ctl -D $ROLLBACK_TESTENV_DIR/postgres/data stop
# (as the `postgres` user when you are root).
set -euo pipefail

PORT=54329
BASE="${ROLLBACK_TESTENV_DIR:-/tmp/rollback-testenv}"
DIR="$BASE/postgres"
DATA="$DIR/data"
LOG="$DIR/server.log"
PWFILE="$DIR/password"
ENV_FILE="$BASE/postgres.env"

find_bin_dir() {
    # The newest installed major version.
    local dir
    dir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
    if [ -n "$dir" ] && [ -x "$dir/initdb" ] && [ -x "$dir/pg_ctl" ]; then
        echo "$dir"
    fi
}

sudo_cmd=()
[ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)

BIN=$(find_bin_dir)
if [ -z "$BIN" ] || ! command -v pg_dump >/dev/null 2>&1 || ! command -v pg_restore >/dev/null 2>&1; then
    echo "postgres.sh: installing postgresql and postgresql-client"
    export DEBIAN_FRONTEND=noninteractive
    "${sudo_cmd[@]}" apt-get update -qq
    "${sudo_cmd[@]}" apt-get install -y -qq postgresql postgresql-client >/dev/null
    BIN=$(find_bin_dir)
fi
if [ -z "$BIN" ]; then
    echo "postgres.sh: no initdb/pg_ctl under /usr/lib/postgresql/*/bin after installing postgresql" >&2
    exit 1
fi

# Who runs the server: ourselves, or the `postgres` system user when we are root.
as_owner=()
if [ "$(id -u)" -eq 0 ]; then
    if ! id postgres >/dev/null 2>&1; then
        useradd --system --home-dir /var/lib/postgresql --shell /bin/bash postgres
    fi
    as_owner=(runuser -u postgres --)
fi

mkdir -p "$DIR"
chmod 755 "$BASE" "$DIR" 2>/dev/null || true
if [ "$(id -u)" -eq 0 ]; then
    chown postgres:postgres "$DIR"
fi

if [ ! -s "$PWFILE" ]; then
    # URL-safe, so DATABASE_URL needs no escaping.
    head -c 18 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$PWFILE.tmp"
    mv "$PWFILE.tmp" "$PWFILE"
fi
chmod 600 "$PWFILE"
[ "$(id -u)" -ne 0 ] || chown postgres:postgres "$PWFILE"
PASSWORD=$(cat "$PWFILE")

if [ ! -s "$DATA/PG_VERSION" ]; then
    echo "postgres.sh: initdb in $DATA"
    rm -rf "$DATA"
    "${as_owner[@]}" "$BIN/initdb" --pgdata="$DATA" --username=postgres --pwfile="$PWFILE" \
        --auth=scram-sha-256 --encoding=UTF8 --locale=C.UTF-8 >"$DIR/initdb.log" 2>&1 || {
        cat "$DIR/initdb.log" >&2
        exit 1
    }
    # A throwaway cluster: durability off, enough connections for parallel tests.
    cat >>"$DATA/postgresql.conf" <<EOF

# rollback testenv
listen_addresses = '127.0.0.1'
port = $PORT
unix_socket_directories = '$DATA'
max_connections = 300
fsync = off
synchronous_commit = off
full_page_writes = off
EOF
fi

if "${as_owner[@]}" "$BIN/pg_ctl" -D "$DATA" status >/dev/null 2>&1; then
    echo "postgres.sh: reusing the cluster running on 127.0.0.1:$PORT"
elif "$BIN/pg_isready" -q -h 127.0.0.1 -p "$PORT"; then
    echo "postgres.sh: port $PORT is taken by another server (not the cluster in $DATA); stop it, or set" \
        "ROLLBACK_TESTENV_DIR to the directory of the cluster that runs there" >&2
    exit 1
else
    echo "postgres.sh: starting the cluster on 127.0.0.1:$PORT"
    # A stale pid file from a killed server would stop pg_ctl.
    rm -f "$DATA/postmaster.pid"
    "${as_owner[@]}" "$BIN/pg_ctl" -D "$DATA" -l "$LOG" -w -t 60 start >/dev/null || {
        tail -n 30 "$LOG" >&2
        exit 1
    }
fi

cat >"$ENV_FILE" <<EOF
export DATABASE_URL=postgres://postgres:$PASSWORD@127.0.0.1:$PORT/postgres
export PG_BIN_DIR=$BIN
EOF
echo "postgres.sh: ready; variables in $ENV_FILE"
