"""The record store: the newest verified record of each node, indexed by capability.

Theory of operation
-------------------
A pure, bounded map ``node id -> (SignedRecord, source)``. Records enter through :meth:`offer`
already verified (``verify_signed_record``); the store only compares sequence numbers, expiry
times and limits. Invariants:

* at most one record per node, the one with the highest ``seq`` seen and not yet expired:
  a lower or equal ``seq`` is ``STALE`` (a replay, or the same record again), a higher one
  ``REPLACED``;
* ``len(store) <= max_records`` and at most ``max_per_source`` records attributed to one
  source (the peer that handed them over) when they enter; a node's record moves to the source
  of its newest version;
* ``by_capability[c]`` is exactly the set of stored nodes whose record has ``c``;
* no lookup returns a record with ``expires_at <= now``; :meth:`expire` removes them and
  :meth:`next_expiry` says when to call it next.

Eviction when full: expired records go first; then the record expiring soonest among those of
the source holding the most records. A source flooding the store therefore mostly displaces its
own records, never the one-per-source records learned from connected peers' handshakes.
"""

from __future__ import annotations

import enum
import heapq
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from discovery._record import CapabilityRecord, SignedRecord
from overlay.errors import ConfigError
from overlay.identity import NodeId

__all__ = ["OfferOutcome", "OfferResult", "RecordStore", "RecordStoreConfig"]


class OfferOutcome(enum.Enum):
    """What :meth:`RecordStore.offer` did with a record."""

    ACCEPTED = "accepted"
    """A node the store did not know (or whose record had expired)."""
    REPLACED = "replaced"
    """A higher seq replaced the stored record (``OfferResult.previous``)."""
    STALE = "stale"
    """The stored record's seq is at least as high: nothing changed."""
    EXPIRED = "expired"
    """The record had already expired at ``now``: nothing changed."""
    SOURCE_LIMIT = "source_limit"
    """The source already accounts for ``max_per_source`` records: nothing changed."""


@dataclass(frozen=True, slots=True)
class OfferResult:
    outcome: OfferOutcome
    previous: SignedRecord | None = None
    """The record it replaced (``REPLACED``)."""
    evicted: tuple[NodeId, ...] = ()
    """Nodes whose records were dropped to make room (expired ones included)."""

    @property
    def stored(self) -> bool:
        return self.outcome in (OfferOutcome.ACCEPTED, OfferOutcome.REPLACED)


@dataclass(frozen=True, slots=True)
class RecordStoreConfig:
    """Limits of a :class:`RecordStore`."""

    max_records: int = 4096
    """Records kept in all (one per node)."""
    max_per_source: int = 256
    """New nodes one source may bring in (a source is the peer that handed records over)."""

    def __post_init__(self) -> None:
        if self.max_records < 1:
            raise ConfigError("max_records", "must be at least 1")
        if self.max_per_source < 1:
            raise ConfigError("max_per_source", "must be at least 1")


@dataclass(slots=True)
class _Entry:
    signed: SignedRecord
    source: str
    received_at: float


def _matches(entry: _Entry, expires_at: int, seq: int) -> bool:
    """A heap item still describes the stored record (else it is a leftover, skipped)."""
    return entry.signed.seq == seq and entry.signed.record.expires_at == expires_at


class RecordStore:
    """Newest record per node, by capability (see the module docstring). Pure: pass ``now``."""

    def __init__(self, config: RecordStoreConfig | None = None) -> None:
        self._config = config or RecordStoreConfig()
        self._entries: dict[NodeId, _Entry] = {}
        self._by_capability: dict[str, set[NodeId]] = {}
        self._by_source: dict[str, set[NodeId]] = {}
        self._expiry: list[tuple[int, NodeId, int]] = []  # (expires_at, node, seq); lazy deletes

    # -- changes ---------------------------------------------------------------------------

    def offer(self, signed: SignedRecord, now: float, source: str) -> OfferResult:
        """Keep ``signed`` if it is the newest record of its node (``signed`` must be verified)."""
        record = signed.record
        if record.expires_at <= now:
            return OfferResult(OfferOutcome.EXPIRED)
        current = self._entries.get(record.node_id)
        if current is not None and current.signed.record.expires_at <= now:
            self._remove(record.node_id)
            current = None
        if current is not None:
            if record.seq <= current.signed.seq:
                return OfferResult(OfferOutcome.STALE)
            self._remove(record.node_id)
            self._insert(_Entry(signed, source, now))
            return OfferResult(OfferOutcome.REPLACED, previous=current.signed)
        if len(self._by_source.get(source, ())) >= self._config.max_per_source:
            return OfferResult(OfferOutcome.SOURCE_LIMIT)
        evicted: list[NodeId] = []
        if len(self._entries) >= self._config.max_records:
            evicted.extend(self.expire(now))
        while len(self._entries) >= self._config.max_records:
            evicted.append(self._evict_one(source))
        self._insert(_Entry(signed, source, now))
        return OfferResult(OfferOutcome.ACCEPTED, evicted=tuple(evicted))

    def remove(self, node_id: NodeId) -> SignedRecord | None:
        """Forget a node's record (e.g. the node was banned); the record, if there was one."""
        entry = self._entries.get(node_id)
        if entry is None:
            return None
        self._remove(node_id)
        return entry.signed

    def expire(self, now: float) -> list[NodeId]:
        """Drop every record with ``expires_at <= now``; the nodes dropped."""
        dropped: list[NodeId] = []
        while self._expiry and self._expiry[0][0] <= now:
            expires_at, node_id, seq = heapq.heappop(self._expiry)
            entry = self._entries.get(node_id)
            if entry is not None and _matches(entry, expires_at, seq):
                self._remove(node_id)
                dropped.append(node_id)
        return dropped

    # -- views ---------------------------------------------------------------------------------

    def get(self, node_id: NodeId, now: float) -> SignedRecord | None:
        """The node's live record, if any."""
        entry = self._entries.get(node_id)
        if entry is None or entry.signed.record.expires_at <= now:
            return None
        return entry.signed

    def seq(self, node_id: NodeId) -> int | None:
        """The highest seq stored for the node (for ``verify_record(newer_than=...)``)."""
        entry = self._entries.get(node_id)
        return None if entry is None else entry.signed.seq

    def source(self, node_id: NodeId) -> str | None:
        entry = self._entries.get(node_id)
        return None if entry is None else entry.source

    def candidates(
        self,
        capability: str,
        now: float,
        *,
        key: Callable[[CapabilityRecord], float] | None = None,
        limit: int | None = None,
        exclude: Iterable[NodeId] = (),
    ) -> list[SignedRecord]:
        """Live records advertising ``capability``, ordered by ``key`` (lowest first; ties by
        node id), at most ``limit``. Without ``key`` the order is by node id."""
        skip = set(exclude)
        found = [
            entry.signed
            for node_id in self._by_capability.get(capability, ())
            if node_id not in skip
            and (entry := self._entries[node_id]).signed.record.expires_at > now
        ]
        if key is None:
            found.sort(key=lambda s: s.node_id)
        else:
            found.sort(key=lambda s: (key(s.record), s.node_id))
        return found if limit is None else found[: max(0, limit)]

    def capabilities(self) -> dict[str, int]:
        """How many stored records advertise each capability."""
        return {cap: len(nodes) for cap, nodes in sorted(self._by_capability.items())}

    def records(self, now: float) -> list[SignedRecord]:
        """Every live record, by node id."""
        return [
            e.signed
            for _, e in sorted(self._entries.items())
            if e.signed.record.expires_at > now
        ]

    def next_expiry(self) -> float | None:
        """When the earliest stored record expires (call :meth:`expire` then), or None."""
        while self._expiry:
            expires_at, node_id, seq = self._expiry[0]
            entry = self._entries.get(node_id)
            if entry is not None and _matches(entry, expires_at, seq):
                return float(expires_at)
            heapq.heappop(self._expiry)
        return None

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, node_id: object) -> bool:
        return node_id in self._entries

    # -- internals -----------------------------------------------------------------------------

    def _insert(self, entry: _Entry) -> None:
        record = entry.signed.record
        node_id = record.node_id
        self._entries[node_id] = entry
        for capability in record.capabilities:
            self._by_capability.setdefault(capability, set()).add(node_id)
        self._by_source.setdefault(entry.source, set()).add(node_id)
        heapq.heappush(self._expiry, (record.expires_at, node_id, record.seq))

    def _remove(self, node_id: NodeId) -> None:
        entry = self._entries.pop(node_id)
        for capability in entry.signed.record.capabilities:
            nodes = self._by_capability[capability]
            nodes.discard(node_id)
            if not nodes:
                del self._by_capability[capability]
        nodes = self._by_source[entry.source]
        nodes.discard(node_id)
        if not nodes:
            del self._by_source[entry.source]
        # The heap entry is left behind and skipped lazily (its seq no longer matches).
        if len(self._expiry) > 2 * len(self._entries) + 64:
            self._expiry = [
                (e.signed.record.expires_at, n, e.signed.seq) for n, e in self._entries.items()
            ]
            heapq.heapify(self._expiry)

    def _evict_one(self, incoming_source: str) -> NodeId:
        """Drop the soonest-expiring record of the largest source (ties: the incoming one's)."""
        largest = max(
            self._by_source.items(),
            key=lambda item: (len(item[1]), item[0] == incoming_source, item[0]),
        )[1]
        victim = min(
            largest, key=lambda n: (self._entries[n].signed.record.expires_at, n)
        )
        self._remove(victim)
        return victim
