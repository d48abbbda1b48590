#!/usr/bin/env bash
# Stream benchmark: how fast ficus turns N committed row changes into events,
# as a ratio to Postgres' own pg_recvlogical draining the same changes from a
# pgoutput slot, measured in the same run on a throwaway cluster.
#
# Usage: benches/stream.sh [ROWS] [ROWS_PER_TXN]      (defaults 1000000, 1000)
# ficus writes every event (stdout sink, to /dev/null): four mappings read
# the table, two with CEL predicates, as a real deployment would.
set -euo pipefail
ROWS=${1:-1000000}; BATCH=${2:-1000}
source "$(dirname "$0")/../scripts/bench-common.sh"
sql -d bench <<SQL
create table orders (id bigserial primary key, customer_id int not null, status text not null,
  total numeric(12,2) not null, created_at timestamptz not null default now(), note text);
alter table orders replica identity full;
create publication recv_pub for table orders;
select from pg_create_logical_replication_slot('recv_before', 'pgoutput');
select from pg_create_logical_replication_slot('recv_after', 'pgoutput');
SQL
cat > "$bench/mappings/orders.toml" <<'TOML'
[[event]]
name = "OrderPlaced"
table = "orders"
on = ["insert"]
key = "new.id"
data = { order_id = "new.id", customer_id = "new.customer_id", total = "new.total", created_at = "new.created_at" }

[[event]]
name = "BigOrderPlaced"
table = "orders"
on = ["insert"]
when = "new.total >= 990.0"
key = "new.id"
data = { order_id = "new.id", total = "new.total" }

[[event]]
name = "OrderPaid"
table = "orders"
on = ["update"]
when = "old.status != 'paid' && new.status == 'paid'"
key = "new.id"
data = { order_id = "new.id" }

[[event]]
name = "OrderNoted"
table = "orders"
on = ["insert"]
when = "new.note.startsWith('note 1')"
key = "new.id"
data = "new"
TOML
cd "$bench"
FICUS_LOG=warn "$FICUS" run --until-caught-up >/dev/null   # creates ficus's slot before the writes

sql -d bench -c "do \$\$ begin for i in 1..($ROWS/$BATCH) loop
  insert into orders(customer_id, status, total, note)
  select (random()*10000)::int, 'placed', (random()*1000)::numeric(12,2), 'note '||g from generate_series(1,$BATCH) g;
  commit; end loop; end \$\$;"
END=$(sql -d bench -Atc "select pg_current_wal_lsn()")

recv() {
  "$PG_BIN/pg_recvlogical" -d bench --slot "$1" --start -o proto_version=1 -o publication_names=recv_pub \
    --endpos "$END" --no-loop -f - >/dev/null
}
# The reference runs before and after ficus, so that neither gets the warmer caches alone.
t0=$(now); recv recv_before
t1=$(now); events=$(FICUS_LOG=warn "$FICUS" run --until-caught-up | wc -l)
t2=$(now); recv recv_after
t3=$(now)
report pg_recvlogical ficus "$ROWS" "$events" "$t0" "$t1" "$t2" "$t3"
