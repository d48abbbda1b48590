#!/usr/bin/env bash
# The shop into RabbitMQ (the one on 127.0.0.1:5672, guest/guest, or AMQP_URL): binds a queue of
# its own to the exchange "shop" for public.orders.*, runs the shop, and takes the queue's
# messages.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
source "$here/../../scripts/broker-example.sh"
url=${AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}
queue="shop-orders-$$"
"$PEEK" amqp-bind "$url" shop "$queue" 'public.orders.*'
shop_config "s|amqp://guest:guest@127.0.0.1:5672/%2f|$url|"
shop_run
echo "--- the queue $queue (bound to shop with public.orders.*):" >&2
"$PEEK" amqp "$url" "$queue"
