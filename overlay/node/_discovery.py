"""The node's discovery state: what every discovery and routing service of the node shares.

One object per node (``node.discovery``), created with the node. The records it holds are
verified signed capability records (``discovery.RecordStore``: the newest per node, indexed by
capability); the services that fill and read them (handshake records, PEX, the DHT, the policy
engine) each live in their own module of ``overlay.node`` and are started by
:class:`~overlay.node._services.NodeServices`.

**The one way to ask "who serves X?"** is :meth:`DiscoveryState.candidates`: a
:class:`discovery.CapabilityView` over the connected peers' records, the record store, PEX and
the DHT, in that order of cost, within a budget per call (docs/discovery.md, "Services"). It
exists while the node runs; its confirmed and refuted claims are the ones
``node.discovery.confirm`` / ``refute`` keep (one ``Confirmations`` for the node).

Reserved channel ids: the node's own protocols use ids below :data:`FIRST_APP_CHANNEL`
(``0x01`` ping, ``0x02`` PEX, ``0x03`` DHT); applications use the rest.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import AbstractAsyncContextManager
from typing import assert_never

from discovery import (
    Budget,
    Candidate,
    CandidateStream,
    CapabilityView,
    Confirmations,
    DiscoveryStatistics,
    Penalty,
    PexClient,
    ProviderLookups,
    RecordStore,
    RecordStoreConfig,
)
from discovery import DiscoveryConfig as ViewConfig
from overlay.connection._observer import Observer
from overlay.errors import NodeClosed
from overlay.identity import NodeId
from overlay.node._peer_records import PeerRecords
from overlay.router._router import Router

__all__ = [
    "DHT_CHANNEL_ID",
    "DiscoveryState",
    "FIRST_APP_CHANNEL",
    "PEX_CHANNEL_ID",
    "report_penalty",
    "score_event_of",
]

PEX_CHANNEL_ID = 0x02
"""Peer exchange of signed capability records (request/response)."""
DHT_CHANNEL_ID = 0x03
"""Kademlia DHT queries (request/response), on peer and transient connections alike."""
FIRST_APP_CHANNEL = 0x10
"""Channel ids below this are reserved for the node's own protocols."""


def score_event_of(penalty: Penalty) -> str:
    """The observer fact a discovery penalty becomes: ``protocol_violation`` for provable
    forgery (a forged, spoofed or foreign-network record), ``invalid_message`` otherwise."""
    match penalty:
        case Penalty.FORGED_RECORD | Penalty.SPOOFED_ID | Penalty.WRONG_NETWORK:
            return "protocol_violation"
        case (Penalty.UNRELATED_PROVIDER | Penalty.MALFORMED_ANSWER | Penalty.TOO_MANY_CONTACTS
              | Penalty.FAR_CONTACTS | Penalty.CAPABILITY_REFUTED):
            return "invalid_message"
        case unreachable:
            assert_never(unreachable)


def report_penalty(
    observer: Observer, peer: NodeId, penalty: Penalty, *, channel: str, source: str
) -> None:
    """Tell the node's observers (the peer manager scores it) that ``peer`` earned
    ``penalty`` on ``channel``; the reason reads ``"{source}: {penalty}"``."""
    reason = f"{source}: {penalty.value}"
    match score_event_of(penalty):
        case "protocol_violation":
            observer.on_protocol_violation(peer, reason)
        case _:
            observer.on_invalid_message(peer, channel, reason)


class DiscoveryState:
    """Verified capability records known to this node (from handshakes, PEX and the DHT), the
    connected peers' records and confirmed capabilities, and :meth:`candidates`."""

    __slots__ = ("_network", "_view", "claims", "peers", "records")

    def __init__(
        self, records: RecordStoreConfig | None = None, *, network: str, router: Router
    ) -> None:
        self._network = network
        self.records = RecordStore(records)
        """Newest verified record per node; every entry point verifies before offering."""
        self.claims = Confirmations()
        """Confirmed and refuted capability claims (``confirm`` / ``refute``)."""
        self.peers = PeerRecords(
            network=network, router=router, store=self.records, claims=self.claims
        )
        """Connected peers' records from their hello and updates (``overlay.node._peer_records``)
        and which of their capabilities are confirmed."""
        self._view: CapabilityView | None = None

    # -- candidates ------------------------------------------------------------------------------

    def start(
        self,
        *,
        local_id: NodeId,
        pex: PexClient | None,
        dht: ProviderLookups | None,
        penalise: Callable[[NodeId, Penalty], None],
        wall_clock: Callable[[], float],
        config: ViewConfig | None = None,
    ) -> None:
        """The node started: answer :meth:`candidates` from its peers, the record store and,
        when enabled, PEX and the DHT; ``wall_clock`` (unix seconds) judges records' times."""
        self._view = CapabilityView(
            config or ViewConfig(network=self._network),
            local_id=local_id,
            connected=self.peers.connected_records,
            address_book=self.records,
            wall_clock=wall_clock,
            pex=pex,
            dht=dht,
            penalise=penalise,
            claims=self.claims,
        )

    def stop(self) -> None:
        self._view = None

    @property
    def view(self) -> CapabilityView:
        """The capability view (while the node runs; ``NodeClosed`` otherwise)."""
        if self._view is None:
            raise NodeClosed("discovery runs while the node runs")
        return self._view

    def candidates(
        self,
        capability: str,
        *,
        limit: int = 8,
        budget: Budget | None = None,
        exclude: Iterable[NodeId] = (),
    ) -> AbstractAsyncContextManager[CandidateStream]:
        """Stream up to ``limit`` nodes whose verified records advertise ``capability``,
        cheapest source first (connected peers, the record store, PEX, the DHT), spending at
        most ``budget`` (default: 64 messages, 5 s)::

            async with node.discovery.candidates("archive", limit=3) as found:
                async for candidate in found:
                    print(candidate.node_id, candidate.source, candidate.confirmed)

        Each ``Candidate`` has the verified ``signed`` record (``record.dial_addresses()``),
        its ``source``, and whether it is ``connected`` and ``confirmed``. Records found by
        PEX and the DHT enter :attr:`records`. ``NodeClosed`` when the node is not running;
        ``LocalProtocolError`` for a bad capability name or limit."""
        return self.view.candidates(capability, limit=limit, budget=budget, exclude=exclude)

    async def collect(
        self,
        capability: str,
        *,
        limit: int = 8,
        budget: Budget | None = None,
        exclude: Iterable[NodeId] = (),
    ) -> list[Candidate]:
        """Every candidate of one :meth:`candidates` call, in order."""
        return await self.view.collect(capability, limit=limit, budget=budget, exclude=exclude)

    def statistics(self) -> DiscoveryStatistics:
        """Calls, candidates by source, budgets exhausted, PEX requests of :meth:`candidates`."""
        return self.view.statistics()

    # -- claims ----------------------------------------------------------------------------------

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
