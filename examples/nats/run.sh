#!/usr/bin/env bash
# The shop into NATS JetStream, with a nats-server of its own; prints the stream.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
source "$here/../../scripts/broker-example.sh"
port=$(free_port)
nats-server -a 127.0.0.1 -p "$port" -js -sd "$PG_WORK/nats" >"$PG_WORK/nats.log" 2>&1 &
trap 'kill %1 2>/dev/null; as_pg "$PG_BIN/pg_ctl" -D "$PG_WORK/data" -m immediate stop >/dev/null 2>&1; rm -rf "$PG_WORK"' EXIT
sleep 0.5
shop_config "s/:4222/:$port/"
shop_run
echo "--- the stream SHOP:" >&2
"$PEEK" nats "nats://127.0.0.1:$port" SHOP
