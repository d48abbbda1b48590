# Sourced by the broker examples' run.sh: the shop (examples/shop) streamed into a broker.
# Builds ficus and peek, starts a throwaway Postgres with the shop's schema, and defines
#   shop_config SED...             the example's ficus.toml in $work, edited by the sed
#                                  expressions given (a broker's port, say)
#   shop_run                       check, first start (backfills), the workload, catch up
#   free_port                      a free TCP port on 127.0.0.1
# The calling script sets $here (its directory) first.
root=$(cd "$here/../.." && pwd)
if [ -z "${FICUS:-}" ]; then
  (cd "$root" && cargo build --release --quiet --bin ficus --bin peek)
  FICUS="$root/target/release/ficus"
fi
PEEK=${PEEK:-$(dirname "$FICUS")/peek}
source "$root/scripts/pg-throwaway.sh"
sql -d postgres -c 'create database shop'
sql -d shop -f "$root/examples/shop/schema.sql"
export FICUS_SOURCE_URL="postgres://postgres@127.0.0.1:$PGPORT/shop?sslmode=disable"
export FICUS_LOG=${FICUS_LOG:-warn}
work="$PG_WORK/example"
mkdir -p "$work"

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

shop_config() {
  local edits=(-e "s|\.\./shop/mappings|$root/examples/shop/mappings|")
  for e in "$@"; do edits+=(-e "$e"); done
  sed "${edits[@]}" "$here/ficus.toml" > "$work/ficus.toml"
}

shop_run() {
  (cd "$work" && "$FICUS" check)
  (cd "$work" && "$FICUS" run --until-caught-up)   # the first start backfills the customers
  sql -d shop -f "$root/examples/shop/workload.sql"
  (cd "$work" && "$FICUS" run --until-caught-up)
}
