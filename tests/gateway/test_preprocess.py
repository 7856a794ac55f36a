"""Image preprocessing per PreprocessSpec, limits and their errors."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from tests.gateway.fakes import SPEC, gray_png
from tests.support.encode import image_bytes
from triserve_common.errors import (
    PayloadTooLargeError,
    UnprocessableError,
    UnsupportedMediaTypeError,
)
from triserve_common.manifest import PreprocessSpec
from triserve_gateway.preprocess import ImagePreprocessor


def test_png_matches_reference_normalisation() -> None:
    pixels = np.random.default_rng(0).integers(0, 256, (28, 28), dtype=np.uint8)
    x = ImagePreprocessor(SPEC)(image_bytes(Image.fromarray(pixels, "L"), "PNG"))
    expected = ((pixels.astype(np.float32) / 255.0) - 0.1307) / 0.3081
    assert x.shape == (1, 1, 28, 28) and x.dtype == np.float32
    np.testing.assert_allclose(x[0, 0], expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("fmt", ["JPEG", "BMP", "GIF", "TIFF", "WEBP"])
def test_any_pillow_format_colour_and_size_is_accepted(fmt: str) -> None:
    img = Image.new("RGB", (56, 40), (200, 200, 200))
    x = ImagePreprocessor(SPEC)(image_bytes(img, fmt))
    assert x.shape == (1, 1, 28, 28)
    assert abs(float(x.mean()) - (200 / 255 - 0.1307) / 0.3081) < 0.05


def test_invert_and_custom_normalisation() -> None:
    spec = PreprocessSpec(width=28, height=28, invert=True, mean=[0.0], std=[1.0])
    x = ImagePreprocessor(spec)(gray_png(255))
    assert np.allclose(x, 0.0)


def test_not_an_image_is_415_naming_the_problem() -> None:
    with pytest.raises(UnsupportedMediaTypeError, match="not an image"):
        ImagePreprocessor(SPEC)(b"hello, this is text")
    with pytest.raises(UnsupportedMediaTypeError, match="empty"):
        ImagePreprocessor(SPEC)(b"")


def test_truncated_image_is_422() -> None:
    png = gray_png(10, size=(200, 200))
    with pytest.raises(UnprocessableError, match="could not be decoded"):
        ImagePreprocessor(SPEC)(png[: len(png) // 2])


def test_pixel_limit_is_413_before_decoding() -> None:
    # A 10000x10000 PNG of zeros compresses to a few KB: a decompression bomb in miniature.
    bomb = image_bytes(Image.new("L", (10000, 10000)), "PNG")
    assert len(bomb) < 200_000
    with pytest.raises(PayloadTooLargeError, match="pixels"):
        ImagePreprocessor(SPEC, max_pixels=1_000_000)(bomb)


def test_batch_names_the_bad_image() -> None:
    with pytest.raises(UnsupportedMediaTypeError, match="image 1"):
        ImagePreprocessor(SPEC).batch([gray_png(1), b"nope"], "image")
