#!/usr/bin/env bash
# Plays the role of the systemd timers that podman uses to run healthchecks (none here: podman logs
# "unable to get systemd connection to start healthchecks" and the containers stay "starting"
# forever, so `docker-compose up` blocks on `depends_on: condition: service_healthy`).
#
# Usage: tick-health.sh [-p PROJECT] [-f SECS] [-w PID] [-t SECS]
#   -p PROJECT  only containers labelled com.docker.compose.project=PROJECT (default: all running)
#   -f SECS     check "starting" containers every SECS instead of their own interval (faster
#               start-up; note every failed check counts toward `retries`, as in Docker)
#   -w PID      exit when process PID has exited (e.g. a backgrounded `docker-compose up -d`)
#   -t SECS     exit after SECS seconds at the latest (default: never)
# Each container is checked with `podman healthcheck run` at its own healthcheck interval,
# checks run concurrently (a slow rabbitmq-diagnostics does not delay the others) and never
# overlap for one container.
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
STATE=${COMPOSE_TEST_HOME:-/var/tmp/tg-dispatch-compose}
# shellcheck disable=SC1091
[ -n "${CONTAINERS_CONF:-}" ] || source "$STATE/env.sh"

project="" fast="" waitpid="" deadline=""
while getopts 'p:f:w:t:' o; do
  case $o in
    p) project=$OPTARG ;; f) fast=$OPTARG ;; w) waitpid=$OPTARG ;; t) deadline=$(( $(date +%s) + OPTARG )) ;;
    *) sed -n '2,15p' "$0"; exit 2 ;;
  esac
done
filter=()
[ -z "$project" ] || filter=(--filter "label=com.docker.compose.project=$project")

declare -A last=() inflight=()
trap 'kill $(jobs -p) 2>/dev/null; exit 0' TERM INT
while :; do
  [ -z "$waitpid" ] || kill -0 "$waitpid" 2>/dev/null || break
  [ -z "$deadline" ] || [ "$(date +%s)" -lt "$deadline" ] || break
  now=$(date +%s)
  mapfile -t ids < <(podman ps -q "${filter[@]}" 2>/dev/null)
  if ((${#ids[@]})); then
    while read -r id status interval timeout; do
      [ -n "$status" ] || continue                      # no healthcheck configured
      if [ -n "${inflight[$id]:-}" ] && kill -0 "${inflight[$id]}" 2>/dev/null; then continue; fi
      every=${interval%.*}; every=${every:-0}
      ((every > 0)) || { [ "${interval:-0}" = 0 ] && every=30 || every=1; }   # podman's default is 30s
      [ "$status" != starting ] || [ -z "$fast" ] || every=$fast
      if (( now - ${last[$id]:-0} >= every )); then
        tmo=${timeout%.*}; tmo=${tmo:-30}
        timeout $((tmo + 10)) podman healthcheck run "$id" >/dev/null 2>&1 &
        inflight[$id]=$!
        last[$id]=$now
      fi
    done < <(podman inspect "${ids[@]}" --format \
      '{{.ID}} {{.State.Health.Status}} {{if .Config.Healthcheck}}{{.Config.Healthcheck.Interval.Seconds}} {{.Config.Healthcheck.Timeout.Seconds}}{{end}}' 2>/dev/null)
  fi
  sleep 1
done
wait
