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

A connection is two :class:`_Pipe` objects, one per direction. A pipe is a deque of byte chunks
bounded by ``max_chunks`` chunks and (softly) ``max_buffered`` bytes: a sender blocks while it is
full (backpressure: a reader that stops reading stops its writer), one chunk is always admitted
into an empty pipe so any size can be sent. Both sides wait on one shared :class:`anyio.Event`
that is replaced after each wake-up; every state change wakes all waiters, which re-check.
Stream semantics follow anyio's socket streams:

* ``send_eof()`` / ``aclose()`` on one end → the other end drains the buffer, then its
  ``receive()`` raises :class:`anyio.EndOfStream`;
* ``aclose()`` → the other end's ``send()`` raises :class:`anyio.BrokenResourceError`;
* a network break (:meth:`MemoryNetwork.disconnect`, :meth:`MemoryNetwork.partition`) acts as a
  reset: both ends' pending and later ``send``/``receive`` raise ``BrokenResourceError``;
* ``abort()`` on one end (:func:`overlay.transport.abort_stream`) resets the connection the
  same way and closes that end;
* any operation on an end closed locally raises :class:`anyio.ClosedResourceError`.

Link conditions (:class:`LinkConditions`, per node pair via :meth:`MemoryNetwork.set_link`):
``latency`` delays every chunk (and the connect, by one round trip) without limiting throughput
beyond the pipe window; ``loss`` models TCP loss as a retransmission delay (a stream transport
never loses bytes): with that probability a chunk is delivered ``retransmit_delay`` later, and
later chunks never overtake it. A perfect link (the default) reads no clock at all.

Partitions: :meth:`MemoryNetwork.partition` assigns node ids to groups (ids in no group share
one implicit group). Dials across groups fail with :class:`~overlay.errors.DialError` and
existing connections across groups are broken; :meth:`MemoryNetwork.heal` lifts the partition.

Cost: an idle transport is a handful of attributes; a connection is two small objects with an
empty deque each, so a 100-node network is cheap.
"""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import anyio
import anyio.abc
import anyio.lowlevel

from overlay.address import NodeAddress
from overlay.errors import ConfigError, ConnectFailure, DialError, LocalProtocolError
from overlay.identity import NodeId
from overlay.transport import (
    AcceptGate,
    RawConnection,
    RawListener,
    StreamAbortAttribute,
    Transport,
    TransportBuilder,
    TransportConfig,
    TransportSetup,
)
from overlay.transport._secure import SecureIdentity

__all__ = [
    "IpMemoryTransport",
    "LinkConditions",
    "MemoryByteStream",
    "MemoryNetwork",
    "MemoryNetworkStatistics",
    "MemoryTransport",
    "memory_stream_pair",
]


@dataclass(frozen=True, slots=True)
class LinkConditions:
    """How a link between two nodes behaves (both directions)."""

    latency: float = 0.0
    """One-way delay in seconds added to every chunk; connecting takes one round trip."""
    loss: float = 0.0
    """Probability that a chunk needs a retransmission (delivered ``retransmit_delay`` late)."""
    retransmit_delay: float = 0.2
    """Extra delay of a "lost" chunk, in seconds."""

    def __post_init__(self) -> None:
        for key in ("latency", "retransmit_delay"):
            value = getattr(self, key)
            if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
                raise ConfigError(key, "must be a finite number >= 0")
        if not (isinstance(self.loss, int | float) and 0 <= self.loss <= 1):
            raise ConfigError("loss", "must be a probability in [0, 1]")

    @property
    def perfect(self) -> bool:
        """True when the link adds no delay at all."""
        return self.latency == 0 and self.loss == 0


_PERFECT = LinkConditions()


@dataclass(frozen=True, slots=True)
class MemoryNetworkStatistics:
    """A snapshot of a memory network."""

    listeners: int
    """Transports currently serving."""
    connections: int
    """Connections with at least one end still open."""
    broken: int
    """Connections broken by :meth:`MemoryNetwork.disconnect` / :meth:`~MemoryNetwork.partition`."""


class _Pipe:
    """One direction of a connection: a bounded chunk queue. See the module docstring."""

    __slots__ = (
        "_broken",
        "_buffered",
        "_chunks",
        "_eof",
        "_event",
        "_last_at",
        "_max_buffered",
        "_max_chunks",
        "_offset",
        "_reader_closed",
        "_rng",
        "_times",
        "conditions",
    )

    def __init__(self, max_chunks: int, max_buffered: int, rng: random.Random | None) -> None:
        self._chunks: deque[bytes] = deque()
        self._times: deque[float] | None = None  # due times, only on imperfect links
        self._offset = 0
        self._buffered = 0
        self._max_chunks = max_chunks
        self._max_buffered = max_buffered
        self._eof = False
        self._reader_closed = False
        self._broken = False
        self._event: anyio.Event | None = None
        self._last_at = 0.0
        self._rng = rng
        self.conditions = _PERFECT

    def _notify(self) -> None:
        event = self._event
        if event is not None:
            self._event = None
            event.set()

    async def _wait(self) -> None:
        if self._event is None:
            self._event = anyio.Event()
        await self._event.wait()

    async def send(self, data: bytes) -> None:
        await anyio.lowlevel.checkpoint()
        while True:
            if self._eof:
                raise anyio.ClosedResourceError
            if self._broken or self._reader_closed:
                raise anyio.BrokenResourceError
            if not self._chunks or (
                len(self._chunks) < self._max_chunks and self._buffered < self._max_buffered
            ):
                break
            await self._wait()
        if not data:
            return
        chunk = bytes(data)
        conditions = self.conditions
        times = self._times
        if not conditions.perfect or times:
            delay = conditions.latency
            if conditions.loss:
                if self._rng is None:
                    self._rng = random.Random(0)
                if self._rng.random() < conditions.loss:
                    delay += conditions.retransmit_delay
            self._last_at = max(self._last_at, anyio.current_time() + delay)
            if times is None:
                times = self._times = deque()
            # keep _times aligned with _chunks: earlier perfect-link chunks are due at once
            while len(times) < len(self._chunks):
                times.appendleft(0.0)
            times.append(self._last_at)
        self._chunks.append(chunk)
        self._buffered += len(chunk)
        self._notify()

    async def receive(self, max_bytes: int) -> bytes:
        await anyio.lowlevel.checkpoint()
        while True:
            if self._reader_closed:
                raise anyio.ClosedResourceError
            if self._broken:
                raise anyio.BrokenResourceError
            if self._chunks:
                if self._times:
                    wait = self._times[0] - anyio.current_time()
                    if wait > 0:
                        with anyio.move_on_after(wait):
                            await self._wait()
                        continue
                return self._take(max_bytes)
            if self._eof:
                raise anyio.EndOfStream
            await self._wait()

    def _take(self, max_bytes: int) -> bytes:
        head = self._chunks[0]
        offset = self._offset
        if len(head) - offset <= max_bytes:
            data = head[offset:] if offset else head
            self._chunks.popleft()
            if self._times:
                self._times.popleft()
            self._offset = 0
        else:
            data = head[offset : offset + max_bytes]
            self._offset = offset + max_bytes
        self._buffered -= len(data)
        self._notify()
        return data

    def close_writer(self) -> None:
        self._eof = True
        self._notify()

    def close_reader(self) -> None:
        self._reader_closed = True
        self._chunks.clear()
        self._times = None
        self._buffered = 0
        self._notify()

    def break_(self) -> None:
        self._broken = True
        self._chunks.clear()
        self._times = None
        self._buffered = 0
        self._notify()


class MemoryByteStream(anyio.abc.ByteStream):
    """One end of an in-memory connection (an anyio byte stream; see the module docstring)."""

    def __init__(self, incoming: _Pipe, outgoing: _Pipe, link: _Link | None = None) -> None:
        self._in = incoming
        self._out = outgoing
        self._link = link
        self._closed = False

    async def receive(self, max_bytes: int = 65536) -> bytes:
        if max_bytes < 1:
            raise LocalProtocolError("max_bytes must be a positive integer")
        if self._closed:
            raise anyio.ClosedResourceError
        return await self._in.receive(max_bytes)

    async def send(self, item: bytes) -> None:
        if self._closed:
            raise anyio.ClosedResourceError
        await self._out.send(item)

    async def send_eof(self) -> None:
        if self._closed:
            raise anyio.ClosedResourceError
        self._out.close_writer()
        await anyio.lowlevel.checkpoint()

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        return {StreamAbortAttribute.abort: lambda: self.abort}

    def abort(self) -> None:
        """Reset the connection (as a TCP reset does) and close this end."""
        if self._closed:
            return
        self._in.break_()
        self._out.break_()
        self.close_now()

    def close_now(self) -> None:
        """Close synchronously (what :meth:`aclose` does, minus the checkpoint)."""
        if self._closed:
            return
        self._closed = True
        self._in.close_reader()
        self._out.close_writer()
        if self._link is not None:
            self._link.end_closed()

    async def aclose(self) -> None:
        self.close_now()
        await anyio.lowlevel.checkpoint()


def memory_stream_pair(
    *, max_chunks: int = 16, max_buffered: int = 256 * 1024, rng: random.Random | None = None
) -> tuple[MemoryByteStream, MemoryByteStream]:
    """Two connected in-memory byte streams, outside any network (handy in unit tests)."""
    ab = _Pipe(max_chunks, max_buffered, rng)
    ba = _Pipe(max_chunks, max_buffered, rng)
    return MemoryByteStream(ba, ab), MemoryByteStream(ab, ba)


class _Link:
    """A live connection between two node ids, tracked by the network for breaks."""

    __slots__ = ("a", "b", "ends_open", "network", "pipes")

    def __init__(self, network: MemoryNetwork, a: NodeId, b: NodeId, pipes: tuple[_Pipe, _Pipe]):
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
        default_link: LinkConditions = _PERFECT,
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
        to_target = _Pipe(self.max_chunks, self.max_buffered, self._rng)
        to_source = _Pipe(self.max_chunks, self.max_buffered, self._rng)
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
