#!/usr/bin/env bash
# Build debian:bookworm-slim locally (no registry): debootstrap minbase -> tar -> podman import.
# Cached twice: skipped if the image exists; the rootfs tarball in cache/ survives image removal.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
STATE=${COMPOSE_TEST_HOME:-/var/tmp/tg-dispatch-compose}
# shellcheck disable=SC1091
source "$STATE/env.sh"
IMAGE=debian:bookworm-slim
TARBALL=$STATE/cache/debian-bookworm-minbase.tar

if podman image exists "$IMAGE"; then
  echo "base: $IMAGE exists, skipping"; exit 0
fi
mkdir -p "$STATE/cache"

if [ ! -s "$TARBALL" ]; then
  # The mirror this machine's apt uses (deb822 sources first, then the one-line format).
  MIRROR=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
  [ -n "$MIRROR" ] || MIRROR=$(awk '$1=="deb"{print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
  MIRROR=${MIRROR:-http://deb.debian.org/debian}
  ROOT=$STATE/cache/rootfs
  rm -rf "$ROOT"
  start=$(date +%s)
  nice -n 10 debootstrap --variant=minbase bookworm "$ROOT" "$MIRROR"
  echo "base: debootstrap took $(( $(date +%s) - start ))s"

  # Make it look like the official slim image (debuerreotype's minimizing config).
  rm -f "$ROOT/etc/apt/sources.list"
  SEC=${MIRROR%/debian}/debian-security
  cat > "$ROOT/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: $MIRROR
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: $SEC
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
  # Services must not start while packages install during `podman build` (rabbitmq-server,
  # redis-server and postgresql postinst scripts would otherwise launch daemons in the build).
  printf '#!/bin/sh\nexit 101\n' > "$ROOT/usr/sbin/policy-rc.d"
  chmod 755 "$ROOT/usr/sbin/policy-rc.d"
  cat > "$ROOT/etc/apt/apt.conf.d/docker-clean" <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache ""; Dir::Cache::srcpkgcache "";
EOF
  echo 'Acquire::Languages "none";' > "$ROOT/etc/apt/apt.conf.d/docker-no-languages"
  echo 'APT::AutoRemove::SuggestsImportant "false";' > "$ROOT/etc/apt/apt.conf.d/docker-autoremove-suggests"
  # slim: no docs/man/locales from later installs
  cat > "$ROOT/etc/dpkg/dpkg.cfg.d/docker" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
EOF
  # What dpkg.cfg.d/docker excludes from later installs, pruned from debootstrap's too (~47 MB).
  find "$ROOT/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
  find "$ROOT/usr/share/doc" -mindepth 1 -type d -empty -delete
  rm -rf "$ROOT"/usr/share/man/* "$ROOT"/usr/share/info/* "$ROOT"/usr/share/lintian/* "$ROOT"/usr/share/groff/*
  find "$ROOT/usr/share/locale" -mindepth 1 -maxdepth 1 -not -name locale.alias -exec rm -rf {} +
  # Host-specific files podman provides at run time.
  : > "$ROOT/etc/resolv.conf"; : > "$ROOT/etc/hostname"
  rm -rf "$ROOT"/var/lib/apt/lists/* "$ROOT"/var/cache/apt/*.bin "$ROOT"/var/cache/apt/archives/*.deb \
         "$ROOT"/var/log/*.log "$ROOT"/tmp/* "$ROOT"/debootstrap
  tar --numeric-owner -C "$ROOT" -cf "$TARBALL.tmp" .
  mv "$TARBALL.tmp" "$TARBALL"
  rm -rf "$ROOT"
fi

podman import --change 'CMD ["bash"]' --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  - "$IMAGE" < "$TARBALL"
podman image ls "$IMAGE"
