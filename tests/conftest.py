"""Shared fixtures. Async tests use anyio's pytest plugin; the default backend is asyncio.

Modules that must run on both backends write ``anyio_backend = both_backends()`` (and
``transport = both_transports()`` for loopback TCP and the memory network) with the helpers
from ``tests.support``.
"""

from __future__ import annotations

import pytest


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
