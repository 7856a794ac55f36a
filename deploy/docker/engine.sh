#!/usr/bin/env bash
# Make sure a Docker engine answers: nothing to do when `docker info` works; otherwise start it (systemd's
# docker.service, or dockerd in the background, logging to $DOCKERD_LOG) when root, else say how.
#
#   deploy/docker/engine.sh          # exit 0 once the engine answers (waits up to $ENGINE_TIMEOUT_S, 60 s)
set -euo pipefail
log="${DOCKERD_LOG:-/var/log/triserve-dockerd.log}"
timeout_s="${ENGINE_TIMEOUT_S:-60}"

answers() { docker info >/dev/null 2>&1; }

answers && exit 0
command -v docker >/dev/null && command -v dockerd >/dev/null || {
  echo "no Docker engine: install it first (scripts/system-deps.sh test, or: sudo apt-get install -y docker.io)" >&2
  exit 1
}
if [[ $(id -u) -ne 0 ]]; then
  echo "the Docker engine is not running; start it: sudo systemctl start docker (or: sudo dockerd &)" >&2
  exit 1
fi
if [[ -d /run/systemd/system ]] && systemctl start docker 2>/dev/null; then
  echo "started docker.service"
else
  echo "starting dockerd in the background (log: $log)"
  nohup dockerd >>"$log" 2>&1 </dev/null &
fi
for ((i = 0; i < timeout_s; i++)); do
  answers && exit 0
  sleep 1
done
echo "the Docker engine did not answer within ${timeout_s}s; see $log" >&2
tail -n 20 "$log" >&2 2>/dev/null || true
exit 1
