"""Destinations: where a message or a request goes.

A destination is either a bare :data:`~overlay.identity.NodeId` (one connected peer) or a
:class:`Destination` object. The router never looks inside a destination: it asks it to
``select`` target node ids from a :class:`PeerView` (the local node's own id means LOCAL
delivery), and for requests it lets the destination drive the attempts through ``run_request``.
That is the extension point: the capability-routing layer adds a ``Role`` destination (pick the
healthiest peer with a capability, hedge to the next one) without touching the router.
"""

from __future__ import annotations

import abc
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol, TypeAlias, TypeVar

from overlay.errors import ChannelError
from overlay.identity import NodeId

__all__ = [
    "BROADCAST",
    "Destination",
    "LOCAL",
    "PeerView",
    "To",
]

T = TypeVar("T")


class PeerView(Protocol):
    """What a destination may look at when selecting targets (read-only)."""

    @property
    def local_id(self) -> NodeId: ...

    def connected_peers(self) -> Sequence[NodeId]:
        """Node ids of the peers connected right now."""
        ...


class Destination(abc.ABC):
    """A set of targets chosen at send time. Subclass to add new kinds of addressing."""

    __slots__ = ()

    fanout: bool = False
    """True when sends go to many peers: each peer gets its own timeout and result, and one slow
    peer never blocks the others."""

    @abc.abstractmethod
    def select(self, view: PeerView) -> Sequence[NodeId]:
        """Target node ids; ``view.local_id`` stands for LOCAL delivery."""

    async def run_request(
        self, view: PeerView, attempt: Callable[[NodeId], Awaitable[T]]
    ) -> T:
        """Drive a request: by default exactly one target must be selected."""
        targets = self.select(view)
        if len(targets) != 1:
            raise ChannelError(
                f"a request needs exactly one target; {self!r} selected {len(targets)}"
            )
        return await attempt(targets[0])


class _Local(Destination):
    __slots__ = ()

    def select(self, view: PeerView) -> Sequence[NodeId]:
        return (view.local_id,)

    def __repr__(self) -> str:
        return "LOCAL"


class _Broadcast(Destination):
    __slots__ = ()
    fanout = True

    def select(self, view: PeerView) -> Sequence[NodeId]:
        return tuple(view.connected_peers())

    async def run_request(
        self, view: PeerView, attempt: Callable[[NodeId], Awaitable[T]]
    ) -> T:
        raise ChannelError("BROADCAST cannot be used for request(); send() to it instead")

    def __repr__(self) -> str:
        return "BROADCAST"


LOCAL: Destination = _Local()
"""Deliver to this node's own subscriber of the channel, without serialising the message."""

BROADCAST: Destination = _Broadcast()
"""Deliver to every connected peer (per-peer bounded queues and timeouts)."""

To: TypeAlias = NodeId | Destination
"""Anything a channel can send to."""
