#!/usr/bin/env bash
# Start TorchServe for triserve in the foreground (Ctrl-C / SIGTERM stops it).
#
#   services/torchserve/start.sh                       # ports 8080/8081/8082 on 127.0.0.1
#   TS_HOST=0.0.0.0 TS_INFERENCE_PORT=9080 TS_MANAGEMENT_PORT=9081 TS_METRICS_PORT=9082 \
#   TS_MODEL_STORE=model_store/mnist/1 TS_RUN_DIR=run/torchserve services/torchserve/start.sh
#
# Environment (all optional):
#   TS_HOST             bind address for all three endpoints            [127.0.0.1]
#   TS_INFERENCE_PORT   inference API port                              [8080]
#   TS_MANAGEMENT_PORT  management API port                             [8081]
#   TS_METRICS_PORT     Prometheus metrics port (/metrics)              [8082]
#   TS_MODEL_STORE      folder holding mnist.mar                        [<repo>/model_store/mnist/1]
#   TS_MODELS           models to load at start                         [mnist=mnist.mar]
#   TS_RUN_DIR          writable folder for the rendered config, logs, metrics logs, pid file and
#                       extracted model files — never the repo checkout  [<repo>/run/torchserve]
#   TS_JAVA_HEAP        JVM max heap                                    [512m]
#   PYTHON              interpreter for verify_mar.py (checks each .mar against manifest.json) [python3]
# Any further TorchServe property may be overridden with TS_<PROPERTY_IN_CAPS> (enable_envvars_config).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
host="${TS_HOST:-127.0.0.1}"
store="$(cd "${TS_MODEL_STORE:-$repo/model_store/mnist/1}" && pwd)"
run_dir="${TS_RUN_DIR:-$repo/run/torchserve}"
mkdir -p "$run_dir/logs" "$run_dir/tmp"
run_dir="$(cd "$run_dir" && pwd)"
config="$run_dir/config.properties"
models="${TS_MODELS:-mnist=mnist.mar}"

# Refuse to start on an archive the manifest does not vouch for (size + sha256; one line naming the file).
"${PYTHON:-python3}" "$here/verify_mar.py" "$store" "$models"

# Render the template with this run's addresses and paths (later keys win in java.util.Properties,
# but we drop the overridden keys anyway to keep the file readable).
grep -v -E '^(inference_address|management_address|metrics_address|model_store|load_models|vmargs)=' \
  "$here/config.properties" > "$config"
cat >> "$config" <<PROPS
inference_address=http://${host}:${TS_INFERENCE_PORT:-8080}
management_address=http://${host}:${TS_MANAGEMENT_PORT:-8081}
metrics_address=http://${host}:${TS_METRICS_PORT:-8082}
model_store=${store}
vmargs=-Xmx${TS_JAVA_HEAP:-512m} -XX:+UseContainerSupport -XX:+ExitOnOutOfMemoryError -Djava.io.tmpdir=${run_dir}/tmp
PROPS

export LOG_LOCATION="$run_dir/logs"
export METRICS_LOCATION="$run_dir/logs"
# TorchServe keeps its pid file in $TMPDIR; a per-run TMPDIR lets several instances coexist.
export TMPDIR="$run_dir/tmp"
# The TS_* names above are ours, not TorchServe properties: keep them out of its env-var overrides.
unset TS_HOST TS_INFERENCE_PORT TS_MANAGEMENT_PORT TS_METRICS_PORT TS_MODEL_STORE TS_MODELS TS_RUN_DIR TS_JAVA_HEAP
cd "$run_dir"
exec torchserve --foreground --ncs --disable-token-auth \
  --ts-config "$config" --model-store "$store" --models "$models"
