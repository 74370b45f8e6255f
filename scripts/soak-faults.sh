#!/usr/bin/env bash
# Runs the fault suite (tidewatch/tests/faults.rs) several times in a row,
# each run with its own seed for the random schedules (kill times, the
# rebalance storm), and prints one line per run and a total.
#
#   scripts/soak-faults.sh [runs]      (default 5)
#
# Each run goes through scripts/test.sh, which installs and starts the
# services. TIDEWATCH_SOAK_SEED sets the first seed (the others follow it);
# a failing run's seed replays it: TIDEWATCH_TEST_SEED=<seed> scripts/test.sh -p tidewatch --test faults
set -uo pipefail
cd "$(dirname "$0")/.."
runs=${1:-5}
seed=${TIDEWATCH_SOAK_SEED:-$(od -An -N4 -tu4 /dev/urandom | tr -d ' ')}
logs=$(mktemp -d "${TMPDIR:-/tmp}/tidewatch-soak.XXXXXX")
failed_runs=0
for run in $(seq 1 "$runs"); do
  run_seed=$((seed + run - 1))
  started=$(date +%s)
  TIDEWATCH_TEST_SEED=$run_seed scripts/test.sh -p tidewatch --test faults -- --nocapture \
    >"$logs/run-$run.log" 2>&1
  status=$?
  line=$(grep -E '^tests: ' "$logs/run-$run.log" | tail -1)
  echo "soak run $run of $runs (seed $run_seed): exit $status, ${line:-no closing line}, $(( $(date +%s) - started )) s"
  [ "$status" -eq 0 ] || failed_runs=$((failed_runs + 1))
done
echo "soak: $((runs - failed_runs)) passed, $failed_runs failed (logs in $logs)"
[ "$failed_runs" -eq 0 ]
