"""The peer directory: one :class:`~overlay.peers._records.PeerRecord` per known node id.

Theory of operation
-------------------
The directory owns the records and the set of node ids whose record changed since the last
``Persist`` (``dirty``; a dirty id without a record, or with one not worth storing, becomes a
delete). It stays bounded: creating a record when there are ``max_peer_records`` plus a margin
forgets the least recently seen *disposable* records: not connected, not being dialed, without
flags and not *pinned* (the ``pinned`` callback names those: peers with an address-book entry,
pending operator dials and protected peers). Banned records go first.

Configuration flags (``unconditional_peers``, ``private_peers``) are put on every record when
it is created; they are never persisted. The capability record each peer may carry is opaque
here: discovery verifies it, the directory only keeps the newest one and persists it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Set

from overlay.errors import LocalProtocolError
from overlay.identity import NodeId
from overlay.peers._config import PeerManagerConfig
from overlay.peers._records import PeerRecord, record_from_stored
from overlay.peers._state import StoredPeer
from overlay.peers._types import PeerFlag

__all__ = ["MAX_CAPABILITY_RECORD_BYTES", "PeerDirectory"]

MAX_CAPABILITY_RECORD_BYTES = 4096
"""Largest opaque capability record the manager keeps per peer."""


class PeerDirectory:
    """Every known peer's record, the dirty set, and bounded growth."""

    def __init__(
        self,
        config: PeerManagerConfig,
        self_id: NodeId,
        *,
        pinned: Callable[[], Set[NodeId]],
    ) -> None:
        self._config = config
        self.self_id = self_id
        self.unconditional = config.unconditional_ids()
        self.private = config.private_ids()
        self._pinned = pinned
        self._records: dict[NodeId, PeerRecord] = {}
        self.dirty: set[NodeId] = set()

    def __len__(self) -> int:
        return len(self._records)

    def __contains__(self, node_id: object) -> bool:
        return node_id in self._records

    def __getitem__(self, node_id: NodeId) -> PeerRecord:
        return self._records[node_id]

    def __iter__(self) -> Iterator[PeerRecord]:
        return iter(self._records.values())

    def get(self, node_id: NodeId) -> PeerRecord | None:
        return self._records.get(node_id)

    def touch(self, node_id: NodeId) -> None:
        """``node_id``'s record changed: persist it (or its deletion) with the next batch."""
        self.dirty.add(node_id)

    def ensure(self, node_id: NodeId, source: str, now: float) -> PeerRecord:
        """The record of ``node_id``, created (with its configuration flags) if new."""
        rec = self._records.get(node_id)
        if rec is not None:
            return rec
        limit = self._config.max_peer_records
        if len(self._records) >= limit + max(16, limit // 10):
            self.prune(now)
        rec = PeerRecord(node_id, source, first_seen=now, last_seen=now, score_time=now)
        if node_id in self.unconditional:
            rec.config_flags.add(PeerFlag.UNCONDITIONAL)
        if node_id in self.private:
            rec.config_flags.add(PeerFlag.PRIVATE)
        self._records[node_id] = rec
        self.dirty.add(node_id)
        return rec

    def prune(self, now: float) -> None:
        """Forget the least recently seen disposable records down to ``max_peer_records``."""
        excess = len(self._records) - self._config.max_peer_records + 1
        if excess <= 0:
            return
        pinned = self._pinned()
        disposable = [
            rec
            for rec in self._records.values()
            if rec.conn is None
            and rec.dial is None
            and not rec.flags
            and rec.node_id not in pinned
        ]
        disposable.sort(key=lambda rec: (rec.banned(now), rec.last_seen))
        for rec in disposable[:excess]:
            del self._records[rec.node_id]
            self.dirty.add(rec.node_id)

    def restore(self, rows: tuple[StoredPeer, ...]) -> list[PeerRecord]:
        """Load stored records (not marked dirty); returns the records kept."""
        kept = []
        for row in rows:
            rec = record_from_stored(row, max_addresses=self._config.max_addresses_per_peer)
            if rec is None or rec.node_id == self.self_id:
                continue
            self._records[rec.node_id] = rec
            kept.append(rec)
        return kept

    def drain(self) -> tuple[list[StoredPeer], list[str]]:
        """The rows to upsert and the ids to delete since the last drain."""
        upserts, deletes = [], []
        for node_id in sorted(self.dirty):
            rec = self._records.get(node_id)
            if rec is not None and rec.worth_storing():
                upserts.append(rec.stored())
            else:
                deletes.append(str(node_id))
        self.dirty.clear()
        return upserts, deletes

    # -- capability records ------------------------------------------------------------------

    def set_capability_record(self, node_id: NodeId, record: bytes | None) -> bool | None:
        """Store ``record`` on ``node_id``'s record; None for an unknown peer, else whether
        it changed."""
        if record is not None and len(record) > MAX_CAPABILITY_RECORD_BYTES:
            raise LocalProtocolError(
                f"capability record of {len(record)} bytes (max {MAX_CAPABILITY_RECORD_BYTES})"
            )
        rec = self._records.get(node_id)
        if rec is None:
            return None
        value = None if record is None else bytes(record)
        if rec.capability_record == value:
            return False
        rec.capability_record = value
        self.dirty.add(node_id)
        return True

    def capability_records(self) -> dict[NodeId, bytes]:
        return {
            n: rec.capability_record
            for n, rec in self._records.items()
            if rec.capability_record is not None
        }
