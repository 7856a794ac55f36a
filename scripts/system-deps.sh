#!/usr/bin/env bash
# System packages triserve needs, installed with apt only where missing (Debian/Ubuntu). Run by the
# Makefile: `make up` needs the `run` group, `make test` the `test` group.
#
#   scripts/system-deps.sh run     # Python 3.11 (+ venv), Java 17 (TorchServe), libgomp1 (Paddle), curl
#   scripts/system-deps.sh docker  # the Docker engine, docker-compose, debootstrap (`make images`)
#   scripts/system-deps.sh test    # run + docker + wrk, kubectl, chromium, Debian's Fashion-MNIST dataset
#   scripts/system-deps.sh --check test    # only list what is missing (exit 1 if anything is)
#
# As root it runs apt-get install for what is missing; otherwise it prints the command and fails.
set -euo pipefail

check_only=0
[[ "${1:-}" == --check ]] && { check_only=1; shift; }
group="${1:-test}"
case "$group" in run | docker | test) ;; *) echo "usage: $0 [--check] run|docker|test" >&2; exit 2 ;; esac

java_major() {
  "${JAVA_HOME:+$JAVA_HOME/bin/}java" -version 2>&1 | sed -nE 's/.*version "(1\.)?([0-9]+).*/\2/p' | head -n1
}
has() { command -v "$1" >/dev/null 2>&1; }
installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }

missing=()
has curl || missing+=(curl)
if [[ "$group" != docker ]]; then   # run: what `make up` needs
  if ! has python3.11; then
    missing+=(python3.11 python3.11-venv python3.11-dev)
  elif ! python3.11 -c 'import ensurepip, venv' 2>/dev/null; then
    missing+=(python3.11-venv)
  fi
  [[ "$(java_major)" -ge 17 ]] 2>/dev/null || missing+=(openjdk-17-jre-headless)
  installed libgomp1 || missing+=(libgomp1)     # OpenMP runtime that paddlepaddle's wheel links to
fi
if [[ "$group" != run ]]; then      # docker: images and tests/compose
  has dockerd || missing+=(docker.io)                         # the Docker engine
  has debootstrap || missing+=(debootstrap)                   # the offline base image
  has docker-compose || docker compose version >/dev/null 2>&1 || missing+=(docker-compose)
fi
if [[ "$group" == test ]]; then
  has wrk || missing+=(wrk)                                   # tests/bench: the load generator
  # kubectl (tests/deploy: kubectl kustomize): Debian's kubernetes-client only when no kubectl exists
  # (a kubectl from another package, e.g. Google's `kubectl`, conflicts with it).
  has kubectl || missing+=(kubernetes-client)
  has chromium || has chromium-browser || missing+=(chromium)   # the browser test
  # Fashion-MNIST (its tests and trainer): Debian's package, unless TRISERVE_FASHION_MNIST_DIR points elsewhere
  [[ -n "${TRISERVE_FASHION_MNIST_DIR:-}" ]] || installed dataset-fashion-mnist || missing+=(dataset-fashion-mnist)
fi

((${#missing[@]})) || exit 0
if ((check_only)); then
  echo "missing for '$group': ${missing[*]}"
  exit 1
fi
if [[ $(id -u) -ne 0 ]] || ! has apt-get; then
  echo "triserve needs these system packages for '$group': ${missing[*]}" >&2
  echo "install them, then run make again:" >&2
  echo "  sudo apt-get update && sudo apt-get install -y --no-install-recommends ${missing[*]}" >&2
  exit 1
fi
echo "installing with apt-get: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
# Slim images (python:*-slim, debian:*-slim) drop /usr/share/man; OpenJDK's postinst needs man1 there.
mkdir -p /usr/share/man/man1
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}"
