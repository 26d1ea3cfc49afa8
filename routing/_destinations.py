"""Role and group destinations: plain values any channel accepts.

``Role("blocksync")`` addresses *one* connected peer with a capability; ``Group("blocksync")``
addresses *all* of them (or the ``n`` healthiest)::

    block = await ch.request(Role("blocksync"), GetBlock(height=7), timeout=2)
    await ch.send(Group("blocksync"), Announce(...))          # fan-out, per-peer report

On a node the router hands them to :meth:`routing._role.RoleService.bind`, which gives them the
node's peer health, hedging and discovery. Unbound (a router without a routing layer) a
``Role`` simply picks the connected peer with the capability and the smallest round trip, and a
``Group`` all of them.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from discovery._keys import valid_capability_name
from overlay.errors import ChannelError
from overlay.identity import NodeId
from overlay.router._destination import Destination, PeerSet, PeerView

__all__ = ["Group", "Role"]

T = TypeVar("T")


def _check_capability(capability: str) -> None:
    if not isinstance(capability, str) or not valid_capability_name(capability):
        raise ChannelError(f"not a capability name: {capability!r}")


def _unbound_holders(view: PeerSet, capability: str) -> list[PeerView]:
    found = [v for v in view.peers() if capability in (v.confirmed | v.advertised)]
    return sorted(found, key=lambda v: (v.rtt if v.rtt is not None else math.inf, v.node_id))


@dataclass(frozen=True, slots=True)
class Role(Destination):
    """One connected peer with ``capability``: the healthiest, hedged to the next ones."""

    capability: str
    allow_local: bool = False
    """Let this node serve the request itself (``LOCAL``) when it has the capability."""

    def __post_init__(self) -> None:
        _check_capability(self.capability)

    def select(self, view: PeerSet) -> Sequence[NodeId]:
        holders = _unbound_holders(view, self.capability)
        return (holders[0].node_id,) if holders else ()

    def __repr__(self) -> str:
        return f"Role({self.capability!r})"


@dataclass(frozen=True, slots=True)
class Group(Destination):
    """Every connected peer with ``capability`` (or the ``n`` healthiest): a fan-out."""

    capability: str
    n: int | None = None
    """At most this many members (the healthiest); None: all of them."""
    allow_local: bool = False
    """Include this node itself when it has the capability."""

    fanout = True

    def __post_init__(self) -> None:
        _check_capability(self.capability)
        if self.n is not None and (isinstance(self.n, bool) or self.n < 1):
            raise ChannelError(f"Group n must be at least 1, got {self.n!r}")

    def select(self, view: PeerSet) -> Sequence[NodeId]:
        holders = [v.node_id for v in _unbound_holders(view, self.capability)]
        return tuple(holders if self.n is None else holders[: self.n])

    async def run_request(
        self, view: PeerSet, attempt: Callable[[NodeId], Awaitable[T]]
    ) -> T:
        raise ChannelError(
            f"{self!r} addresses several peers: use node.routing.group_request() for a "
            "per-peer result, or send() to it"
        )

    def __repr__(self) -> str:
        n = "" if self.n is None else f", n={self.n}"
        return f"Group({self.capability!r}{n})"
