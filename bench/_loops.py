"""The event loops ``bench/run.py`` runs on, and the plain baselines that belong to each.

Ours always runs through anyio; the baselines are what a plain program on the same loop would
write: asyncio streams and an anyio memory object stream on asyncio and uvloop, trio socket
streams and a trio memory channel on trio (see ``bench/_baseline_trio.py``).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import anyio

from bench import _baseline as aio
from bench._common import Rate

__all__ = ["BACKENDS", "Baselines", "Loop", "loop_named", "missing_module"]

T = TypeVar("T")

BACKENDS = ("asyncio", "uvloop", "trio")
"""The names ``--backend`` accepts."""

RatePayload = Callable[[bytes, float, float], Awaitable[Rate]]


@dataclass(frozen=True, slots=True)
class Baselines:
    """The plain-code side of cases 1, 2, 3, 4 and 5 on one loop, and what to call them."""

    round_trips: RatePayload
    pipelined: Callable[[bytes, int, float, float], Awaitable[Rate]]
    bulk: RatePayload
    connect_times: Callable[[int, int], Awaitable[list[float]]]
    local: Callable[[int, Any, float, float], Awaitable[Rate]]
    tcp_name: str
    """``asyncio`` or ``trio``: what the TCP baselines are written with."""
    local_name: str
    """The LOCAL case's baseline (a memory stream or channel)."""
    pipelined_reference: Callable[[bytes, int, float, float], Awaitable[Rate]] | None = None
    """Another way to write case 2's baseline on this loop, measured as a reference only."""


@dataclass(frozen=True, slots=True)
class Loop:
    """One event loop: how ``anyio.run`` starts it and its baselines."""

    name: str
    """``asyncio``, ``uvloop`` or ``trio``."""
    backend: str
    """anyio's backend name."""
    baselines: Baselines
    options: dict[str, Any] = field(default_factory=dict)
    """``backend_options`` of ``anyio.run``."""

    def run(self, func: Callable[..., Awaitable[T]], *args: Any) -> T:
        return anyio.run(func, *args, backend=self.backend, backend_options=self.options)



_ASYNCIO = Baselines(
    round_trips=aio.asyncio_round_trips,
    pipelined=aio.asyncio_pipelined,
    bulk=aio.asyncio_bulk,
    connect_times=aio.asyncio_connect_times,
    local=aio.memory_stream_rate,
    tcp_name="asyncio",
    local_name="anyio memory stream",
)


def _trio_baselines() -> Baselines:
    from bench import _baseline_trio as tr

    return Baselines(
        round_trips=tr.trio_round_trips,
        pipelined=tr.trio_pipelined,
        bulk=tr.trio_bulk,
        connect_times=tr.trio_connect_times,
        local=tr.trio_memory_channel_rate,
        tcp_name="trio",
        local_name="trio memory channel",
        pipelined_reference=tr.trio_batched_pipeline,
    )


def missing_module(name: str) -> str | None:
    """None, or why the loop ``name`` cannot run here."""
    module = name if name in ("trio", "uvloop") else None
    if module is not None and importlib.util.find_spec(module) is None:
        extra = "trio" if module == "trio" else "'overlay[uvloop]'"
        return f"{module} is not installed (pip install {extra})"
    return None


def loop_named(name: str) -> Loop:
    """The loop ``--backend name`` selects (``trio`` is imported only when chosen)."""
    match name:
        case "asyncio":
            return Loop("asyncio", "asyncio", _ASYNCIO, {"use_uvloop": False})
        case "uvloop":
            return Loop("uvloop", "asyncio", _ASYNCIO, {"use_uvloop": True})
        case "trio":
            return Loop("trio", "trio", _trio_baselines())
        case _:
            raise ValueError(f"unknown backend {name!r}; expected one of {', '.join(BACKENDS)}")
