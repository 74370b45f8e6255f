#!/usr/bin/env bash
# Tidewatch's test command: installs and starts what the integration tests
# need (ClickHouse, a Kafka-protocol broker, an SMTP server, Chromium,
# MLServer), all on 127.0.0.1, runs the whole test suite against them, and
# stops them again.
#
#   scripts/test.sh [extra cargo test arguments]
#
# Needs only the Rust toolchain and root (or sudo) for apt-get on a fresh
# Debian machine. The broker (nisshi, a Kafka-compatible broker written in
# Rust) is built once with cargo into a cache outside the clone (about 11
# minutes on 2 cores the first time) and reused afterwards. The SMTP server
# is Python's aiosmtpd (scripts/smtp_server.py) in a virtualenv in the same
# cache, with STARTTLS and implicit TLS on the test certificate of
# fixtures/tls and AUTH required. MLServer (with its scikit-learn runtime)
# is installed from PyPI into another virtualenv of the cache, in the
# background while the rest installs, and serves the model that
# scripts/mlserver_model.py trains. MLflow (client and server) is installed
# the same way into a third virtualenv: the registry tests drive Tidewatch
# with its client (scripts/mlflow_client.py).
#
# Environment:
#   TIDEWATCH_CACHE_DIR   where the broker binary is cached (default: ~/.cache/tidewatch)
#   TIDEWATCH_TEST_PORTS  base port (default 18000): ClickHouse HTTP +123, TCP +900, broker +92,
#                         SMTP with STARTTLS +25, SMTP over TLS +465, MLServer HTTP +80, gRPC +81,
#                         metrics +82
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"

cache_dir=${TIDEWATCH_CACHE_DIR:-$HOME/.cache/tidewatch}
base=${TIDEWATCH_TEST_PORTS:-18000}
clickhouse_http=$((base + 123))
clickhouse_tcp=$((base + 900))
clickhouse_interserver=$((base + 9))
broker_port=$((base + 92))
smtp_port=$((base + 25))
smtps_port=$((base + 465))
aiosmtpd_version=1.4.6
smtp_venv="$cache_dir/smtp-venv-$aiosmtpd_version"
mlserver_version=1.7.1
sklearn_version=1.9.1
mlserver_venv="$cache_dir/mlserver-venv-$mlserver_version"
mlflow_version=3.17.2
mlflow_venv="$cache_dir/mlflow-venv-$mlflow_version"
# The Python examples' packages (examples/python-NAME/requirements.txt), each
# in a virtualenv named by the file's hash: a changed pin installs anew.
example_venv() {
  printf '%s/%s-venv-%s' "$cache_dir" "$1" \
    "$(sha256sum "$here/examples/python-$1/requirements.txt" | cut -c1-12)"
}
trainer_venv=$(example_venv trainer)
producer_venv=$(example_venv producer)
mlserver_http=$((base + 80))
mlserver_grpc=$((base + 81))
mlserver_metrics=$((base + 82))
nisshi_version=0.8.1
nisshi="$cache_dir/nisshi-$nisshi_version/bin/nisshi"

log() { printf '[test.sh] %s\n' "$*" >&2; }
fail() { printf '[test.sh] FAILED: %s\n' "$*" >&2; exit 1; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"
  elif command -v sudo >/dev/null 2>&1; then sudo "$@"
  else fail "need root or sudo to run: $*"; fi
}

# --- Kafka-protocol broker, built in the background -----------------------
# The first run builds nisshi with cargo (CPU-bound, ~11 minutes on 2 cores)
# while the packages below are downloaded and installed (network-bound).
broker_build_log="$cache_dir/nisshi-$nisshi_version.build.log"
broker_build_pid=""
mlserver_install_pid=""
mlflow_install_pid=""
trainer_install_pid=""
producer_install_pid=""
# The background jobs are not left running if an install below fails.
trap 'kill ${broker_build_pid:-} ${mlserver_install_pid:-} ${mlflow_install_pid:-} ${trainer_install_pid:-} ${producer_install_pid:-} 2>/dev/null || true' EXIT
if [ ! -x "$nisshi" ]; then
  log "building the nisshi broker $nisshi_version into $cache_dir in the background (first run only, ~11 minutes)"
  mkdir -p "$cache_dir"
  cargo install nisshi --version "$nisshi_version" --locked --ignore-rust-version \
    --no-default-features --features dynostore --root "$cache_dir/nisshi-$nisshi_version" \
    >"$broker_build_log" 2>&1 &
  broker_build_pid=$!
fi
wait_for_broker_build() {
  [ -n "$broker_build_pid" ] || fail "the broker binary $nisshi is missing"
  log "waiting for the broker build"
  if ! wait "$broker_build_pid"; then
    tail -30 "$broker_build_log" >&2 || true
    fail "building the nisshi broker failed (log: $broker_build_log)"
  fi
  [ -x "$nisshi" ] || fail "the broker build finished without $nisshi"
}

# --- Python, for the SMTP server and MLServer --------------------------------
ensure_python() {
  if ! command -v python3 >/dev/null 2>&1 || ! python3 -c 'import ensurepip' 2>/dev/null; then
    log "installing python3 and python3-venv from Debian's packages (for the SMTP server and MLServer)"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3 python3-venv >/dev/null \
      || fail "apt-get install python3 python3-venv failed"
  fi
}

# --- MLServer, installed in the background ------------------------------------
mlserver_install_log="$cache_dir/mlserver-$mlserver_version.install.log"
if [ ! -x "$mlserver_venv/bin/mlserver" ]; then
  ensure_python
  log "installing MLServer $mlserver_version into $mlserver_venv in the background"
  mkdir -p "$cache_dir"
  rm -rf "$mlserver_venv"
  (python3 -m venv "$mlserver_venv" \
    && "$mlserver_venv/bin/pip" install -q "mlserver==$mlserver_version" "mlserver-sklearn==$mlserver_version" \
      "scikit-learn==$sklearn_version") >"$mlserver_install_log" 2>&1 &
  mlserver_install_pid=$!
fi

# --- MLflow, installed in the background ---------------------------------------
mlflow_install_log="$cache_dir/mlflow-$mlflow_version.install.log"
if [ ! -x "$mlflow_venv/bin/mlflow" ]; then
  ensure_python
  log "installing MLflow $mlflow_version into $mlflow_venv in the background"
  mkdir -p "$cache_dir"
  rm -rf "$mlflow_venv"
  (python3 -m venv "$mlflow_venv" && "$mlflow_venv/bin/pip" install -q "mlflow==$mlflow_version") \
    >"$mlflow_install_log" 2>&1 &
  mlflow_install_pid=$!
fi

# --- The Python examples' packages, installed in the background ------------
# start_example_install NAME: sets started_pid to the background install's
# pid, or to nothing when the virtualenv is already complete.
start_example_install() {
  local venv
  started_pid=""
  venv=$(example_venv "$1")
  if [ ! -x "$venv/bin/python" ] || [ ! -f "$venv/.installed" ]; then
    ensure_python
    log "installing the Python $1 example's packages into $venv in the background"
    mkdir -p "$cache_dir"
    rm -rf "$venv"
    (python3 -m venv "$venv" && "$venv/bin/pip" install -q -r "$here/examples/python-$1/requirements.txt" \
      && touch "$venv/.installed") >"$venv.install.log" 2>&1 &
    started_pid=$!
  fi
}
start_example_install trainer
trainer_install_pid=$started_pid
start_example_install producer
producer_install_pid=$started_pid

# --- ClickHouse -----------------------------------------------------------
if ! command -v clickhouse-server >/dev/null 2>&1; then
  log "installing clickhouse-server from Debian's packages"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q clickhouse-server clickhouse-client >/dev/null \
    || fail "apt-get install clickhouse-server failed"
fi

# --- Chromium, for the browser test of Tidewatch's pages --------------------
chromium_bin=$(command -v chromium || true)
if [ -z "$chromium_bin" ]; then
  log "installing chromium from Debian's packages"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null \
    || fail "apt-get install chromium failed"
  chromium_bin=$(command -v chromium) || fail "chromium is not on PATH after installing it"
fi

# --- Kafka-protocol broker ------------------------------------------------
if [ -n "$broker_build_pid" ] || [ ! -x "$nisshi" ]; then wait_for_broker_build; fi

# --- SMTP server ------------------------------------------------------------
if [ ! -x "$smtp_venv/bin/python" ] || ! "$smtp_venv/bin/python" -c 'import aiosmtpd' 2>/dev/null; then
  log "installing aiosmtpd $aiosmtpd_version into $smtp_venv"
  ensure_python
  rm -rf "$smtp_venv"
  if ! python3 -m venv "$smtp_venv" 2>/dev/null; then
    # Debian's python3 needs python3-venv for ensurepip.
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-venv >/dev/null \
      || fail "apt-get install python3-venv failed"
    rm -rf "$smtp_venv"
    python3 -m venv "$smtp_venv" || fail "python3 -m venv failed"
  fi
  "$smtp_venv/bin/pip" install -q "aiosmtpd==$aiosmtpd_version" || fail "pip install aiosmtpd failed"
fi

# --- MLServer and MLflow, installed in the background -------------------------
# wait_for_install NAME PID LOG EXECUTABLE
wait_for_install() {
  if [ -n "$2" ]; then
    log "waiting for the $1 install"
    if ! wait "$2"; then
      tail -30 "$3" >&2 || true
      fail "installing $1 failed (log: $3)"
    fi
  fi
  [ -x "$4" ] || fail "$1 is missing: no $4"
}
wait_for_install MLServer "$mlserver_install_pid" "$mlserver_install_log" "$mlserver_venv/bin/mlserver"
wait_for_install MLflow "$mlflow_install_pid" "$mlflow_install_log" "$mlflow_venv/bin/mlflow"
for example in trainer producer; do
  venv=$(example_venv "$example")
  pid_var="${example}_install_pid"
  wait_for_install "Python $example example" "${!pid_var}" "$venv.install.log" "$venv/bin/python"
  [ -f "$venv/.installed" ] || fail "the Python $example example's packages are not installed (log: $venv.install.log)"
done

run_dir=$(mktemp -d "${TMPDIR:-/tmp}/tidewatch-test.XXXXXX")
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$run_dir"
}
trap cleanup EXIT

# A plain HTTP GET over bash's /dev/tcp, so the script needs no curl.
http_get() {
  exec 3<>"/dev/tcp/127.0.0.1/$1" || return 1
  printf 'GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' "$2" >&3
  cat <&3
  exec 3>&-
}

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for port in "$clickhouse_http" "$clickhouse_tcp" "$clickhouse_interserver" "$broker_port" "$smtp_port" "$smtps_port" \
  "$mlserver_http" "$mlserver_grpc" "$mlserver_metrics"; do
  port_free "$port" || fail "port $port on 127.0.0.1 is taken; set TIDEWATCH_TEST_PORTS to another base"
done

log "starting ClickHouse on 127.0.0.1:$clickhouse_http"
mkdir -p "$run_dir/clickhouse/tmp" "$run_dir/clickhouse/user_files" "$run_dir/clickhouse/format_schemas"
clickhouse-server --config-file=/etc/clickhouse-server/config.xml -- \
  --path="$run_dir/clickhouse/" --tmp_path="$run_dir/clickhouse/tmp/" \
  --user_files_path="$run_dir/clickhouse/user_files/" --format_schema_path="$run_dir/clickhouse/format_schemas/" \
  --logger.log="$run_dir/clickhouse/server.log" --logger.errorlog="$run_dir/clickhouse/error.log" \
  --listen_host=127.0.0.1 --http_port="$clickhouse_http" --tcp_port="$clickhouse_tcp" \
  --interserver_http_port="$clickhouse_interserver" \
  >"$run_dir/clickhouse.out" 2>&1 &
pids+=($!)

log "starting the broker on 127.0.0.1:$broker_port"
"$nisshi" broker --listener-url "tcp://127.0.0.1:$broker_port" \
  --advertised-listener-url "tcp://127.0.0.1:$broker_port" --storage-engine memory://nisshi/ \
  >"$run_dir/broker.log" 2>&1 &
pids+=($!)

log "starting the SMTP server on 127.0.0.1:$smtp_port (STARTTLS) and :$smtps_port (TLS)"
smtp_user=tidewatch
smtp_password="test-$RANDOM-$RANDOM"
"$smtp_venv/bin/python" scripts/smtp_server.py --maildir "$run_dir/mail" \
  --starttls-port "$smtp_port" --tls-port "$smtps_port" --user "$smtp_user" --password "$smtp_password" \
  --cert fixtures/tls/server.pem --key fixtures/tls/server.key >"$run_dir/smtp.log" 2>&1 &
pids+=($!)

log "starting MLServer on 127.0.0.1:$mlserver_http"
"$mlserver_venv/bin/python" scripts/mlserver_model.py "$run_dir/mlserver" "$mlserver_http" "$mlserver_grpc" "$mlserver_metrics" \
  || fail "training the MLServer test model failed"
(cd "$run_dir/mlserver" && exec "$mlserver_venv/bin/mlserver" start .) >"$run_dir/mlserver.log" 2>&1 &
pids+=($!)

ready=""
for _ in $(seq 1 100); do
  if http_get "$clickhouse_http" "/?query=SELECT%201" 2>/dev/null | tail -n 1 | grep -qx '1'; then ready=yes; break; fi
  sleep 0.2
done
[ -n "$ready" ] || { tail -20 "$run_dir/clickhouse/error.log" >&2 || true; fail "ClickHouse did not become ready"; }

ready=""
for _ in $(seq 1 60); do
  if timeout 2 "$nisshi" topic list --broker "tcp://127.0.0.1:$broker_port" >/dev/null 2>&1; then ready=yes; break; fi
  sleep 0.5
done
[ -n "$ready" ] || { tail -20 "$run_dir/broker.log" >&2 || true; fail "the broker did not become ready"; }

ready=""
for _ in $(seq 1 50); do
  if grep -q '^smtp: ' "$run_dir/smtp.log" 2>/dev/null; then ready=yes; break; fi
  sleep 0.2
done
[ -n "$ready" ] || { tail -20 "$run_dir/smtp.log" >&2 || true; fail "the SMTP server did not become ready"; }

ready=""
for _ in $(seq 1 150); do
  if http_get "$mlserver_http" /v2/models/gw/ready 2>/dev/null | head -1 | grep -q ' 200'; then ready=yes; break; fi
  sleep 0.2
done
[ -n "$ready" ] || { tail -20 "$run_dir/mlserver.log" >&2 || true; fail "MLServer did not become ready"; }

export TIDEWATCH_TEST_CHROMIUM="$chromium_bin"
export TIDEWATCH_TEST_MLSERVER_URL="http://127.0.0.1:$mlserver_http"
export TIDEWATCH_TEST_MLSERVER_MODELS="$run_dir/mlserver"
export TIDEWATCH_TEST_MLFLOW_PYTHON="$mlflow_venv/bin/python"
# MLflow's usage telemetry off in every client and server the tests start:
# it would call out of the machine, and its thread races the client's
# reads of os.environ (a KeyError on _MLFLOW_TELEMETRY_SESSION_ID, seen).
export MLFLOW_DISABLE_TELEMETRY=true
export TIDEWATCH_TEST_TRAINER_PYTHON="$trainer_venv/bin/python"
export TIDEWATCH_TEST_PRODUCER_PYTHON="$producer_venv/bin/python"
export TIDEWATCH_TEST_SMTP_STARTTLS="127.0.0.1:$smtp_port"
export TIDEWATCH_TEST_SMTP_TLS="127.0.0.1:$smtps_port"
export TIDEWATCH_TEST_SMTP_USER="$smtp_user"
export TIDEWATCH_TEST_SMTP_PASSWORD="$smtp_password"
export TIDEWATCH_TEST_SMTP_MAILDIR="$run_dir/mail"
export TIDEWATCH_TEST_CLICKHOUSE_URL="http://127.0.0.1:$clickhouse_http"
export TIDEWATCH_TEST_KAFKA_BROKERS="127.0.0.1:$broker_port"
# For tests that start (and stop) a broker of their own.
export TIDEWATCH_TEST_NISSHI="$nisshi"
set +e
if [ "$#" -eq 0 ]; then
  # The alert-outage test spends most of its four minutes waiting for the
  # channels to come back: it runs beside the rest of the suite, from its
  # compiled binary (cargo holds its build lock while it runs tests).
  long_test=a_drift_episode_alerts_once_resolves_once_and_survives_a_channel_outage_and_a_kill
  log "building the tests"
  cargo test --workspace --locked --no-run --message-format=json-render-diagnostics \
    >"$run_dir/build.json" || fail "building the tests failed"
  alerts_binary=$(grep -o '"executable":"[^"]*/alerts_pipeline-[^"]*"' "$run_dir/build.json" \
    | head -1 | sed 's/^"executable":"//; s/"$//')
  [ -x "$alerts_binary" ] || fail "no alerts_pipeline test binary in the build output"
  log "services ready; running $long_test beside cargo test"
  (cd tidewatch && "$alerts_binary" --exact "$long_test") >"$run_dir/long-test.log" 2>&1 &
  long_pid=$!
  cargo test --workspace --locked --no-fail-fast -- --skip "$long_test" 2>&1 | tee "$run_dir/cargo-test.log"
  status=${PIPESTATUS[0]}
  wait "$long_pid"
  long_status=$?
  cat "$run_dir/long-test.log" | tee -a "$run_dir/cargo-test.log"
  [ "$long_status" -eq 0 ] || status=$long_status
else
  log "services ready; running cargo test"
  cargo test --locked --no-fail-fast "$@" 2>&1 | tee "$run_dir/cargo-test.log"
  status=${PIPESTATUS[0]}
fi
set -e
# One closing line over every test binary (cargo prints one per binary).
passed=$(grep -Eo '^test result: .* ([0-9]+) passed' "$run_dir/cargo-test.log" | grep -Eo '[0-9]+ passed' | awk '{s += $1} END {print s + 0}')
failed=$(grep -Eo '[0-9]+ failed;' "$run_dir/cargo-test.log" | awk '{s += $1} END {print s + 0}')
echo "tests: $passed passed, $failed failed"
exit "$status"
