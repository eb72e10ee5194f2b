#!/usr/bin/env bash
# Makes sure PostgreSQL answers at DATABASE_URL (default
# postgres://tg_dispatch:tg_dispatch@127.0.0.1:5432/tg_dispatch) and that the URL's role and
# database exist. If the server does not answer and the URL points at this machine, starts the
# local one, installing Debian's package first when it is missing; the role and database are then
# created through the server's superuser. Used by deploy/start.sh and deploy/test.sh.
set -euo pipefail

url=${DATABASE_URL:-postgres://tg_dispatch:tg_dispatch@127.0.0.1:5432/tg_dispatch}
say() { printf 'ensure-postgres: %s\n' "$*" >&2; }

# postgres://user:password@host:port/database?options
rest=${url#*://}
userinfo=; [[ $rest == *@* ]] && { userinfo=${rest%%@*}; rest=${rest#*@}; }
user=${userinfo%%:*}; password=; [[ $userinfo == *:* ]] && password=${userinfo#*:}
hostport=${rest%%/*}; hostport=${hostport%%\?*}
database=${rest#*/}; [[ $database == "$rest" ]] && database=; database=${database%%\?*}
host=${hostport%%:*}; port=${hostport##*:}; [[ $port == "$hostport" ]] && port=5432
host=${host:-127.0.0.1}; user=${user:-postgres}; database=${database:-$user}
for part in user database; do
  [[ ${!part} =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] || { say "the $part in DATABASE_URL must be a plain name"; exit 1; }
done

as_root() {
  if [[ $(id -u) -eq 0 ]]; then "$@"
  elif command -v sudo >/dev/null; then sudo "$@"
  else say "need root for: $*"; return 1
  fi
}

answers() {
  if command -v pg_isready >/dev/null; then
    pg_isready -q -h "$host" -p "$port" -t 3
  else
    timeout 3 bash -c 'exec 3<>"/dev/tcp/$1/$2"' _ "$host" "$port" 2>/dev/null
  fi
}

local_host() { case $host in 127.*|localhost|::1) return 0 ;; *) return 1 ;; esac; }

if ! answers; then
  local_host || { say "DATABASE_URL points at $host:$port, which does not answer; start that server or unset DATABASE_URL"; exit 1; }
  if ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
    command -v apt-get >/dev/null || { say "PostgreSQL is not installed and this is not a Debian/Ubuntu system: install PostgreSQL (13+) and re-run"; exit 1; }
    say "installing postgresql (Debian package)"
    as_root apt-get update -q
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql
  fi
  if ! answers; then
    say "starting PostgreSQL on $host:$port"
    if [[ -d /run/systemd/system ]] && command -v systemctl >/dev/null; then
      as_root systemctl start postgresql
    else
      for cluster in /etc/postgresql/*/main; do
        version=$(basename "$(dirname "$cluster")")
        as_root pg_ctlcluster "$version" main start || true
      done
    fi
    for _ in $(seq 1 60); do answers && break; sleep 0.5; done
    answers || { say "PostgreSQL did not answer on $host:$port within 30 s (see /var/log/postgresql/)"; exit 1; }
    say "PostgreSQL is up"
  fi
fi

# Connects as the URL says; when that works, the role and database exist.
export PGCONNECT_TIMEOUT=5
if PGPASSWORD=$password psql -h "$host" -p "$port" -U "$user" -d "$database" -Atqc 'SELECT 1' >/dev/null 2>&1; then
  exit 0
fi

# As the superuser: over TCP where the server trusts it, else through the local socket as the
# postgres system user.
superuser() {
  if psql -h "$host" -p "$port" -U postgres -d postgres -Atqc 'SELECT 1' >/dev/null 2>&1; then
    psql -h "$host" -p "$port" -U postgres -d postgres -v ON_ERROR_STOP=1 -Atq "$@"
  elif local_host; then
    as_root runuser -u postgres -- psql -p "$port" -d postgres -v ON_ERROR_STOP=1 -Atq "$@"
  else
    say "cannot connect as $user to $database on $host:$port, nor as its superuser to create them"; return 1
  fi
}
role_exists=$(superuser -c "SELECT 1 FROM pg_roles WHERE rolname = '$user'")
if [[ -z $role_exists ]]; then
  say "creating role $user"
  if [[ -n $password ]]; then
    superuser -c "CREATE ROLE \"$user\" LOGIN PASSWORD '${password//\'/\'\'}'"
  else
    superuser -c "CREATE ROLE \"$user\" LOGIN"
  fi
fi
database_exists=$(superuser -c "SELECT 1 FROM pg_database WHERE datname = '$database'")
if [[ -z $database_exists ]]; then
  say "creating database $database owned by $user"
  superuser -c "CREATE DATABASE \"$database\" OWNER \"$user\""
fi
PGPASSWORD=$password psql -h "$host" -p "$port" -U "$user" -d "$database" -Atqc 'SELECT 1' >/dev/null || {
  say "created $user and $database, but still cannot connect as $user (check pg_hba.conf for $host)"; exit 1; }
