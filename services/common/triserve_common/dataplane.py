"""The OIP v2 data plane shared by the ONNX and Paddle services (HTTP-free).

:class:`DataPlane` serves the model versions of a :class:`~triserve_common.repository.ModelRepository`
(each a :class:`~triserve_common.runtime.Runtime`): it answers health and metadata, routes
``name``/``version`` (404 when not loaded; no version = the highest loaded), validates request
tensors against the model's input spec (400 naming expected vs received), runs the batch in the
version's worker thread pool and encodes the response (JSON or binary tensors), counting every
inference request in Prometheus. The REST layer (:func:`triserve_common.rest.build_app`) only maps
HTTP onto these calls.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from triserve_common import codec
from triserve_common.errors import (
    BadRequestError,
    ModelNotReadyError,
    TriserveError,
)
from triserve_common.manifest import TensorSpec
from triserve_common.metrics import BATCH_BUCKETS, LATENCY_BUCKETS
from triserve_common.repository import ModelRepository, ServedModel
from triserve_common.tensor_checks import json_limits
from triserve_common.v2 import MetadataModelResponse, MetadataTensor, ServerMetadataResponse

log = logging.getLogger(__name__)

UNKNOWN_MODEL_LABEL = "_unknown"
"""``model`` / ``version`` label of requests for a model or version this service does not serve
(bounded cardinality)."""


class DataPlaneMetrics:
    """Prometheus series of one data plane, on the app's own registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "triserve_inference_requests",
            "Inference requests by model, version and HTTP status.",
            ["model", "version", "status"],
            registry=registry,
        )
        self.request_latency = Histogram(
            "triserve_inference_request_duration_seconds",
            "Inference request time in the service, body read to response encoded.",
            ["model", "version"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.compute_latency = Histogram(
            "triserve_inference_compute_duration_seconds",
            "Time in the runtime's infer() (queueing for a worker thread excluded).",
            ["model", "version"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.batch_size = Histogram(
            "triserve_inference_batch_size",
            "Items per inference batch.",
            ["model", "version"],
            buckets=BATCH_BUCKETS,
            registry=registry,
        )
        self.inflight = Gauge(
            "triserve_inference_inflight_requests", "Inference requests in progress.", registry=registry
        )
        self.model_info = Gauge(
            "triserve_model_info",
            "Served model version and the execution engine in use (value 1).",
            ["model", "version", "platform", "engine"],
            registry=registry,
        )
        self.model_ready = Gauge(
            "triserve_model_ready", "1 when the model version is ready.", ["model", "version"],
            registry=registry,
        )


@dataclass
class EncodedResponse:
    """Encoded inference response: body bytes and the headers the codec asks for."""

    body: bytes
    headers: dict[str, str]


BodyReader = Callable[[], Awaitable[bytes]]
"""Reads the whole request body; raises ``PayloadTooLargeError`` over the limit."""


def _shape_matches(expected: list[int], received: tuple[int, ...]) -> bool:
    if len(expected) != len(received):
        return False
    return all(e in (-1, r) for e, r in zip(expected, received, strict=True))


class DataPlane:
    """OIP v2 semantics over a :class:`ModelRepository`; :meth:`start` before serving, :meth:`stop` after."""

    def __init__(
        self,
        repository: ModelRepository,
        registry: CollectorRegistry,
        server_name: str,
        server_version: str,
    ) -> None:
        self.repository = repository
        self.server_name = server_name
        self.server_version = server_version
        self.metrics = DataPlaneMetrics(registry)
        self._started = False
        self._info_labels: dict[tuple[str, str], tuple[str, str, str, str]] = {}
        self._info_lock = threading.Lock()
        repository.on_change = self._publish

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Serve (models already loaded) and publish the models' info gauges."""
        self._started = True
        self._publish()

    async def stop(self) -> None:
        """Stop serving: unload every model once its running batches have finished."""
        self._started = False
        await self.repository.close()
        self._publish()

    def _publish(self) -> None:
        """Info and readiness gauges of the loaded model versions (after a load or an unload)."""
        with self._info_lock:
            self.metrics.model_info.clear()
            self.metrics.model_ready.clear()
            self._info_labels.clear()
        for served in self.repository.loaded():
            self.publish_model_info(served)
            rt = served.runtime
            self.metrics.model_ready.labels(rt.name, rt.version).set(1 if rt.ready and self._started else 0)

    def publish_model_info(self, served: ServedModel) -> None:
        """``triserve_model_info`` for the engine the version's runtime reports *now*: an engine that
        fell back (e.g. onnxruntime leaving TensorRT at run time) replaces the old label set instead of
        both staying at 1. Cheap when nothing changed; called after every batch."""
        rt = served.runtime
        key = (served.name, served.version)
        labels = (rt.name, rt.version, rt.platform, rt.engine)
        if self._info_labels.get(key) == labels:
            return
        with self._info_lock:
            old = self._info_labels.get(key)
            if old == labels:
                return
            if old is not None:
                log.warning("engine changed: %s -> %s", old[3], labels[3])
                self.metrics.model_info.remove(*old)
            self.metrics.model_info.labels(*labels).set(1)
            self._info_labels[key] = labels

    # ------------------------------------------------------------------ health, metadata

    def live(self) -> bool:
        """The process answers."""
        return True

    def ready(self) -> bool:
        """The server serves, and every loaded model version is ready."""
        return self._started and all(s.runtime.ready for s in self.repository.loaded())

    def server_metadata(self) -> dict[str, Any]:
        """``GET /v2`` body."""
        return ServerMetadataResponse(
            name=self.server_name,
            version=self.server_version,
            extensions=["binary_tensor_data", "model_repository"],
        ).model_dump()

    def check_model(self, name: str, version: str | None) -> ServedModel:
        """The served model version (highest loaded when ``version`` is None); 404 otherwise."""
        return self.repository.get(name, version)

    def model_ready(self, name: str, version: str | None) -> bool:
        """Whether the model version is ready (404 if not served)."""
        served = self.check_model(name, version)
        return self._started and served.runtime.ready

    def model_metadata(self, name: str, version: str | None) -> dict[str, Any]:
        """``GET /v2/models/{name}[/versions/{v}]`` body; ``parameters.engine`` names the engine."""
        rt = self.check_model(name, version).runtime
        versions = [s.version for s in self.repository.loaded() if s.name == name]

        def tensors(specs: list[TensorSpec]) -> list[MetadataTensor]:
            return [MetadataTensor(name=s.name, datatype=s.datatype, shape=s.shape) for s in specs]

        return MetadataModelResponse(
            name=rt.name,
            versions=versions if version is None else [rt.version],
            platform=rt.platform,
            inputs=tensors(rt.inputs),
            outputs=tensors(rt.outputs),
            parameters={**rt.metadata(), "version": rt.version},
        ).model_dump(exclude_none=True)

    # ------------------------------------------------------------------ validation

    @staticmethod
    def validate(served: ServedModel, tensors: dict[str, np.ndarray], datatypes: dict[str, str]) -> int:
        """Check inputs against the spec (names, datatypes, shapes, one batch size); return the batch size."""
        specs = served.input_specs
        expected_names = list(specs)
        for name in tensors:
            if name not in specs:
                raise BadRequestError(
                    f"unexpected input '{name}': model '{served.name}' expects inputs "
                    f"{expected_names}, received {list(tensors)}"
                )
        batch: int | None = None
        for name, spec in specs.items():
            if name not in tensors:
                raise BadRequestError(
                    f"missing input '{name}': model '{served.name}' expects inputs "
                    f"{expected_names}, received {list(tensors)}"
                )
            arr = tensors[name]
            if datatypes[name] != spec.datatype:
                raise BadRequestError(
                    f"input '{name}': datatype {datatypes[name]} does not match the model's {spec.datatype}"
                )
            if not _shape_matches(spec.shape, arr.shape):
                raise BadRequestError(
                    f"input '{name}': shape {list(arr.shape)} does not match the model's {spec.shape} "
                    "(-1 = any size)"
                )
            if spec.shape and spec.shape[0] == -1:
                if batch is not None and arr.shape[0] != batch:
                    raise BadRequestError(
                        f"input '{name}': batch size {arr.shape[0]} differs from the other inputs' ({batch})"
                    )
                batch = arr.shape[0]
        batch = 1 if batch is None else batch
        if batch < 1:
            raise BadRequestError("empty batch: the batch dimension must be at least 1")
        limit = served.runtime.max_batch_size
        if batch > limit:
            raise BadRequestError(f"batch size {batch} exceeds this model's max_batch_size {limit}")
        return batch

    @staticmethod
    def _requested_outputs(served: ServedModel, decoded: codec.DecodedRequest) -> list[str]:
        requested = [out.name for out in decoded.request.outputs or []]
        for name in requested:
            if name not in served.output_names:
                raise BadRequestError(
                    f"unknown output '{name}' requested (model outputs: {served.output_names})"
                )
        return requested or served.output_names

    # ------------------------------------------------------------------ inference

    async def infer(
        self,
        name: str,
        version: str | None,
        read_body: BodyReader,
        header_length: str | None,
    ) -> EncodedResponse:
        """Handle one inference request end to end, counting it in the metrics whatever the outcome.

        ``header_length``: the raw ``Inference-Header-Content-Length`` value (None for JSON).
        The model version counts as in flight until the answer is encoded, so an unload waits for it.
        Raises :class:`~triserve_common.errors.TriserveError` with the status to answer.
        """
        label = name if name in {s.name for s in self.repository.loaded()} else UNKNOWN_MODEL_LABEL
        version_label = UNKNOWN_MODEL_LABEL
        started = time.perf_counter()
        status = 500
        self.metrics.inflight.inc()
        try:
            with self.repository.use(name, version) as served:
                version_label = served.version
                result = await self._infer(served, read_body, header_length, label)
            status = 200
            return result
        except TriserveError as exc:
            status = exc.status_code
            raise
        finally:
            self.metrics.inflight.dec()
            self.metrics.requests.labels(label, version_label, str(status)).inc()
            self.metrics.request_latency.labels(label, version_label).observe(time.perf_counter() - started)

    async def _infer(
        self, served: ServedModel, read_body: BodyReader, header_length: str | None, label: str
    ) -> EncodedResponse:
        length = codec.parse_header_length(header_length)
        body = await read_body()
        rt = served.runtime
        limits = json_limits(rt.inputs, rt.max_batch_size, "the model's max_batch_size")
        decoded = codec.decode_request(body, length, limits)
        datatypes = {inp.name: inp.datatype for inp in decoded.request.inputs}
        batch = self.validate(served, decoded.tensors, datatypes)
        wanted = self._requested_outputs(served, decoded)
        if not self._started or not served.runtime.ready:
            raise ModelNotReadyError(f"model '{served.name}' is not ready")

        loop = asyncio.get_running_loop()
        outputs = await loop.run_in_executor(served.executor, self._run, served, decoded.tensors, label)
        self.metrics.batch_size.labels(label, served.version).observe(batch)

        selected = {out: outputs[out] for out in wanted}
        binary: set[str] | bool = True if decoded.binary_default else decoded.binary_outputs
        body_out, headers = codec.encode_response(
            served.name, served.version, decoded.request.id, selected, binary=binary
        )
        return EncodedResponse(body_out, headers)

    def _run(self, served: ServedModel, tensors: dict[str, np.ndarray], label: str) -> dict[str, np.ndarray]:
        started = time.perf_counter()
        try:
            outputs = served.runtime.infer(tensors)
        except TriserveError:
            raise
        except Exception as exc:
            log.exception("inference failed")
            raise TriserveError(f"inference failed: {type(exc).__name__}: {exc}", 500) from exc
        finally:
            self.publish_model_info(served)
        self.metrics.compute_latency.labels(label, served.version).observe(time.perf_counter() - started)
        missing = [out for out in served.output_names if out not in outputs]
        if missing:
            raise TriserveError(f"runtime returned no output {missing}", 500)
        return outputs
