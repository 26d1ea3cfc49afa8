"""Peers' signed capability records from the hello and node-info updates, and confirmed claims.

Theory of operation
-------------------
:class:`PeerRecords` is an :class:`~overlay.connection._observer.Observer` of the node (placed
right after the peering driver, so the peer manager knows a peer before its record arrives).
A connected peer's NodeInfo carries its signed record in ``capability_record``:

* **Entry points.** The hello (``on_peer_connected``: the connection's NodeInfo) and every
  node-info update (``on_peer_info_updated``; an update that leaves the bytes unchanged, e.g.
  a channel opened, is not looked at again). Empty bytes mean "no record" and are ignored.
* **Verification** (:func:`discovery.verify_signed_record`): against the *authenticated* peer
  id (``expected_id``: a peer cannot present another node's record as its own), our network,
  the wall clock, and the highest seq known for that node (from its earlier hello or updates
  and from the record store: an older seq is a replay, ``STALE_SEQ``). Bytes equal to the
  stored record are the same record, not a replay.
* **A bad record** is counted by entry point and reason, and ignored: the connection stays
  open (the record is opaque to the wire protocol, which decoded fine; a receiver "that does
  not use it MUST ignore it"), and the peer keeps what it advertised before. A forged record
  (any reason but ``EXPIRED`` and ``STALE_SEQ``, which an honest peer with a skewed clock can
  cause) costs the peer ``INVALID_MESSAGE`` (-25) with the peer manager: a peer that keeps
  forging is disconnected at -50 and banned at -100 like any other misbehaving peer.
* **A valid record** goes to ``node.discovery.records`` (source: the peer itself, so
  handshake records are never crowded out by a flooding source), to the router's peer table
  (``PeerView.advertised``) and to the peer manager (``set_capability_record``: persisted in
  the peer store, so a restarted node still knows what its address book can serve;
  :meth:`restore` re-verifies those at start and drops the expired or invalid ones).
* **Confirmed claims.** :meth:`confirm` after a peer served a request for a capability,
  :meth:`refute` after it failed or refused one (``discovery.Confirmations``: confirmed until
  refuted; a refuted pair is suspect for its cool-down). A refute also costs the peer
  ``TIMEOUT`` (-5). ``PeerView.confirmed`` is the confirmed set limited to what the peer's
  current record advertises.

The record's times are unix seconds, so everything here runs on the wall clock (``clock``).
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING

from discovery import (
    Confirmations,
    RecordError,
    RecordRejection,
    RecordStore,
    SignedRecord,
    penalty_for_rejection,
    valid_capability_name,
    verify_signed_record,
)
from overlay.connection._observer import Observer
from overlay.errors import LocalProtocolError
from overlay.identity import NodeId
from overlay.peers import ScoreEvent
from overlay.router._router import Router
from overlay.wire._nodeinfo import NodeInfo

if TYPE_CHECKING:
    from overlay.node._peering import Peering
    from overlay.operator._metrics import NodeMetrics

__all__ = ["PeerRecords", "RecordEntry", "RecordStatistics"]

log = logging.getLogger("overlay.records")

class RecordEntry(enum.Enum):
    """Where a peer's record arrived (the value is a metrics label)."""

    HANDSHAKE = "handshake"
    UPDATE = "update"


@dataclass(frozen=True, slots=True)
class RecordStatistics:
    """Peer records received and rejected, by entry point (and reason)."""

    received: Mapping[RecordEntry, int]
    rejected: Mapping[tuple[RecordEntry, RecordRejection], int]
    restored: int
    """Records from the peer store accepted at start."""
    dropped_at_restore: int
    """Records from the peer store that no longer verified (mostly expired)."""


class PeerRecords(Observer):
    """Connected peers' verified records and confirmed capabilities (module docstring)."""

    def __init__(
        self,
        *,
        network: str,
        router: Router,
        store: RecordStore,
        claims: Confirmations | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._network = network
        self._router = router
        self._store = store
        self._claims = claims if claims is not None else Confirmations()
        self._clock = clock
        self._peers: dict[NodeId, SignedRecord] = {}
        self._peering: Peering | None = None
        self._metrics: NodeMetrics | None = None
        self._received: dict[RecordEntry, int] = {}
        self._rejected: dict[tuple[RecordEntry, RecordRejection], int] = {}
        self._restored = 0
        self._dropped = 0

    def start(self, peering: Peering, metrics: NodeMetrics | None) -> None:
        """The node started: score and persist through ``peering``, count in ``metrics``, and
        restore the records the peer store kept (:meth:`restore`; the dropped ones are
        cleared from it)."""
        self._peering = peering
        self._metrics = metrics
        manager = peering.manager
        for node_id in self.restore(manager.capability_records()):
            manager.set_capability_record(node_id, None, self._clock())

    # -- reading -----------------------------------------------------------------------------

    def record_of(self, peer: NodeId) -> SignedRecord | None:
        """The connected peer's current verified record."""
        return self._peers.get(peer)

    def advertised(self, peer: NodeId) -> frozenset[str]:
        signed = self._peers.get(peer)
        return frozenset() if signed is None else frozenset(signed.record.capabilities)

    def confirmed(self, peer: NodeId) -> frozenset[str]:
        """What ``peer`` proved by serving requests, among what it advertises now."""
        return self._claims.confirmed(peer) & self.advertised(peer)

    def is_suspect(self, peer: NodeId, capability: str) -> bool:
        """``peer`` failed a request for ``capability`` within the cool-down."""
        return self._claims.is_suspect(peer, capability, self._clock())

    def connected_records(self) -> list[SignedRecord]:
        """Current records of the connected peers (for the discovery service)."""
        return list(self._peers.values())

    def capability_counts(self) -> dict[str, tuple[int, int]]:
        """Per capability: connected peers advertising it, and those that confirmed it."""
        counts: dict[str, tuple[int, int]] = {}
        for peer, signed in self._peers.items():
            confirmed = self._claims.confirmed(peer)
            for name in signed.record.capabilities:
                advertised, proved = counts.get(name, (0, 0))
                counts[name] = (advertised + 1, proved + (name in confirmed))
        return counts

    def statistics(self) -> RecordStatistics:
        return RecordStatistics(
            received=MappingProxyType(dict(self._received)),
            rejected=MappingProxyType(dict(self._rejected)),
            restored=self._restored,
            dropped_at_restore=self._dropped,
        )

    # -- claims ------------------------------------------------------------------------------

    def confirm(self, peer: NodeId, capability: str) -> None:
        """``peer`` served a request for ``capability``."""
        _check_name(capability)
        self._claims.confirm(peer, capability)
        self._update_view(peer)

    def refute(self, peer: NodeId, capability: str) -> None:
        """A request to ``peer`` for ``capability`` failed or was refused: the claim is no
        longer confirmed, is suspect for the cool-down, and the peer loses score."""
        _check_name(capability)
        self._claims.refute(peer, capability, self._clock())
        self._update_view(peer)
        self._penalise(peer, ScoreEvent.TIMEOUT)

    # -- observer facts ----------------------------------------------------------------------

    def on_peer_connected(
        self, peer: NodeId, *, outbound: bool, remote_host: str, listen_addrs: tuple[str, ...]
    ) -> None:
        conn = self._router.get_peer(peer)
        if conn is not None:
            self.receive(peer, conn.info.capability_record, RecordEntry.HANDSHAKE)

    def on_peer_info_updated(self, peer: NodeId, info: NodeInfo) -> None:
        self.receive(peer, info.capability_record, RecordEntry.UPDATE)

    def on_peer_disconnected(self, peer: NodeId, reason: str) -> None:
        if self._router.get_peer(peer) is None:
            self._peers.pop(peer, None)

    # -- the work ----------------------------------------------------------------------------

    def receive(self, peer: NodeId, data: bytes, entry: RecordEntry) -> SignedRecord | None:
        """Check ``data``, the record ``peer`` presented as its own at ``entry``; the record
        adopted, or None when there was none or it was refused (see the module docstring)."""
        if not data:
            return None
        current = self._peers.get(peer)
        if current is not None and current.data == data:
            return current
        self._count_received(entry)
        now = self._clock()
        known = self._store.get(peer, now)
        if known is not None and known.data == data:
            self._adopt(peer, known, now)
            return known
        seqs = [s for s in (self._store.seq(peer), None if current is None else current.seq)
                if s is not None]
        newest = max(seqs) if seqs else None
        try:
            signed = verify_signed_record(data, network=self._network, now=now,
                                          expected_id=peer, newer_than=newest)
        except RecordError as exc:
            self._reject(peer, entry, exc)
            if current is None and known is not None:  # what we know of the node still holds
                self._adopt(peer, known, now)
            return None
        self._adopt(peer, signed, now)
        return signed

    def restore(self, records: Mapping[NodeId, bytes]) -> list[NodeId]:
        """Re-verify records kept in the peer store and offer the valid ones to the record
        store (each as its own source); the nodes whose record was dropped (expired, invalid),
        which the caller clears from the peer store."""
        now = self._clock()
        dropped: list[NodeId] = []
        for node_id, data in sorted(records.items()):
            try:
                signed = verify_signed_record(data, network=self._network, now=now,
                                              expected_id=node_id)
            except RecordError as exc:
                log.debug("dropped the stored record of %s: %s", node_id, exc)
                dropped.append(node_id)
                continue
            if self._store.offer(signed, now, source=node_id).stored:
                self._restored += 1
        self._dropped += len(dropped)
        return dropped

    def _adopt(self, peer: NodeId, signed: SignedRecord, now: float) -> None:
        self._peers[peer] = signed
        self._store.offer(signed, now, source=peer)
        self._update_view(peer)
        peering = self._peering
        if peering is not None and peering.manager.set_capability_record(peer, signed.data, now):
            peering.wake()

    def _update_view(self, peer: NodeId) -> None:
        self._router.peer_table.set_capabilities(
            peer, advertised=self.advertised(peer), confirmed=self.confirmed(peer)
        )

    def _count_received(self, entry: RecordEntry) -> None:
        self._received[entry] = self._received.get(entry, 0) + 1
        if self._metrics is not None:
            self._metrics.record_received(entry.value)

    def _reject(self, peer: NodeId, entry: RecordEntry, exc: RecordError) -> None:
        key = (entry, exc.reason)
        self._rejected[key] = self._rejected.get(key, 0) + 1
        if self._metrics is not None:
            self._metrics.record_rejected(entry.value, exc.reason.value)
        blamed = penalty_for_rejection(exc.reason) is not None
        log.info("ignored the capability record %s sent in its %s%s: %s", peer, entry.value,
                 " (penalised)" if blamed else "", exc, extra={"peer": peer})
        if blamed:
            self._penalise(peer, ScoreEvent.INVALID_MESSAGE)

    def _penalise(self, peer: NodeId, event: ScoreEvent) -> None:
        peering = self._peering
        if peering is None:
            return
        peering.manager.report(peer, event, self._clock())
        peering.sync_metrics()
        peering.wake()


def _check_name(capability: str) -> None:
    if not isinstance(capability, str) or not valid_capability_name(capability):
        raise LocalProtocolError(f"not a capability name: {capability!r}")
