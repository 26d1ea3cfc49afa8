"""Nodes for the PEX tests: memory-network nodes reachable at IP addresses, with signed records.

Records carry ``HOST:PORT`` addresses with IP literals (``memory:ID`` is not a record address),
so PEX nodes sit on :class:`IpMemoryTransport`: a memory transport whose listen address and
dialable addresses are ``ID@10.N.0.1:4000``, each node with its own host (so its own /16).

Stand-in for the handshake path: the records engineer's code (the node's own record, signed
and carried in the hello) is not on main yet, so :func:`pex_node` signs each node's record with
``discovery.sign_record`` and :func:`publish_own_record` offers it to the node's own
``node.discovery.records``, from where PEX hands it out.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import anyio

from discovery import PexConfig, SignedRecord, sign_record
from overlay.address import NodeAddress
from overlay.identity import NodeKey
from overlay.node import Node
from overlay.node._config import ConnectionConfig, DiscoveryConfig, NodeConfig
from overlay.peers import PeerManagerConfig
from overlay.testing import MemoryNetwork, MemoryTransport
from overlay.transport import RawListener, Transport, TransportBuilder
from overlay.transport._setup import TransportSetup

__all__ = [
    "IpMemoryTransport",
    "NETWORK",
    "PORT",
    "PexTestNode",
    "QUIET_PEX",
    "host_of",
    "pex_node",
    "publish_own_record",
    "sign_for",
    "wait_virtual",
]

NETWORK = "pexnet"
PORT = 4000
QUIET_PEX = PexConfig(min_interval=1000.0, max_interval=1000.0, thin_below=1, full_at=2)
"""The asker loop stays silent (tests drive ``node.pex.ask`` themselves)."""
_QUIET_CONNECTION = ConnectionConfig(ping_interval=100.0, idle_timeout=300.0)


class IpMemoryTransport(MemoryTransport):
    """A memory transport serving ``tcp`` addresses ``ID@HOST:4000`` (see the module doc)."""

    protocol: ClassVar[str] = "tcp"

    async def _listen(self) -> list[RawListener]:
        listeners = await super()._listen()
        for listener in listeners:
            listener.address = NodeAddress(self.node_id, "tcp", self.host, PORT)
        return listeners


async def wait_virtual(predicate: Callable[[], bool], *, step: float, timeout: float) -> None:
    """On a mock clock: look at ``predicate`` every ``step`` virtual seconds until it holds
    (``wait_until`` looks every virtual millisecond, too often for minutes of virtual time)."""
    with anyio.fail_after(timeout):
        for _ in range(math.ceil(timeout / step) + 1):
            if predicate():
                return
            await anyio.sleep(step)


def host_of(index: int) -> str:
    """The synthetic IP of test node ``index`` (0..65535): one /16 per node below 256."""
    return f"10.{index % 256}.{index // 256}.1"


def _builder(network: MemoryNetwork, host: str) -> TransportBuilder:
    def build(setup: TransportSetup) -> Transport:
        return IpMemoryTransport(network, setup.identity, host, setup.config,
                                 accept_gate=setup.accept_gate)

    return build


STAND_IN_SEQ = 1 << 60
"""The stand-in records outrank the record each node signs itself (its seq is the wall clock in
milliseconds, about 2**41): they carry the IP-literal addresses of this module's transport, which
the node's own record (on a memory network: no addresses) cannot."""


def sign_for(
    key: NodeKey,
    host: str,
    capabilities: Mapping[str, int] | None = None,
    *,
    network: str = NETWORK,
    seq: int = STAND_IN_SEQ,
    ttl: float = 3600.0,
    age: float = 1.0,
) -> SignedRecord:
    """``key``'s record at ``host``, issued ``age`` seconds ago, valid ``ttl`` seconds."""
    issued = int(time.time() - age)
    return sign_record(
        key, network=network, seq=seq, issued_at=issued, expires_at=int(issued + ttl),
        addresses=(f"{host}:{PORT}",), capabilities=dict(capabilities or {}),
    )


@dataclass
class PexTestNode:
    node: Node
    key: NodeKey
    host: str
    record: SignedRecord

    @property
    def address(self) -> str:
        return f"{self.key.node_id}@{self.host}:{PORT}"


def pex_node(
    network: MemoryNetwork,
    index: int,
    *,
    capabilities: Mapping[str, int] | None = None,
    pex: PexConfig = QUIET_PEX,
    seed_mode: bool = False,
    peers: PeerManagerConfig | None = None,
    **overrides: Any,
) -> PexTestNode:
    """A node (not started) with a deterministic key and its signed record."""
    key = NodeKey.from_seed(index.to_bytes(4, "big") * 8)
    host = host_of(index)
    config = NodeConfig(
        listen=("memory:",), network=NETWORK, connection=_QUIET_CONNECTION,
        peers=peers or PeerManagerConfig(),
        discovery=DiscoveryConfig(pex=pex, seed_mode=seed_mode), **overrides,
    )
    node = Node(config, key=key, transports=[_builder(network, host)])
    return PexTestNode(node, key, host, sign_for(key, host, capabilities))


def publish_own_record(test_node: PexTestNode) -> None:
    """The stand-in for the handshake path (see the module docstring)."""
    result = test_node.node.discovery.records.offer(test_node.record,
                                                    test_node.node.wall_clock(), "local")
    assert result.stored
