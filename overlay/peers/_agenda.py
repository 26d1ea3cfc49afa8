"""What the next ``poll`` owes the driver: queued disconnects and the wake/urgent flags.

Theory of operation
-------------------
Facts and operator calls decide some things on the spot (ban this peer, evict that one) but
only ``poll`` hands actions to the driver. The agenda is where such decisions wait:

* ``disconnect`` marks the peer's connection ``closing`` (its slot is free from then on) and
  queues one :class:`~overlay.peers.DisconnectPeer`; a connection is asked to close at most
  once, and a queued disconnect is dropped if the peer disconnects before the next poll;
* ``wake`` means "poll now" (``next_deadline`` returns ``now``): something changed that may
  allow a dial;
* ``urgent`` means "persist at the next poll" instead of waiting for ``persist_interval``
  (after a ban or an operator action).
"""

from __future__ import annotations

from collections.abc import Callable

from overlay.identity import NodeId
from overlay.peers._records import PeerRecord
from overlay.peers._types import DisconnectCause, DisconnectPeer

__all__ = ["Agenda"]


class Agenda:
    """Disconnects decided between polls, and the two flags ``poll`` / persistence read."""

    def __init__(self) -> None:
        self._queued: list[DisconnectPeer] = []
        self.wake = True
        self.urgent = False

    def __bool__(self) -> bool:
        return bool(self._queued)

    def disconnect(
        self, rec: PeerRecord, reason: DisconnectCause, *, evict: bool = False
    ) -> bool:
        """Ask to close ``rec``'s connection; False when not connected or already closing."""
        conn = rec.conn
        if conn is None or conn.closing:
            return False
        conn.closing = True
        self._queued.append(DisconnectPeer(rec.node_id, reason, evict))
        return True

    def forget(self, node_id: NodeId) -> None:
        """``node_id`` disconnected: its queued disconnects are moot."""
        self._queued = [a for a in self._queued if a.node_id != node_id]

    def take(self, still_connected: Callable[[NodeId], bool]) -> list[DisconnectPeer]:
        """The queued disconnects of peers still connected, emptying the queue."""
        out = [a for a in self._queued if still_connected(a.node_id)]
        self._queued.clear()
        return out
