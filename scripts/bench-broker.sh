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
# TIDEWATCH_BENCH_BINARY (time another tidewatch binary, e.g. one built from
# an earlier commit, for an A/B run on one machine), TIDEWATCH_CACHE_DIR,
# TIDEWATCH_BENCH_PORT (broker port, default 19093).
set -euo pipefail
cd "$(dirname "$0")/.."
events=${1:-10000000}
port=${TIDEWATCH_BENCH_PORT:-19093}
source scripts/local-broker.sh
lscpu | grep -E '^(Model name|CPU\(s\)):' || true
cargo bench -p tidewatch --bench broker_drain --no-run -q
start_local_broker "$port"
TIDEWATCH_BENCH_KAFKA_BROKERS="127.0.0.1:$port" TIDEWATCH_BENCH_EVENTS="$events" \
  cargo bench -q -p tidewatch --bench broker_drain
