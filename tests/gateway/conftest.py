"""Fixtures every gateway unit test module shares (the fakes themselves are in ``fakes.py``)."""

from __future__ import annotations

import pytest

from tests.gateway.fakes import FakeBackend, fakes


@pytest.fixture
def backends() -> dict[str, FakeBackend]:
    """The three fake backends (onnx, paddle, torchserve), healthy."""
    return fakes()
