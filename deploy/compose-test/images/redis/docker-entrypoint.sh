#!/bin/sh
# Mimics the official redis image's entrypoint:
#  - `docker run redis --foo` / `... redis.conf` -> redis-server args
#  - runs as user redis, in the foreground (exec: redis-server gets SIGTERM directly)
#  - protected mode off by default: the official image patches that default into its build
#    (its bind default is already "* -::*" when no config file is given). Here the
#    equivalent is a leading `--protected-mode no`; options given later still win.
#    With a config file as first argument nothing is added (the file decides).
set -e
if [ "${1#-}" != "$1" ] || [ "${1%.conf}" != "$1" ]; then
  set -- redis-server "$@"
fi
if [ "$1" = "redis-server" ]; then
  shift
  if [ -z "$1" ] || [ "${1%.conf}" = "$1" ]; then
    set -- --protected-mode no "$@"
  fi
  set -- redis-server "$@"
  if [ "$(id -u)" = 0 ]; then
    find . \! -user redis -exec chown redis '{}' + 2>/dev/null || true
    exec setpriv --reuid=redis --regid=redis --init-groups "$@"
  fi
fi
exec "$@"
