"""Hostile images, made at test time: every accepted format encoded, truncated, corrupted, with
lying headers (decompression bombs: a few hundred bytes declaring millions of pixels) and
animated with thousands of frames. Header fields are patched with ``struct`` (the bytes of a
bomb cannot be made by encoding the image it claims to be)."""

from __future__ import annotations

import random
import struct
import zlib

import numpy as np
from PIL import Image

from tests.support.encode import image_bytes

FORMATS = ("PNG", "JPEG", "BMP", "GIF", "TIFF", "WEBP")
"""The gateway's default allow-list."""


def sample_image(seed: int = 0, size: tuple[int, int] = (200, 150)) -> Image.Image:
    """A noisy RGB picture: every format's encoding of it has some length to cut into."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8), "RGB")


def truncations(data: bytes, fractions: tuple[float, ...]) -> list[tuple[str, bytes]]:
    """``data`` cut short: the first few header bytes, and at fractions of its length."""
    cuts = {n: f"first {n} bytes" for n in (1, 4, 8, 16, 32) if n < len(data)}
    for f in fractions:
        cuts.setdefault(max(1, int(len(data) * f)), f"cut at {f:.0%}")
    return [(label, data[:n]) for n, label in sorted(cuts.items())]


def corruptions(data: bytes, seeds: range) -> list[tuple[str, bytes]]:
    """``data`` with bytes overwritten at seeded places (some still decode: 200 is fine then)."""
    out = []
    for seed in seeds:
        rng = random.Random(seed)
        buf = bytearray(data)
        start = rng.randrange(4, len(buf))
        for i in range(start, min(len(buf), start + rng.randrange(1, 64))):
            buf[i] = rng.randrange(256)
        out.append((f"bytes overwritten from {start} (seed {seed})", bytes(buf)))
    head = data[:8]
    out.append(("magic then garbage", head + random.Random(99).randbytes(500)))
    return out


# ------------------------------------------------------------------ decompression bombs


def _png(width: int, height: int) -> bytes:
    png = image_bytes(Image.new("L", (1, 1)), "PNG")
    chunk = b"IHDR" + struct.pack(">II", width, height) + png[24:29]
    return png[:8] + struct.pack(">I", 13) + chunk + struct.pack(">I", zlib.crc32(chunk)) + png[33:]


def _gif(width: int, height: int) -> bytes:
    gif = bytearray(image_bytes(Image.new("L", (1, 1)), "GIF"))
    gif[6:10] = struct.pack("<HH", width, height)
    return bytes(gif)


def _bmp(width: int, height: int) -> bytes:
    bmp = bytearray(image_bytes(Image.new("L", (1, 1)), "BMP"))
    bmp[18:26] = struct.pack("<ii", width, height)
    return bytes(bmp)


def _jpeg(width: int, height: int) -> bytes:
    jpg = bytearray(image_bytes(Image.new("L", (8, 8)), "JPEG"))
    sof = jpg.find(b"\xff\xc0")
    jpg[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(jpg)


def _tiff(width: int, height: int) -> bytes:
    tif = bytearray(image_bytes(Image.new("L", (1, 1)), "TIFF"))
    ifd = struct.unpack_from("<I", tif, 4)[0]
    for k in range(struct.unpack_from("<H", tif, ifd)[0]):
        entry = ifd + 2 + 12 * k
        tag, kind = struct.unpack_from("<HH", tif, entry)
        if tag in (256, 257):
            value = width if tag == 256 else height
            struct.pack_into("<H" if kind == 3 else "<I", tif, entry + 8, value)
    return bytes(tif)


def _webp(width: int, height: int) -> bytes:
    webp = bytearray(image_bytes(Image.new("L", (1, 1)), "WEBP", lossless=True))
    bits = int.from_bytes(webp[21:25], "little")
    bits = (bits & ~((1 << 28) - 1)) | (width - 1) | ((height - 1) << 14)
    webp[21:25] = bits.to_bytes(4, "little")
    return bytes(webp)


_BOMBS = {"PNG": _png, "GIF": _gif, "BMP": _bmp, "JPEG": _jpeg, "TIFF": _tiff, "WEBP": _webp}
_LIMITS = {"PNG": 2**31 - 1, "GIF": 65535, "BMP": 2**31 - 1, "JPEG": 65535, "TIFF": 65535, "WEBP": 16384}


def bomb(fmt: str, width: int, height: int) -> bytes:
    """A tiny ``fmt`` file whose header declares ``width`` x ``height`` pixels."""
    limit = _LIMITS[fmt]
    return _BOMBS[fmt](min(width, limit), min(height, limit))


def bombs() -> list[tuple[str, bytes]]:
    """Per format: headers declaring from just over the per-image limit to the format's maximum."""
    out = []
    for fmt in FORMATS:
        for width, height in ((4001, 4001), (20000, 1000), (16384, 16384), (65535, 65535)):
            data = bomb(fmt, width, height)
            w, h = min(width, _LIMITS[fmt]), min(height, _LIMITS[fmt])
            out.append((f"{fmt} declaring {w}x{h} in {len(data)} bytes", data))
    return out


# ------------------------------------------------------------------ animations


def animated(fmt: str, first: Image.Image, frames: int, noisy: int = 16) -> bytes:
    """``first`` followed by ``frames - 1`` other frames (``noisy`` of them noise, the rest flat
    grays: thousands of frames in a small file), as an animated ``fmt``."""
    rng = np.random.default_rng(frames)
    rest = [
        Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8), "L")
        if i < noisy
        else Image.new("L", (28, 28), 1 + i % 254)
        for i in range(frames - 1)
    ]
    base = first.convert("L")
    if fmt == "TIFF":
        return image_bytes(base, "TIFF", save_all=True, append_images=rest)
    return image_bytes(base, fmt, save_all=True, append_images=rest, duration=10, loop=0)
