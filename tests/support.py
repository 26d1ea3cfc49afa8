"""Helpers shared by the node-level tests: configs per transport, connected node pairs, and
waiting for a condition without sleeping."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import anyio
import anyio.lowlevel

from overlay._channel import ChannelSpec
from overlay.config import NodeConfig
from overlay.node import Node
from overlay.testing import MemoryNetwork

__all__ = ["config_for", "connected_pair", "wait_until"]


def config_for(transport: str, **overrides: Any) -> NodeConfig:
    """A node config listening on loopback TCP (free port) or on the memory network."""
    listen = ("tcp://127.0.0.1:0",) if transport == "tcp" else ("memory:",)
    return NodeConfig(listen=listen, **overrides)


async def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    """Let the other tasks run until ``predicate()`` holds (no sleeping; bounded by ``timeout``).

    Spins on plain checkpoints first: asyncio's ``wait_all_tasks_blocked`` polls every 0.1 s
    while any task is runnable, which would make every wait cost 0.1 s.
    """
    with anyio.fail_after(timeout):
        for _ in range(200):
            if predicate():
                return
            await anyio.lowlevel.checkpoint()
        while not predicate():
            await anyio.wait_all_tasks_blocked()


@contextlib.asynccontextmanager
async def connected_pair(
    transport: str, specs: Sequence[ChannelSpec[Any, Any]] = (), **overrides: Any
) -> AsyncIterator[tuple[Node, Node]]:
    """Two running nodes with ``specs`` open on both, the first dialled to the second and the
    connection registered on both ends."""
    network = MemoryNetwork() if transport == "memory" else None
    config = config_for(transport, **overrides)
    async with Node(config, memory_network=network) as a, \
            Node(config, memory_network=network) as b:
        for spec in specs:
            a.channel(spec)
            b.channel(spec)
        await a.dial(b.address)
        await wait_until(lambda: a.node_id in b.connected_peers())
        yield a, b
