"""The OIP v2 data plane shared by the ONNX and Paddle services (HTTP-free).

:class:`DataPlane` wraps one :class:`~triserve_common.runtime.Runtime`: it answers health and
metadata, routes ``name``/``version`` (404 when not served), validates request tensors against the
model's input spec (400 naming expected vs received), runs the batch in a worker thread pool and
encodes the response (JSON or binary tensors), counting every inference request in Prometheus.
The REST layer (:func:`triserve_common.rest.build_app`) only maps HTTP onto these calls.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from triserve_common import codec
from triserve_common.errors import (
    BadRequestError,
    ModelNotFoundError,
    ModelNotReadyError,
    TriserveError,
)
from triserve_common.manifest import TensorSpec
from triserve_common.metrics import BATCH_BUCKETS, LATENCY_BUCKETS
from triserve_common.runtime import Runtime
from triserve_common.v2 import MetadataModelResponse, MetadataTensor, ServerMetadataResponse

log = logging.getLogger(__name__)

UNKNOWN_MODEL_LABEL = "_unknown"
"""``model`` label of requests for a model this service does not serve (bounded cardinality)."""


class DataPlaneMetrics:
    """Prometheus series of one data plane, on the app's own registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "triserve_inference_requests",
            "Inference requests by model and HTTP status.",
            ["model", "status"],
            registry=registry,
        )
        self.request_latency = Histogram(
            "triserve_inference_request_duration_seconds",
            "Inference request time in the service, body read to response encoded.",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.compute_latency = Histogram(
            "triserve_inference_compute_duration_seconds",
            "Time in the runtime's infer() (queueing for a worker thread excluded).",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.batch_size = Histogram(
            "triserve_inference_batch_size",
            "Items per inference batch.",
            ["model"],
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
            "triserve_model_ready", "1 when the model is ready.", ["model"], registry=registry
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
    """OIP v2 semantics over one runtime. Call :meth:`start` before serving, :meth:`stop` after."""

    def __init__(
        self,
        runtime: Runtime,
        registry: CollectorRegistry,
        server_name: str,
        server_version: str,
    ) -> None:
        self.runtime = runtime
        self.server_name = server_name
        self.server_version = server_version
        self.metrics = DataPlaneMetrics(registry)
        self._executor: ThreadPoolExecutor | None = None
        self._input_specs: dict[str, TensorSpec] = {}
        self._output_names: list[str] = []
        self._info_labels: tuple[str, str, str, str] | None = None
        self._info_lock = threading.Lock()

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Start the worker pool (runtime already loaded) and publish the model's info gauges."""
        rt = self.runtime
        self._input_specs = {spec.name: spec for spec in rt.inputs}
        self._output_names = [spec.name for spec in rt.outputs]
        if self._executor is None:
            self._executor = ThreadPoolExecutor(
                max_workers=max(1, rt.concurrency), thread_name_prefix=f"{rt.name}-infer"
            )
        self.publish_model_info()
        self.metrics.model_ready.labels(rt.name).set(1 if rt.ready else 0)

    def publish_model_info(self) -> None:
        """``triserve_model_info`` for the engine the runtime reports *now*: an engine that fell back
        (e.g. onnxruntime leaving TensorRT at run time) replaces the old label set instead of both
        staying at 1. Cheap when nothing changed; called after every batch."""
        rt = self.runtime
        labels = (rt.name, rt.version, rt.platform, rt.engine)
        if labels == self._info_labels:
            return
        with self._info_lock:
            if labels == self._info_labels:
                return
            if self._info_labels is not None:
                log.warning("engine changed: %s -> %s", self._info_labels[3], labels[3])
                self.metrics.model_info.remove(*self._info_labels)
            self.metrics.model_info.labels(*labels).set(1)
            self._info_labels = labels

    def stop(self) -> None:
        """Wait for running batches, stop the pool and unload the runtime."""
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        self.runtime.unload()
        self.metrics.model_ready.labels(self.runtime.name).set(0)

    # ------------------------------------------------------------------ health, metadata

    def live(self) -> bool:
        """The process answers."""
        return True

    def ready(self) -> bool:
        """The server can serve its model."""
        return self.runtime.ready and self._executor is not None

    def server_metadata(self) -> dict[str, Any]:
        """``GET /v2`` body."""
        return ServerMetadataResponse(
            name=self.server_name, version=self.server_version, extensions=["binary_tensor_data"]
        ).model_dump()

    def check_model(self, name: str, version: str | None) -> None:
        """Raise 404 unless ``name`` (and ``version``, when given) is the served model version."""
        rt = self.runtime
        if name != rt.name:
            raise ModelNotFoundError(f"model '{name}' not found (this server serves '{rt.name}')")
        if version is not None and version != rt.version:
            raise ModelNotFoundError(
                f"version '{version}' of model '{name}' not found (served version: {rt.version})"
            )

    def model_ready(self, name: str, version: str | None) -> bool:
        """Whether the model version is ready (404 if not served)."""
        self.check_model(name, version)
        return self.ready()

    def model_metadata(self, name: str, version: str | None) -> dict[str, Any]:
        """``GET /v2/models/{name}[/versions/{v}]`` body; ``parameters.engine`` names the engine."""
        self.check_model(name, version)
        rt = self.runtime

        def tensors(specs: list[TensorSpec]) -> list[MetadataTensor]:
            return [MetadataTensor(name=s.name, datatype=s.datatype, shape=s.shape) for s in specs]

        return MetadataModelResponse(
            name=rt.name,
            versions=[rt.version],
            platform=rt.platform,
            inputs=tensors(rt.inputs),
            outputs=tensors(rt.outputs),
            parameters=rt.metadata(),
        ).model_dump(exclude_none=True)

    # ------------------------------------------------------------------ validation

    def validate(self, tensors: dict[str, np.ndarray], datatypes: dict[str, str]) -> int:
        """Check inputs against the spec (names, datatypes, shapes, one batch size); return the batch size."""
        expected_names = list(self._input_specs)
        for name in tensors:
            if name not in self._input_specs:
                raise BadRequestError(
                    f"unexpected input '{name}': model '{self.runtime.name}' expects inputs "
                    f"{expected_names}, received {list(tensors)}"
                )
        batch: int | None = None
        for name, spec in self._input_specs.items():
            if name not in tensors:
                raise BadRequestError(
                    f"missing input '{name}': model '{self.runtime.name}' expects inputs "
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
        if batch > self.runtime.max_batch_size:
            raise BadRequestError(
                f"batch size {batch} exceeds this model's max_batch_size {self.runtime.max_batch_size}"
            )
        return batch

    def _requested_outputs(self, decoded: codec.DecodedRequest) -> list[str]:
        requested = [out.name for out in decoded.request.outputs or []]
        for name in requested:
            if name not in self._output_names:
                raise BadRequestError(
                    f"unknown output '{name}' requested (model outputs: {self._output_names})"
                )
        return requested or self._output_names

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
        Raises :class:`~triserve_common.errors.TriserveError` with the status to answer.
        """
        label = name if name == self.runtime.name else UNKNOWN_MODEL_LABEL
        started = time.perf_counter()
        status = 500
        self.metrics.inflight.inc()
        try:
            result = await self._infer(name, version, read_body, header_length, label)
            status = 200
            return result
        except TriserveError as exc:
            status = exc.status_code
            raise
        finally:
            self.metrics.inflight.dec()
            self.metrics.requests.labels(label, str(status)).inc()
            self.metrics.request_latency.labels(label).observe(time.perf_counter() - started)

    async def _infer(
        self, name: str, version: str | None, read_body: BodyReader, header_length: str | None, label: str
    ) -> EncodedResponse:
        self.check_model(name, version)
        length = codec.parse_header_length(header_length)
        body = await read_body()
        decoded = codec.decode_request(body, length)
        datatypes = {inp.name: inp.datatype for inp in decoded.request.inputs}
        batch = self.validate(decoded.tensors, datatypes)
        wanted = self._requested_outputs(decoded)
        if not self.ready() or self._executor is None:
            raise ModelNotReadyError(f"model '{name}' is not ready")

        loop = asyncio.get_running_loop()
        outputs = await loop.run_in_executor(self._executor, self._run, decoded.tensors, label)
        self.metrics.batch_size.labels(label).observe(batch)

        selected = {out: outputs[out] for out in wanted}
        binary: set[str] | bool = True if decoded.binary_default else decoded.binary_outputs
        body_out, headers = codec.encode_response(
            self.runtime.name, self.runtime.version, decoded.request.id, selected, binary=binary
        )
        return EncodedResponse(body_out, headers)

    def _run(self, tensors: dict[str, np.ndarray], label: str) -> dict[str, np.ndarray]:
        started = time.perf_counter()
        try:
            outputs = self.runtime.infer(tensors)
        except TriserveError:
            raise
        except Exception as exc:
            log.exception("inference failed")
            raise TriserveError(f"inference failed: {type(exc).__name__}: {exc}", 500) from exc
        finally:
            self.publish_model_info()
        self.metrics.compute_latency.labels(label).observe(time.perf_counter() - started)
        missing = [out for out in self._output_names if out not in outputs]
        if missing:
            raise TriserveError(f"runtime returned no output {missing}", 500)
        return outputs
