#!/usr/bin/env bash
# Load test of the model gateway (tidewatch/benches/gateway_load.rs): latency
# at a fixed request rate on 127.0.0.1 with the inference log writing to a
# real broker, with and without a shadow challenger, then the inference
# log's throughput into the broker. Starts the nisshi broker that
# scripts/test.sh built (run that once first) on 127.0.0.1, stops it after.
#
#   scripts/bench-serving.sh [runs]     (default 3; prints the CPU, then every run)
#
# Each run measures twice: "shared", every process where the scheduler puts
# it; and "pinned", the gateway alone on the last CPU, the load generator and
# the broker on the others (taskset), which shows the gateway's own latency
# without the broker's and the load generator's bursts on its cores.
#
# Environment: TIDEWATCH_BENCH_RATE (requests/s, default 5000),
# TIDEWATCH_BENCH_SECONDS (per scenario, default 10), TIDEWATCH_BENCH_EVENTS
# (logging, default 500000), TIDEWATCH_CACHE_DIR, TIDEWATCH_BENCH_PORT
# (broker port, default 19092).
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-3}
port=${TIDEWATCH_BENCH_PORT:-19092}
source scripts/local-broker.sh
lscpu | grep -E '^(Model name|CPU\(s\)):' || true
cargo bench -p tidewatch --bench gateway_load --no-run -q
start_local_broker "$port"
cpus=$(nproc)
last=$((cpus - 1))
others="0-$((last - 1))"
[ "$last" -ge 1 ] || { echo "pinning needs 2 CPUs or more" >&2; exit 1; }
for run in $(seq 1 "$runs"); do
  echo "run $run, shared:"
  taskset -a -cp "0-$last" "$broker" >/dev/null
  TIDEWATCH_BENCH_KAFKA_BROKERS="127.0.0.1:$port" cargo bench -q -p tidewatch --bench gateway_load 2>/dev/null \
    | grep -E '^(gateway|runtime|inference log)'
  echo "run $run, pinned (gateway on CPU $last; load generator and broker on CPUs $others):"
  taskset -a -cp "$others" "$broker" >/dev/null
  TIDEWATCH_BENCH_KAFKA_BROKERS="127.0.0.1:$port" TIDEWATCH_BENCH_GATEWAY_CPUS="$last" \
    taskset -c "$others" cargo bench -q -p tidewatch --bench gateway_load 2>/dev/null \
    | grep -E '^gateway'
done
