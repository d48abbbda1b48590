# Sourced by the example and benchmark scripts: starts a throwaway Postgres
# cluster (wal_level=logical, a free port on 127.0.0.1) from the local server
# binaries, and stops and removes it when the calling script exits.
# Sets PG_BIN, PGHOST, PGPORT, PGUSER, PG_WORK; defines as_pg and sql.
PG_BIN=${PG_BIN:-$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)}
PG_WORK=$(mktemp -d /tmp/ficus-pg-XXXXXX)
chmod 0777 "$PG_WORK"
# initdb refuses root: run the cluster as the postgres user.
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
export PGHOST=127.0.0.1 PGUSER=postgres
PGPORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
export PGPORT
as_pg "$PG_BIN/initdb" -D "$PG_WORK/data" -U postgres --auth=trust --no-sync >/dev/null
as_pg "$PG_BIN/pg_ctl" -D "$PG_WORK/data" -l "$PG_WORK/postgres.log" -w \
  -o "-p $PGPORT -c wal_level=logical -c listen_addresses=127.0.0.1 -c unix_socket_directories=$PG_WORK ${PG_SETTINGS:-}" start >/dev/null
trap 'as_pg "$PG_BIN/pg_ctl" -D "$PG_WORK/data" -m immediate stop >/dev/null 2>&1; rm -rf "$PG_WORK"' EXIT
sql() { "$PG_BIN/psql" -v ON_ERROR_STOP=1 -q "$@"; }
