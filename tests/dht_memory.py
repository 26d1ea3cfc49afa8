"""An in-process network of ``DhtService`` instances for tests: a ``DhtRpc`` that routes each
request to the addressed service's ``handle`` (through the wire codecs), with optional latency
(anyio sleeps: run on ``virtual_time()`` so it costs no real time), offline nodes and
tampering responders.

``build_network`` makes N services with signed records and routing tables as a bootstrapped
network would have them (each bucket filled with up to ``k`` random nodes of its range), so a
300-node test spends its time on lookups, not on bootstrapping.
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import anyio
import anyio.lowlevel

from discovery import (
    CapabilityRecord,
    DhtRequest,
    DhtResponse,
    LookupConfig,
    SignedRecord,
    TableConfig,
    decode_dht_request,
    decode_dht_response,
    encode_dht_request,
    encode_dht_response,
    node_id_bytes,
    sign_record,
)
from discovery._dht_service import DhtService
from discovery._service_types import DhtConfig, Penalty
from overlay.errors import DialError
from overlay.identity import NodeId, NodeKey

__all__ = ["BASE_TIME", "InProcessDht", "Tamper", "build_network", "make_record", "wall_clock"]

NETWORK = "testnet"
BASE_TIME = 1_700_000_000.0
"""Unix time at anyio's clock zero: ``wall_clock()`` follows the (possibly mock) clock."""

Tamper = Callable[[DhtRequest, DhtResponse], DhtResponse]


def wall_clock() -> float:
    return BASE_TIME + anyio.current_time()


def make_record(
    key: NodeKey,
    *,
    seq: int = 1,
    capabilities: Mapping[str, int] | None = None,
    issued_at: float,
    ttl: float = 7200.0,
    network: str = NETWORK,
    port: int = 4000,
) -> SignedRecord:
    return sign_record(
        key,
        network=network,
        seq=seq,
        issued_at=int(issued_at),
        expires_at=int(issued_at + ttl),
        addresses=(f"127.0.0.1:{port}",),
        capabilities=dict(capabilities or {}),
    )


@dataclass(slots=True)
class InProcessDht:
    """Routes ``DhtRpc`` calls to services by node id (see the module docstring)."""

    rng: random.Random
    latency: tuple[float, float] | None = None
    services: dict[NodeId, DhtService] = field(default_factory=dict)
    offline: set[NodeId] = field(default_factory=set)
    """Nodes that never answer (the caller times out)."""
    tamper: dict[NodeId, Tamper] = field(default_factory=dict)
    """Responders whose answers are rewritten (liars, spoofers, forgers)."""
    in_flight: int = 0
    log: list[tuple[float, NodeId, NodeId, DhtRequest]] = field(default_factory=list)
    """(time, sender, receiver, request) of every request delivered."""
    penalties: list[tuple[NodeId, NodeId, Penalty]] = field(default_factory=list)
    """(judge, peer, reason) from every service's ``penalise`` callback."""

    def rpc_for(self, sender: NodeId) -> _Rpc:
        return _Rpc(self, sender)

    def penalise_for(self, judge: NodeId) -> Callable[[NodeId, Penalty], None]:
        def penalise(peer: NodeId, reason: Penalty) -> None:
            self.penalties.append((judge, peer, reason))

        return penalise


@dataclass(slots=True)
class _Rpc:
    net: InProcessDht
    sender: NodeId

    async def request(
        self, peer: NodeId, addresses: Sequence[str], message: DhtRequest, *, timeout: float
    ) -> DhtResponse:
        net = self.net
        net.in_flight += 1
        try:
            if net.latency is not None:
                await anyio.sleep(net.rng.uniform(*net.latency))
            else:
                await anyio.lowlevel.checkpoint()
            if peer in net.offline:
                await anyio.sleep_forever()
            service = net.services.get(peer)
            if service is None:
                raise DialError(f"no node {peer}")
            request = decode_dht_request(encode_dht_request(message))
            net.log.append((anyio.current_time(), self.sender, peer, request))
            sender = net.services.get(self.sender)
            record = sender.record if sender is not None else None
            response = service.handle(self.sender, request, sender_record=record)
            tamper = net.tamper.get(peer)
            if tamper is not None:
                response = tamper(request, response)
            return decode_dht_response(encode_dht_response(response))
        finally:
            net.in_flight -= 1


@dataclass(slots=True)
class Network:
    net: InProcessDht
    keys: dict[NodeId, NodeKey]
    services: list[DhtService]
    holders: dict[str, list[NodeId]]
    """Capability -> the nodes whose record advertises it."""

    def service(self, node_id: NodeId) -> DhtService:
        return self.net.services[node_id]

    def true_closest(self, target: bytes, n: int, exclude: NodeId | None = None) -> list[NodeId]:
        t = int.from_bytes(target, "big")
        ids = [s.node_id for s in self.services if s.node_id != exclude]
        return sorted(ids, key=lambda i: int.from_bytes(node_id_bytes(i), "big") ^ t)[:n]


def build_network(
    n: int,
    *,
    seed: int,
    k: int = 16,
    capabilities: Mapping[str, int] | None = None,
    ttl: float = 7200.0,
    latency: tuple[float, float] | None = None,
    query_timeout: float = 1.0,
    prefill: bool = True,
    republish: tuple[float, float] = (1800.0, 300.0),
    renew: bool = False,
    holder_ttl: float | None = None,
    netgroup: Callable[[CapabilityRecord], str | None] | None = None,
    max_per_netgroup: int | None = None,
    density_limit: bool = False,
    density_factor: float = 4.0,
) -> Network:
    # max_per_netgroup: None keeps LookupConfig's default (2).
    """``n`` services; ``capabilities`` maps a name to how many random nodes advertise it.
    Records live ``ttl`` seconds (``holder_ttl`` for nodes advertising a capability); with
    ``renew`` every service re-signs its record through the ``renew`` hook. Call inside an
    async test (the wall clock follows anyio's clock)."""
    rng = random.Random(seed)
    net = InProcessDht(rng, latency)
    now = wall_clock()
    keys = [NodeKey.from_seed(rng.randbytes(32)) for _ in range(n)]
    holders: dict[str, list[NodeId]] = {}
    caps_of: dict[NodeId, dict[str, int]] = {key.node_id: {} for key in keys}
    for cap, count in (capabilities or {}).items():
        chosen = rng.sample(keys, count)
        holders[cap] = [key.node_id for key in chosen]
        for key in chosen:
            caps_of[key.node_id][cap] = 1
    config = DhtConfig(
        network=NETWORK,
        table=TableConfig(k=k),
        lookup=LookupConfig(k=k, query_timeout=query_timeout,
                            max_per_netgroup=max_per_netgroup or 2,
                            density_factor=density_factor),
        density_limit=density_limit,
        republish_interval=republish[0],
        republish_margin=republish[1],
    )
    services: list[DhtService] = []
    for i, key in enumerate(keys):
        life = holder_ttl if holder_ttl is not None and caps_of[key.node_id] else ttl
        record = make_record(key, capabilities=caps_of[key.node_id], issued_at=now, ttl=life,
                             port=4000 + i)
        renewer = _renewer(key, record, life) if renew else None
        service = DhtService(
            record, net.rpc_for(key.node_id), config, wall_clock=wall_clock,
            penalise=net.penalise_for(key.node_id), renew=renewer,
            rng=random.Random(rng.random()),
            **({} if netgroup is None else {"netgroup": netgroup}),
        )
        net.services[key.node_id] = service
        services.append(service)
    if prefill:
        _prefill(services, rng, k)
    return Network(net, {key.node_id: key for key in keys}, services, holders)


def _renewer(key: NodeKey, first: SignedRecord, ttl: float) -> Callable[[], SignedRecord]:
    """The node's re-signing hook: the same content, a higher seq, a fresh lifetime."""
    state = [first]

    def renew() -> SignedRecord:
        old = state[-1].record
        state.append(make_record(
            key, seq=old.seq + 1, capabilities={c: i.version for c, i in old.capabilities.items()},
            issued_at=wall_clock(), ttl=ttl, port=int(old.addresses[0].rsplit(":", 1)[1]),
        ))
        return state[-1]

    return renew


def _prefill(services: list[DhtService], rng: random.Random, k: int) -> None:
    order = sorted(services, key=lambda s: node_id_bytes(s.node_id))
    nums = [int.from_bytes(node_id_bytes(s.node_id), "big") for s in order]
    for service, num in zip(order, nums, strict=True):
        for i in range(160):
            low = ((num ^ (1 << i)) >> i) << i
            lo = bisect.bisect_left(nums, low)
            hi = bisect.bisect_left(nums, low + (1 << i))
            if hi <= lo:
                continue
            picks = range(lo, hi) if hi - lo <= k else rng.sample(range(lo, hi), k)
            for j in picks:
                service.add_contact(order[j].record, verified=True)
