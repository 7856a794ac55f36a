"""Image → model input, once, at the gateway, per the manifest's :class:`PreprocessSpec`.

Two steps, so that limits are judged before any pixel is decoded:

1. :meth:`ImagePreprocessor.open` reads only the header (Pillow opens lazily): the format must
   be in the allow-list and the declared size within ``max_pixels``;
2. :meth:`ImagePreprocessor.decode` converts to the spec's colour mode, resizes to
   ``width`` x ``height``, optionally inverts, then ``(pixel * scale - mean) / std`` as float32
   NCHW ``[1, C, H, W]`` (a 256-entry lookup table built once per spec).

Animated images (GIF, APNG, WebP) and multi-page TIFFs: the first frame only.

Errors (JSON ``{"error": ...}`` naming the problem and, for limits, the setting that raises them):

- empty, not an image, or a format outside the allow-list → 415 :class:`UnsupportedMediaTypeError`;
- more than ``max_pixels`` pixels (decompression bombs) → 413 :class:`PayloadTooLargeError`;
- recognised but undecodable (truncated, corrupt: whatever Pillow raises) → 422 :class:`UnprocessableError`.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from triserve_common.errors import PayloadTooLargeError, UnprocessableError, UnsupportedMediaTypeError
from triserve_common.manifest import PreprocessSpec
from triserve_gateway.settings import DEFAULT_IMAGE_FORMATS, GatewaySettings

log = logging.getLogger(__name__)
Array = np.ndarray[Any, Any]

_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
}


def _problem(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text[:200]


class ImagePreprocessor:
    """Decodes encoded images into the model's float32 input (see module doc)."""

    def __init__(
        self,
        spec: PreprocessSpec,
        max_pixels: int = 16_000_000,
        formats: Sequence[str] = DEFAULT_IMAGE_FORMATS,
    ) -> None:
        self.spec = spec
        self.max_pixels = max_pixels
        self.formats = tuple(f.upper() for f in formats)
        self.size = (spec.width, spec.height)
        self.channels = len(spec.color_mode)
        self.resample = _RESAMPLE[spec.resample]
        self._lut = self._build_lut(spec)

    @staticmethod
    def _build_lut(spec: PreprocessSpec) -> Array:
        """``lut[c, v]``: float32 value of 8-bit value ``v`` in channel ``c``."""
        channels = len(spec.color_mode)
        mean = list(spec.mean) * channels if len(spec.mean) == 1 else list(spec.mean)
        std = list(spec.std) * channels if len(spec.std) == 1 else list(spec.std)
        if len(mean) != channels or len(std) != channels:
            raise ValueError(f"preprocessing mean/std need 1 or {channels} values")
        values = np.arange(256, dtype=np.float64)
        if spec.invert:
            values = 255.0 - values
        table = np.stack([(values * spec.scale - m) / s for m, s in zip(mean, std, strict=True)])
        return table.astype(np.float32)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """Shape of one preprocessed image without the batch axis: ``(C, H, W)``."""
        return (self.channels, self.spec.height, self.spec.width)

    # ------------------------------------------------------------------ step 1: the header

    def open(self, data: bytes, what: str = "image") -> Image.Image:
        """The image with only its header read: format allowed, size within ``max_pixels``."""
        if not data:
            raise UnsupportedMediaTypeError(f"{what} is empty: send an encoded image (PNG, JPEG, ...)")
        try:
            image: Image.Image = Image.open(io.BytesIO(data), formats=self.formats)
        except UnidentifiedImageError:
            raise UnsupportedMediaTypeError(
                f"{what} is not an image in an accepted format ({len(data)} bytes, starting "
                f"{data[:8]!r}); accepted: {', '.join(self.formats)} "
                f"(setting {GatewaySettings.env_name('image_formats')})"
            ) from None
        except Image.DecompressionBombError as exc:
            raise PayloadTooLargeError(
                f"{what}: {_problem(exc)} (limit {self.max_pixels} pixels, setting "
                f"{GatewaySettings.env_name('max_image_pixels')})"
            ) from None
        except Exception as exc:  # a corrupt header: whatever the format plugin raises
            raise UnprocessableError(f"{what} could not be decoded: {_problem(exc)}") from None
        width, height = image.size
        if width * height > self.max_pixels:
            raise PayloadTooLargeError(
                f"{what} is {width}x{height} = {width * height} pixels, over the limit of "
                f"{self.max_pixels} pixels per image (setting {GatewaySettings.env_name('max_image_pixels')})"
            )
        if width < 1 or height < 1:
            raise UnprocessableError(f"{what} has no pixels ({width}x{height})")
        return image

    # ------------------------------------------------------------------ step 2: the pixels

    def decode(self, image: Image.Image, what: str = "image") -> Array:
        """An opened image (first frame) → float32 ``[1, C, H, W]``."""
        try:
            if image.mode != self.spec.color_mode:
                image = image.convert(self.spec.color_mode)
            if image.size != self.size:
                image = image.resize(self.size, self.resample)
            pixels = np.asarray(image, dtype=np.uint8)
        except Exception as exc:  # truncated or corrupt data: whatever the decoder raises
            raise UnprocessableError(f"{what} could not be decoded: {_problem(exc)}") from None
        if pixels.shape[:2] != (self.spec.height, self.spec.width):
            raise UnprocessableError(f"{what} could not be decoded to {self.size[0]}x{self.size[1]}")
        if self.channels == 1:
            out: Array = self._lut[0][pixels]
            return out.reshape(1, 1, self.spec.height, self.spec.width)
        chw = pixels.transpose(2, 0, 1)
        out = np.stack([self._lut[c][chw[c]] for c in range(self.channels)])
        return out.reshape(1, self.channels, self.spec.height, self.spec.width)

    def decode_all(self, images: Sequence[Image.Image], names: Sequence[str]) -> Array:
        """Opened images → float32 ``[N, C, H, W]`` (errors name the image)."""
        if len(images) == 1:
            return self.decode(images[0], names[0])
        return np.concatenate([self.decode(img, n) for img, n in zip(images, names, strict=True)], axis=0)

    # ------------------------------------------------------------------ both steps

    def __call__(self, data: bytes, what: str = "image") -> Array:
        """One encoded image → float32 ``[1, C, H, W]``; ``what`` names it in error messages."""
        return self.decode(self.open(data, what), what)

    def batch(self, images: Sequence[bytes], what: str = "image") -> Array:
        """Several encoded images → float32 ``[N, C, H, W]``; every header is checked first."""
        names = image_names(what, len(images))
        opened = [self.open(img, n) for img, n in zip(images, names, strict=True)]
        return self.decode_all(opened, names)


def image_names(what: str, count: int) -> list[str]:
    """How errors name each of ``count`` images (``what``, or ``what i`` when several)."""
    return [what] if count == 1 else [f"{what} {i}" for i in range(count)]
