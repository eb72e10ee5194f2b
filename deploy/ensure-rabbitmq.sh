#!/usr/bin/env bash
# Makes sure a RabbitMQ broker answers at AMQP_URL (default amqp://guest:guest@127.0.0.1:5672/%2f).
# If it does not and the URL points at this machine, starts the local rabbitmq-server, installing
# Debian's package first when it is missing. Used by deploy/start.sh and deploy/test.sh.
set -euo pipefail

url=${AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}
rest=${url#*://}
rest=${rest#*@}          # drop credentials
hostport=${rest%%/*}
hostport=${hostport%%\?*}
if [[ $hostport == \[* ]]; then                  # [::1]:5672
  host=${hostport%%]*}; host=${host#[}
  port=${hostport##*]:}; [[ $port == "$hostport" ]] && port=5672
else
  host=${hostport%%:*}
  port=${hostport##*:}; [[ $port == "$hostport" ]] && port=5672
fi
[[ -z $host ]] && host=127.0.0.1

say() { printf 'ensure-rabbitmq: %s\n' "$*" >&2; }

# True when an AMQP 0-9-1 broker answers the protocol header with a frame (not just an open port).
answers() {
  timeout 3 bash -c '
    exec 3<>"/dev/tcp/$1/$2" || exit 1
    printf "AMQP\x00\x00\x09\x01" >&3
    first=$(head -c 1 <&3 | od -An -tx1 | tr -d " ")
    [[ $first == 01 ]]' _ "$host" "$port" 2>/dev/null
}

if answers; then
  exit 0
fi

case $host in
  127.*|localhost|::1) ;;
  *) say "AMQP_URL points at $host:$port, which does not answer; start that broker or unset AMQP_URL"; exit 1 ;;
esac

as_root() {
  if [[ $(id -u) -eq 0 ]]; then "$@"
  elif command -v sudo >/dev/null; then sudo "$@"
  else say "need root for: $*"; return 1
  fi
}

if ! command -v rabbitmq-server >/dev/null && [[ ! -x /usr/sbin/rabbitmq-server ]]; then
  if ! command -v apt-get >/dev/null; then
    say "RabbitMQ is not installed and this is not a Debian/Ubuntu system: install rabbitmq-server (3.10+) and re-run"
    exit 1
  fi
  say "installing rabbitmq-server (Debian package)"
  as_root apt-get update -q
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q rabbitmq-server
fi
export PATH="$PATH:/usr/sbin"

if answers; then exit 0; fi   # the package's own start-up may have done it
say "starting rabbitmq-server on $host:$port"
if [[ -d /run/systemd/system ]] && command -v systemctl >/dev/null; then
  as_root systemctl start rabbitmq-server || as_root rabbitmq-server -detached
else
  as_root rabbitmq-server -detached
fi

for _ in $(seq 1 120); do
  if answers; then say "RabbitMQ is up"; exit 0; fi
  sleep 0.5
done
say "RabbitMQ did not answer on $host:$port within 60 s (see /var/log/rabbitmq/)"
exit 1
