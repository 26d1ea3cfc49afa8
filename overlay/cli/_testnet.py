"""``overlay testnet``: N nodes in one process over loopback TCP, fully connected, exchanging
request/response and broadcast traffic for a while, then a summary.

Each node runs as in production with its peer manager (the peering driver, without a store):
the manager gates and admits every inbound connection. All nodes share the 127.0.0.1 address,
so :func:`testnet_config` exempts the loopback networks (:data:`LOOPBACK_NETWORKS`) from the
per-IP and per-netgroup limits and sizes the connection limits for a full mesh; refusals,
evictions and bans by any manager are reported as errors.

This is the main job's first form; the testnet issue grows it (modes, perturbations, reports).
"""

from __future__ import annotations

import dataclasses
import math
import random
import statistics
import sys
import time
from collections import Counter
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import TextIO

import anyio

from overlay.errors import ConfigError, NoRoute, OverlayError
from overlay.identity import NodeId
from overlay.node._config import AdminConfig, NodeConfig
from overlay.node._node import Node
from overlay.node._peering import Peering
from overlay.peers import PeerManagerConfig
from overlay.router._channel import ChannelSpec, Envelope
from overlay.router._codec import BytesCodec
from overlay.router._destination import BROADCAST

__all__ = ["LOOPBACK_NETWORKS", "TestnetReport", "run_testnet", "testnet_config"]

LOOPBACK_NETWORKS = ("127.0.0.0/8", "::1/128")
"""Exempt from the per-IP / per-netgroup limits in a local network: every node is on loopback."""

ECHO = ChannelSpec(id=0x30, name="echo", codec=BytesCodec(), response_codec=BytesCodec(),
                   priority=2)
GOSSIP = ChannelSpec(id=0x31, name="gossip", codec=BytesCodec(), response_codec=BytesCodec(),
                     priority=1, recv_queue_size=256)


@dataclass(slots=True)
class TestnetReport:
    """What a testnet run measured."""

    nodes: int
    duration: float
    converge_seconds: float = float("nan")
    connections: int = 0
    requests_ok: int = 0
    latencies: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    gossip_sent: int = 0
    gossip_received: int = 0

    @property
    def ok(self) -> bool:
        return not self.failures()

    def failures(self) -> list[str]:
        """Why the run failed (empty when it passed)."""
        reasons = []
        full = self.nodes * (self.nodes - 1)
        if self.connections != full:
            reasons.append(f"{self.connections} of {full} peer links connected")
        if self.errors:
            reasons.append(f"{sum(self.errors.values())} errors")
        if self.requests_ok == 0:
            reasons.append("no request completed")
        return reasons

    def percentile(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
        return ordered[index]

    def render(self) -> str:
        ms = 1000.0

        def latency(seconds: float, digits: int = 2) -> str:
            return "-" if math.isnan(seconds) else f"{seconds * ms:.{digits}f} ms"

        mean = statistics.fmean(self.latencies) if self.latencies else float("nan")
        failures = self.failures()
        lines = [
            f"testnet: {self.nodes} nodes, loopback TCP + Noise, {self.duration:g} s of traffic",
            f"  converged (full mesh):  {latency(self.converge_seconds, 1)}, "
            f"{self.connections}/{self.nodes * (self.nodes - 1)} peer links",
            f"  requests ok:            {self.requests_ok} "
            f"({self.requests_ok / max(self.duration, 1e-9):.0f}/s)",
            f"  request latency:        p50 {latency(self.percentile(50))}  "
            f"p90 {latency(self.percentile(90))}  p99 {latency(self.percentile(99))}  "
            f"max {latency(max(self.latencies, default=float('nan')))}",
            f"  mean latency:           {latency(mean)}",
            f"  broadcast messages:     {self.gossip_sent} sent, {self.gossip_received} received",
            f"  errors:                 {sum(self.errors.values())}"
            + "".join(f"\n    {name}: {count}" for name, count in self.errors.most_common()),
            "  result:                 "
            + ("OK" if not failures else "FAILED: " + "; ".join(failures)),
        ]
        return "\n".join(lines)


async def _echo(env: Envelope[bytes]) -> bytes:
    return env.message


def testnet_config(nodes: int, network: str = "overlay-testnet") -> NodeConfig:
    """The configuration of each node of a ``nodes``-node local testnet: loopback TCP on a free
    port, no admin API, loopback exempt from the per-IP / per-netgroup limits, and room for a
    full mesh (``nodes - 1`` outbound or inbound connections per node)."""
    default = PeerManagerConfig()
    max_outbound = max(default.max_outbound, nodes - 1)
    peers = PeerManagerConfig(
        exempt_networks=LOOPBACK_NETWORKS,
        max_outbound=max_outbound,
        max_connections=max(default.max_connections, max_outbound + nodes - 1),
    )
    return NodeConfig(network=network, listen=("tcp://127.0.0.1:0",),
                      admin=AdminConfig(enabled=False), peers=peers)


async def run_testnet(
    nodes: int = 4,
    duration: float = 3.0,
    *,
    concurrency: int = 4,
    seed: int = 1,
    network: str = "overlay-testnet",
    peers: PeerManagerConfig | None = None,
    out: TextIO | None = sys.stdout,
) -> TestnetReport:
    """Start ``nodes`` nodes, connect them fully, run traffic for ``duration`` s, report.

    ``peers`` replaces the peer-manager configuration of :func:`testnet_config`.
    """
    if nodes < 2:
        raise ConfigError("nodes", "a testnet needs at least 2 nodes")
    if not (duration > 0 and math.isfinite(duration)):
        raise ConfigError("duration", f"must be a positive number of seconds, got {duration!r}")
    rng = random.Random(seed)
    report = TestnetReport(nodes=nodes, duration=duration)
    config = testnet_config(nodes, network)
    if peers is not None:
        config = dataclasses.replace(config, peers=peers)
    async with AsyncExitStack() as stack:
        members: list[Node] = []
        peerings: list[Peering] = []
        for i in range(nodes):
            node = Node(config)  # each with its peer manager (in memory: no home)
            echo = node.channel(ECHO)
            echo.handle_requests(_echo)
            node.channel(GOSSIP)
            members.append(await stack.enter_async_context(node))
            peerings.append(node.peering)
            if out:
                print(f"node {i}: {node.address}", file=out)
        started = anyio.current_time()
        async with anyio.create_task_group() as tg:
            for i, a in enumerate(members):
                for b in members[i + 1 :]:
                    tg.start_soon(_dial, a, b, report)
        report.converge_seconds = anyio.current_time() - started
        report.connections = sum(len(n.connected_peers()) for n in members)
        if out:
            print(f"full mesh after {report.converge_seconds * 1000:.1f} ms", file=out)
        deadline = anyio.current_time() + duration
        async with anyio.create_task_group() as tg:
            for node in members:
                tg.start_soon(_drain_gossip, node, report, deadline + 1.0)
                tg.start_soon(_gossip, node, report, deadline)
                for _ in range(concurrency):
                    tg.start_soon(_requests, node, report, deadline, random.Random(rng.random()))
        _count_manager_errors(peerings, report)
    return report


def _count_manager_errors(peerings: list[Peering], report: TestnetReport) -> None:
    """In a full mesh no manager should refuse, evict or ban anyone. A ``duplicate`` refusal is
    not an error: two nodes that learned each other through PEX may dial each other at once,
    and the duplicate rule keeps exactly one of the two connections."""
    for peering in peerings:
        stats = peering.manager.statistics()
        for reason, count in stats.inbound_rejected.items():
            if reason != "duplicate":
                report.errors[f"inbound refused: {reason}"] += count
        for name, count in (("evictions", stats.evictions), ("bans", stats.bans),
                            ("ip bans", stats.ip_bans)):
            if count:
                report.errors[f"peer manager: {name}"] += count


async def _dial(a: Node, b: Node, report: TestnetReport) -> None:
    try:
        await a.dial(b.address)
    except OverlayError as exc:
        report.errors[f"dial: {type(exc).__name__}"] += 1


async def _requests(node: Node, report: TestnetReport, deadline: float,
                    rng: random.Random) -> None:
    echo = node.channel(ECHO)
    payload = rng.randbytes(64)
    while anyio.current_time() < deadline:
        peers = node.connected_peers()
        if not peers:
            report.errors["no peers"] += 1
            return
        peer: NodeId = rng.choice(peers)
        started = time.perf_counter()  # loop clocks may tick in whole milliseconds (uvloop)
        try:
            answer = await echo.request(peer, payload, timeout=2.0)
        except OverlayError as exc:
            report.errors[f"request: {type(exc).__name__}"] += 1
            continue
        if answer != payload:
            report.errors["request: wrong echo"] += 1
            continue
        report.latencies.append(time.perf_counter() - started)
        report.requests_ok += 1


async def _gossip(node: Node, report: TestnetReport, deadline: float) -> None:
    gossip = node.channel(GOSSIP)
    n = 0
    while anyio.current_time() < deadline:
        try:
            result = await gossip.send(
                BROADCAST, f"{node.node_id[:8]}:{n}".encode(), timeout=1.0
            )
        except NoRoute:
            report.errors["broadcast: no peers"] += 1
        else:
            report.gossip_sent += len(result.delivered)
            for outcome in result.failed.values():
                report.errors[f"broadcast: {outcome.value}"] += 1
        n += 1
        await anyio.sleep(0.05)


async def _drain_gossip(node: Node, report: TestnetReport, until: float) -> None:
    gossip = node.channel(GOSSIP)
    with anyio.move_on_after(max(0.0, until - anyio.current_time())):
        async for _env in gossip:
            report.gossip_received += 1
