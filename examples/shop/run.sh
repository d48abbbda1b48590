#!/usr/bin/env bash
# Quickstart: starts a throwaway Postgres (wal_level=logical), applies the shop's
# schema (with a customer from before ficus), backfills the existing rows (which
# creates the slot), runs the workload, and prints the domain events ficus makes
# of it all; then replays order 1's history from the event store (ficus.db), and
# builds a read model (customers, orders, paid) from nothing but the replayed events;
# then remaps the archived row changes through a new version of a mapping. On the way, ficus
# verify proves the archive holds every change.
# Needs the Postgres server binaries (PG_BIN, else the
# newest under /usr/lib/postgresql). Cleans up after itself.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)

if [ -z "${FICUS:-}" ]; then
  (cd "$root" && cargo build --release --quiet --bin ficus --bin shop-read-model)
  FICUS="$root/target/release/ficus"
fi
READ_MODEL=${READ_MODEL:-$(dirname "$FICUS")/shop-read-model}
source "$root/scripts/pg-throwaway.sh"
rm -rf "$here/.ficus" "$here"/ficus.db*   # left by an interrupted run

sql -d postgres -c 'create database shop'
sql -d shop -f "$here/schema.sql"

export FICUS_SOURCE_URL="postgres://postgres@127.0.0.1:$PGPORT/shop?sslmode=disable"
export FICUS_LOG=${FICUS_LOG:-warn}
cd "$here"
"$FICUS" test >&2                   # the mappings' fixtures (mappings/tests/), no database
"$FICUS" catalog >&2                # the event catalog: open examples/shop/catalog/index.html
"$FICUS" check                      # the mappings against the live schema
echo "--- the rows that were there before ficus, as snapshot events:" >&2
"$FICUS" backfill                   # creates the publication and the slot, prints them
sql -d shop -f "$here/workload.sql" # the monolith at work
echo "--- domain events:" >&2
"$FICUS" run --until-caught-up      # prints them, one CloudEvent per line; stores them in ficus.db
echo "--- what ficus captured, compared with the source (ficus verify):" >&2
"$FICUS" verify                     # 0 differences: every change is in the archive
echo "--- order 1's history, replayed from the store:" >&2
"$FICUS" replay --to-sink stdout --subject 1 --type OrderPlaced --type OrderPaid --type OrderShipped
echo "--- a read model built only from the replayed events (examples/read-model):" >&2
model=$(mktemp -d)
"$FICUS" replay --to-sink stdout 2>/dev/null | "$READ_MODEL" "$model/read-model.db"
rm -rf "$model"
echo "--- month three: OrderShipped should carry the total. Version 2, remapped over all of history:" >&2
next=$(mktemp -d)
cp mappings/*.toml "$next/"
cat >> "$next/orders.toml" <<'TOML'

[[event]]
name    = "OrderShipped"
version = 2
table   = "public.orders"
on      = ["update"]
when    = "old.status == 'paid' && new.status == 'shipped'"
key     = "new.id"
data    = { order_id = "new.id", customer_id = "new.customer_id", total = "new.total" }
TOML
"$FICUS" remap --mappings "$next" --to-sink stdout --type OrderShipped
rm -rf "$next"
"$FICUS" teardown >&2
rm -rf "$here/.ficus" "$here"/ficus.db*   # the backfill's checkpoints and the store, of this throwaway run
