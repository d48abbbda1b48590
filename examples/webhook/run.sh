#!/usr/bin/env bash
# The shop's order events into a webhook (receiver.py, which checks each signature).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
source "$here/../../scripts/broker-example.sh"
export SHOP_WEBHOOK_SECRET="whsec_$(python3 -c 'import base64, os; print(base64.b64encode(os.urandom(24)).decode())')"
port=$(free_port)
python3 "$here/receiver.py" "$port" >"$PG_WORK/received.txt" 2>&1 &
trap 'kill %1 2>/dev/null; as_pg "$PG_BIN/pg_ctl" -D "$PG_WORK/data" -m immediate stop >/dev/null 2>&1; rm -rf "$PG_WORK"' EXIT
sleep 0.5
shop_config "s/:8080/:$port/"
shop_run
sleep 0.2
echo "--- what the endpoint received:" >&2
cat "$PG_WORK/received.txt"
