"""The connected peers as destinations see them.

A :class:`PeerTable` holds the router's live connections by node id and is the
:class:`~overlay.router._destination.PeerSet` every destination selects from. Ids come straight
from the table; a :class:`~overlay.router._destination.PeerView` is built only when a destination
asks for one (from the connection's round-trip meter, the peer's current NodeInfo, that is its
hello or its latest node-info update, the node's score source and the capabilities discovery
recorded), so sending to ``BROADCAST`` or a peer id allocates no views.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from overlay.connection._driver import PeerConnection
from overlay.identity import NodeId
from overlay.router._destination import PeerView
from overlay.transport._failures import Direction

__all__ = ["PeerTable", "ScoreSource"]

ScoreSource = Callable[[NodeId], float | None]
"""Gives a connected peer's score (the peer manager's), or None when it has none."""

_NONE: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class _Capabilities:
    advertised: frozenset[str]
    confirmed: frozenset[str]


class PeerTable:
    """Connected peers by node id; the :class:`~overlay.router._destination.PeerSet` of
    destinations."""

    __slots__ = ("_capabilities", "_local_id", "_score_source", "connections")

    def __init__(self, local_id: NodeId) -> None:
        self._local_id = local_id
        self.connections: dict[NodeId, PeerConnection] = {}
        """The live connections (the router reads this dict directly on the hot path)."""
        self._capabilities: dict[NodeId, _Capabilities] = {}
        self._score_source: ScoreSource | None = None

    # --------------------------------------------------------------------------- PeerSet

    @property
    def local_id(self) -> NodeId:
        return self._local_id

    def connected_peers(self) -> Sequence[NodeId]:
        return tuple(self.connections)

    def peers(self) -> Sequence[PeerView]:
        return tuple(self._view(conn) for conn in self.connections.values())

    def peer(self, node_id: NodeId) -> PeerView | None:
        conn = self.connections.get(node_id)
        return None if conn is None else self._view(conn)

    def _view(self, conn: PeerConnection) -> PeerView:
        meter = conn.meter
        caps = self._capabilities.get(conn.node_id)
        source = self._score_source
        return PeerView(
            node_id=conn.node_id,
            direction=Direction.OUTBOUND if conn.outbound else Direction.INBOUND,
            connected_since=conn.connected_at,
            rtt=meter.rtt,
            requests_in_flight=meter.in_flight,
            channels=conn.channels,  # live: updated by the peer's node-info updates
            requests_in_flight_by_channel=meter.in_flight_by_channel(),
            score=None if source is None else source(conn.node_id),
            advertised=_NONE if caps is None else caps.advertised,
            confirmed=_NONE if caps is None else caps.confirmed,
        )

    # ---------------------------------------------------------------------------- updates

    def add(self, conn: PeerConnection) -> None:
        self.connections[conn.node_id] = conn

    def remove(self, conn: PeerConnection) -> None:
        """Forget ``conn`` (and its peer's capabilities) unless another connection replaced it."""
        if self.connections.get(conn.node_id) is conn:
            del self.connections[conn.node_id]
            self._capabilities.pop(conn.node_id, None)

    def set_score_source(self, source: ScoreSource | None) -> None:
        """Where :attr:`PeerView.score` comes from (the node sets its peer manager's)."""
        self._score_source = source

    def set_capabilities(
        self, node_id: NodeId, *, advertised: frozenset[str], confirmed: frozenset[str]
    ) -> bool:
        """Record a connected peer's capabilities for its views (discovery calls this; they are
        forgotten when the peer disconnects). False, and nothing recorded, when the peer is not
        connected."""
        if node_id not in self.connections:
            return False
        self._capabilities[node_id] = _Capabilities(frozenset(advertised), frozenset(confirmed))
        return True
