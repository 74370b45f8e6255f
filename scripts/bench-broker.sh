#!/usr/bin/env bash
# From the broker to the store (tidewatch/benches/broker_drain.rs): a bare
# rdkafka consumer and `tidewatch run` (one instance, then two in one
# group) drain the same topic of prediction events on the same broker; prints
# each rate and tidewatch's share of the bare rate. Starts the nisshi broker
# that scripts/test.sh built (run that once first) on 127.0.0.1, stops it
# after.
#
#   scripts/bench-broker.sh [events]     (default 10000000; prints the CPU first)
#
# Environment: TIDEWATCH_BENCH_ENCODING (json, the default, or protobuf),
# TIDEWATCH_CACHE_DIR, TIDEWATCH_BENCH_PORT (broker port, default 19093).
set -euo pipefail
cd "$(dirname "$0")/.."
events=${1:-10000000}
cache_dir=${TIDEWATCH_CACHE_DIR:-$HOME/.cache/tidewatch}
nisshi="$cache_dir/nisshi-0.8.1/bin/nisshi"
port=${TIDEWATCH_BENCH_PORT:-19093}
[ -x "$nisshi" ] || { echo "no broker at $nisshi: run scripts/test.sh once, which builds it" >&2; exit 1; }
lscpu | grep -E '^(Model name|CPU\(s\)):' || true
cargo bench -p tidewatch --bench broker_drain --no-run -q
log=$(mktemp)
"$nisshi" broker --listener-url "tcp://127.0.0.1:$port" --advertised-listener-url "tcp://127.0.0.1:$port" \
  --storage-engine memory://nisshi/ >"$log" 2>&1 &
broker=$!
trap 'kill $broker 2>/dev/null || true; wait $broker 2>/dev/null || true; rm -f "$log"' EXIT
for _ in $(seq 1 60); do
  timeout 2 "$nisshi" topic list --broker "tcp://127.0.0.1:$port" >/dev/null 2>&1 && break
  sleep 0.5
done
TIDEWATCH_BENCH_KAFKA_BROKERS="127.0.0.1:$port" TIDEWATCH_BENCH_EVENTS="$events" \
  cargo bench -q -p tidewatch --bench broker_drain
