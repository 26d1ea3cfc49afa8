"""Destinations: where a message or a request goes.

A destination is either a bare :data:`~overlay.identity.NodeId` (one connected peer) or a
:class:`Destination` object. The router never looks inside a destination: it asks it to
``select`` target node ids from a :class:`PeerSet` (the local node's own id means LOCAL
delivery), and for requests it lets the destination drive the attempts through ``run_request``.
That is the extension point: the capability-routing layer adds a ``Role`` destination (pick the
healthiest peer with a capability, hedge to the next one) without touching the router.

What a destination may rely on
------------------------------
* ``view.connected_peers()`` is cheap (the ids only); ``view.peers()`` / ``view.peer(id)`` build
  a frozen :class:`PeerView` per peer on demand (round-trip EWMA, requests in flight, score,
  channels, capabilities), so a destination that needs only ids pays nothing for the rest.
* Every ``attempt(peer)`` a ``run_request`` makes gets the request's deadline from the node's
  timer heap and is reported per peer to the node's observer (which feeds the peer manager's
  scores and the metrics) with an :class:`~overlay.connection._outcome.AttemptOutcome`, exactly
  as a request to a bare peer id. ``attempt`` raises what a request to that one peer raises
  (``RequestTimeout``, ``RequestError``, ``ConnectionClosed``, ``PeerNotConnected``, ...).
* A destination that selects nobody makes ``send()`` and ``request()`` raise
  :class:`~overlay.errors.NoRoute` (``no_route(view, destination)`` picks the reason); nothing is
  ever reported as delivered to nobody.
"""

from __future__ import annotations

import abc
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Protocol, TypeAlias, TypeVar

from overlay.errors import ChannelError, NoRoute, NoRouteReason
from overlay.identity import NodeId
from overlay.transport._failures import Direction

__all__ = [
    "BROADCAST",
    "Destination",
    "LOCAL",
    "PeerSet",
    "PeerView",
    "To",
    "no_route",
]

T = TypeVar("T")

_NO_REQUESTS: Mapping[int, int] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class PeerView:
    """One connected peer as a destination sees it when selecting (a snapshot, built on
    demand)."""

    node_id: NodeId
    direction: Direction
    """Who opened the connection."""
    connected_since: float
    """When the connection was registered (``anyio.current_time()``'s clock)."""
    rtt: float | None
    """Smoothed round trip to this peer in seconds, from keep-alive pings and from the round
    trips of answered requests (which include the responder's handling time, so a peer that
    answers slowly looks slow); ``None`` before the first sample."""
    requests_in_flight: int
    """Our requests to this peer waiting for an answer, all channels together."""
    channels: frozenset[int] = frozenset()
    """Channel ids the peer has open now: from its hello, then from each node-info update it
    sends when it opens or closes a channel (requests on other channels fail fast, with
    ``RequestError(NO_HANDLER)``)."""
    requests_in_flight_by_channel: Mapping[int, int] = field(default_factory=lambda: _NO_REQUESTS)
    """Channel id to our requests in flight on it (channels with none are left out)."""
    score: float | None = None
    """The peer manager's score of this peer (higher is better); ``None`` on a node without a
    peer manager."""
    advertised: frozenset[str] = frozenset()
    """Capabilities the peer advertises (empty until discovery fills them)."""
    confirmed: frozenset[str] = frozenset()
    """Capabilities the peer has proven by serving them (empty until discovery fills them)."""


class PeerSet(Protocol):
    """What a destination may look at when selecting targets (read-only)."""

    @property
    def local_id(self) -> NodeId: ...

    def connected_peers(self) -> Sequence[NodeId]:
        """Node ids of the peers connected right now (cheap: no views are built)."""
        ...

    def peers(self) -> Sequence[PeerView]:
        """A :class:`PeerView` of every connected peer, built now."""
        ...

    def peer(self, node_id: NodeId) -> PeerView | None:
        """The view of one peer; ``None`` when it is not connected."""
        ...


def no_route(view: PeerSet, destination: object) -> NoRoute:
    """The :class:`~overlay.errors.NoRoute` for ``destination`` selecting nobody from ``view``:
    ``NO_PEERS_CONNECTED`` when the node has no peer at all, else ``NO_PEER_MATCHES``."""
    if not view.connected_peers():
        return NoRoute(NoRouteReason.NO_PEERS_CONNECTED,
                       f"{destination!r} reached nobody: no peer is connected")
    return NoRoute(NoRouteReason.NO_PEER_MATCHES,
                   f"{destination!r} reached nobody: no connected peer matches")


class Destination(abc.ABC):
    """A set of targets chosen at send time. Subclass to add new kinds of addressing."""

    __slots__ = ()

    fanout: bool = False
    """True when sends go to many peers: each peer gets its own timeout and result, and one slow
    peer never blocks the others."""

    @abc.abstractmethod
    def select(self, view: PeerSet) -> Sequence[NodeId]:
        """Target node ids; ``view.local_id`` stands for LOCAL delivery. Selecting nobody makes
        the send raise :class:`~overlay.errors.NoRoute`."""

    async def run_request(
        self, view: PeerSet, attempt: Callable[[NodeId], Awaitable[T]]
    ) -> T:
        """Drive a request: by default exactly one target must be selected (none raises
        :class:`~overlay.errors.NoRoute`, several :class:`~overlay.errors.ChannelError`)."""
        targets = self.select(view)
        if not targets:
            raise no_route(view, self)
        if len(targets) != 1:
            raise ChannelError(
                f"a request needs exactly one target; {self!r} selected {len(targets)}"
            )
        return await attempt(targets[0])


class _Local(Destination):
    __slots__ = ()

    def select(self, view: PeerSet) -> Sequence[NodeId]:
        return (view.local_id,)

    def __repr__(self) -> str:
        return "LOCAL"


class _Broadcast(Destination):
    __slots__ = ()
    fanout = True

    def select(self, view: PeerSet) -> Sequence[NodeId]:
        return tuple(view.connected_peers())

    async def run_request(
        self, view: PeerSet, attempt: Callable[[NodeId], Awaitable[T]]
    ) -> T:
        raise ChannelError("BROADCAST cannot be used for request(); send() to it instead")

    def __repr__(self) -> str:
        return "BROADCAST"


LOCAL: Destination = _Local()
"""Deliver to this node's own subscriber of the channel, without serialising the message."""

BROADCAST: Destination = _Broadcast()
"""Deliver to every connected peer (per-peer bounded queues and timeouts); with no peer
connected, ``send()`` raises :class:`~overlay.errors.NoRoute` (``NO_PEERS_CONNECTED``)."""

To: TypeAlias = NodeId | Destination
"""Anything a channel can send to."""
