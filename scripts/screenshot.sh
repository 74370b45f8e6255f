#!/usr/bin/env bash
# Screenshots of Tidewatch's own pages over the demo, for a look without a
# browser at hand: runs `tidewatch demo --serve` on 127.0.0.1 and has
# headless Chromium (Debian: apt-get install chromium) capture the overview
# and the demo model's page.
#
#   scripts/screenshot.sh [output directory, default target/screenshots]
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-target/screenshots}
port=${TIDEWATCH_SCREENSHOT_PORT:-18180}
chromium=$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)
[ -n "$chromium" ] || { echo "screenshot.sh: no chromium on PATH (apt-get install chromium)" >&2; exit 1; }
mkdir -p "$out"
cargo build --release -q -p tidewatch
log=$(mktemp)
target/release/tidewatch demo --workdir target/screenshot-demo --serve --listen "127.0.0.1:$port" >"$log" 2>&1 &
pid=$!
trap 'kill "$pid" 2>/dev/null || true; rm -f "$log"' EXIT
for _ in $(seq 1 240); do
  grep -q "Tidewatch pages:" "$log" && break
  kill -0 "$pid" 2>/dev/null || { cat "$log" >&2; exit 1; }
  sleep 0.5
done
grep -q "Tidewatch pages:" "$log" || { cat "$log" >&2; echo "screenshot.sh: the demo did not start serving" >&2; exit 1; }
capture() {
  "$chromium" --headless --no-sandbox --disable-gpu --hide-scrollbars --window-size=1400,2600 \
    --virtual-time-budget=10000 --screenshot="$out/$1.png" "http://127.0.0.1:$port$2" >/dev/null 2>&1
}
capture overview /
capture model /models/churn
echo "screenshots: $out/overview.png $out/model.png"
