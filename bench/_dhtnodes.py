"""A network of real :class:`~overlay.Node` objects on one memory network, for DHT tests and the
DHT benchmark: every node runs its peer manager, DHT service and transient connections; only
the transport is in memory.

``dht_network`` starts ``n`` nodes (deterministic keys from ``seed``), connects each to
``degree`` random earlier nodes as peers, bootstraps every DHT again (so early nodes learn of
later ones), then has the holders of each capability provide it. ``run_lookup`` runs one
``find_providers`` and reports what it found and cost.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field

import anyio

import overlay  # noqa: F401  (first: discovery and overlay import each other)
from discovery import (
    DhtAck,
    DhtFindNode,
    DhtGetProviders,
    DhtNodes,
    DhtProviders,
    DhtRequest,
    DhtResponse,
    LookupReport,
    SignedRecord,
    node_id_bytes,
    xor_distance,
)
from overlay.identity import NodeId, NodeKey
from overlay.node import Node
from overlay.node._config import DhtSettings, DiscoveryConfig, NodeConfig
from overlay.node._dht import Responder
from overlay.peers import PeerManagerConfig
from overlay.testing import LinkConditions, MemoryNetwork

__all__ = ["DhtNodeNet", "LookupRun", "dht_network", "liar", "run_lookup"]

NETWORK = "dhtnet"


@dataclass(slots=True)
class DhtNodeNet:
    network: MemoryNetwork
    nodes: list[Node]
    holders: dict[str, list[NodeId]] = field(default_factory=dict)
    rng: random.Random = field(default_factory=random.Random)

    def node(self, node_id: NodeId) -> Node:
        return next(n for n in self.nodes if n.node_id == node_id)

    def transient_open(self) -> int:
        return sum(len(n.dht.transient.connections()) for n in self.nodes
                   if n.dht is not None)


@dataclass(slots=True)
class LookupRun:
    found: list[NodeId]
    report: LookupReport
    first_after: float | None
    """Seconds (anyio clock) from the call to the first provider."""
    elapsed: float


def _config(capabilities: tuple[str, ...], settings: DhtSettings, degree: int) -> NodeConfig:
    return NodeConfig(
        network=NETWORK,
        listen=("memory:",),
        discovery=DiscoveryConfig(capabilities=capabilities, dht=settings),
        peers=PeerManagerConfig(max_outbound=degree, max_connections=64),
    )


@contextlib.asynccontextmanager
async def dht_network(
    n: int,
    *,
    seed: int,
    capabilities: Mapping[str, int],
    k: int = 16,
    degree: int = 3,
    settings: DhtSettings | None = None,
    latency: float = 0.005,
) -> AsyncIterator[DhtNodeNet]:
    """``n`` running nodes; ``capabilities`` maps a name to how many nodes hold it;
    ``latency``: one-way delay of every link (seconds; run on a mock clock)."""
    rng = random.Random(seed)
    settings = settings or DhtSettings(k=k, query_timeout=2.0)
    network = MemoryNetwork(default_link=LinkConditions(latency=latency))
    holding: dict[int, list[str]] = {}
    holders: dict[str, list[int]] = {}
    for capability, count in capabilities.items():
        chosen = rng.sample(range(n), count)
        holders[capability] = chosen
        for index in chosen:
            holding.setdefault(index, []).append(capability)
    async with contextlib.AsyncExitStack() as stack:
        nodes: list[Node] = []
        for index in range(n):
            key = NodeKey.from_seed(rng.randbytes(32))
            config = _config(tuple(sorted(holding.get(index, ()))), settings, degree)
            node = Node(config, key=key, transports=[network.node_transport()])
            nodes.append(await stack.enter_async_context(node))
        for index, node in enumerate(nodes[1:], start=1):
            for other in rng.sample(nodes[:index], min(degree, index)):
                with contextlib.suppress(Exception):
                    await node.dial(other.address)
        for node in nodes:  # after everybody joined (each bootstrapped on its first peer)
            assert node.dht is not None
            await node.dht.bootstrap()
        net = DhtNodeNet(network, nodes, rng=rng)
        for capability, indices in holders.items():
            net.holders[capability] = [nodes[i].node_id for i in indices]
            for i in indices:
                dht = nodes[i].dht
                assert dht is not None
                await dht.republish()
        yield net


async def run_lookup(
    node: Node, capability: str, *, paths: int | None = None, want: int | None = None
) -> LookupRun:
    assert node.dht is not None
    started = anyio.current_time()
    first: float | None = None
    found: list[NodeId] = []
    async with node.dht.find_providers(capability, paths=paths, want=want) as stream:
        async for signed in stream:
            if first is None:
                first = anyio.current_time() - started
            found.append(signed.node_id)
    assert stream.report is not None
    return LookupRun(found, stream.report, first, anyio.current_time() - started)


def liar(colluders: list[SignedRecord], k: int) -> Responder:
    """A responder that answers FindNode / GetProviders with the ``k`` colluding liars nearest
    the target only, never with providers, and drops every provider record it is given."""
    ids = [(node_id_bytes(s.node_id), s.data) for s in colluders]

    def nearest(target: bytes) -> tuple[bytes, ...]:
        ranked = sorted(ids, key=lambda item: xor_distance(item[0], target))
        return tuple(data for _, data in ranked[:k])

    def respond(peer: NodeId, request: DhtRequest, record: SignedRecord | None) -> DhtResponse:
        match request:
            case DhtFindNode(target):
                return DhtNodes(nearest(target))
            case DhtGetProviders(key):
                return DhtProviders((), nearest(key))
            case _:
                return DhtAck()

    return respond
