#!/usr/bin/env bash
# Build triserve's CPU images with docker compose, from public base images or offline, and report each
# image's build time and size.
#
#   deploy/docker/build-images.sh [SERVICE...]    # default: gateway onnx paddle torchserve trainer
#                                                 # (+ prometheus offline)
# Environment:
#   OFFLINE=auto|1|0  auto (default): the offline path when the registry does not answer (pulling the
#                     public base image fails); 1: offline; 0: public base images + PyTorch's CPU index
#   EXTRA_CA=FILE     a PEM bundle pip trusts in the builds (TLS-intercepting proxy): copied to
#                     deploy/docker/ca/extra-ca.crt (git-ignored; build stages only)
#   TORCH_WHEEL=FILE  torch's +cpu wheel for the offline path (default: `pip download torch==<pin>+cpu`,
#                     which finds it where pip is configured to look)
#   NO_CACHE=1        build without the layer cache (cold build times)
#   JOBS=N            builds at once (default 2)
#   PRUNE=0           keep the images earlier builds superseded (default: remove the dangling ones that
#                     carry this project's build label and predate this run)
#   COMPOSE="..."     the compose command (default: `docker compose` if it works, else `docker-compose`)
#   COMPOSE_ENV_FILE=FILE  write the compose command line to use for `up` into FILE (the tests read it)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
here=deploy/docker
base_image=triserve/python:3.11-bookworm-local
public_base=$(sed -nE 's/^ARG BASE_IMAGE=(.+)$/\1/p' services/gateway/Dockerfile)
torch_version=$(sed -nE 's/^torch==(.+)$/\1/p' constraints.txt)

"$here/engine.sh"
if [[ -z "${COMPOSE:-}" ]]; then
  if docker compose version >/dev/null 2>&1; then COMPOSE="docker compose"; else COMPOSE="docker-compose"; fi
fi
command -v "${COMPOSE%% *}" >/dev/null || { echo "no $COMPOSE: apt-get install -y docker-compose" >&2; exit 1; }

offline="${OFFLINE:-auto}"
if [[ "$offline" == auto ]]; then
  if docker image inspect "$public_base" >/dev/null 2>&1 || docker pull -q "$public_base" >/dev/null 2>&1; then
    offline=0
  else
    echo "cannot pull $public_base: building offline (OFFLINE=1)"
    offline=1
  fi
fi
files=(-f docker-compose.yml)
services=("$@")
if [[ "$offline" == 1 ]]; then
  files+=(-f docker-compose.offline.yml)
  ((${#services[@]})) || services=(gateway onnx paddle torchserve trainer prometheus)
  started=$SECONDS
  "$here/base-image.sh" "$base_image"
  echo "base image $base_image: $((SECONDS - started))s"
  if ! compgen -G "$here/wheels/torch-${torch_version}+cpu-*.whl" >/dev/null; then
    if [[ -n "${TORCH_WHEEL:-}" ]]; then
      cp "$TORCH_WHEEL" "$here/wheels/"
    else
      pip=(python3 -m pip); [[ -x .venv/bin/pip ]] && pip=(.venv/bin/pip)
      "${pip[@]}" download -q --no-deps --only-binary=:all: --python-version 3.11 \
        --platform manylinux_2_28_x86_64 -d "$here/wheels" "torch==${torch_version}+cpu" || {
        echo "torch ${torch_version}+cpu not found: put its wheel into $here/wheels or set TORCH_WHEEL" >&2
        exit 1
      }
    fi
  fi
  ls "$here"/wheels/*.whl
else
  ((${#services[@]})) || services=(gateway onnx paddle torchserve trainer)
fi
if [[ -n "${EXTRA_CA:-}" ]]; then
  cp "$EXTRA_CA" "$here/ca/extra-ca.crt"
fi
[[ -z "${COMPOSE_ENV_FILE:-}" ]] || echo "$COMPOSE ${files[*]}" > "$COMPOSE_ENV_FILE"

logs=run/image-builds
mkdir -p "$logs"
rm -f "$logs"/*.seconds
args=(); [[ "${NO_CACHE:-0}" == 1 ]] && args+=(--no-cache)
jobs_max="${JOBS:-2}"

build() {  # one image; its wall time goes to $logs/<svc>.seconds
  local svc="$1" started=$SECONDS
  if $COMPOSE "${files[@]}" --profile train build "${args[@]}" "$svc" >"$logs/$svc.log" 2>&1; then
    echo "$((SECONDS - started))" > "$logs/$svc.seconds"
  else
    echo "building $svc failed (log: $logs/$svc.log):" >&2
    tail -n 40 "$logs/$svc.log" >&2
    return 1
  fi
}

# Up to JOBS builds at once (default 2: much of a build is downloads, unpacking and layer commits), the
# longest first. Each image's time is its wall time while sharing the machine.
order=()
for svc in trainer torchserve paddle onnx gateway prometheus; do
  [[ " ${services[*]} " == *" $svc "* ]] && order+=("$svc")
done
for svc in "${services[@]}"; do [[ " ${order[*]} " == *" $svc "* ]] || order+=("$svc"); done
started_all=$SECONDS
started_at=$(date -u +%Y-%m-%dT%H:%M:%SZ)
failed=0
for svc in "${order[@]}"; do
  while (($(jobs -rp | wc -l) >= jobs_max)); do wait -n || failed=1; done
  echo "building $svc ($COMPOSE ${files[*]} --profile train build ${args[*]} $svc; log: $logs/$svc.log)"
  build "$svc" &
done
while (($(jobs -rp | wc -l))); do wait -n || failed=1; done
((failed == 0)) || exit 1
# Each rebuild leaves the image it replaces dangling (GBs for torch/paddle). Remove ours that predate this
# run; images of other projects, and anything a concurrent build is creating now, are left alone.
if [[ "${PRUNE:-1}" != 0 ]]; then
  docker image prune -f --filter label=io.triserve.build=cpu --filter "until=$started_at" | tail -n 1
fi

echo
echo "image                              build      size"
for svc in "${order[@]}"; do
  image=$($COMPOSE "${files[@]}" --profile train config | awk -v s="$svc" '
    $0 == "  " s ":" {f = 1; next}  f && /^  [^ ]/ {f = 0}  f && /^    image: / && !n++ {print $2}')
  size=$(docker image inspect -f '{{.Size}}' "$image")
  printf '%-34s %6ss %8s MB\n' "$image" "$(cat "$logs/$svc.seconds")" "$((size / 1000000))"
done
echo "all images: $((SECONDS - started_all))s with up to $jobs_max builds at once"
echo
echo "up: $COMPOSE ${files[*]} up -d"
