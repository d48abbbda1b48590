#!/usr/bin/env bash
# Quickstart: starts a throwaway Postgres (wal_level=logical), applies the shop's
# schema, lets ficus create its slot, runs the workload, and prints the domain
# events ficus makes of it. Needs the Postgres server binaries (PG_BIN, else the
# newest under /usr/lib/postgresql). Cleans up after itself.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)

if [ -z "${FICUS:-}" ]; then
  (cd "$root" && cargo build --release --quiet --bin ficus)
  FICUS="$root/target/release/ficus"
fi
source "$root/scripts/pg-throwaway.sh"

sql -d postgres -c 'create database shop'
sql -d shop -f "$here/schema.sql"

export FICUS_SOURCE_URL="postgres://postgres@127.0.0.1:$PGPORT/shop?sslmode=disable"
export FICUS_LOG=${FICUS_LOG:-warn}
cd "$here"
"$FICUS" check                      # the mappings against the live schema
"$FICUS" run --until-caught-up      # creates the publication and the slot
sql -d shop -f "$here/workload.sql" # the monolith at work
echo "--- domain events:" >&2
"$FICUS" run --until-caught-up      # prints them, one CloudEvent per line
"$FICUS" teardown >&2
