#!/usr/bin/env bash
# Quickstart: starts a throwaway Postgres (wal_level=logical), applies the shop's
# schema, lets ficus create its slot, runs the workload, and prints the domain
# events ficus makes of it. Needs the Postgres server binaries (PG_BIN, else the
# newest under /usr/lib/postgresql). Cleans up after itself.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
PG_BIN=${PG_BIN:-$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)}

if [ -z "${FICUS:-}" ]; then
  (cd "$root" && cargo build --release --quiet --bin ficus)
  FICUS="$root/target/release/ficus"
fi

work=$(mktemp -d /tmp/ficus-shop-XXXXXX)
chmod 0777 "$work"
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
as_pg "$PG_BIN/initdb" -D "$work/data" -U postgres --auth=trust --no-sync >/dev/null
as_pg "$PG_BIN/pg_ctl" -D "$work/data" -l "$work/postgres.log" -w \
  -o "-p $port -c wal_level=logical -c listen_addresses=127.0.0.1 -c unix_socket_directories=$work" start >/dev/null
trap 'as_pg "$PG_BIN/pg_ctl" -D "$work/data" -m immediate stop >/dev/null 2>&1; rm -rf "$work"' EXIT

sql() { "$PG_BIN/psql" -h 127.0.0.1 -p "$port" -U postgres -v ON_ERROR_STOP=1 -q "$@"; }
sql -d postgres -c 'create database shop'
sql -d shop -f "$here/schema.sql"

export FICUS_SOURCE_URL="postgres://postgres@127.0.0.1:$port/shop?sslmode=disable"
export FICUS_LOG=${FICUS_LOG:-warn}
cd "$here"
"$FICUS" check                      # the mappings against the live schema
"$FICUS" run --until-caught-up      # creates the publication and the slot
sql -d shop -f "$here/workload.sql" # the monolith at work
echo "--- domain events:" >&2
"$FICUS" run --until-caught-up      # prints them, one CloudEvent per line
"$FICUS" teardown >&2
