# Sourced by the benchmark scripts: the nisshi broker that scripts/test.sh
# built (run that once first), started on 127.0.0.1 and stopped on exit.
#
#   start_local_broker PORT     sets $broker to its pid, returns once it answers
cache_dir=${TIDEWATCH_CACHE_DIR:-$HOME/.cache/tidewatch}
nisshi="$cache_dir/nisshi-0.8.1/bin/nisshi"

start_local_broker() {
  local port=$1
  [ -x "$nisshi" ] || { echo "no broker at $nisshi: run scripts/test.sh once, which builds it" >&2; exit 1; }
  broker_log=$(mktemp)
  "$nisshi" broker --listener-url "tcp://127.0.0.1:$port" --advertised-listener-url "tcp://127.0.0.1:$port" \
    --storage-engine memory://nisshi/ >"$broker_log" 2>&1 &
  broker=$!
  trap 'kill $broker 2>/dev/null || true; wait $broker 2>/dev/null || true; rm -f "$broker_log"' EXIT
  for _ in $(seq 1 60); do
    timeout 2 "$nisshi" topic list --broker "tcp://127.0.0.1:$port" >/dev/null 2>&1 && return 0
    sleep 0.5
  done
  echo "the broker did not answer on 127.0.0.1:$port (log: $broker_log)" >&2
  exit 1
}
