#!/usr/bin/env bash
# The shop into Redis Streams, with a redis-server of its own; prints the orders' stream.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
source "$here/../../scripts/broker-example.sh"
port=$(free_port)
redis-server --bind 127.0.0.1 --port "$port" --save "" --appendonly yes --dir "$PG_WORK" >"$PG_WORK/redis.log" 2>&1 &
trap 'kill %1 2>/dev/null; as_pg "$PG_BIN/pg_ctl" -D "$PG_WORK/data" -m immediate stop >/dev/null 2>&1; rm -rf "$PG_WORK"' EXIT
sleep 0.5
shop_config "s/:6379/:$port/"
shop_run
echo "--- the stream shop:public.orders:" >&2
"$PEEK" redis "redis://127.0.0.1:$port" shop:public.orders
