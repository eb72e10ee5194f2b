#!/usr/bin/env bash
# Builds the local base image and the stand-ins that the compose files name, all without a registry
# (run deploy/compose-test/setup.sh first):
#   debian:bookworm-slim         debootstrap + podman import (build-base.sh, cached)
#   rabbitmq:3.13-management     Debian rabbitmq-server 3.10.8 + management plugin
#   redis:7-alpine               Debian redis-server 7.0.15
#   postgres:16                  Debian postgresql-15
# Images are tagged docker.io/library/NAME:TAG, the name Docker's API (and so docker-compose)
# normalises short names to; podman also finds them under the short name.
# Skips an image that exists unless FORCE=1. Usage: bash build-images.sh [name...]
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
STATE=${COMPOSE_TEST_HOME:-/var/tmp/tg-dispatch-compose}
# shellcheck disable=SC1091
source "$STATE/env.sh"
FORCE=${FORCE:-0}

declare -A TAGS=([rabbitmq]=rabbitmq:3.13-management [redis]=redis:7-alpine [postgres]=postgres:16)
names=("$@"); ((${#names[@]})) || names=(rabbitmq redis postgres)

t0=$(date +%s)
bash "$HERE/build-base.sh"
echo "TIME base: $(( $(date +%s) - t0 ))s"

for n in "${names[@]}"; do
  tag=docker.io/library/${TAGS[$n]}
  if [ "$FORCE" != 1 ] && podman image exists "$tag"; then
    echo "images: $tag exists, skipping"; continue
  fi
  t=$(date +%s)
  # --layers: reuse the apt layer when only the entrypoint changes.
  nice -n 10 podman build --layers -t "$tag" "$HERE/images/$n" >"$STATE/build-$n.log" 2>&1 \
    || { tail -30 "$STATE/build-$n.log"; exit 1; }
  echo "TIME image $tag: $(( $(date +%s) - t ))s"
done
podman images --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep -E 'debian|rabbitmq|redis|postgres'
# The one thing every test needs: a container runs.
podman run --rm debian:bookworm-slim true \
  || { echo "images: a container cannot run here (podman run failed)" >&2; exit 3; }
