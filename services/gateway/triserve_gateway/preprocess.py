"""Image → model input, once, at the gateway, per the manifest's :class:`PreprocessSpec`.

Any format Pillow decodes; converted to the spec's colour mode, resized to ``width`` x ``height``,
optionally inverted, then ``(pixel * scale - mean) / std`` as float32 NCHW ``[1, C, H, W]``.
The per-pixel arithmetic is a 256-entry lookup table built once per spec.

Limits and their errors (JSON ``{"error": ...}`` naming the problem):

- not an image Pillow recognises → 415 :class:`UnsupportedMediaTypeError`;
- more than ``max_pixels`` pixels (decompression bombs; checked from the header, before decoding)
  → 413 :class:`PayloadTooLargeError`;
- recognised but undecodable (truncated, corrupt) → 422 :class:`UnprocessableError`.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from triserve_common.errors import PayloadTooLargeError, UnprocessableError, UnsupportedMediaTypeError
from triserve_common.manifest import PreprocessSpec

Array = np.ndarray[Any, Any]

_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
}


class ImagePreprocessor:
    """Decodes encoded images into the model's float32 input (see module doc)."""

    def __init__(self, spec: PreprocessSpec, max_pixels: int = 16_000_000) -> None:
        self.spec = spec
        self.max_pixels = max_pixels
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

    def __call__(self, data: bytes, what: str = "image") -> Array:
        """One encoded image → float32 ``[1, C, H, W]``; ``what`` names it in error messages."""
        if not data:
            raise UnsupportedMediaTypeError(f"{what} is empty: send an encoded image (PNG, JPEG, ...)")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                image: Image.Image = Image.open(io.BytesIO(data))
        except UnidentifiedImageError:
            raise UnsupportedMediaTypeError(
                f"{what} is not an image format Pillow recognises ({len(data)} bytes, "
                f"starting {data[:8]!r}); send PNG, JPEG, BMP, GIF, TIFF, WebP, ..."
            ) from None
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise PayloadTooLargeError(f"{what}: {exc}") from None
        except (OSError, ValueError, SyntaxError) as exc:
            raise UnprocessableError(f"{what} could not be decoded: {exc}") from None
        width, height = image.size
        if width * height > self.max_pixels:
            raise PayloadTooLargeError(
                f"{what} is {width}x{height} = {width * height} pixels, over the limit of "
                f"{self.max_pixels} pixels"
            )
        if width < 1 or height < 1:
            raise UnprocessableError(f"{what} has no pixels ({width}x{height})")
        try:
            if image.mode != self.spec.color_mode:
                image = image.convert(self.spec.color_mode)
            if image.size != self.size:
                image = image.resize(self.size, self.resample)
            pixels = np.asarray(image, dtype=np.uint8)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
            raise UnprocessableError(f"{what} could not be decoded: {exc}") from None
        if self.channels == 1:
            out: Array = self._lut[0][pixels]
            return out.reshape(1, 1, self.spec.height, self.spec.width)
        chw = pixels.transpose(2, 0, 1)
        out = np.stack([self._lut[c][chw[c]] for c in range(self.channels)])
        return out.reshape(1, self.channels, self.spec.height, self.spec.width)

    def batch(self, images: Sequence[bytes], what: str = "image") -> Array:
        """Several encoded images → float32 ``[N, C, H, W]`` (errors name the image's index)."""
        if len(images) == 1:
            return self(images[0], what)
        return np.concatenate([self(img, f"{what} {i}") for i, img in enumerate(images)], axis=0)
