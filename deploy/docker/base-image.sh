#!/usr/bin/env bash
# Build the offline stand-in for python:3.11-slim-bookworm from Debian packages alone (no registry):
# debootstrap a minimal Debian 12 root with Debian's python3.11 (+ venv, CA certificates), apply the
# bookworm-updates/-security updates, and `docker import` it.
#
#   deploy/docker/base-image.sh [TAG]        # default: triserve/python:3.11-bookworm-local
#
# Needs root, debootstrap and a Docker engine; DEBIAN_MIRROR overrides the mirror (apt's own proxy
# settings apply). Reused when the tag exists; REBUILD=1 rebuilds it.
set -euo pipefail
tag="${1:-triserve/python:3.11-bookworm-local}"
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
security="${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}"

if [[ "${REBUILD:-0}" != 1 ]] && docker image inspect "$tag" >/dev/null 2>&1; then
  echo "base image $tag exists (REBUILD=1 to rebuild)"; exit 0
fi
[[ $(id -u) -eq 0 ]] || { echo "debootstrap needs root: sudo $0 $*" >&2; exit 1; }
command -v debootstrap >/dev/null || { echo "debootstrap missing: apt-get install -y debootstrap" >&2; exit 1; }

root="$(mktemp -d /tmp/triserve-rootfs.XXXXXX)"
trap 'rm -rf "$root"' EXIT
# minbase: essential packages + apt. The rest comes from apt inside the root (it resolves dependencies).
debootstrap --variant=minbase bookworm "$root" "$mirror"
cat > "$root/etc/apt/sources.list" <<SOURCES
deb $mirror bookworm main
deb $mirror bookworm-updates main
deb $security bookworm-security main
SOURCES
# As Debian's slim images: no docs, man pages or translations from any later apt install either, and no
# .deb cache kept.
cat > "$root/etc/dpkg/dpkg.cfg.d/triserve-slim" <<'DPKG'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/locale/*
DPKG
printf 'DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb || true"; };\n' \
  > "$root/etc/apt/apt.conf.d/docker-clean"
chroot "$root" /bin/sh -euc '
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get upgrade -y -qq
  apt-get install -y -qq --no-install-recommends python3.11 python3.11-venv ca-certificates passwd
  apt-get clean
  python3.11 -m venv /tmp/venv-check && /tmp/venv-check/bin/python -c "import ssl, venv"
' >"$root.log" 2>&1 || { tail -n 40 "$root.log" >&2; rm -f "$root.log"; exit 1; }
rm -f "$root.log"
find "$root/usr/share/doc" -mindepth 1 ! -name copyright ! -type d -delete
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/log/* "$root"/tmp/* \
  "$root"/usr/share/man/* "$root"/usr/share/info/* "$root"/usr/share/locale/*
tar -C "$root" --numeric-owner -c . | docker import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8' \
  --change 'CMD ["python3.11"]' \
  --message "debootstrap bookworm minbase + python3.11 (triserve offline base)" - "$tag"
docker image ls "$tag"
