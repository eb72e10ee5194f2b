#!/usr/bin/env bash
# Starts tg-dispatch locally and shows a message being delivered and recorded:
#   RabbitMQ, Redis and PostgreSQL (ensured: started, installed if missing), the Telegram sandbox
#   (unless TELEGRAM_BOT_TOKEN is set), the dispatcher and N workers (default 2). Ctrl-C stops them all.
# Usage: deploy/start.sh [--workers N] [--release]
set -euo pipefail
cd "$(dirname "$0")/.."

workers=2
profile=debug
while [[ $# -gt 0 ]]; do
  case $1 in
    --workers) workers=${2:?--workers needs a number}; shift 2 ;;
    --workers=*) workers=${1#*=}; shift ;;
    --release) profile=release; shift ;;
    -h|--help) sed -n '2,5p' "$0"; exit 0 ;;
    *) echo "start.sh: unknown argument $1 (try --help)" >&2; exit 2 ;;
  esac
done
[[ $workers =~ ^[1-9][0-9]*$ ]] || { echo "start.sh: --workers must be a positive number" >&2; exit 2; }

deploy/ensure-rabbitmq.sh
echo "building ($profile)…"
if [[ $profile == release ]]; then cargo build --release --locked --bins; else cargo build --locked --bins; fi
bin=target/$profile

export DISPATCHER_LISTEN=${DISPATCHER_LISTEN:-127.0.0.1:8080}
pids=()
stop_all() {
  trap - INT TERM EXIT
  if [[ ${#pids[@]} -gt 0 ]]; then
    echo "stopping…"
    kill -TERM "${pids[@]}" 2>/dev/null || true
    wait "${pids[@]}" 2>/dev/null || true
  fi
}
trap stop_all INT TERM EXIT

if [[ -z ${TELEGRAM_BOT_TOKEN:-} && -z ${TELEGRAM_BOTS:-} ]]; then
  export SANDBOX_LISTEN=${SANDBOX_LISTEN:-127.0.0.1:8081}
  export TELEGRAM_BOT_TOKEN=123456:SANDBOX-demo-token
  export TELEGRAM_API_URL=http://$SANDBOX_LISTEN
  "$bin/tg-sandbox" & pids+=($!)
  echo "no TELEGRAM_BOT_TOKEN: using the sandbox at $TELEGRAM_API_URL"
fi

# Budgets, cancellations and once-per-id claims are shared through Redis; delivery records are
# kept in PostgreSQL. Both are ensured like RabbitMQ (started, installed if missing).
deploy/ensure-redis.sh
export REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379}
export DATABASE_URL=${DATABASE_URL:-postgres://tg_dispatch:tg_dispatch@127.0.0.1:5432/tg_dispatch}
deploy/ensure-postgres.sh
echo "budgets shared through Redis; records kept in PostgreSQL"

"$bin/tg-dispatcher" serve & pids+=($!)
for i in $(seq 1 "$workers"); do
  # Each worker gets its own admin port: 9091, 9092, …
  WORKER_NAME=worker-$i WORKER_ADMIN_LISTEN=127.0.0.1:$((9090 + i)) "$bin/tg-worker" & pids+=($!)
done

api=http://$DISPATCHER_LISTEN
for _ in $(seq 1 100); do
  curl -fsS "$api/readyz" >/dev/null 2>&1 && break
  sleep 0.2
done
curl -fsS "$api/readyz" >/dev/null || { echo "the dispatcher did not become ready" >&2; exit 1; }

if [[ -n ${SANDBOX_LISTEN:-} ]]; then
  echo "sending a demo message to chat 42…"
  curl -fsS -X POST "$api/v1/messages" -H 'content-type: application/json' \
    -d '{"method":"sendMessage","params":{"chat_id":42,"text":"Hello from tg-dispatch"}}'
  echo
  for _ in $(seq 1 50); do
    got=$(curl -fsS "http://$SANDBOX_LISTEN/sandbox/messages?chat_id=42" || true)
    [[ $got == *'Hello from tg-dispatch'* ]] && break
    sleep 0.2
  done
  echo "the sandbox received: $got"
  for _ in $(seq 1 50); do
    record=$(curl -fsS "$api/v1/messages?chat_id=42&limit=1" || true)
    [[ $record == *'"delivered"'* ]] && break
    sleep 0.2
  done
  echo "its record: $record"
fi
echo "tg-dispatch is running: dispatcher $api, $workers worker(s) (admin ports 9091-$((9090 + workers))). Ctrl-C stops everything."
wait
