#!/usr/bin/env bash
# Backfill benchmark: how fast `ficus backfill` turns N existing rows into events,
# as a ratio to `COPY (SELECT ...) TO STDOUT` of the same rows, measured in the
# same run on a throwaway cluster (the reference of ../shared/bench/pg-limit.sh).
#
# Usage: benches/backfill.sh [ROWS] [CHUNK_SIZE]      (defaults 1000000, 10000)
# Every row becomes one event (data = the whole row), written to stdout (/dev/null).
# A second reference, `COPY (SELECT row_to_json(...))`, has Postgres write a JSON
# object per row: closer to the work ficus does (it also maps, ids and wraps each row).
# Last, the same backfill when it creates the slot (the exported-snapshot case).
set -euo pipefail
ROWS=${1:-1000000}; CHUNK=${2:-10000}
source "$(dirname "$0")/../scripts/bench-common.sh"
sql -d bench -c "create table orders (id bigserial primary key, customer_id int not null, status text not null,
  total numeric(12,2) not null, created_at timestamptz not null default now(), note text);
  insert into orders(customer_id, status, total, note)
  select (random()*10000)::int, 'placed', (random()*1000)::numeric(12,2), 'note '||g from generate_series(1, $ROWS) g;"
sql -d bench -c 'vacuum analyze orders'
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

copy() { "$PG_BIN/psql" -d bench -c "\\copy (select * from orders order by id) to '/dev/null'" >/dev/null; }
# The reference runs before and after ficus, so that neither gets the warmer caches alone.
t0=$(now); copy
t1=$(now); events=$(FICUS_LOG=warn "$FICUS" backfill --chunk-size "$CHUNK" 2>/dev/null | grep -c '"type":"OrderSeen"')
t2=$(now); copy
t3=$(now)
report copy ficus_backfill "$ROWS" "$events" "$t0" "$t1" "$t2" "$t3"
copy_json() { "$PG_BIN/psql" -d bench -c "\\copy (select row_to_json(o) from orders o order by id) to '/dev/null'" >/dev/null; }
t4=$(now); copy_json
t5=$(now); FICUS_LOG=warn "$FICUS" backfill --chunk-size "$CHUNK" >/dev/null 2>&1
t6=$(now); copy_json
t7=$(now)
report copy_json ficus_backfill "$ROWS" "$ROWS" "$t4" "$t5" "$t6" "$t7"
# The cheap special case: no slot yet, so the backfill reads the snapshot the new slot exports.
FICUS_LOG=warn "$FICUS" teardown >/dev/null
t8=$(now); copy
t9=$(now); FICUS_LOG=warn "$FICUS" backfill --chunk-size "$CHUNK" >/dev/null 2>&1
t10=$(now); copy
t11=$(now)
report copy ficus_backfill_new_slot "$ROWS" "$ROWS" "$t8" "$t9" "$t10" "$t11"
