"""Persistence batches: what changed since the last ``Persist``, and when to emit the next.

Theory of operation
-------------------
The three stored concepts mark their own changes: the directory its dirty node ids, the
address book and the IP bans their dirty and deleted keys. The change log never copies them:
when a batch is due it drains all three into one :class:`~overlay.peers.StoreChanges` (rows
sorted, so a batch is deterministic) and clears the marks. A batch is due at most every
``persist_interval`` seconds, or at the next poll when the agenda says ``urgent`` (a ban, an
operator action). If the driver cannot write a batch, ``persist_failed`` re-marks its keys, so
the next batch writes the *current* state of each (never a stale row).
"""

from __future__ import annotations

from overlay.identity import NodeId
from overlay.peers._addrbook import AddressBook
from overlay.peers._agenda import Agenda
from overlay.peers._bans import IpBans
from overlay.peers._config import PeerManagerConfig
from overlay.peers._counters import Counters
from overlay.peers._directory import PeerDirectory
from overlay.peers._state import StoreChanges
from overlay.peers._types import Persist

__all__ = ["ChangeLog"]


class ChangeLog:
    """Batches the changes of the directory, address book and IP bans into ``Persist``."""

    def __init__(
        self,
        config: PeerManagerConfig,
        *,
        directory: PeerDirectory,
        book: AddressBook,
        ip_bans: IpBans,
        agenda: Agenda,
        counters: Counters,
        now: float,
    ) -> None:
        self._config = config
        self._directory = directory
        self._book = book
        self._ip_bans = ip_bans
        self._agenda = agenda
        self._counters = counters
        self._last_persist = now

    def pending(self) -> bool:
        return bool(
            self._directory.dirty
            or self._book.dirty
            or self._book.deleted
            or self._ip_bans.dirty
            or self._ip_bans.deleted
        )

    def deadline(self, now: float) -> float | None:
        """When the next batch is due (None: nothing to write)."""
        if not self.pending():
            return None
        return now if self._agenda.urgent else self._last_persist + self._config.persist_interval

    def poll(self, now: float) -> Persist | None:
        """The batch to write now, if one is due."""
        if not self.pending():
            return None
        if not self._agenda.urgent and now - self._last_persist < self._config.persist_interval:
            return None
        self._last_persist = now
        self._agenda.urgent = False
        changes = self._drain()
        if not changes:
            return None
        self._counters.persists += 1
        return Persist(changes)

    def _drain(self) -> StoreChanges:
        upserts, deletes = self._directory.drain()
        book, bans = self._book, self._ip_bans
        addresses = [e.stored() for a in book.dirty if (e := book.get(a)) is not None]
        ban_rows = [b for k in bans.dirty if (b := bans.stored(k)) is not None]
        changes = StoreChanges(
            peers_upsert=tuple(upserts),
            peers_delete=tuple(deletes),
            addresses_upsert=tuple(sorted(addresses, key=lambda a: a.address)),
            addresses_delete=tuple(sorted(book.deleted)),
            ip_bans_upsert=tuple(sorted(ban_rows, key=lambda b: b.ip)),
            ip_bans_delete=tuple(sorted(bans.deleted)),
        )
        book.dirty.clear()
        book.deleted.clear()
        bans.dirty.clear()
        bans.deleted.clear()
        return changes

    def failed(self, changes: StoreChanges) -> None:
        """``changes`` were not written: re-mark their keys for the next batch."""
        for p in changes.peers_upsert:
            self._directory.touch(NodeId(p.node_id))
        for text in changes.peers_delete:
            self._directory.touch(NodeId(text))
        book = self._book
        for row in changes.addresses_upsert:
            book.deleted.add(row.address)
        for text in changes.addresses_delete:
            book.deleted.add(text)
        for entry in book.entries():
            if str(entry.address) in book.deleted:
                book.deleted.discard(str(entry.address))
                book.dirty.add(entry.address)
        for ban in changes.ip_bans_upsert:
            self._ip_bans.dirty.add(ban.ip)
        self._ip_bans.deleted.update(changes.ip_bans_delete)
