#!/usr/bin/env bash
# Start TorchServe for triserve in the foreground (Ctrl-C / SIGTERM stops it).
#
#   services/torchserve/start.sh                       # ports 8085/8086/8087 on 127.0.0.1
#   TS_HOST=0.0.0.0 TS_INFERENCE_PORT=9085 TS_MANAGEMENT_PORT=9086 TS_METRICS_PORT=9087 \
#   TS_MODEL_STORE=model_store TS_MODELS=all TS_RUN_DIR=run/torchserve services/torchserve/start.sh
#
# The triserve gateway owns TorchServe's usual ports 8080-8082 and registers models on this
# TorchServe through its management API (TorchServe is an internal backend).
#
# Environment (all optional):
#   TS_HOST             bind address for all three endpoints            [127.0.0.1]
#   TS_MANAGEMENT_HOST  bind address of the management API alone (e.g. an address only the gateway
#                       reaches)                                        [TS_HOST]
#   TS_INFERENCE_PORT   inference API port                              [8085]
#   TS_MANAGEMENT_PORT  management API port                             [8086]
#   TS_METRICS_PORT     Prometheus metrics port (/metrics)              [8087]
#   TS_GRPC_INFERENCE_PORT, TS_GRPC_MANAGEMENT_PORT  TorchServe's gRPC ports (its own env
#                       overrides; the gateway owns 7070)               [7075, 7076]
#   TS_MODEL_STORE      the triserve model store (<model>/<version>/<model>.mar), or a folder
#                       holding .mar files                              [<repo>/model_store]
#   TS_MODELS           models to load at start, in TorchServe's --models syntax: all, none, or
#                       name=<model>.v<version>.mar,...                 [all]
#   TS_RUN_DIR          writable folder for the rendered config, the archive links, logs, metrics
#                       logs, pid file and extracted model files — never the repo checkout
#                                                                       [<repo>/run/torchserve]
#   TS_JAVA_HEAP        JVM max heap                                    [512m]
#   TS_LOG_CONFIG       a log4j2.xml for the frontend (-Dlog4j.configurationFile), e.g.
#                       services/torchserve/log4j2-quiet.xml       [TorchServe's own: INFO, access log]
#   PYTHON              interpreter for verify_mar.py (checks each .mar against manifest.json) [python3]
# Any further TorchServe property may be overridden with TS_<PROPERTY_IN_CAPS> (enable_envvars_config).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
host="${TS_HOST:-127.0.0.1}"
store="$(cd "${TS_MODEL_STORE:-$repo/model_store}" && pwd)"
run_dir="${TS_RUN_DIR:-$repo/run/torchserve}"
mkdir -p "$run_dir/logs" "$run_dir/tmp"
run_dir="$(cd "$run_dir" && pwd)"
config="$run_dir/config.properties"
models="${TS_MODELS:-all}"

# Refuse to start on an archive its manifest does not vouch for (size + sha256; one line naming the file).
"${PYTHON:-python3}" "$here/verify_mar.py" "$store"

# TorchServe loads archives by file name from one flat folder: link every archive of the store
# there as <model>.v<version>.mar (the name the gateway registers), and a flat folder's archives as is.
archives="$run_dir/model-store"
rm -rf "$archives" && mkdir -p "$archives"
shopt -s nullglob
for mar in "$store"/*/*/*.mar; do
  version_dir="$(dirname "$mar")"
  ln -s "$mar" "$archives/$(basename "$(dirname "$version_dir")").v$(basename "$version_dir").mar"
done
for mar in "$store"/*.mar; do
  ln -s "$mar" "$archives/$(basename "$mar")"
done
shopt -u nullglob

# Render the template with this run's addresses and paths (later keys win in java.util.Properties,
# but we drop the overridden keys anyway to keep the file readable).
grep -v -E '^(inference_address|management_address|metrics_address|model_store|load_models|vmargs)=' \
  "$here/config.properties" > "$config"
cat >> "$config" <<PROPS
inference_address=http://${host}:${TS_INFERENCE_PORT:-8085}
management_address=http://${TS_MANAGEMENT_HOST:-$host}:${TS_MANAGEMENT_PORT:-8086}
metrics_address=http://${host}:${TS_METRICS_PORT:-8087}
model_store=${archives}
vmargs=-Xmx${TS_JAVA_HEAP:-512m} -XX:+UseContainerSupport -XX:+ExitOnOutOfMemoryError -Djava.io.tmpdir=${run_dir}/tmp${TS_LOG_CONFIG:+ -Dlog4j.configurationFile=file://$(cd "$(dirname "$TS_LOG_CONFIG")" && pwd)/$(basename "$TS_LOG_CONFIG")}
PROPS

export LOG_LOCATION="$run_dir/logs"
export METRICS_LOCATION="$run_dir/logs"
# TorchServe keeps its pid file in $TMPDIR; a per-run TMPDIR lets several instances coexist.
export TMPDIR="$run_dir/tmp"
# The TS_* names above are ours, not TorchServe properties: keep them out of its env-var overrides.
unset TS_HOST TS_MANAGEMENT_HOST TS_INFERENCE_PORT TS_MANAGEMENT_PORT TS_METRICS_PORT TS_MODEL_STORE TS_MODELS TS_RUN_DIR TS_JAVA_HEAP \
  TS_LOG_CONFIG
load=()
if [ -n "$models" ] && [ "$models" != "none" ]; then
  load=(--models "$models")
fi
cd "$run_dir"
exec torchserve --foreground --ncs --disable-token-auth --enable-model-api \
  --ts-config "$config" --model-store "$archives" "${load[@]}"
