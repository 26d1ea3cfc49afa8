"""One client and a role served by several peers, some of them slow: the workload of the
hedging tests and of ``bench/roles.py``."""

from __future__ import annotations

import contextlib
import math
import random
from dataclasses import dataclass, field

import anyio

from overlay.errors import IncompatiblePeerError
from overlay.node import Node
from overlay.node._config import RoutingConfig
from overlay.peers import PeerManagerConfig
from overlay.router._channel import Envelope, RequestHandler
from overlay.testing import LinkConditions, MemoryNetwork
from routing import TargetSet
from routing._destinations import Role
from tests.routing_network import SERVE, Plan, routing_network
from tests.support import wait_until

PEERS = PeerManagerConfig(max_connections=24, max_outbound=16, feeler_interval=1e9)
"""The client: room for its dials to every server (outbound above ``max_outbound`` is
trimmed), no feeler connections."""
SERVERS = PeerManagerConfig(max_connections=40, max_outbound=0, feeler_interval=1e9)
"""Servers only accept: no automatic dials or feelers of their own that could replace or
close their link to the client while a test measures."""


@dataclass(slots=True)
class Served:
    """What the servers' handlers saw."""

    started: int = 0
    completed: int = 0
    cancelled: int = 0
    slow_started: int = 0
    slow_cancelled: int = 0


@dataclass(slots=True)
class Workload:
    latencies: list[float] = field(default_factory=list)
    requests: int = 0
    attempts: int = 0
    hedges: int = 0
    served: Served = field(default_factory=Served)

    def quantile(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[max(0, math.ceil(q * len(ordered)) - 1)]

    @property
    def extra(self) -> float:
        """Extra requests sent per role request (hedges and retries)."""
        return (self.attempts - self.requests) / self.requests


async def run_workload(
    *, servers: int = 10, slow: int = 3, slow_delay: float = 1.0, hedging: bool = True,
    latency: float = 0.05, requests: int = 400, warmup: int = 40, concurrency: int = 8,
    rotate_every: int | None = None, seed: int = 1,
) -> Workload:
    """``requests`` role requests (after ``warmup``) from one client, ``concurrency`` at a
    time, to ``servers`` peers of which ``slow`` answer after ``slow_delay``. Every
    ``rotate_every`` requests another ``slow`` of them become the slow ones (slowness comes
    and goes, so the ranking cannot simply learn it away; None: always the first ``slow``)."""
    served = Served()
    made = 0
    rng = random.Random(seed)
    slow_now: set[int] = set(range(slow))
    sent = 0

    def handler(node: Node) -> RequestHandler[bytes, bytes]:
        nonlocal made
        index = made
        made += 1

        async def answer(env: Envelope[bytes]) -> bytes:
            is_slow = index in slow_now
            served.started += 1
            served.slow_started += is_slow
            try:
                if is_slow:
                    await anyio.sleep(slow_delay)
            except anyio.get_cancelled_exc_class():
                served.cancelled += 1
                served.slow_cancelled += is_slow
                raise
            served.completed += 1
            return node.node_id.encode()

        return answer

    plan = Plan([frozenset({"blocksync"})] * servers + [frozenset()])
    network = MemoryNetwork(default_link=LinkConditions(latency=latency))
    config = RoutingConfig(hedging=hedging)
    async with routing_network(plan, targets=TargetSet(), routing=config, network=network,
                               handler=handler, peers=PEERS,
                               server_peers={"blocksync": SERVERS}, last_peers=PEERS) as nodes:
        client = nodes[-1]
        for server in nodes[:-1]:
            with contextlib.suppress(IncompatiblePeerError):  # its peer manager was faster
                await client.dial(f"memory:{server.node_id}")
        await wait_until(lambda: len(client.connected_peers()) >= servers, timeout=30)
        ch = client.channel(SERVE)
        work = Workload(served=served)
        limiter = anyio.Semaphore(concurrency)

        async def one(measure: bool) -> None:
            nonlocal sent, slow_now
            async with limiter:
                sent += 1
                if rotate_every is not None and sent % rotate_every == 0:
                    slow_now = set(rng.sample(range(servers), slow))
                started = anyio.current_time()
                response = await client.routing.request(ch, Role("blocksync"), b"q", timeout=5)
                if measure:
                    work.latencies.append(anyio.current_time() - started)
                    work.requests += 1
                    work.attempts += response.result.attempts

        async with anyio.create_task_group() as tg:
            for _ in range(warmup):
                tg.start_soon(one, False)
        before = client.routing.roles.statistics()
        async with anyio.create_task_group() as tg:
            for _ in range(requests):
                tg.start_soon(one, True)
        work.hedges = client.routing.roles.statistics().hedges - before.hedges
        return work
