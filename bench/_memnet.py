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
import time
import tracemalloc
from contextlib import AsyncExitStack
from dataclasses import dataclass, replace

import anyio

from bench._common import rss_bytes
from bench._ours import ECHO
from overlay.errors import OverlayError
from overlay.node import Node
from overlay.node._config import AdminConfig, DhtSettings, DiscoveryConfig, NodeConfig
from overlay.peers._config import PeerManagerConfig
from overlay.testing import MemoryNetwork

__all__ = ["MemoryFigures", "MeshFigures", "measure_memory", "measure_mesh"]

_CONFIG = NodeConfig(network="overlay-bench", listen=("memory:",),
                     admin=AdminConfig(enabled=False))
"""Default config on ``memory:`` (PEX, DHT and routing on), no admin API."""

_BARE = replace(_CONFIG, discovery=DiscoveryConfig(pex_enabled=False,
                                                   dht=DhtSettings(enabled=False)))
"""Discovery off (no PEX, no DHT): the connections dialed and nothing else, comparable with
the bare nodes measured before discovery existed."""


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


async def _build(nodes: int, fanout: int, seed: int, stack: AsyncExitStack,
                 config: NodeConfig) -> tuple[int, int]:
    """Start and connect the network inside ``stack``; returns (connections, failed dials)."""
    network = MemoryNetwork()
    members: list[Node] = []
    for _ in range(nodes):
        node = Node(config, transports=[network.node_transport()])
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


async def measure_memory(nodes: int, fanout: int, seed: int = 7, *,
                         discovery: bool = False) -> MemoryFigures:
    """Run both passes (see the module docstring); ``discovery``: default config (PEX, DHT)
    instead of discovery off."""
    config = _CONFIG if discovery else _BARE
    async with AsyncExitStack() as stack:  # warm-up: import-time and first-use allocations
        await _build(2, 1, seed, stack, config)
    gc.collect()
    before = rss_bytes()
    started = anyio.current_time()
    async with AsyncExitStack() as stack:
        connections, failures = await _build(nodes, fanout, seed, stack, config)
        build_seconds = anyio.current_time() - started
        gc.collect()
        after = rss_bytes()
    gc.collect()
    tracemalloc.start()
    try:
        async with AsyncExitStack() as stack:
            await _build(nodes, fanout, seed, stack, config)
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


@dataclass(frozen=True, slots=True)
class MeshFigures:
    """A full mesh of ``nodes`` built one dial at a time."""

    nodes: int
    dials: int
    failures: int
    seconds: float
    """Wall-clock seconds of all the dials."""
    last_dial_ms: float
    """Mean milliseconds per dial of the last node's dials (the mesh nearly complete)."""
    connections: int
    """Distinct connections once every dial finished (``dials`` when the mesh is full)."""
    complete: bool
    """False when the time budget ran out before the mesh was full."""
    cpu_seconds: float = 0.0
    """Process CPU seconds of all the dials (``time.process_time``: steadier than wall-clock
    time on a shared machine; both ends of every dial run in this process)."""

    @property
    def ms_per_dial(self) -> float:
        return self.seconds / max(1, self.dials) * 1000.0

    @property
    def cpu_ms_per_dial(self) -> float:
        return self.cpu_seconds / max(1, self.dials) * 1000.0


async def measure_mesh(nodes: int, budget: float = 300.0) -> MeshFigures:
    """Start ``nodes`` nodes on a ``MemoryNetwork`` (the peer manager's limits raised so that
    every node keeps every peer), then node i dials every node before it, one dial at a time,
    until the mesh is full (``nodes * (nodes - 1) / 2`` dials) or the dials used ``budget``
    seconds of process CPU time (then ``complete`` is False and the figures cover the dials
    done; CPU time, so that a loaded machine does not cut the run short)."""
    network = MemoryNetwork()
    limits = PeerManagerConfig(max_connections=2 * nodes + 8, max_outbound=nodes,
                               max_inbound_per_ip=nodes, max_inbound_per_netgroup=nodes,
                               max_outbound_per_netgroup=nodes)
    config = replace(_CONFIG, peers=limits)
    dials = failures = 0
    last = 0.0
    async with AsyncExitStack() as stack:
        members: list[Node] = []
        for _ in range(nodes):
            node = Node(config, transports=[network.node_transport()])
            node.channel(ECHO)
            members.append(await stack.enter_async_context(node))
        started = time.perf_counter()
        cpu_started = time.process_time()
        complete = True
        for i, node in enumerate(members):
            node_started = time.perf_counter()
            if time.process_time() - cpu_started > budget:
                complete = False
                break
            for other in members[:i]:
                dials += 1
                try:
                    await node.dial(other.address)
                except OverlayError:
                    failures += 1
            if i == nodes - 1 and i:
                last = (time.perf_counter() - node_started) / i * 1000.0
        seconds = time.perf_counter() - started
        cpu_seconds = time.process_time() - cpu_started
        connections = sum(len(n.connected_peers()) for n in members) // 2
    return MeshFigures(nodes, dials, failures, seconds, last, connections, complete, cpu_seconds)
