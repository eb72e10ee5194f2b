#!/usr/bin/env bash
# The test command (README, .ci/run): makes sure RabbitMQ answers, then runs every test of the
# workspace against it and prints the totals. Extra arguments go to `cargo test` (e.g. a filter).
set -euo pipefail
cd "$(dirname "$0")/.."
deploy/ensure-rabbitmq.sh
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
cargo test --workspace --locked "$@" 2>&1 | tee "$log" || status=$?
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "%d passed, %d failed\n", p, f }' "$log"
exit "$status"
