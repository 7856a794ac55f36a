"""Per-request budgets, the same on every path and for every backend, checked before routing.

- rows: at most ``max_rows_per_request`` rows per request (images or tensor rows), so every
  backend gets the same answer whatever the router picks;
- images: at most ``max_images_per_request`` encoded images (multipart file parts, BYTES
  elements); at most ``max_image_pixels`` per image and ``max_request_pixels`` for all images
  of a request together, judged from the image headers before anything is decoded;
- decoding runs on the event loop only when the request's images declare at most
  ``inline_decode_max_pixels`` pixels (a small PNG takes microseconds), else in a worker thread.

Every refusal is a 413 naming the limit and the setting that raises it.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from triserve_common.errors import PayloadTooLargeError
from triserve_common.manifest import TensorSpec
from triserve_common.tensor_checks import DecodeLimits, json_limits
from triserve_gateway.preprocess import ImagePreprocessor, image_names
from triserve_gateway.settings import GatewaySettings

Array = np.ndarray[Any, Any]


def _limit(what: str, count: int, limit: int, setting: str) -> PayloadTooLargeError:
    return PayloadTooLargeError(
        f"{what}: {count}, over the limit of {limit} (setting {GatewaySettings.env_name(setting)})"
    )


@dataclass(frozen=True)
class RequestBudget:
    """What one request may cost (see module doc)."""

    max_rows: int
    max_images: int
    max_request_pixels: int
    inline_decode_max_pixels: int

    @classmethod
    def from_settings(cls, settings: GatewaySettings) -> RequestBudget:
        return cls(
            max_rows=settings.max_rows_per_request,
            max_images=settings.max_images_per_request,
            max_request_pixels=settings.max_request_pixels,
            inline_decode_max_pixels=settings.inline_decode_max_pixels,
        )

    def json_limits(self, inputs: Iterable[TensorSpec]) -> DecodeLimits:
        """Decoding limits of OIP v2 requests: JSON values for ``max_rows`` rows of the largest of
        ``inputs`` (checked before the JSON is parsed, see :class:`DecodeLimits`)."""
        largest = max(inputs, key=lambda spec: math.prod(abs(d) for d in spec.shape[1:]), default=None)
        if largest is None:
            return DecodeLimits()
        return json_limits([largest], self.max_rows, GatewaySettings.env_name("max_rows_per_request"))

    def check_rows(self, rows: int) -> None:
        """413 when a request holds more rows than any backend may be sent."""
        if rows > self.max_rows:
            raise _limit("rows in this request", rows, self.max_rows, "max_rows_per_request")

    def check_image_count(self, count: int) -> None:
        """413 over the image count (before any image is opened)."""
        if count > self.max_images:
            raise _limit("images in this request", count, self.max_images, "max_images_per_request")
        self.check_rows(count)

    async def decode(self, pre: ImagePreprocessor, images: Sequence[bytes], what: str) -> Array:
        """Every image's header checked, the request's pixels counted, then the pixels decoded
        (inline or in a worker thread, see module doc): float32 ``[N, C, H, W]``."""
        self.check_image_count(len(images))
        names = image_names(what, len(images))
        opened = [pre.open(data, name) for data, name in zip(images, names, strict=True)]
        pixels = sum(img.size[0] * img.size[1] for img in opened)
        if pixels > self.max_request_pixels:
            raise _limit(
                "pixels of all images in this request", pixels, self.max_request_pixels,
                "max_request_pixels",
            )
        if pixels <= self.inline_decode_max_pixels:
            return pre.decode_all(opened, names)
        return await asyncio.to_thread(pre.decode_all, opened, names)
