#!/bin/bash
# Mimics the official rabbitmq image's entrypoint, plus what the 3.13 server does by itself:
#  - RABBITMQ_DEFAULT_USER / RABBITMQ_DEFAULT_PASS / RABBITMQ_DEFAULT_VHOST are honoured by the
#    server itself (3.9.4+, so also Debian's 3.10.8): on first boot (empty database) that user is
#    created as administrator with full permissions on the vhost, and "guest" is not created.
#  - RABBITMQ_ERLANG_COOKIE: written to $HOME/.erlang.cookie (mode 400) so the server and the CLI
#    tools (rabbitmq-diagnostics, rabbitmqctl as root in `exec`/healthchecks) agree.
#  - RABBITMQ_NODENAME defaults to rabbit@$(hostname) as usual. For a cluster, give each container
#    a compose `hostname:` and list the peers (classic_config) in a file mounted into
#    /etc/rabbitmq/conf.d/ (portable to the official image), or, stand-in extension only, set
#    RABBITMQ_CLUSTER_NODES="rabbit@rabbit1 rabbit@rabbit2 rabbit@rabbit3".
#  - runs as user rabbitmq in the foreground; the Erlang VM is exec'd and stops on SIGTERM.
set -euo pipefail

if [ "${1:0:1}" = '-' ]; then set -- rabbitmq-server "$@"; fi

if [ "$1" = rabbitmq-server ] && [ "$(id -u)" = 0 ]; then
  if [ -n "${RABBITMQ_CLUSTER_NODES:-}" ]; then
    conf=/etc/rabbitmq/conf.d/05-cluster-env.conf
    { echo 'cluster_formation.peer_discovery_backend = classic_config'
      i=0
      for n in $RABBITMQ_CLUSTER_NODES; do
        i=$((i + 1)); echo "cluster_formation.classic_config.nodes.$i = $n"
      done; } > "$conf"
    chown rabbitmq:rabbitmq "$conf"
  fi
  # Always have a cookie before the server starts: otherwise a healthcheck (root, same HOME) that
  # runs first lets Erlang create it owned by root, and the server dies with
  # "Error when reading /var/lib/rabbitmq/.erlang.cookie: eacces".
  cookie=/var/lib/rabbitmq/.erlang.cookie
  if [ -n "${RABBITMQ_ERLANG_COOKIE:-}" ]; then
    rm -f "$cookie"
    printf '%s' "$RABBITMQ_ERLANG_COOKIE" > "$cookie"
  elif [ ! -s "$cookie" ]; then
    rm -f "$cookie"
    od -An -tx1 -N16 /dev/urandom | tr -d ' \n' | tr 'a-f0-9' 'A-P' > "$cookie"
  fi
  chown rabbitmq:rabbitmq "$cookie"; chmod 400 "$cookie"
  find /var/lib/rabbitmq \! -user rabbitmq -exec chown rabbitmq:rabbitmq '{}' + 2>/dev/null || true
  exec setpriv --reuid=rabbitmq --regid=rabbitmq --init-groups "$BASH_SOURCE" "$@"
fi

if [ "$1" = rabbitmq-server ]; then
  # The cookie file is authoritative; keep the deprecated variable (3.10 logs a warning for it)
  # away from the server. CLI tools in `exec` still see it: same value.
  unset RABBITMQ_ERLANG_COOKIE RABBITMQ_CLUSTER_NODES
fi
exec "$@"
