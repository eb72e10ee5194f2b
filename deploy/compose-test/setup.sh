#!/usr/bin/env bash
# Runs docker-compose without Docker: installs podman and Debian's docker-compose (idempotent),
# writes a containers.conf this machine accepts, and starts a rootful podman API service that
# docker-compose talks to as if it were a Docker engine (no systemd needed). State and caches live
# in COMPOSE_TEST_HOME (default /var/tmp/tg-dispatch-compose).
#   deploy/compose-test/setup.sh && source /var/tmp/tg-dispatch-compose/env.sh
# Exit code 3: containers cannot run on this machine (the reason is printed).
set -euo pipefail
cannot_run() { echo "setup: $*" >&2; exit 3; }
HERE=$(cd "$(dirname "$0")" && pwd)
STATE=${COMPOSE_TEST_HOME:-/var/tmp/tg-dispatch-compose}
mkdir -p "$STATE"
cd "$STATE"

PKGS=(podman runc crun conmon catatonit uidmap slirp4netns fuse-overlayfs netavark aardvark-dns
      iptables docker-compose debootstrap curl binutils)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
  command -v apt-get >/dev/null || cannot_run "podman is not installed and this is not a Debian system (apt-get)"
  [ "$(id -u)" = 0 ] || cannot_run "podman is not installed and installing it needs root"
  echo "setup: installing ${missing[*]}"
  nice -n 10 apt-get update -q
  # --no-install-recommends: docker-compose recommends docker.io (a whole engine), podman
  # recommends buildah etc.; none of that is needed.
  DEBIAN_FRONTEND=noninteractive nice -n 10 apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# podman's `init: true` looks for catatonit here (the Debian package already ships this symlink).
if [ ! -x /usr/libexec/podman/catatonit ]; then
  mkdir -p /usr/libexec/podman
  ln -sf "$(command -v catatonit)" /usr/libexec/podman/catatonit
fi

# The podman bookworm package drops a CNI config whose plugins are not installed; netavark is the
# backend in use, the file only produces a warning on every command. Leave it, the warning is harmless,
# but pin the backend explicitly below.

cat > "$STATE/containers.conf" <<'EOF'
[containers]
# podman's default nofile (1048576) exceeds the hard limit a process may raise to here (20000).
default_ulimits = ["nofile=20000:20000", "nproc=4096:4096"]
init_path = "/usr/libexec/podman/catatonit"

[network]
network_backend = "netavark"

[engine]
# No systemd on this machine: cgroupfs manager, file-based events, conmon not in a systemd scope.
cgroup_manager = "cgroupfs"
events_logger = "file"
# crun 1.8.1 refuses this kernel's hybrid cgroup layout (v1 controllers + hugetlb on the v2
# "unified" mount): "cgroups in hybrid mode not supported, drop all controllers from cgroupv2".
# runc 1.1.5 copes with it.
runtime = "runc"
EOF

# Storage: podman's autodetection picks native overlay on this ext4 root (rootful, kernel
# overlayfs) and would pick vfs by itself where overlay cannot be mounted. Do NOT point
# CONTAINERS_STORAGE_CONF at a private storage.conf: conmon does not pass that variable on to the
# exit command (`podman container cleanup`), which then fails with "database storage graph driver
# "" does not match our storage graph driver "overlay"", the container stays "stopped" instead of
# "exited", and every wait for a container exit (podman run, /wait, compose run) hangs 20 s.
# If a driver must be forced, put it in /etc/containers/storage.conf before the first podman call.
rm -f "$STATE/storage.conf"

cat > "$STATE/env.sh" <<EOF
export CONTAINERS_CONF=$STATE/containers.conf
unset CONTAINERS_STORAGE_CONF
export DOCKER_HOST=unix://$STATE/podman.sock
# Build through the API (docker-py -> podman/buildah), never through the host's docker CLI 28 (BuildKit).
export DOCKER_BUILDKIT=0 COMPOSE_DOCKER_CLI_BUILD=0
EOF
# shellcheck disable=SC1091
source "$STATE/env.sh"

# (Re)start the API service: it reads containers.conf/storage.conf only at start, so restart
# the one this script started when the config changed.
cfg_hash=$( (cat "$STATE/containers.conf"; echo v3-catatonit-nostorageconf) | sha256sum | cut -c1-16)
if [ -f "$STATE/podman-service.pid" ] && [ "$(cat "$STATE/podman-service.hash" 2>/dev/null)" != "$cfg_hash" ]; then
  pid=$(cat "$STATE/podman-service.pid")
  if kill -0 "$pid" 2>/dev/null; then echo "setup: config changed, restarting podman service $pid"; kill "$pid"; sleep 1; fi
  rm -f "$STATE/podman-service.pid"
fi
if ! curl -sf --unix-socket "$STATE/podman.sock" http://d/_ping >/dev/null 2>&1; then
  rm -f "$STATE/podman.sock"
  # Under catatonit: it is a child subreaper. conmon daemonizes, so its parent becomes the nearest
  # subreaper, else PID 1; this machine's PID 1 reaps orphans only now and then, so conmon stays a
  # zombie and every wait on a container exit (podman run/wait, the API's /wait used by
  # `docker-compose run`) stalls 20 s ("Exceeded conmon timeout waiting for container ... to exit").
  nohup catatonit -- podman system service --time=0 "unix://$STATE/podman.sock" >"$STATE/podman-service.log" 2>&1 &
  echo $! >"$STATE/podman-service.pid"
  echo "$cfg_hash" >"$STATE/podman-service.hash"
  for _ in $(seq 50); do
    curl -sf --unix-socket "$STATE/podman.sock" http://d/_ping >/dev/null 2>&1 && break
    sleep 0.2
  done
fi
curl -sf --unix-socket "$STATE/podman.sock" http://d/_ping >/dev/null \
  || cannot_run "the podman API service did not start: $(tail -3 "$STATE/podman-service.log" 2>/dev/null)"
driver=$(podman info --format '{{.Store.GraphDriverName}}' 2>/dev/null || echo unknown)
echo "setup: podman $(podman --version | awk '{print $3}'), storage=$driver, API at $DOCKER_HOST (pid $(cat "$STATE/podman-service.pid" 2>/dev/null))"
echo "setup: for docker-compose, run: source $STATE/env.sh"
