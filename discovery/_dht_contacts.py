"""The DHT's contacts: the routing table plus each contact's verified record (pure, sans-IO).

Theory of operation
-------------------
The routing table deals in ids; dialing a contact and answering FIND_NODE need its signed
record. ``ContactBook`` keeps both in step:

* every id the table holds (buckets and replacement caches) has a record here, the one with
  the highest ``seq`` seen; records of ids the table dropped are pruned when the map grows past
  ``2 * len(table) + 256``;
* a peer penalised by a lookup is **distrusted**: dropped from the table and refused by ``add``
  until ``distrust_for`` seconds have passed (at most ``max_distrusted`` remembered, oldest
  forgotten first), so honest answers naming it do not bring it straight back;
* ``closest_records`` never hands out an expired record.

Time is the caller's wall-clock ``now``.
"""

from __future__ import annotations

from collections.abc import Callable

from discovery._dht_table import AddOutcome, RoutingTable
from discovery._keys import node_id_bytes
from discovery._record import CapabilityRecord, SignedRecord
from overlay.identity import NodeId

__all__ = ["ContactBook"]


class ContactBook:
    """A routing table and its contacts' records (see the module docstring)."""

    def __init__(
        self,
        table: RoutingTable,
        *,
        netgroup: Callable[[CapabilityRecord], str | None],
        distrust_for: float,
        max_distrusted: int,
    ) -> None:
        self.table = table
        self._netgroup = netgroup
        self._distrust_for = distrust_for
        self._max_distrusted = max_distrusted
        self._records: dict[bytes, SignedRecord] = {}
        self._distrusted: dict[bytes, float] = {}  # node -> until, oldest first

    def __contains__(self, node: object) -> bool:
        return node in self._records

    def netgroup(self, record: CapabilityRecord) -> str | None:
        """The diversity group of a contact's advertised address (None: exempt)."""
        return self._netgroup(record)

    def record(self, node: bytes) -> SignedRecord | None:
        return self._records.get(node)

    def held_seq(self, node_id: NodeId) -> int | None:
        """The highest seq held for ``node_id`` (older records are replays)."""
        held = self._records.get(node_id_bytes(node_id))
        return None if held is None else held.seq

    def add(self, signed: SignedRecord, *, verified: bool, now: float) -> AddOutcome | None:
        """Offer a verified record's node; None when the node is distrusted."""
        node = node_id_bytes(signed.node_id)
        until = self._distrusted.get(node)
        if until is not None:
            if until > now:
                return None
            del self._distrusted[node]
        outcome = self.table.add(node, self._netgroup(signed.record), verified=verified, now=now)
        if outcome is not AddOutcome.REJECTED_SELF:
            self._remember(node, signed)
        return outcome

    def remove(self, node: bytes) -> None:
        self.table.remove(node)
        self._records.pop(node, None)

    def distrust(self, node: bytes, now: float) -> None:
        """Drop a misbehaving contact and refuse it for ``distrust_for`` seconds."""
        self.table.remove(node)
        self._distrusted.pop(node, None)
        self._distrusted[node] = now + self._distrust_for
        while len(self._distrusted) > self._max_distrusted:
            del self._distrusted[next(iter(self._distrusted))]

    def seeds(self, target: bytes, k: int) -> list[bytes]:
        """The ``k`` nearest contacts to ``target`` with a record (a lookup's seeds)."""
        return [node for node in self.table.closest(target, k) if node in self._records]

    def closest_records(self, target: bytes, k: int, now: float) -> tuple[bytes, ...]:
        """Envelope bytes of the ``k`` nearest live contacts (a FIND_NODE answer)."""
        out: list[bytes] = []
        for node in self.table.closest(target, k):
            signed = self._records.get(node)
            if signed is not None and signed.record.expires_at > now:
                out.append(signed.data)
        return tuple(out)

    def _remember(self, node: bytes, signed: SignedRecord) -> None:
        known = self._records.get(node)
        if known is None or signed.seq > known.seq:
            self._records[node] = signed
        if len(self._records) > 2 * len(self.table) + 256:
            keep = {c.node_id for c in self.table.contacts()}
            for index in self.table.bucket_sizes():
                keep.update(self.table.replacements(index))
            for stale in [n for n in self._records if n not in keep]:
                del self._records[stale]
