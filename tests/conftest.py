"""Shared fixtures. Async tests use anyio's pytest plugin; the default backend is asyncio.

Modules that must run on both backends set ``pytestmark = pytest.mark.parametrize(
"anyio_backend", ["asyncio", "trio"])`` or use the ``both_backends`` marker idiom below.
"""

from __future__ import annotations

import pytest


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
