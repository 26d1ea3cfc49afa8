"""Memory cost of idle connected nodes in a 100-node in-process network.

The network is :class:`overlay.testing.MemoryNetwork`; every node listens on ``memory:`` and
dials ``fanout`` random others (a seeded ``random.Random``), at most 32 dials at once. Two
passes: the first reads the process RSS (``/proc/self/statm``) before the nodes exist and once
every dial has finished and the network is idle; the second builds the same network again under
``tracemalloc`` (whose own bookkeeping would inflate the RSS figure) and reads the Python heap
still allocated. Both are divided by the number of nodes.
"""

from __future__ import annotations

import gc
import random
import tracemalloc
from contextlib import AsyncExitStack
from dataclasses import dataclass

import anyio

from bench._common import rss_bytes
from bench._ours import ECHO
from overlay.errors import OverlayError
from overlay.node import Node
from overlay.node._config import AdminConfig, NodeConfig
from overlay.testing import MemoryNetwork

__all__ = ["MemoryFigures", "measure_memory"]

_CONFIG = NodeConfig(network="overlay-bench", listen=("memory:",),
                     admin=AdminConfig(enabled=False))


@dataclass(frozen=True, slots=True)
class MemoryFigures:
    """Per-node memory of an idle connected memory network."""

    nodes: int
    connections: int
    """Distinct connections once every dial finished."""
    dial_failures: int
    rss_kib_per_node: float
    traced_kib_per_node: float
    build_seconds: float
    """Wall-clock seconds to start the nodes and finish every dial (first pass)."""


async def _build(nodes: int, fanout: int, seed: int, stack: AsyncExitStack) -> tuple[int, int]:
    """Start and connect the network inside ``stack``; returns (connections, failed dials)."""
    network = MemoryNetwork()
    members: list[Node] = []
    for _ in range(nodes):
        node = Node(_CONFIG, transports=[network.node_transport()])
        node.channel(ECHO)
        members.append(await stack.enter_async_context(node))
    rng = random.Random(seed)
    limiter = anyio.CapacityLimiter(32)
    failures = 0

    async def dial(a: Node, b: Node) -> None:
        nonlocal failures
        async with limiter:
            try:
                await a.dial(b.address)
            except OverlayError:
                failures += 1

    async with anyio.create_task_group() as tg:
        for i, node in enumerate(members):
            others = [j for j in range(nodes) if j != i]
            for j in rng.sample(others, min(fanout, len(others))):
                tg.start_soon(dial, node, members[j])
    await anyio.sleep(0.05)  # let the last inbound sides settle
    connections = sum(len(n.connected_peers()) for n in members) // 2
    return connections, failures


async def measure_memory(nodes: int, fanout: int, seed: int = 7) -> MemoryFigures:
    """Run both passes (see the module docstring)."""
    async with AsyncExitStack() as stack:  # warm-up: import-time and first-use allocations
        await _build(2, 1, seed, stack)
    gc.collect()
    before = rss_bytes()
    started = anyio.current_time()
    async with AsyncExitStack() as stack:
        connections, failures = await _build(nodes, fanout, seed, stack)
        build_seconds = anyio.current_time() - started
        gc.collect()
        after = rss_bytes()
    gc.collect()
    tracemalloc.start()
    try:
        async with AsyncExitStack() as stack:
            await _build(nodes, fanout, seed, stack)
            gc.collect()
            traced, _peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    gc.collect()
    return MemoryFigures(
        nodes=nodes,
        connections=connections,
        dial_failures=failures,
        rss_kib_per_node=(after - before) / 1024 / nodes,
        traced_kib_per_node=traced / 1024 / nodes,
        build_seconds=build_seconds,
    )
