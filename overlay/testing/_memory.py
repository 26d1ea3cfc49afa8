"""An in-process network for tests: memory transports joined by bounded byte pipes.

Theory of operation
-------------------
A :class:`MemoryNetwork` is a registry: node id → listener, plus the set of live connections.
:meth:`MemoryNetwork.node_transport` is what a node takes
(``Node(config, transports=[network.node_transport()])``: the node builds its transport with its
own identity, limits and accept gate); :meth:`MemoryNetwork.transport` makes a
:class:`MemoryTransport` directly (a full
:class:`~overlay.transport.Transport`: gate, handshake bound, Noise handshake, statistics) whose
listen address is ``memory:<node id>`` and whose *host* is a synthetic IP used as the
``remote_host`` its peers see. By default every transport gets a unique host in ``10.0.0.0/8``
whose ``/16`` is distinct for the first 255 transports (``10.<n % 256>.<n // 256 % 256>.1``), so
per-IP and per-netgroup limits see distinct peers; pass ``host=`` to simulate many peers behind
one IP or netgroup.

A connection is two pipes, one per direction (``overlay.testing._pipes``: bounded chunk queues
with anyio's stream semantics and the link conditions of :class:`LinkConditions`).

Partitions: :meth:`MemoryNetwork.partition` assigns node ids to groups (ids in no group share
one implicit group). Dials across groups fail with :class:`~overlay.errors.DialError` and
existing connections across groups are broken; :meth:`MemoryNetwork.heal` lifts the partition.

Cost: an idle transport is a handful of attributes; a connection is two small objects with an
empty deque each, so a 100-node network is cheap.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import ClassVar

import anyio
import anyio.abc
import anyio.lowlevel

from overlay.address import NodeAddress
from overlay.errors import ConfigError, ConnectFailure, DialError, LocalProtocolError
from overlay.identity import NodeId
from overlay.testing._pipes import PERFECT_LINK, LinkConditions, MemoryByteStream, Pipe
from overlay.transport import (
    AcceptGate,
    RawConnection,
    RawListener,
    Transport,
    TransportBuilder,
    TransportConfig,
    TransportSetup,
)
from overlay.transport._secure import SecureIdentity

__all__ = [
    "IpMemoryTransport",
    "MemoryNetwork",
    "MemoryNetworkStatistics",
    "MemoryTransport",
]


@dataclass(frozen=True, slots=True)
class MemoryNetworkStatistics:
    """A snapshot of a memory network."""

    listeners: int
    """Transports currently serving."""
    connections: int
    """Connections with at least one end still open."""
    broken: int
    """Connections broken by :meth:`MemoryNetwork.disconnect` / :meth:`~MemoryNetwork.partition`."""


class _Link:
    """A live connection between two node ids, tracked by the network for breaks."""

    __slots__ = ("a", "b", "ends_open", "network", "pipes")

    def __init__(self, network: MemoryNetwork, a: NodeId, b: NodeId, pipes: tuple[Pipe, Pipe]):
        self.network = network
        self.a = a
        self.b = b
        self.pipes = pipes
        self.ends_open = 2

    def end_closed(self) -> None:
        self.ends_open -= 1
        if self.ends_open == 0:
            self.network._forget(self)

    def break_(self) -> None:
        for pipe in self.pipes:
            pipe.break_()


class _MemoryListener(RawListener):
    def __init__(self, network: MemoryNetwork, transport: MemoryTransport) -> None:
        self._network = network
        self.transport = transport
        self.address = NodeAddress(transport.identity.node_id, "memory")
        self._queue: deque[RawConnection] = deque()
        self._event: anyio.Event | None = None
        self.closed = False

    def offer(self, conn: RawConnection) -> bool:
        if self.closed or len(self._queue) >= self._network.backlog:
            return False
        self._queue.append(conn)
        if self._event is not None:
            self._event.set()
            self._event = None
        return True

    async def accept(self) -> RawConnection:
        await anyio.lowlevel.checkpoint()
        while True:
            if self.closed:
                raise anyio.ClosedResourceError
            if self._queue:
                return self._queue.popleft()
            if self._event is None:
                self._event = anyio.Event()
            await self._event.wait()

    async def aclose(self) -> None:
        if not self.closed:
            self.closed = True
            self._network._unregister(self)
            while self._queue:
                stream = self._queue.popleft().stream
                if isinstance(stream, MemoryByteStream):
                    stream.close_now()
            if self._event is not None:
                self._event.set()
                self._event = None
        await anyio.lowlevel.checkpoint()


class MemoryTransport(Transport):
    """A transport on a :class:`MemoryNetwork` (make it with :meth:`MemoryNetwork.transport`)."""

    protocol: ClassVar[str] = "memory"

    def __init__(
        self,
        network: MemoryNetwork,
        identity: SecureIdentity,
        host: str,
        config: TransportConfig | None = None,
        *,
        accept_gate: AcceptGate | None = None,
    ) -> None:
        super().__init__(identity, config, accept_gate=accept_gate)
        self.network = network
        self.host = host
        """The synthetic IP that peers see as our ``remote_host``."""

    @property
    def node_id(self) -> NodeId:
        return self.identity.node_id

    @property
    def address(self) -> NodeAddress:
        """``memory:<our node id>``: where others dial us (once :meth:`serve` runs)."""
        return NodeAddress(self.identity.node_id, "memory")

    async def _listen(self) -> list[RawListener]:
        return [self.network._register(self)]

    async def _raw_connect(self, address: NodeAddress) -> RawConnection:
        return await self.network._connect(self, address.node_id)

    async def listen_raw(self) -> RawListener:
        """Take this transport's address on the network without serving it: dials queue (up
        to the network's ``backlog``) until ``accept()`` takes them. Below Noise, for tests of
        the network's own links (backlog, resets, link conditions); nodes use :meth:`serve`."""
        (listener,) = await self._listen()
        return listener

    async def connect_raw(self, address: NodeAddress) -> RawConnection:
        """Open a link to ``address`` without the Noise handshake (link conditions apply).
        Below Noise, for tests of the network's own links; nodes use :meth:`dial`."""
        return await self._raw_connect(address)


class IpMemoryTransport(MemoryTransport):
    """A memory transport that poses as TCP: it serves ``ID@HOST:PORT`` addresses on the
    synthetic ``host`` and dials ``tcp`` addresses through the memory network (by node id).

    For in-process networks whose nodes must look like TCP nodes: signed capability records
    carry IP-literal addresses only, so PEX and the DHT can spread the addresses of such nodes
    (and netgroup rules see one synthetic IP per node). Make it with
    :meth:`MemoryNetwork.node_transport` and ``port=``.
    """

    protocol: ClassVar[str] = "tcp"

    def __init__(self, network: MemoryNetwork, identity: SecureIdentity, host: str, port: int,
                 config: TransportConfig | None = None, *,
                 accept_gate: AcceptGate | None = None) -> None:
        super().__init__(network, identity, host, config, accept_gate=accept_gate)
        self.port = port

    async def _listen(self) -> list[RawListener]:
        listeners = await super()._listen()
        for listener in listeners:
            listener.address = NodeAddress(self.node_id, "tcp", self.host, self.port)
        return listeners


class MemoryNetwork:
    """An in-process network of :class:`MemoryTransport` objects (see the module docstring)."""

    def __init__(
        self,
        *,
        max_chunks: int = 16,
        max_buffered: int = 256 * 1024,
        backlog: int = 128,
        default_link: LinkConditions = PERFECT_LINK,
        rng: random.Random | None = None,
    ) -> None:
        if max_chunks < 1:
            raise ConfigError("max_chunks", "must be >= 1")
        if max_buffered < 1:
            raise ConfigError("max_buffered", "must be >= 1")
        if backlog < 1:
            raise ConfigError("backlog", "must be >= 1")
        self.max_chunks = max_chunks
        self.max_buffered = max_buffered
        self.backlog = backlog
        self.default_link = default_link
        self._rng = rng if rng is not None else random.Random(0)
        self._listeners: dict[NodeId, _MemoryListener] = {}
        self._links: dict[NodeId, set[_Link]] = {}
        self._conditions: dict[tuple[NodeId, NodeId], LinkConditions] = {}
        self._group_of: dict[NodeId, int] | None = None
        self._redirects: dict[NodeId, NodeId] = {}
        self._transports = 0
        self._ports = 0
        self._broken = 0

    # -- building ------------------------------------------------------------------------------

    def transport(
        self,
        identity: SecureIdentity,
        config: TransportConfig | None = None,
        *,
        host: str | None = None,
        accept_gate: AcceptGate | None = None,
    ) -> MemoryTransport:
        """A new transport for ``identity`` configured by ``config`` (defaults when None);
        ``host`` defaults to a unique synthetic IP."""
        self._transports += 1
        if host is None:
            n = self._transports
            host = f"10.{n % 256}.{n // 256 % 256}.1"
        return MemoryTransport(self, identity, host, config, accept_gate=accept_gate)

    def node_transport(self, *, host: str | None = None,
                       port: int | None = None) -> TransportBuilder:
        """A builder for ``Node(config, transports=[network.node_transport()])``: the node's
        transport on this network (its identity, limits and accept gate), listening on
        ``memory:<node id>``; ``host`` as in :meth:`transport`. With ``port`` (and ``host``)
        the node looks like a TCP node instead: it serves ``ID@HOST:PORT`` (an
        :class:`IpMemoryTransport`), so its signed record can carry its address."""

        def build(setup: TransportSetup) -> Transport:
            if port is not None:
                if host is None:
                    raise ConfigError("port", "a TCP-looking memory transport needs a host")
                self._transports += 1
                return IpMemoryTransport(self, setup.identity, host, port, setup.config,
                                         accept_gate=setup.accept_gate)
            return self.transport(
                setup.identity, setup.config, host=host, accept_gate=setup.accept_gate
            )

        return build

    # -- fault injection -----------------------------------------------------------------------

    def set_link(self, a: NodeId, b: NodeId, conditions: LinkConditions | None) -> None:
        """Set (``None``: reset to ``default_link``) the conditions between ``a`` and ``b``.

        Applies to new connections and to chunks sent from now on over existing ones.
        """
        key = (a, b) if a <= b else (b, a)
        if conditions is None:
            self._conditions.pop(key, None)
        else:
            self._conditions[key] = conditions
        effective = self.link_conditions(a, b)
        for link in self._links_between(a, b):
            for pipe in link.pipes:
                pipe.conditions = effective

    def link_conditions(self, a: NodeId, b: NodeId) -> LinkConditions:
        key = (a, b) if a <= b else (b, a)
        return self._conditions.get(key, self.default_link)

    def partition(self, *groups: Iterable[NodeId]) -> None:
        """Split the network: only nodes in the same group can talk (others: one group)."""
        group_of: dict[NodeId, int] = {}
        for index, group in enumerate(groups):
            for node_id in group:
                if group_of.setdefault(node_id, index) != index:
                    raise LocalProtocolError(f"node {node_id} is in two partition groups")
        self._group_of = group_of
        for links in list(self._links.values()):
            for link in list(links):
                if not self.reachable(link.a, link.b):
                    self._break(link)

    def heal(self) -> None:
        """Lift the partition (broken connections stay broken; new dials work again)."""
        self._group_of = None

    def disconnect(self, a: NodeId, b: NodeId) -> int:
        """Break every connection between ``a`` and ``b`` (a reset); return how many."""
        links = list(self._links_between(a, b))
        for link in links:
            self._break(link)
        return len(links)

    def redirect(self, node_id: NodeId, to: NodeId | None) -> None:
        """Route dials for ``memory:<node_id>`` to the listener of ``to`` (``None``: undo).

        Simulates an address now held by another node (a stale address book entry or an
        impersonator): the dialer reaches ``to`` and its handshake fails with
        :class:`~overlay.errors.AuthenticationError`.
        """
        if to is None:
            self._redirects.pop(node_id, None)
        else:
            self._redirects[node_id] = to

    def misdirect(self, address: NodeAddress, wrong_id: NodeId) -> NodeAddress:
        """An address expecting ``wrong_id`` that reaches ``address``'s listener.

        Pass as ``misdirect=network.misdirect`` to
        :func:`~overlay.testing.check_transport_conformance`.
        """
        self.redirect(wrong_id, address.node_id)
        return NodeAddress(wrong_id, "memory")

    def reachable(self, a: NodeId, b: NodeId) -> bool:
        """False when a partition separates ``a`` and ``b``."""
        if self._group_of is None:
            return True
        return self._group_of.get(a, -1) == self._group_of.get(b, -1)

    def statistics(self) -> MemoryNetworkStatistics:
        links = {link for links in self._links.values() for link in links}
        return MemoryNetworkStatistics(
            listeners=len(self._listeners), connections=len(links), broken=self._broken
        )

    # -- internals used by transports ----------------------------------------------------------

    def _links_between(self, a: NodeId, b: NodeId) -> Iterable[_Link]:
        return [link for link in self._links.get(a, ()) if {link.a, link.b} == {a, b}]

    def _break(self, link: _Link) -> None:
        link.break_()
        self._broken += 1
        self._forget(link)

    def _forget(self, link: _Link) -> None:
        for node_id in (link.a, link.b):
            links = self._links.get(node_id)
            if links is not None:
                links.discard(link)
                if not links:
                    del self._links[node_id]

    def _register(self, transport: MemoryTransport) -> _MemoryListener:
        node_id = transport.identity.node_id
        if node_id in self._listeners:
            raise LocalProtocolError(f"memory:{node_id} is already listening on this network")
        listener = _MemoryListener(self, transport)
        self._listeners[node_id] = listener
        return listener

    def _unregister(self, listener: _MemoryListener) -> None:
        node_id = listener.address.node_id
        if self._listeners.get(node_id) is listener:
            del self._listeners[node_id]

    async def _connect(self, dialer: MemoryTransport, target: NodeId) -> RawConnection:
        source = dialer.identity.node_id
        conditions = self.link_conditions(source, target)
        if conditions.latency:
            await anyio.sleep(2 * conditions.latency)
        else:
            await anyio.lowlevel.checkpoint()
        listener = self._listeners.get(self._redirects.get(target, target))
        if listener is None:
            raise DialError(f"no listener at memory:{target}", ConnectFailure.UNREACHABLE)
        target = listener.address.node_id
        if not self.reachable(source, target):
            raise DialError(
                f"memory:{target} is unreachable (network partition)", ConnectFailure.UNREACHABLE
            )
        to_target = Pipe(self.max_chunks, self.max_buffered, self._rng)
        to_source = Pipe(self.max_chunks, self.max_buffered, self._rng)
        to_target.conditions = to_source.conditions = conditions
        link = _Link(self, source, target, (to_target, to_source))
        server_end = MemoryByteStream(to_target, to_source, link)
        client_end = MemoryByteStream(to_source, to_target, link)
        self._ports += 1
        port = 1024 + self._ports % 64512
        inbound = RawConnection(server_end, dialer.host, f"memory:{dialer.host}:{port}")
        if not listener.offer(inbound):
            raise DialError(
                f"memory:{target} refused the connection (backlog full)", ConnectFailure.REFUSED
            )
        self._links.setdefault(source, set()).add(link)
        self._links.setdefault(target, set()).add(link)
        return RawConnection(client_end, listener.transport.host, f"memory:{target}")
