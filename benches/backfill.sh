#!/usr/bin/env bash
# Backfill benchmark: how fast `ficus backfill` turns N existing rows into events,
# as a ratio to `COPY (SELECT ...) TO STDOUT` of the same rows, measured in the
# same run on a throwaway cluster (the reference of ../shared/bench/pg-limit.sh).
#
# Usage: benches/backfill.sh [ROWS] [CHUNK_SIZE]      (defaults 1000000, 10000)
# Every row becomes one event (data = the whole row), written to stdout (/dev/null).
set -euo pipefail
ROWS=${1:-1000000}; CHUNK=${2:-10000}
root=$(cd "$(dirname "$0")/.." && pwd)
(cd "$root" && cargo build --release --quiet --bin ficus)
FICUS="$root/target/release/ficus"
source "$root/scripts/pg-throwaway.sh"

bench=$(mktemp -d /tmp/ficus-bench-XXXXXX)
trap 'rm -rf "$bench"; as_pg "$PG_BIN/pg_ctl" -D "$PG_WORK/data" -m immediate stop >/dev/null 2>&1; rm -rf "$PG_WORK"' EXIT
sql -d postgres -c 'create database bench'
sql -d bench -c "create table orders (id bigserial primary key, customer_id int not null, status text not null,
  total numeric(12,2) not null, created_at timestamptz not null default now(), note text);
  insert into orders(customer_id, status, total, note)
  select (random()*10000)::int, 'placed', (random()*1000)::numeric(12,2), 'note '||g from generate_series(1, $ROWS) g;"
sql -d bench -c 'vacuum analyze orders'
mkdir -p "$bench/mappings"
cat > "$bench/ficus.toml" <<TOML
[source]
url = "postgres://postgres@127.0.0.1:$PGPORT/bench?sslmode=disable"
slot = "ficus_bench"
[[sink]]
type = "stdout"
TOML
cat > "$bench/mappings/orders.toml" <<'TOML'
[[event]]
name = "OrderSeen"
table = "orders"
on = ["insert", "snapshot"]
key = "new.id"
data = "new"
TOML
cd "$bench"
FICUS_LOG=warn "$FICUS" run --until-caught-up >/dev/null   # slot and publication, before timing

now() { date +%s.%N; }
copy() { "$PG_BIN/psql" -d bench -c "\\copy (select * from orders order by id) to '/dev/null'" >/dev/null; }
# The reference runs before and after ficus, so that neither gets the warmer caches alone.
t0=$(now); copy
t1=$(now); events=$(FICUS_LOG=warn "$FICUS" backfill --chunk-size "$CHUNK" 2>/dev/null | grep -c '"type":"OrderSeen"')
t2=$(now); copy
t3=$(now)
python3 - "$ROWS" "$events" "$t0" "$t1" "$t2" "$t3" <<'PY'
import sys
rows, events, t0, t1, t2, t3 = int(sys.argv[1]), int(sys.argv[2]), *map(float, sys.argv[3:])
before, ficus, after = rows / (t1 - t0), rows / (t2 - t1), rows / (t3 - t2)
copy = (before + after) / 2
print(f"rows={rows} events={events} copy={copy:,.0f} rows/s (before {before:,.0f}, after {after:,.0f}) "
      f"ficus_backfill={ficus:,.0f} rows/s ratio={ficus / copy:.2f}")
PY
