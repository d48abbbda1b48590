#!/usr/bin/env bash
# Sink benchmark: the same N committed row changes (one event each) streamed by ficus into each
# sink, as events/s and as a ratio to the jsonl sink (fsync) measured in the same run — before and
# after the others, so that neither gets the warmer caches alone.
#
# Usage: benches/sinks.sh [EVENTS] [ROWS_PER_TXN]     (defaults 1000000, 1000)
# Brokers: a nats-server, a redis-server (appendonly, appendfsync everysec) and tansu (Kafka
# protocol, in memory) of its own on free ports; the machine's RabbitMQ (AMQP_URL, default
# guest@127.0.0.1:5672) with a durable queue bound to the exchange (deleted at the end); a webhook endpoint of its own
# (Python's http.server) in batch mode. A broker that is not there is left out, and said so.
set -euo pipefail
ROWS=${1:-1000000}; BATCH=${2:-1000}
source "$(dirname "$0")/../scripts/bench-common.sh"
(cd "$root" && cargo build --release --quiet --bin peek)
PEEK="$root/target/release/peek"
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; return 1; }
pids=()
trap 'kill "${pids[@]}" 2>/dev/null; rm -rf "$bench"; as_pg "$PG_BIN/pg_ctl" -D "$PG_WORK/data" -m immediate stop >/dev/null 2>&1; rm -rf "$PG_WORK"' EXIT

sql -d bench -c "create table orders (id bigserial primary key, customer_id int not null, status text not null,
  total numeric(12,2) not null, created_at timestamptz not null default now())"
cat > "$bench/mappings/orders.toml" <<'TOML'
[[event]]
name = "OrderPlaced"
table = "orders"
on = ["insert"]
key = "new.id"
data = { order_id = "new.id", customer_id = "new.customer_id", total = "new.total", created_at = "new.created_at" }
TOML

# One config a sink, each with a slot of its own on one publication.
sinks=(jsonl)
sink_toml() {  # NAME SETTINGS
  cat > "$bench/$1.toml" <<TOML
[source]
url = "postgres://postgres@127.0.0.1:$PGPORT/bench?sslmode=disable"
slot = "bench_$1"
mappings = ["mappings/*.toml"]
[[sink]]
name = "$1"
$2
TOML
}
sink_toml jsonl "type = \"jsonl\"
path = \"events.jsonl\""
if command -v tansu >/dev/null; then
  port=$(free_port)
  tansu broker --listener-url "tcp://127.0.0.1:$port" --advertised-listener-url "tcp://127.0.0.1:$port" \
    --storage-engine memory://tansu/ >"$bench/tansu.log" 2>&1 & pids+=($!)
  wait_port "$port" && sinks+=(kafka) && sink_toml kafka "type = \"kafka\"
brokers = \"127.0.0.1:$port\"
topic = \"orders\"
create_topics = true"
else echo "kafka: left out (no tansu)" >&2; fi
if command -v nats-server >/dev/null || [ -x /usr/sbin/nats-server ]; then
  port=$(free_port)
  PATH="$PATH:/usr/sbin" nats-server -a 127.0.0.1 -p "$port" -js -sd "$bench/nats" >"$bench/nats.log" 2>&1 & pids+=($!)
  wait_port "$port" && sinks+=(nats) && sink_toml nats "type = \"nats\"
url = \"nats://127.0.0.1:$port\"
subject = \"orders.{type}\"
[sink.stream]
name = \"ORDERS\"
create = true"
else echo "nats: left out (no nats-server)" >&2; fi
amqp_url=${AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}
exchange="ficus-bench-$$"
if "$PEEK" amqp-bind "$amqp_url" "$exchange" "$exchange" '#' 2>/dev/null; then
  trap 'kill "${pids[@]}" 2>/dev/null; "$PEEK" amqp-delete "$amqp_url" "$exchange" "$exchange"; rm -rf "$bench"; as_pg "$PG_BIN/pg_ctl" -D "$PG_WORK/data" -m immediate stop >/dev/null 2>&1; rm -rf "$PG_WORK"' EXIT
  sinks+=(amqp) && sink_toml amqp "type = \"amqp\"
url = \"$amqp_url\"
exchange = \"$exchange\""
else echo "amqp: left out (no RabbitMQ at $amqp_url)" >&2; fi
if command -v redis-server >/dev/null; then
  port=$(free_port)
  redis-server --bind 127.0.0.1 --port "$port" --save "" --appendonly yes --appendfsync everysec --dir "$bench" \
    >"$bench/redis.log" 2>&1 & pids+=($!)
  wait_port "$port" && sinks+=(redis) && sink_toml redis "type = \"redis\"
url = \"redis://127.0.0.1:$port\"
key = \"orders\""
else echo "redis: left out (no redis-server)" >&2; fi
port=$(free_port)
python3 - "$port" >"$bench/http.log" 2>&1 <<'PY' & pids+=($!)
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
class Hook(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_POST(self):
        self.rfile.read(int(self.headers["content-length"]))
        self.send_response(200); self.send_header("content-length", "0"); self.end_headers()
    def do_HEAD(self):
        self.send_response(200); self.send_header("content-length", "0"); self.end_headers()
    def log_message(self, *a): pass
ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Hook).serve_forever()
PY
wait_port "$port" && sinks+=(http) && sink_toml http "type = \"http\"
url = \"http://127.0.0.1:$port/events\"
mode = \"batch\"
batch_size = 500"

cd "$bench"
for s in "${sinks[@]}"; do FICUS_LOG=warn "$FICUS" run -c "$s.toml" --until-caught-up >/dev/null; done
cp jsonl.toml jsonl_after.toml && sed -i 's/bench_jsonl/bench_jsonl_after/; s/events.jsonl/events_after.jsonl/' jsonl_after.toml
FICUS_LOG=warn "$FICUS" run -c jsonl_after.toml --until-caught-up >/dev/null

sql -d bench -c "do \$\$ begin for i in 1..($ROWS/$BATCH) loop
  insert into orders(customer_id, status, total)
  select (random()*10000)::int, 'placed', (random()*1000)::numeric(12,2) from generate_series(1,$BATCH) g;
  commit; end loop; end \$\$;"

results="$bench/results"
: > "$results"
for s in "${sinks[@]}" jsonl_after; do
  t0=$(now)
  FICUS_LOG=warn "$FICUS" run -c "$s.toml" --until-caught-up >/dev/null 2>"$bench/$s.err" || { echo "$s failed:" >&2; cat "$bench/$s.err" >&2; continue; }
  t1=$(now)
  echo "$s $t0 $t1" >> "$results"
done
python3 - "$ROWS" "$results" <<'PY'
import sys
rows = int(sys.argv[1])
times = {}
for line in open(sys.argv[2]):
    name, t0, t1 = line.split()
    times[name] = float(t1) - float(t0)
jsonl = (rows / times["jsonl"] + rows / times["jsonl_after"]) / 2
print(f"{rows:,} events, one a row change; jsonl (fsync) {jsonl:,.0f} events/s "
      f"(before {rows / times['jsonl']:,.0f}, after {rows / times['jsonl_after']:,.0f})")
print("| sink | events/s | ratio to jsonl |")
print("| --- | --- | --- |")
for name, t in times.items():
    if name in ("jsonl", "jsonl_after"):
        continue
    print(f"| {name} | {rows / t:,.0f} | {rows / t / jsonl:.2f} |")
PY
