#!/usr/bin/env bash
# The shop into Kafka, with a Kafka-protocol broker of its own (tansu: cargo install tansu@0.6.0
# --locked --features dynostore); prints both topics.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
source "$here/../../scripts/broker-example.sh"
port=$(free_port)
tansu broker --listener-url "tcp://127.0.0.1:$port" --advertised-listener-url "tcp://127.0.0.1:$port" \
  --storage-engine memory://tansu/ >"$PG_WORK/tansu.log" 2>&1 &
trap 'kill %1 2>/dev/null; as_pg "$PG_BIN/pg_ctl" -D "$PG_WORK/data" -m immediate stop >/dev/null 2>&1; rm -rf "$PG_WORK"' EXIT
sleep 0.5
shop_config "s/:9092/:$port/"
shop_run
for topic in shop.orders shop.customers; do
  echo "--- the topic $topic:" >&2
  "$PEEK" kafka "127.0.0.1:$port" "$topic"
done
