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
    """Verified capability records known to this node (from handshakes, PEX and the DHT)."""

    __slots__ = ("records",)

    def __init__(self, records: RecordStoreConfig | None = None) -> None:
        self.records = RecordStore(records)
        """Newest verified record per node; every entry point verifies before offering."""
