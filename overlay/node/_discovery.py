"""The node's discovery state: what every discovery and routing service of the node shares.

One object per node (``node.discovery``), created with the node. The records it holds are
verified signed capability records (``discovery.RecordStore``: the newest per node, indexed by
capability); the services that fill and read them (handshake records, PEX, the DHT, the policy
engine) each live in their own module of ``overlay.node`` and are started by
:class:`~overlay.node._services.NodeServices`.

Reserved channel ids: the node's own protocols use ids below :data:`FIRST_APP_CHANNEL`
(``0x01`` ping, ``0x02`` PEX, ``0x03`` DHT); applications use the rest.
"""

from __future__ import annotations

from discovery import RecordStore, RecordStoreConfig
from overlay.identity import NodeId
from overlay.node._peer_records import PeerRecords
from overlay.router._router import Router

__all__ = [
    "DHT_CHANNEL_ID",
    "DiscoveryState",
    "FIRST_APP_CHANNEL",
    "PEX_CHANNEL_ID",
]

PEX_CHANNEL_ID = 0x02
"""Peer exchange of signed capability records (request/response)."""
DHT_CHANNEL_ID = 0x03
"""Kademlia DHT queries (request/response), on peer and transient connections alike."""
FIRST_APP_CHANNEL = 0x10
"""Channel ids below this are reserved for the node's own protocols."""


class DiscoveryState:
    """Verified capability records known to this node (from handshakes, PEX and the DHT) and
    the connected peers' records and confirmed capabilities."""

    __slots__ = ("peers", "records")

    def __init__(
        self, records: RecordStoreConfig | None = None, *, network: str, router: Router
    ) -> None:
        self.records = RecordStore(records)
        """Newest verified record per node; every entry point verifies before offering."""
        self.peers = PeerRecords(network=network, router=router, store=self.records)
        """Connected peers' records from their hello and updates (``overlay.node._peer_records``)
        and which of their capabilities are confirmed."""

    def confirm(self, peer: NodeId, capability: str) -> None:
        """``peer`` served a request for ``capability``: it counts as confirmed
        (``PeerView.confirmed``) until a request for it fails."""
        self.peers.confirm(peer, capability)

    def refute(self, peer: NodeId, capability: str) -> None:
        """A request to ``peer`` for ``capability`` failed or was refused: no longer confirmed,
        suspect for a while, and the peer loses score."""
        self.peers.refute(peer, capability)

    def confirmed(self, peer: NodeId) -> frozenset[str]:
        """The capabilities ``peer`` advertises and proved by serving a request."""
        return self.peers.confirmed(peer)
