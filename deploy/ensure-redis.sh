#!/usr/bin/env bash
# Makes sure Redis answers at REDIS_URL (default redis://127.0.0.1:6379). If it does not and the URL
# points at this machine, starts the local redis-server, installing Debian's package first when it
# is missing. Used by deploy/start.sh and deploy/test.sh.
set -euo pipefail

url=${REDIS_URL:-redis://127.0.0.1:6379}
say() { printf 'ensure-redis: %s\n' "$*" >&2; }
hostport=${url#*://}; hostport=${hostport#*@}; hostport=${hostport%%/*}
host=${hostport%%:*}; port=${hostport##*:}; [[ $port == "$hostport" ]] && port=6379
host=${host:-127.0.0.1}

answers() {
  timeout 2 bash -c 'exec 3<>"/dev/tcp/$1/$2"; printf "PING\r\n" >&3; head -c 5 <&3 | grep -q PONG' _ "$host" "$port" 2>/dev/null
}
as_root() {
  if [[ $(id -u) -eq 0 ]]; then "$@"
  elif command -v sudo >/dev/null; then sudo "$@"
  else say "need root for: $*"; return 1
  fi
}

answers && exit 0
case $host in
  127.*|localhost|::1) ;;
  *) say "REDIS_URL points at $host:$port, which does not answer; start that server or unset REDIS_URL"; exit 1 ;;
esac
if ! command -v redis-server >/dev/null; then
  command -v apt-get >/dev/null || { say "Redis is not installed and this is not a Debian/Ubuntu system: install redis-server and re-run"; exit 1; }
  say "installing redis-server (Debian package)"
  as_root apt-get update -q
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q redis-server
fi
answers && exit 0
say "starting redis-server on $host:$port"
if [[ -d /run/systemd/system ]] && command -v systemctl >/dev/null; then
  as_root systemctl start redis-server
else
  redis-server --bind "$host" --port "$port" --daemonize yes --dir "${TMPDIR:-/tmp}" >/dev/null
fi
for _ in $(seq 1 40); do answers && { say "Redis is up"; exit 0; }; sleep 0.25; done
say "Redis did not answer on $host:$port within 10 s"
exit 1
