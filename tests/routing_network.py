"""An in-process memory network of full nodes with capabilities, for routing tests and the
routing benchmark.

Signed capability records are made here with ``discovery.sign_record`` and offered to every
node's ``node.discovery.records`` (what handshakes, PEX and the DHT do in a real network), and
each node's memory address is put into every peer manager's address book (gossip), so the
policy engine has candidates to dial from the first tick.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass

from discovery import SignedRecord, sign_record
from overlay.address import NodeAddress
from overlay.identity import NodeKey
from overlay.node import Node
from overlay.node._config import (
    ConnectionConfig,
    DhtSettings,
    DiscoveryConfig,
    NodeConfig,
    RoutingConfig,
)
from overlay.peers import PeerManagerConfig
from overlay.router._channel import ChannelSpec, Envelope, RequestHandler
from overlay.router._codec import BytesCodec
from overlay.testing import MemoryNetwork
from routing import TargetSet

QUIET = ConnectionConfig(ping_interval=30.0, idle_timeout=120.0)
"""Fewer keep-alive pings: a large network on a mock clock spends its time on them."""

SERVE = ChannelSpec(id=0x30, name="serve", codec=BytesCodec(), response_codec=BytesCodec())
"""The channel role requests use in these tests (every node serves it)."""


@dataclass(frozen=True, slots=True)
class Plan:
    """Which node serves what: ``capabilities[i]`` for node ``i``."""

    capabilities: Sequence[frozenset[str]]


def spread(n: int, shares: Mapping[str, float]) -> Plan:
    """Node ``i`` serves capability ``c`` for the first ``round(share * n)`` nodes of a
    stride through the ids (deterministic, spread over the whole network)."""
    caps: list[set[str]] = [set() for _ in range(n)]
    for offset, (cap, share) in enumerate(sorted(shares.items())):
        count = round(share * n)
        stride = n / count if count else n
        for k in range(count):
            caps[(int(k * stride) + offset * 7) % n].add(cap)
    return Plan([frozenset(c) for c in caps])


def record_for(key: NodeKey, network: str, capabilities: frozenset[str]) -> SignedRecord:
    """A signed record (valid for an hour) advertising ``capabilities``."""
    now = int(time.time())
    return sign_record(
        key, network=network, seq=now * 1000, issued_at=now, expires_at=now + 3600,
        addresses=("127.0.0.1:26656",), capabilities={c: 1 for c in capabilities},
    )


def introduce(nodes: Sequence[Node], records: Sequence[SignedRecord]) -> None:
    """Every node learns every other node's record and memory address."""
    for node in nodes:
        wall = node.wall_clock()
        for other, signed in zip(nodes, records, strict=True):
            if other is node:
                continue
            # attributed to the node itself (as from its hello): one source may only hold
            # ``max_per_source`` records, which a 1,000-node network would exceed
            node.discovery.records.offer(signed, wall, other.node_id)
            node.peering.manager.add_address(
                NodeAddress.parse(f"memory:{other.node_id}"), source=other.node_id, now=wall
            )
        node.routing.wake()
        node.peering.wake()


Handler = Callable[[Node], RequestHandler[bytes, bytes]]


def answer_with_id(node: Node) -> RequestHandler[bytes, bytes]:
    async def answer(env: Envelope[bytes]) -> bytes:
        return node.node_id.encode()

    return answer


@contextlib.asynccontextmanager
async def routing_network(
    plan: Plan,
    *,
    targets: TargetSet,
    peers: PeerManagerConfig | None = None,
    routing: RoutingConfig | None = None,
    network: MemoryNetwork | None = None,
    handler: Handler = answer_with_id,
    server_peers: Mapping[str, PeerManagerConfig] | None = None,
    server_connection: Mapping[str, ConnectionConfig] | None = None,
    last_peers: PeerManagerConfig | None = None,
    gossip: bool = True,
) -> AsyncIterator[list[Node]]:
    """Run ``len(plan.capabilities)`` nodes, each with ``targets`` and ``SERVE`` answered by
    ``handler(node)``; every node knows every record and address. Nodes start unconnected.

    ``server_peers`` gives nodes serving a capability other limits (a scarce capability's
    few providers must accept many more peers than the rest: with 3 % archive nodes and every
    node wanting two of them, each archive node holds about 65 connections); ``last_peers``
    the last node (a client), whatever it serves; ``server_connection`` their connection
    settings (e.g. a small pending-handshake table). ``gossip=False`` turns PEX and the DHT
    off: every record is given anyway, and at hundreds of nodes their lookups and exchanges
    cost most of the CPU of a run that measures the routing policy."""
    net = network if network is not None else MemoryNetwork()
    peer_config = peers or PeerManagerConfig(max_connections=24, max_outbound=4)
    base = routing or RoutingConfig()
    nodes: list[Node] = []
    records: list[SignedRecord] = []
    async with contextlib.AsyncExitStack() as stack:
        for index, caps in enumerate(plan.capabilities):
            key = NodeKey.generate()
            limits = peer_config
            for cap, special in sorted((server_peers or {}).items()):
                if cap in caps:
                    limits = special
            if last_peers is not None and index == len(plan.capabilities) - 1:
                limits = last_peers
            connection = QUIET
            for cap, special_connection in sorted((server_connection or {}).items()):
                if cap in caps:
                    connection = special_connection
            config = NodeConfig(
                listen=("memory:",), peers=limits, connection=connection,
                routing=dataclasses.replace(base, targets=targets),
                discovery=DiscoveryConfig(
                    capabilities=tuple(sorted(caps)), pex_enabled=gossip,
                    dht=DhtSettings(enabled=gossip),
                ),
            )
            node = Node(config, key=key, transports=[net.node_transport()])
            node.channel(SERVE).handle_requests(handler(node))
            nodes.append(await stack.enter_async_context(node))
            records.append(record_for(key, config.network, caps))
        introduce(nodes, records)
        yield nodes
