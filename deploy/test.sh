#!/usr/bin/env bash
# The test command (README, .ci/run): makes sure RabbitMQ, Redis and PostgreSQL answer (starting
# them, installing Debian's packages if missing), then runs every test of the workspace against
# them and prints the totals. Extra arguments go to `cargo test` (e.g. a filter). Each test makes
# its own queues, Redis keys and PostgreSQL schema, and removes them.
set -euo pipefail
cd "$(dirname "$0")/.."
deploy/ensure-rabbitmq.sh
deploy/ensure-redis.sh
export TEST_DATABASE_URL=${TEST_DATABASE_URL:-postgres://tg_dispatch:tg_dispatch@127.0.0.1:5432/tg_dispatch}
DATABASE_URL=$TEST_DATABASE_URL deploy/ensure-postgres.sh
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
cargo test --workspace --locked "$@" 2>&1 | tee "$log" || status=$?
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "%d passed, %d failed\n", p, f }' "$log"
exit "$status"
